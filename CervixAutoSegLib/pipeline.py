"""The end-to-end ``segment`` flow, shared by the command line and the Slicer module.

::

    from CervixAutoSegLib.pipeline import segment
    result = segment("patient/CT", "out/", model="auto", device="auto",
                     progress=print, cancel=lambda: False)
    result.labels          # Volume, uint8, exactly the input grid
    result.files["rtstruct"]

Steps: load (:mod:`.image_io`) → choose the model for the image's modality (never a CT
model on MR or the reverse) → preprocess → network → labels back on the input grid →
postprocess (:mod:`.postprocess`) → outputs.

Outputs (DESIGN.md contract) in ``out_dir``: ``labels.nii.gz`` (``labels.nrrd`` for a
gantry-tilted grid, which NIfTI cannot store), ``labels.json``, ``segmentation.seg.nrrd``,
``rtstruct.dcm`` (DICOM input only), ``report.json``, ``preview.png``.

Atomicity: every output is first written into a staging folder next to ``out_dir`` (same
file system); only when all of them exist are they renamed into ``out_dir``, and outputs
of an earlier run that this run does not produce (say an old ``rtstruct.dcm``) are
removed, so the folder never mixes two runs.  A failure or a cancel before that point
leaves ``out_dir`` exactly as it was; files in ``out_dir`` that are not ours are never touched.

The network step is chosen per model family from :data:`FAMILY_RUNNERS`; a runner takes
``(volume, card, device, options, report_fraction, cancel)`` and returns a :class:`NetworkOutput`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, ModelError
from .progress import CancelCheck, ProgressCallback, StagedProgress, check_cancelled
from .volume import Volume

log = logging.getLogger(__name__)

LABELS_FILE = "labels.nii.gz"
LABELS_FILE_SHEARED = "labels.nrrd"
LABELS_JSON = "labels.json"
SEGMENTATION_FILE = "segmentation.seg.nrrd"
RTSTRUCT_FILE = "rtstruct.dcm"
REPORT_FILE = "report.json"
PREVIEW_FILE = "preview.png"
OUTPUT_FILES = (LABELS_FILE, LABELS_FILE_SHEARED, LABELS_JSON, SEGMENTATION_FILE, RTSTRUCT_FILE,
                REPORT_FILE, PREVIEW_FILE)
"""Every file name ``segment`` may write; stale ones of an earlier run are removed."""

MODEL_CHOICES = ("auto", "ct", "mr")
FAMILY_OF_MODALITY = {"CT": "ct", "MR": "mr"}
MODALITY_OF_FAMILY = {family: modality for modality, family in FAMILY_OF_MODALITY.items()}

FAMILY_RUNNERS: dict[str, str] = {
    "ct": "CervixAutoSegLib.pipeline:run_ct_network",
    "mr": "CervixAutoSegLib.mr.inference:run_mr_network",
}
"""Model family → ``"module:function"`` running its network on a Volume (see module docstring)."""


@dataclasses.dataclass
class NetworkOutput:
    """What a family runner returns.

    Attributes:
        labels: uint8 (z, y, x) on the input grid, before postprocessing.
        field_of_view_border: boolean (z, y, x) on the input grid, True on the outermost pixels
            the network saw (its crop), for the crop-border QA flag; None when not applicable.
        inference: device/precision/batch facts for the report.
        preprocessing: JSON summary of the preprocessing context.
        timings: seconds per sub-stage ("preprocess", "model_load" (read + verify + prepare the
            weights), "network" (forward passes only), "restore").
    """

    labels: np.ndarray
    field_of_view_border: np.ndarray | None
    inference: dict
    preprocessing: dict
    timings: dict


@dataclasses.dataclass
class SegmentationResult:
    """The outcome of :func:`segment`: labels on the input grid, the report and the written files."""

    labels: Volume
    structures: tuple
    model: Any
    report: dict
    out_dir: Path | None
    files: dict[str, Path]


@dataclasses.dataclass
class Outcome:
    """Everything the outputs are made from (one run, before writing)."""

    volume: Volume
    input_path: str | None
    card: Any
    device: dict
    labels: Volume
    cleanup: Mapping[int, Any]
    field_of_view_border: np.ndarray | None
    preprocessing: Mapping[str, Any]
    timings: dict

    def report(self, outputs: tuple[str, ...] = ()) -> dict:
        from .report import build_report

        return build_report(volume=self.volume, input_path=self.input_path, card=self.card, device=self.device,
                            timings=self.timings, labels=self.labels, structures=self.card.structures,
                            cleanup=self.cleanup, field_of_view_border=self.field_of_view_border,
                            preprocessing=self.preprocessing, outputs=outputs)


# ---------------------------------------------------------------- model choice
def choose_model(volume: Volume, model: str = "auto", models_root: str | Path | None = None):
    """The model card for ``volume``; InputError when the model and the image modality disagree.

    ``model``: ``"auto"`` (by the image's modality), ``"ct"``/``"mr"`` (best of that family)
    or a model id.
    """
    from .models import find_model

    modality = (volume.modality or "").upper()
    requested = (model or "auto").strip()
    if requested.lower() == "auto":
        family = FAMILY_OF_MODALITY.get(modality)
        if family is None:
            raise InputError(
                f"cannot tell whether the image is CT or MR (modality {modality or 'unknown'!r}); "
                "use --model ct or --model mr"
            )
        try:
            card = find_model(family, models_root)
        except ModelError:
            raise InputError(_no_model_message(modality, models_root)) from None
    else:
        card = find_model(requested.lower() if requested.lower() in ("ct", "mr") else requested, models_root)
    expected = MODALITY_OF_FAMILY[card.family]
    if modality and modality != expected:
        raise InputError(
            f"model {card.id} segments {expected} images but the input is {modality}; "
            f"give a {expected} image or choose a {modality} model"
        )
    return card


def _no_model_message(modality: str, models_root: str | Path | None) -> str:
    from .models import list_models, models_dir

    where = Path(models_root) if models_root is not None else models_dir()
    installed = sorted({card.family.upper() for card in list_models(where)})
    article = "an" if modality == "MR" else "a"
    if not installed:
        return f"no {modality} model is installed (no model directories in {where})"
    others = " and ".join(installed)
    return (f"no {modality} model is installed; the {others} model cannot segment {modality} images "
            f"(install {article} {modality} model in {where} or give a {others} image)")


def _requested_family(model: str, models_root: str | Path | None) -> str | None:
    """``"ct"``/``"mr"`` when ``model`` fixes the family (a family name or an installed id), else None."""
    from .models import find_model

    choice = (model or "auto").strip()
    if choice.lower() in FAMILY_OF_MODALITY.values():
        return choice.lower()
    if choice.lower() == "auto":
        return None
    return find_model(choice, models_root).family  # an unknown id fails here, before reading images


# ---------------------------------------------------------------- network runners
def run_ct_network(volume: Volume, card: Any, device: Any, options: Any,
                   report_fraction: Callable[[float, str], None], cancel: CancelCheck | None) -> NetworkOutput:
    """ResAU-Net on every body slice: preprocess → batches → labels on the input grid."""
    from .ct.inference import predict_slices, prepare_network
    from .ct.preprocess import preprocess_ct, restore_labels
    from .models import load_network

    timings: dict[str, float] = {}
    started = time.perf_counter()
    batch, context = preprocess_ct(volume, card.preprocessing)
    timings["preprocess"] = time.perf_counter() - started
    check_cancelled(cancel)

    started = time.perf_counter()
    network = prepare_network(load_network(card, "cpu"), device, options)
    timings["model_load"] = time.perf_counter() - started
    started = time.perf_counter()
    total = batch.shape[0]
    crop_labels, info = predict_slices(
        network, batch, device=device, options=options, cancel=cancel,
        progress=lambda done, count: report_fraction(done / max(count, 1), f"slices {done}/{count}"),
    )
    del batch, network
    timings["network"] = time.perf_counter() - started

    started = time.perf_counter()
    labels = restore_labels(crop_labels, context)
    border = restore_labels(_crop_ring(crop_labels.shape, _ring_width(context)), context).astype(bool)
    timings["restore"] = time.perf_counter() - started
    log.info("network: %d slices in %.1f s", total, timings["network"])
    return NetworkOutput(labels=labels, field_of_view_border=border, inference=info.to_json(),
                         preprocessing=context.to_dict(), timings=timings)


def _ring_width(context: Any) -> int:
    """Crop pixels per input pixel (rounded up): a ring this wide survives the way back to a coarser input grid."""
    input_xy = np.asarray(context.oriented_spacing[:2], dtype=float)
    working_xy = np.asarray(context.working_spacing[:2], dtype=float)
    return max(int(np.ceil(float(np.max(input_xy / working_xy)) - 1e-6)), 1)


def _crop_ring(shape: tuple[int, ...], width: int = 1) -> np.ndarray:
    """uint8 (n, H, W): 1 on the ``width`` outermost rows/columns of every crop (mapped back like labels)."""
    ring = np.ones(shape, dtype=np.uint8)
    ring[:, width:-width, width:-width] = 0
    return ring


def _runner(family: str) -> Callable[..., NetworkOutput]:
    module_name, function_name = FAMILY_RUNNERS[family].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise InputError(f"{family.upper()} segmentation is not available in this installation") from None
    return getattr(module, function_name)


# ---------------------------------------------------------------- the flow
def load_input(source: str | Path | Volume, *, series_uid: str | None = None,
               family: str | None = None) -> tuple[Volume, str | None]:
    """A path (DICOM folder/file, NIfTI, NRRD) or a Volume → (Volume, path string or None).

    When the family is fixed (``--model ct``) a DICOM folder's series choice is limited to that
    modality; image files keep their own (guessed) modality so a mismatch is caught, not hidden.
    """
    from .image_io import guess_modality, load_image

    if isinstance(source, Volume):
        volume = source
        if not volume.modality:
            volume = volume.with_array(volume.array, modality=guess_modality(volume))
        return volume, None
    path = Path(source)
    modality = MODALITY_OF_FAMILY.get(family or "") if path.is_dir() else None
    return load_image(path, series_uid=series_uid, modality=modality), str(path)


def labels_volume(volume: Volume, labels: np.ndarray, model_id: str) -> Volume:
    """uint8 label map on exactly the grid of ``volume`` (geometry copied, not recomputed)."""
    meta = {"source": "segment", "model": model_id}
    for key in ("series_instance_uid", "frame_of_reference_uid", "study_instance_uid"):
        if key in volume.meta:
            meta[key] = volume.meta[key]
    return Volume(array=np.ascontiguousarray(labels, dtype=np.uint8), spacing=volume.spacing.copy(),
                  origin=volume.origin.copy(), direction=volume.direction.copy(), modality="", meta=meta)


def segment(
    source: str | Path | Volume,
    out_dir: str | Path | None,
    *,
    model: str = "auto",
    device: str = "auto",
    series_uid: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    options: Any = None,
    models_root: str | Path | None = None,
) -> SegmentationResult:
    """Segment one image and write every output into ``out_dir`` (None: compute only).

    Args:
        source: DICOM folder or file, NIfTI/NRRD file, or a :class:`Volume` (Slicer).
        out_dir: output folder (created); see the module docstring for its contents.
        model: ``"auto"``, ``"ct"``, ``"mr"`` or a model id.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        series_uid: Series Instance UID when a DICOM folder holds several series.
        progress: receives :class:`~CervixAutoSegLib.progress.ProgressEvent` objects.
        cancel: polled between batches and stages; True → :class:`~CervixAutoSegLib.errors.Cancelled`,
            nothing written.
        options: :class:`~CervixAutoSegLib.ct.inference.InferenceOptions` (batch size, precision).
        models_root: folder of model directories (default: the bundled ``Resources/Models``).

    Raises:
        InputError: unreadable input, modality without a model, bad device, ...
        Cancelled: the user cancelled.
    """
    from .devices import describe_device, resolve_device

    tracker = StagedProgress(progress, cancel)
    timings: dict[str, float] = {}
    job_started = time.perf_counter()
    if out_dir is not None:
        out_dir = _check_out_dir(Path(out_dir))

    torch_device = resolve_device(device)  # before reading: a bad --device fails fast
    tracker.start("load", "reading image")
    started = time.perf_counter()
    volume, input_path = load_input(source, series_uid=series_uid, family=_requested_family(model, models_root))
    card = choose_model(volume, model, models_root)
    timings["load"] = time.perf_counter() - started

    tracker.start("preprocess", f"model {card.id} on {describe_device(torch_device)}")
    output = _run_network(volume, card, torch_device, options, tracker, cancel)
    for stage in ("preprocess", "model_load", "network"):
        timings[stage] = output.timings.get(stage, 0.0)

    tracker.start("postprocess", "cleaning contours")
    started = time.perf_counter()
    labels, cleanup = _postprocess(output.labels, volume, card)
    timings["postprocess"] = time.perf_counter() - started + output.timings.get("restore", 0.0)

    device_entry = {"requested": device, "used": output.inference.get("device", str(torch_device)),
                    "description": describe_device(output.inference.get("device", torch_device)),
                    **output.inference}
    outcome = Outcome(volume, input_path, card, device_entry, labels, cleanup, output.field_of_view_border,
                      output.preprocessing, timings)
    if out_dir is None:
        timings["total"] = time.perf_counter() - job_started
        tracker.finish()
        return SegmentationResult(labels, card.structures, card, outcome.report(), None, {})

    tracker.start("write", "writing outputs")
    files, report = write_outputs(out_dir, outcome, job_started=job_started, cancel=cancel, step=tracker.update)
    tracker.finish(f"done: {out_dir}")
    return SegmentationResult(labels, card.structures, card, report, out_dir, files)


def _run_network(volume: Volume, card: Any, device: Any, options: Any, tracker: StagedProgress,
                 cancel: CancelCheck | None) -> NetworkOutput:
    """The family's runner, its batch progress shown as the ``network`` stage."""
    if options is None:
        from .ct.inference import InferenceOptions

        options = InferenceOptions()

    def network_fraction(fraction: float, message: str) -> None:
        if tracker.stage != "network":
            tracker.start("network", "running the network")
        tracker.update(fraction, message)

    return _runner(card.family)(volume, card, device, options, network_fraction, cancel)


def _postprocess(raw: np.ndarray, volume: Volume, card: Any) -> tuple[Volume, dict]:
    """Rule-table cleaning (:mod:`.postprocess`) → label Volume on the input grid + cleanup summary."""
    from .postprocess import postprocess_labels, rules_for

    cleaned, cleanup = postprocess_labels(raw, rules_for(card.structures), volume.spacing, volume.direction)
    return labels_volume(volume, cleaned, card.id), cleanup


def _check_out_dir(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output {out_dir} exists and is not a folder")
    return out_dir


# ---------------------------------------------------------------- outputs
def write_outputs(out_dir: Path, outcome: Outcome, *, job_started: float, cancel: CancelCheck | None = None,
                  step: Callable[[float, str], None] | None = None) -> tuple[dict[str, Path], dict]:
    """Write all outputs into a staging folder, then move them into ``out_dir`` (see module docstring).

    ``step(fraction, message)`` is told before each file (fraction of the writing done).
    Returns ({output key: path in out_dir}, the report document).
    """
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.segment-", dir=out_dir.parent))
    try:
        names, report = _write_all(staging, outcome, job_started, step or (lambda fraction, message: None))
        check_cancelled(cancel)
        files = _publish(staging, out_dir, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files, report


WRITE_STEPS = {"labels": 0.0, "segmentation": 0.1, "rtstruct": 0.25, "preview": 0.75, "report": 0.95}
"""Where in the writing stage each file starts (RTSTRUCT contouring dominates)."""


def _write_all(staging: Path, outcome: Outcome, job_started: float,
               step: Callable[[float, str], None]) -> tuple[dict[str, str], dict]:
    """Every output file into ``staging``; returns ({key: file name}, report document)."""
    from .image_io import write_image
    from .preview import write_preview
    from .report import write_report
    from .rtstruct import organ_tumour_containment
    from .structures import write_labels_json

    started = time.perf_counter()
    card, labels, structures = outcome.card, outcome.labels, outcome.card.structures
    containment = organ_tumour_containment(structures)
    names: dict[str, str] = {}

    step(WRITE_STEPS["labels"], "label map")
    names["labels"] = LABELS_FILE if labels.is_orthogonal else LABELS_FILE_SHEARED
    write_image(labels, staging / names["labels"])
    write_labels_json(staging / LABELS_JSON, card.id, structures)
    names["labels_json"] = LABELS_JSON
    step(WRITE_STEPS["segmentation"], "Slicer segmentation")
    if _write_segmentation(staging / SEGMENTATION_FILE, labels, structures, containment):
        names["segmentation"] = SEGMENTATION_FILE
    if outcome.volume.meta.get("source") == "dicom":
        from .rtstruct import write_rtstruct

        step(WRITE_STEPS["rtstruct"], "RTSTRUCT")
        write_rtstruct(staging / RTSTRUCT_FILE, labels, outcome.volume, structures, model_name=card.id,
                       model_version=card.version, containment=containment)
        names["rtstruct"] = RTSTRUCT_FILE

    step(WRITE_STEPS["preview"], "preview")
    names["preview"], names["report"] = PREVIEW_FILE, REPORT_FILE
    report = outcome.report(outputs=tuple(names.values()))
    volumes = {entry["value"]: entry["volume_ml"] for entry in report["structures"]}
    write_preview(staging / PREVIEW_FILE, outcome.volume, labels, structures, volumes, title=_preview_title(card))

    step(WRITE_STEPS["report"], "report")
    outcome.timings["write"] = time.perf_counter() - started
    outcome.timings["total"] = time.perf_counter() - job_started
    report["timings_s"] = {name: round(float(seconds), 3) for name, seconds in outcome.timings.items()}
    write_report(staging / REPORT_FILE, report)
    return names, report


def _preview_title(card: Any) -> str:
    research_only = "NOT FOR CLINICAL USE" in card.intended_use.upper()
    return f"{card.id} v{card.version}" + (" — NOT FOR CLINICAL USE" if research_only else "")


def _write_segmentation(path: Path, labels: Volume, structures: tuple, containment: Mapping[int, Any]) -> bool:
    """The .seg.nrrd; False (with a warning) when the writer is not installed."""
    try:
        from .segfile import write_segmentation_nrrd
    except ImportError:  # pragma: no cover - only while the writer is not installed
        log.warning("segmentation.seg.nrrd not written: the .seg.nrrd writer is not available")
        return False
    write_segmentation_nrrd(path, labels, structures, containment)
    return True


@contextlib.contextmanager
def _termination_deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT back for a few renames, so a cancel cannot leave a half-published folder."""
    import signal

    held = {signal.SIGTERM, signal.SIGINT}
    if not hasattr(signal, "pthread_sigmask"):  # Windows: renames are not interruptible by these anyway
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _publish(staging: Path, out_dir: Path, names: Mapping[str, str]) -> dict[str, Path]:
    """Rename the staged files into ``out_dir``; remove our stale outputs of an earlier run."""
    with _termination_deferred():
        return _rename_all(staging, out_dir, names)


def _rename_all(staging: Path, out_dir: Path, names: Mapping[str, str]) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    produced = set(names.values())
    files = {}
    for key, name in names.items():
        os.replace(staging / name, out_dir / name)
        files[key] = out_dir / name
    for name in OUTPUT_FILES:
        if name not in produced and (out_dir / name).exists():
            (out_dir / name).unlink()
    return files
