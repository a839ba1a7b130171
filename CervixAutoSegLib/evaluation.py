"""Case and cohort evaluation: pair label maps, compute :mod:`.metrics`, write the report.

Pairing rule (one definition for the command line and for code):

* A **case id** is the file stem of a label image (``case07.nii.gz`` → ``case07``), or,
  when the stem is a generic output name (``truth``, ``labels``, ``pred``, ...), the name
  of the folder holding it.  So ``TRUTH/case07/truth.nii.gz`` (a phantom folder) pairs
  with ``PRED/case07/labels.nii.gz`` (a ``segment`` output folder) and with
  ``PRED/case07.nrrd``.
* In a case folder the label image is chosen by name (truth side: ``truth``, ``labels``,
  ``reference``, ``manual``; prediction side: ``labels``, ``pred``, ``prediction``),
  else it must be the only label image there.  Slicer ``.seg.nrrd`` files are ignored.
  A truth folder with no label image but one ``.dcm`` file uses it as an RTSTRUCT.
* A **dataset** truth (a folder with ``dataset.json``, :mod:`.dataset.manifest`) pairs each case
  with the prediction folder of the same case id; structures the manifest calls missing or
  ambiguous for a case are not compared.
* A **DICOM tree** truth (RTSTRUCTs beside their image series, any folder layout) pairs each
  RTSTRUCT with its series (:mod:`.dataset.dicom_tree`) and that series with the ``segment``
  output folder whose ``report.json`` names it; the case id is the prediction folder's name.
* One RTSTRUCT file and one ``segment`` output folder are one case.
* RTSTRUCT ROI names map to the structures by the rules of ``dataset import``
  (:mod:`.dataset.names`, ``--names`` for a user mapping file); a structure with no ROI, or
  with two candidate ROIs, is not compared (reported, never guessed).

Structures (names and label values) come from ``labels.json`` next to the prediction,
else from :mod:`.structures` for ``model`` (``ct`` or ``mr``).  Truth label maps must use
the same values.  MR label maps paint the tumour over the organ, so the organ mask is
organ ∪ tumour (:data:`NESTED_STRUCTURES`).

Grids: truth and prediction must be on the same voxel grid (within
:data:`~.metrics.GRID_TOLERANCE_MM`); otherwise an :class:`InputError` explains the
difference, unless ``resample_pred`` is set, in which case the prediction is resampled
onto the truth grid with nearest-neighbour interpolation and a warning is logged.

Summary statistics (Table 1 of the ResAU-Net paper, Table 2 of the PocketNet paper):
mean and sample SD (ddof=1) per structure.  DSC and surface DSC average over every case
where at least one mask is non-empty (a missed or spurious structure counts as 0);
distances average over cases where both masks are non-empty (a one-sided case has an
infinite distance) and the counts of one-sided cases are reported next to them.
``mDSC`` / ``mHD`` are the means of the per-structure mean DSC / pooled HD95 (the paper's
mHD 4.698 mm is the mean of its four 95HD values).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .errors import InputError
from .metrics import DEFINITIONS, MaskComparison, Status, check_same_grid, compare_volumes, definitions
from .structures import Structure, structures_from_json
from .volume import Volume

LOG = logging.getLogger(__name__)

LABEL_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SEGMENTATION_SUFFIX = ".seg.nrrd"
"""Slicer segmentation files: a different layout, never read as label maps here."""
RTSTRUCT_SUFFIX = ".dcm"
LABELS_JSON = "labels.json"

GENERIC_STEMS = frozenset({"truth", "labels", "label", "reference", "manual", "pred", "prediction",
                           "segmentation", "seg", "gt", "ground_truth", "rtstruct", "rs"})
TRUTH_PREFERRED_STEMS = ("truth", "labels", "reference", "manual", "gt", "ground_truth")
PRED_PREFERRED_STEMS = ("labels", "pred", "prediction", "segmentation")

NESTED_STRUCTURES: Mapping[str, tuple[str, ...]] = {"Uterus_Cx_Vagina": ("GTVp",)}
"""TG-263 name → structures painted over it in the label map but anatomically inside it."""

CSV_COLUMNS = ("case_id", "structure", "paper_name", "label_values", "status", "dsc",
               "hd95_pooled_mm", "hd95_directed_max_mm", "hd_max_mm", "msd_mm", "surface_dsc",
               "tolerance_mm", "apl_mm", "volume_truth_ml", "volume_pred_ml")

SUMMARY_METRICS = ("dsc", "hd95_pooled_mm", "hd95_directed_max_mm", "msd_mm", "surface_dsc", "apl_mm")
OVERLAP_METRICS = frozenset({"dsc", "surface_dsc"})
"""Defined as 0 when exactly one mask is empty, so those cases enter the mean."""

SUMMARY_FILES = ("metrics.csv", "metrics.json", "summary.csv", "summary.md", "boxplots.png")


# --------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class CasePair:
    """Files of one case: truth label map (or RTSTRUCT) and predicted label map.

    For an RTSTRUCT truth paired by series in a DICOM tree, ``reference_files`` are the files of
    the image series it was drawn on and ``series_uid`` its UID; for a dataset truth,
    ``truth_status`` is the manifest's structure → ``matched``/``missing``/``ambiguous``.
    """

    case_id: str
    truth: Path
    pred: Path
    reference_files: tuple[Path, ...] = ()
    series_uid: str | None = None
    truth_status: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class StructureResult:
    """One row of the per-case table: a case × structure comparison."""

    case_id: str
    structure: Structure
    label_values: tuple[int, ...]
    comparison: MaskComparison

    def row(self) -> dict[str, object]:
        """Flat record with the :data:`CSV_COLUMNS`."""
        record: dict[str, object] = {
            "case_id": self.case_id, "structure": self.structure.name,
            "paper_name": self.structure.paper_name,
            "label_values": "+".join(str(v) for v in self.label_values),
        }
        record.update(self.comparison.scalars())
        return {column: record[column] for column in CSV_COLUMNS}


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """Per-structure statistics over the cohort (means/SDs are NaN when undefined)."""

    structure: str
    paper_name: str
    counts: Mapping[str, int]
    mean: Mapping[str, float]
    sd: Mapping[str, float]
    n: Mapping[str, int]


# ------------------------------------------------------------------ reading
def _strip_suffix(path: Path) -> str | None:
    """File stem without its label-image suffix, or None when it is not a label image."""
    name = path.name.lower()
    if name.endswith(SEGMENTATION_SUFFIX):
        return None
    for suffix in LABEL_IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def is_label_image(path: Path) -> bool:
    return path.is_file() and _strip_suffix(path) is not None


def case_id_for(path: Path) -> str:
    """The case id of a label image or RTSTRUCT file (see the module docstring)."""
    stem = _strip_suffix(path) or path.stem
    return path.parent.name if stem.lower() in GENERIC_STEMS else stem


def _pick_in_folder(folder: Path, preferred: Sequence[str], allow_rtstruct: bool) -> Path | None:
    images = sorted(p for p in folder.iterdir() if is_label_image(p))
    for stem in preferred:
        for image in images:
            if (_strip_suffix(image) or "").lower() == stem:
                return image
    if len(images) == 1:
        return images[0]
    if len(images) > 1:
        raise InputError(
            f"{folder} holds several label images ({', '.join(p.name for p in images)}); "
            f"name the one to use {' or '.join(preferred[:2])}.nii.gz"
        )
    if allow_rtstruct:
        dicoms = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == RTSTRUCT_SUFFIX)
        if len(dicoms) == 1:
            return dicoms[0]
    return None


def collect_cases(folder: Path, preferred: Sequence[str], allow_rtstruct: bool = False) -> dict[str, Path]:
    """Case id → file for every label image directly in ``folder`` or in one of its sub-folders."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    cases: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            found = _pick_in_folder(entry, preferred, allow_rtstruct)
            case_id = entry.name
        elif is_label_image(entry) or (allow_rtstruct and entry.suffix.lower() == RTSTRUCT_SUFFIX):
            found, case_id = entry, case_id_for(entry)
        else:
            continue
        if found is None:
            continue
        if case_id in cases:
            raise InputError(f"case id {case_id!r} appears twice in {folder}: {cases[case_id].name} and {found.name}")
        cases[case_id] = found
    return cases


def pair_cases(truth: Path, pred: Path) -> tuple[list[CasePair], dict[str, list[str]]]:
    """Pair truth and prediction files by case id (or, for a DICOM tree, by series).

    ``truth`` and ``pred`` are both files (one case), an RTSTRUCT file and a ``segment`` output
    folder (one case), or both folders (a cohort).  A cohort's truth may be a dataset folder
    (``dataset.json``: cases pair by case id) or a DICOM tree with RTSTRUCTs, which pairs with
    the ``segment`` output folders by the series UID in their ``report.json`` when no case id is
    shared (see :func:`pair_by_series`).

    Returns:
        The pairs (sorted by case id) and the unmatched case ids per side.
    """
    from .dataset.manifest import is_dataset

    if truth.is_file() and pred.is_file():
        return [CasePair(case_id_for(pred), truth, pred)], {"truth_only": [], "pred_only": []}
    if truth.is_file() and pred.is_dir() and is_rtstruct_path(truth):
        labels = _pick_in_folder(pred, PRED_PREFERRED_STEMS, allow_rtstruct=False)
        if labels is None:
            raise InputError(f"--pred {pred} holds no label map (a segment output folder has labels.nii.gz)")
        return [CasePair(pred.name, truth, labels)], {"truth_only": [], "pred_only": []}
    if truth.is_dir() and pred.is_dir():
        if is_dataset(truth):
            return pair_dataset(truth, pred)
        truths = collect_cases(truth, TRUTH_PREFERRED_STEMS, allow_rtstruct=True)
        preds = collect_cases(pred, PRED_PREFERRED_STEMS)
        common = sorted(set(truths) & set(preds))
        if not common:
            by_series = pair_by_series(truth, preds)
            if by_series[0]:
                return by_series
            raise InputError(
                f"no case id is in both {truth} ({len(truths)} cases) and {pred} ({len(preds)} cases); "
                "cases pair by file stem or sub-folder name (or, for a DICOM tree of RTSTRUCTs, by the "
                "series UID in each prediction's report.json)"
            )
        unmatched = {"truth_only": sorted(set(truths) - set(preds)), "pred_only": sorted(set(preds) - set(truths))}
        return [CasePair(case_id, truths[case_id], preds[case_id]) for case_id in common], unmatched
    for path in (truth, pred):
        if not path.exists():
            raise InputError(f"{path} does not exist")
    raise InputError("--truth and --pred must both be files (one case), an RTSTRUCT and a segment output "
                     "folder, or both folders (a cohort)")


def is_rtstruct_path(path: Path) -> bool:
    """A file taken as an RTSTRUCT: ``.dcm``, or a file without suffix that starts as DICOM Part 10 does."""
    from .dicom_series import has_part10_preamble

    if path.suffix.lower() == RTSTRUCT_SUFFIX:
        return True
    if path.suffix or not path.is_file():
        return False
    try:
        return has_part10_preamble(path)
    except OSError:
        return False


def pair_dataset(root: Path, pred: Path) -> tuple[list[CasePair], dict[str, list[str]]]:
    """A dataset's cases (those with a label map) with the prediction folders named by their case ids."""
    from .dataset.manifest import load_dataset

    dataset = load_dataset(root)
    truths = {case.id: case for case in dataset.cases if case.labels is not None}
    preds = collect_cases(pred, PRED_PREFERRED_STEMS)
    common = sorted(set(truths) & set(preds))
    if not common:
        raise InputError(f"no case of the dataset {root} ({len(truths)} cases with labels) has a prediction "
                         f"folder of the same name in {pred} ({len(preds)} cases)")
    unmatched = {"truth_only": sorted(set(truths) - set(preds)), "pred_only": sorted(set(preds) - set(truths))}
    pairs = [CasePair(case_id, truths[case_id].labels, preds[case_id], truth_status=dict(truths[case_id].structures))
             for case_id in common]
    return pairs, unmatched


def _segment_input_entry(pred: Path) -> Mapping[str, object]:
    """The ``input`` entry of the ``report.json`` beside a predicted label map (what ``segment`` read), or {}."""
    from .report import read_report

    entry = (read_report(pred.parent / "report.json") or {}).get("input") or {}
    return entry if isinstance(entry, Mapping) else {}


def prediction_series(pred: Path) -> str | None:
    """The Series Instance UID ``segment`` recorded in ``report.json`` beside a predicted label map."""
    return _segment_input_entry(pred).get("series_instance_uid")  # type: ignore[return-value]


def pair_by_series(tree: Path, preds: Mapping[str, Path]) -> tuple[list[CasePair], dict[str, list[str]]]:
    """RTSTRUCTs of a DICOM tree paired with their image series (:mod:`.dataset.dicom_tree`), and each
    series with the prediction whose ``report.json`` names it.  Case ids are the prediction's."""
    from .dataset.dicom_tree import pair_rtstructs, scan_tree

    by_series = {uid: case_id for case_id, path in preds.items() if (uid := prediction_series(path))}
    if not by_series:
        return [], {}
    try:
        pairings, _ = pair_rtstructs(scan_tree(tree))
    except InputError:
        return [], {}
    pairs = [CasePair(by_series[p.series.uid], p.rtstruct.path, preds[by_series[p.series.uid]],
                      reference_files=tuple(p.series.files), series_uid=p.series.uid)
             for p in pairings if p.series.uid in by_series]
    paired = {pair.case_id for pair in pairs}
    truth_only = sorted(p.series.uid for p in pairings if p.series.uid not in by_series)
    return sorted(pairs, key=lambda pair: pair.case_id), {"truth_only": truth_only,
                                                          "pred_only": sorted(set(preds) - paired)}


def load_label_volume(path: Path) -> Volume:
    """Read a label map (NIfTI, NRRD, MetaImage) as a Volume with an integer array."""
    from .image_io import load_image

    volume = load_image(path)
    array = np.asarray(volume.array)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputError(f"{path} is not a label map: it holds non-integer values")
        volume = volume.with_array(array.astype(np.int32))
    return volume


def image_series_for(rtstruct: Path, dicom: Path | None = None) -> Path:
    """The DICOM image folder an RTSTRUCT refers to: ``dicom``, else ``dicom/`` beside it, else its folder."""
    if dicom is not None:
        return dicom
    beside = rtstruct.parent / "dicom"
    return beside if beside.is_dir() else rtstruct.parent


def load_truth(path: Path, pred: Volume, structures: Sequence[Structure], dicom: Path | None = None, *,
               pair: CasePair | None = None, rules: object | None = None) -> Volume:
    """Truth label map, or an RTSTRUCT rasterised onto its DICOM image series.

    An RTSTRUCT's ROI names are mapped to ``structures`` by the rules ``dataset import`` uses
    (:mod:`.dataset.names`; ``rules`` a :class:`~.dataset.names.NameRules` from ``--names``), and
    ``meta["structures_status"]`` says which structures it holds (``matched``), lacks (``missing``)
    or names twice (``ambiguous``): only matched ones are compared.  The image series gives the
    plane of every contour: ``pair.reference_files`` (a DICOM tree), else ``dicom``, else the
    folder :func:`image_series_for` finds, else the DICOM folder ``segment`` read (its report.json);
    the prediction must lie on that series' grid, as ``segment`` writes it.
    """
    if not is_rtstruct_path(path) and not (pair is not None and pair.reference_files):
        volume = load_label_volume(path)
        status = pair.truth_status if pair is not None and pair.truth_status is not None else dataset_status(path)
        if status is not None:
            volume.meta["structures_status"] = dict(status)
        return volume
    from .dataset.importer import rtstruct_labels

    reference = rtstruct_reference(path, dicom, pair)
    drawn = rtstruct_labels(path, reference, tuple(structures), rules)  # type: ignore[arg-type]
    return reference.with_array(drawn.labels, meta={"source": "rtstruct", "path": str(path),
                                                    "structures_status": drawn.status()})


def rtstruct_reference(path: Path, dicom: Path | None = None, pair: CasePair | None = None) -> Volume:
    """The image Volume of the series an RTSTRUCT was drawn on (see :func:`load_truth` for where it is looked for)."""
    from .dicom_series import read_dicom_series
    from .image_io import load_image
    from .rtstruct.reader import referenced_series

    referenced = sorted(referenced_series(path))
    if pair is not None and pair.reference_files:
        return read_dicom_series(list(pair.reference_files), series_uid=pair.series_uid)
    wanted = referenced[0] if len(referenced) == 1 else None
    predicted = prediction_series(pair.pred) if pair is not None else None
    if predicted and referenced and predicted not in referenced:
        raise InputError(f"case {pair.case_id}: the prediction was made on series {predicted}, the RTSTRUCT "
                         f"{path.name} is drawn on {', '.join(referenced)}")
    folders = [dicom] if dicom is not None else [image_series_for(path), _segment_input(pair)]
    first_error: InputError | None = None
    for folder in [f for f in folders if f is not None]:
        try:
            return load_image(folder, series_uid=wanted)
        except InputError as error:
            first_error = first_error or error
    assert first_error is not None
    raise first_error


def _segment_input(pair: CasePair | None) -> Path | None:
    """The DICOM folder ``segment`` read for ``pair.pred`` (report.json ``input.path``), when it still exists."""
    if pair is None:
        return None
    path = _segment_input_entry(pair.pred).get("path")
    return Path(path) if isinstance(path, str) and path and Path(path).is_dir() else None


def dataset_status(labels: Path) -> Mapping[str, str] | None:
    """The manifest's structure statuses of a dataset case's label map (``DATASET/<case>/labels.*``), else None.

    So a dataset case that lacks a structure is not scored as a miss of the prediction, whoever
    pairs it (``evaluate``, ``batch --evaluate``).
    """
    from .dataset.manifest import MANIFEST_FILE, load_dataset

    root = labels.parent.parent
    if not (root / MANIFEST_FILE).is_file():
        return None
    try:
        for case in load_dataset(root).cases:
            if case.labels is not None and case.labels.resolve() == labels.resolve():
                return dict(case.structures)
    except InputError:
        return None
    return None


def compared_results(results: Sequence[StructureResult], truth: Volume) -> list[StructureResult]:
    """``results`` without the structures the truth does not hold (missing or ambiguous in it)."""
    status = truth.meta.get("structures_status")
    if not status:
        return list(results)
    kept = []
    for result in results:
        verdict = status.get(result.structure.name, "matched")
        if verdict == "matched":
            kept.append(result)
        else:
            LOG.info("case %s: %s not evaluated (%s in the truth)", result.case_id, result.structure.name, verdict)
    return kept


def structures_near(pred: Path, model: str) -> tuple[Structure, ...]:
    """Structures from ``labels.json`` next to the prediction, else the ``model`` catalogue."""
    labels_json = pred.parent / LABELS_JSON
    if labels_json.is_file():
        try:
            return structures_from_json(json.loads(labels_json.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"{labels_json} is not a valid labels.json: {error}") from None
    from .families import structures_of

    return structures_of(model)


def label_values(structure: Structure, structures: Sequence[Structure]) -> tuple[int, ...]:
    """Label values that make up ``structure``: its own plus those painted over it."""
    by_name = {s.name: s.value for s in structures}
    nested = [by_name[name] for name in NESTED_STRUCTURES.get(structure.name, ()) if name in by_name]
    return (structure.value, *nested)


def present_labels(labels: np.ndarray) -> set[int]:
    """Label values occurring in an integer label map (bincount: no sort of the whole image)."""
    low, high = int(labels.min()), int(labels.max())
    if low >= 0 and high <= np.iinfo(np.uint16).max:
        return set(np.flatnonzero(np.bincount(labels.ravel().astype(np.intp, copy=False))).tolist())
    return set(np.unique(labels).tolist())


def resample_nearest(moving: Volume, reference: Volume) -> Volume:
    """``moving`` label map resampled onto the ``reference`` grid, nearest neighbour, LPS."""
    import SimpleITK as sitk

    resampled = sitk.Resample(moving.to_sitk(), reference.to_sitk(), sitk.Transform(),
                              sitk.sitkNearestNeighbor, 0, moving.to_sitk().GetPixelID())
    return reference.with_array(sitk.GetArrayFromImage(resampled), meta=dict(moving.meta))


# --------------------------------------------------------------- evaluation
def evaluate_volumes(case_id: str, truth: Volume, pred: Volume, structures: Sequence[Structure],
                     tolerance_mm: float, resample_pred: bool = False) -> list[StructureResult]:
    """Compare every structure of one case; one :class:`StructureResult` per structure."""
    try:
        check_same_grid(truth, pred)
    except InputError as error:
        if not resample_pred:
            raise InputError(f"case {case_id}: {error}; pass --resample-pred to resample the prediction "
                             "onto the truth grid (nearest neighbour)") from None
        LOG.warning("case %s: %s; resampling the prediction onto the truth grid (nearest neighbour)",
                    case_id, error)
        pred = resample_nearest(pred, truth)
    known = {s.value for s in structures}
    for volume, side in ((truth, "truth"), (pred, "prediction")):
        unknown = sorted(present_labels(volume.array) - known - {0})
        if unknown:
            LOG.warning("case %s: %s label values %s are not in the structure list and are ignored",
                        case_id, side, unknown)
    results = []
    for structure in structures:
        values = label_values(structure, structures)
        comparison = compare_volumes(truth, pred, truth_values=values, tolerance_mm=tolerance_mm)
        results.append(StructureResult(case_id, structure, values, comparison))
    return results


def evaluate_pair(pair: CasePair, model: str, tolerance_mm: float, resample_pred: bool = False,
                  dicom: Path | None = None, rules: object | None = None) -> list[StructureResult]:
    """Load and compare one case (``dicom``: image series of an RTSTRUCT truth; ``rules``: ROI name
    rules for it).  Structures the truth lacks (missing or ambiguous) are left out."""
    structures = structures_near(pair.pred, model)
    pred = load_label_volume(pair.pred)
    truth = load_truth(pair.truth, pred, structures, dicom, pair=pair, rules=rules)
    return compared_results(evaluate_volumes(pair.case_id, truth, pred, structures, tolerance_mm, resample_pred),
                            truth)


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if array.size > 1 else math.nan)


def summarise(results: Iterable[StructureResult]) -> list[SummaryRow]:
    """Per-structure mean ± SD (see the module docstring for which cases enter)."""
    grouped: dict[str, list[StructureResult]] = {}
    for result in results:
        grouped.setdefault(result.structure.name, []).append(result)
    rows = []
    for name, group in grouped.items():
        counts = {status: sum(r.comparison.status == status for r in group)
                  for status in (Status.BOTH_PRESENT, Status.PRED_EMPTY, Status.TRUTH_EMPTY, Status.BOTH_EMPTY)}
        mean, sd, n = {}, {}, {}
        for metric in SUMMARY_METRICS:
            if metric in OVERLAP_METRICS:
                entering = [r for r in group if r.comparison.status != Status.BOTH_EMPTY]
            elif metric == "apl_mm":
                entering = list(group)
            else:
                entering = [r for r in group if r.comparison.status == Status.BOTH_PRESENT]
            values = [float(getattr(r.comparison, metric)) for r in entering]
            mean[metric], sd[metric] = _mean_sd(values)
            n[metric] = len(values)
        rows.append(SummaryRow(name, group[0].structure.paper_name, counts, mean, sd, n))
    return rows


def overall_means(rows: Sequence[SummaryRow]) -> dict[str, float]:
    """mDSC and mHD (pooled HD95) over structures, and mHD of the directed-max HD95."""
    def mean_of(metric: str) -> float:
        values = [r.mean[metric] for r in rows if math.isfinite(r.mean[metric])]
        return float(np.mean(values)) if values else math.nan

    return {"mDSC": mean_of("dsc"), "mHD_pooled_mm": mean_of("hd95_pooled_mm"),
            "mHD_directed_max_mm": mean_of("hd95_directed_max_mm")}


# ------------------------------------------------------------------ writing
def _number(value: float) -> float | None:
    """JSON-safe number: NaN and inf become null (the row's status says why)."""
    return float(value) if math.isfinite(value) else None


def _csv_text(records: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in record.items()})
    return stream.getvalue()


def summary_records(rows: Sequence[SummaryRow]) -> list[dict[str, object]]:
    records = []
    for row in rows:
        record: dict[str, object] = {"structure": row.structure, "paper_name": row.paper_name}
        record.update({f"n_{status}": count for status, count in row.counts.items()})
        for metric in SUMMARY_METRICS:
            record[f"{metric}_mean"] = row.mean[metric]
            record[f"{metric}_sd"] = row.sd[metric]
            record[f"{metric}_n"] = row.n[metric]
        records.append(record)
    return records


def format_mean_sd(mean: float, sd: float, digits: int) -> str:
    """``mean ± sd`` (just the mean when SD is undefined, an en dash when the mean is)."""
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if math.isfinite(sd) else f"{mean:.{digits}f}"


def summary_markdown(rows: Sequence[SummaryRow], tolerance_mm: float, n_cases: int) -> str:
    """Table-1-style Markdown: mean ± SD per structure, mDSC and mHD rows, definitions."""
    lines = [
        f"# Contour agreement ({n_cases} case{'s' if n_cases != 1 else ''})",
        "",
        f"| Structure | Paper name | n | DSC | 95HD pooled (mm) ¹ | Haus95 directed max (mm) ² | MSD (mm) | "
        f"Surface DSC @{tolerance_mm:g} mm | APL (mm) | pred empty | truth empty |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.structure} | {row.paper_name} | {row.n['dsc']} | {format_mean_sd(row.mean['dsc'], row.sd['dsc'], 3)} | "
            f"{format_mean_sd(row.mean['hd95_pooled_mm'], row.sd['hd95_pooled_mm'], 2)} | "
            f"{format_mean_sd(row.mean['hd95_directed_max_mm'], row.sd['hd95_directed_max_mm'], 2)} | "
            f"{format_mean_sd(row.mean['msd_mm'], row.sd['msd_mm'], 2)} | "
            f"{format_mean_sd(row.mean['surface_dsc'], row.sd['surface_dsc'], 3)} | "
            f"{format_mean_sd(row.mean['apl_mm'], row.sd['apl_mm'], 0)} | "
            f"{row.counts[Status.PRED_EMPTY]} | {row.counts[Status.TRUTH_EMPTY]} |"
        )
    overall = overall_means(rows)
    lines += [
        "",
        f"**mDSC** = {format_mean_sd(overall['mDSC'], math.nan, 3)} · **mHD** (pooled 95HD) = "
        f"{format_mean_sd(overall['mHD_pooled_mm'], math.nan, 2)} mm · mHD (directed max) = "
        f"{format_mean_sd(overall['mHD_directed_max_mm'], math.nan, 2)} mm",
        "",
        "Mean ± sample SD. DSC and surface DSC: cases where a mask is missing on one side count as 0; "
        "distances: only cases with both masks (n of one-sided cases in the last columns); cases with "
        "both masks empty are left out. mDSC / mHD: mean over structures of the per-structure means.",
        "",
        f"¹ {DEFINITIONS['hd95_pooled_mm']}",
        f"² {DEFINITIONS['hd95_directed_max_mm']}",
        "",
        "Definitions:",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, text in definitions(tolerance_mm).items()]
    return "\n".join(lines) + "\n"


def boxplot_png(results: Sequence[StructureResult], structures: Sequence[Structure]) -> bytes:
    """Box plots of DSC and pooled HD95 per structure (structure colours, cases as dots)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [s.name for s in structures if any(r.structure.name == s.name for r in results)]
    colours = {s.name: s.color_float for s in structures}
    panels = (("dsc", "Dice similarity coefficient", "DSC", (-0.02, 1.02)),
              ("hd95_pooled_mm", "95% Hausdorff distance (pooled, ResAU-Net eq. 7)", "95HD (mm)", None))
    figure, axes = plt.subplots(1, 2, figsize=(4.0 + 1.3 * len(names), 4.2), dpi=150, constrained_layout=True)
    rng = np.random.default_rng(0)  # fixed jitter: the same data gives the same picture
    for ax, (metric, title, unit, limits) in zip(axes, panels):
        data, labels = [], []
        for name in names:
            mine = [r.comparison for r in results if r.structure.name == name]
            values = [float(getattr(c, metric)) for c in mine if math.isfinite(getattr(c, metric))]
            one_sided = sum(c.status in (Status.PRED_EMPTY, Status.TRUTH_EMPTY) for c in mine)
            data.append(values)
            note = f", {one_sided} one-sided" if one_sided and metric not in OVERLAP_METRICS else ""
            labels.append(f"{name}\n(n={len(values)}{note})")
        positions = np.arange(1, len(names) + 1)
        drawable = [(p, d) for p, d in zip(positions, data) if d]
        if drawable:
            boxes = ax.boxplot([d for _, d in drawable], positions=[p for p, _ in drawable], widths=0.55,
                               patch_artist=True, showfliers=False, medianprops={"color": "black"})
            for patch, (position, _) in zip(boxes["boxes"], drawable):
                patch.set_facecolor((*colours[names[position - 1]], 0.55))
                patch.set_edgecolor("0.25")
            for position, values in drawable:
                jitter = rng.uniform(-0.12, 0.12, len(values))
                ax.scatter(position + jitter, values, s=12, color="0.15", zorder=3, linewidths=0)
        ax.set_xticks(positions)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlim(0.4, len(names) + 0.6)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit, fontsize=9)
        if limits:
            ax.set_ylim(*limits)
        else:
            ax.set_ylim(bottom=0)
        ax.grid(axis="y", color="0.88", linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    stream = io.BytesIO()
    figure.savefig(stream, format="png")
    plt.close(figure)
    return stream.getvalue()


def report_document(results: Sequence[StructureResult], pairs: Sequence[CasePair], tolerance_mm: float,
                    unmatched: Mapping[str, Sequence[str]]) -> dict:
    """The metrics.json document: definitions, per-case values (with APL per slice), summary."""
    from . import __version__

    rows = summarise(results)
    files = {p.case_id: p for p in pairs}
    cases: dict[str, dict] = {}
    for result in results:
        pair = files[result.case_id]
        case = cases.setdefault(result.case_id, {"case_id": result.case_id, "truth": str(pair.truth),
                                                 "pred": str(pair.pred), "structures": []})
        entry = {key: (_number(value) if isinstance(value, float) else value)
                 for key, value in result.row().items() if key != "case_id"}
        entry["label_values"] = list(result.label_values)
        entry["apl_per_slice_mm"] = [round(float(v), 3) for v in result.comparison.apl_per_slice_mm]
        case["structures"].append(entry)
    summary = [{key: (_number(v) if isinstance(v, float) else v) for key, v in record.items()}
               for record in summary_records(rows)]
    return {
        "tool": f"CervixAutoSeg {__version__}",
        "tolerance_mm": tolerance_mm,
        "definitions": {**definitions(tolerance_mm),
                        "null": "JSON null stands for NaN (undefined) or inf (a mask is empty); see status.",
                        "summary": "mean and sample SD (ddof=1); see CervixAutoSegLib.evaluation for which "
                                   "cases enter each mean; mDSC/mHD = mean of per-structure means."},
        "cases": list(cases.values()),
        "summary": summary,
        "overall": {k: _number(v) for k, v in overall_means(rows).items()},
        "unmatched": {k: list(v) for k, v in unmatched.items()},
    }


def write_report(out: Path, results: Sequence[StructureResult], pairs: Sequence[CasePair],
                 structures: Sequence[Structure], tolerance_mm: float,
                 unmatched: Mapping[str, Sequence[str]] | None = None) -> list[Path]:
    """Write :data:`SUMMARY_FILES` into ``out`` atomically; returns the written paths."""
    from .atomic import write_bytes_atomic, write_text_atomic

    unmatched = unmatched or {"truth_only": [], "pred_only": []}
    rows = summarise(results)
    summary = summary_records(rows)
    overall = overall_means(rows)
    summary_columns = list(summary[0]) if summary else ["structure"]
    overall_records = [{"structure": "mDSC", "dsc_mean": overall["mDSC"]},
                       {"structure": "mHD", "hd95_pooled_mm_mean": overall["mHD_pooled_mm"],
                        "hd95_directed_max_mm_mean": overall["mHD_directed_max_mm"]}]
    texts = {
        "metrics.csv": _csv_text([r.row() for r in results], CSV_COLUMNS),
        "metrics.json": json.dumps(report_document(results, pairs, tolerance_mm, unmatched), indent=2,
                                   allow_nan=False) + "\n",
        "summary.csv": _csv_text(summary + overall_records, summary_columns),
        "summary.md": summary_markdown(rows, tolerance_mm, len(pairs)),
    }
    written = []
    for name, text in texts.items():
        write_text_atomic(out / name, text)
        written.append(out / name)
    write_bytes_atomic(out / "boxplots.png", boxplot_png(results, structures))
    written.append(out / "boxplots.png")
    return written


def evaluate(truth: Path, pred: Path, model: str = "ct", tolerance_mm: float = 2.0,
             resample_pred: bool = False, dicom: Path | None = None, rules: object | None = None) -> tuple[list[StructureResult], list[CasePair], dict[str, list[str]],
                                                   tuple[Structure, ...]]:
    """Pair, load and compare one case or a cohort.

    ``dicom`` is the image series of a single-case RTSTRUCT truth (cohorts use the
    ``dicom/`` folder of each case).

    Returns:
        Per case × structure results, the pairs, the unmatched case ids, and the
        structures of the first case (used to order and colour the report).
    """
    pairs, unmatched = pair_cases(truth, pred)
    for side, ids in unmatched.items():
        if ids:
            LOG.warning("%d case(s) only on the %s side, not evaluated: %s", len(ids),
                        side.split("_")[0], ", ".join(ids))
    results: list[StructureResult] = []
    catalogue: tuple[Structure, ...] = ()
    for pair in pairs:
        LOG.info("evaluating %s", pair.case_id)
        results.extend(evaluate_pair(pair, model, tolerance_mm, resample_pred, dicom, rules))
        catalogue = catalogue or structures_near(pair.pred, model)
    return results, pairs, unmatched, catalogue
