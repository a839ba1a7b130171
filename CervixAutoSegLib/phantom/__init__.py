"""Synthetic pelvis phantoms (planning CT and T2w MR) with ground-truth labels.

Module map:

* :mod:`.shapes` — analytic solids (signed distance in mm, bounding boxes).
* :mod:`.anatomy` — the patient in continuous LPS mm: tissues, parts, contoured regions.
* :mod:`.grids` — acquisition grids (patient position, plane, obliquity, spacing, matrix).
* :mod:`.raster` — shapes → tissue map, ideal image and label map on any grid.
* :mod:`.ct`, :mod:`.mr` — modality appearance: intensities, grid draws, blur, noise.

Typical use::

    case = make_ct_phantom(7)                 # PhantomCase: image (HU int16), labels (uint8)
    write_phantom(case, Path("out/case007"))  # dicom/*.dcm, truth.nii.gz, labels.json

    anatomy = make_anatomy(7)                 # the same patient on other grids
    ffs = render(anatomy, reoriented(case_grid, "FFS"), "CT")

Everything is deterministic per seed: the same seed gives the same voxels.
Randomness comes from independent streams per purpose (anatomy, grid, appearance,
noise), so overriding one choice does not change the others.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .anatomy import ANATOMY_STREAM, Anatomy, Tissue, make_anatomy
from .grids import AcquisitionGrid, make_grid, plane_direction, reoriented

__all__ = [
    "AcquisitionGrid", "Anatomy", "PhantomCase", "Tissue", "make_anatomy", "make_ct_phantom", "make_grid",
    "make_mr_phantom", "plane_direction", "render", "reoriented", "write_phantom",
]

STREAM_ANATOMY, STREAM_GRID, STREAM_APPEARANCE, STREAM_NOISE, STREAM_TEXTURE = ANATOMY_STREAM, 2, 3, 4, 5
"""Spawn keys of the per-seed random streams."""
MODALITIES = ("CT", "MR")
PHANTOM_VERSION = 2
"""Bumped whenever a seed starts giving a different patient or scan (training caches are
keyed by it).  2: iliac vessels beside the psoas, obturator strip on the side wall."""
UID_ROOT = "1.2.826.0.1.3680043.10.1492."
"""Prefix of the deterministic phantom UIDs (pydicom-style hashed suffix)."""


@dataclasses.dataclass
class PhantomCase:
    """One synthetic scan with its truth.

    Attributes:
        image: CT HU (int16) or T2w MR signal (uint16); array (z, y, x), LPS geometry.
        labels: uint8 on exactly the image grid; values per structures.py
            (CT 1 bladder, 2 rectum, 3 CTV-N, 4 CTV-UV; MR 1 organ, 2 tumour over organ).
        modality: "CT" or "MR".
        patient_position: DICOM Patient Position of the acquisition.
        seed: the seed it was made from.
        params: the phantom version and everything that was randomised (anatomy, grid,
            appearance), JSON-able.
        tissue: uint8 tissue map (:class:`Tissue`) on the same grid (for tests/analysis).
        grid: the acquisition grid.
    """

    image: Volume
    labels: Volume
    modality: str
    patient_position: str
    seed: int
    params: dict
    tissue: np.ndarray | None = None
    grid: AcquisitionGrid | None = None


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def render(anatomy: Anatomy, grid: AcquisitionGrid, modality: str, *, seed: int = 0,
           appearance: Mapping | None = None) -> PhantomCase:
    """Scan ``anatomy`` on ``grid``: the same patient on any grid gives labels at the
    same LPS positions.

    Args:
        modality: "CT" or "MR".
        seed: selects the appearance (when ``appearance`` is None) and the noise.
        appearance: intensities/noise as drawn by ``ct.draw_ct_appearance`` or
            ``mr.draw_mr_appearance``.
    """
    from . import ct, mr
    from .raster import add_texture, label_map, rasterise

    modality = modality.upper()
    if modality not in MODALITIES:
        raise InputError(f"phantom modality must be CT or MR, not {modality!r}")
    look = ct if modality == "CT" else mr
    if appearance is None:
        draw = ct.draw_ct_appearance if modality == "CT" else mr.draw_mr_appearance
        appearance = draw(_rng(seed, STREAM_APPEARANCE))
    ideal, tissue = rasterise(anatomy, grid, look.intensities(appearance), modality)
    add_texture(ideal, tissue, grid, look.textures(appearance), _rng(seed, STREAM_TEXTURE))
    labels = label_map(anatomy, grid, tissue, modality)
    finish = ct.finish_ct if modality == "CT" else mr.finish_mr
    pixels = finish(ideal, grid, appearance, _rng(seed, STREAM_NOISE))
    params = {"version": PHANTOM_VERSION, "anatomy": _jsonable(anatomy.params), "grid": grid.to_dict(),
              "appearance": _jsonable(appearance)}
    meta = {"phantom_seed": int(seed), "patient_position": grid.patient_position}
    return PhantomCase(
        image=grid.volume(pixels, modality, meta),
        labels=grid.volume(labels, modality, dict(meta)),
        modality=modality,
        patient_position=grid.patient_position,
        seed=int(seed),
        params=params,
        tissue=tissue,
        grid=grid,
    )


GRID_KEYS = {"CT": ("matrix", "pixel_spacing_mm", "slice_thickness_mm"),
             "MR": ("matrix", "pixel_spacing_mm", "slice_thickness_mm", "plane", "tilt_deg")}


def _split_overrides(modality: str, overrides: Mapping) -> tuple[dict, dict]:
    from .anatomy import draw_anatomy_params

    anatomy_keys = set(draw_anatomy_params(np.random.default_rng(0)))
    grid_keys = set(GRID_KEYS[modality])
    unknown = sorted(set(overrides) - anatomy_keys - grid_keys)
    if unknown:
        raise InputError(f"unknown phantom parameter(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(anatomy_keys | grid_keys))}")
    return ({k: v for k, v in overrides.items() if k in anatomy_keys},
            {k: v for k, v in overrides.items() if k in grid_keys})


def _make(modality: str, seed: int, grid: AcquisitionGrid | None, overrides: Mapping) -> PhantomCase:
    from . import ct, mr

    anatomy_overrides, grid_overrides = _split_overrides(modality, overrides)
    anatomy = make_anatomy(seed, **anatomy_overrides)
    grid_draws: dict = {}
    if grid is None:
        draw = ct.draw_ct_grid if modality == "CT" else mr.draw_mr_grid
        grid, grid_draws = draw(_rng(seed, STREAM_GRID), anatomy, **grid_overrides)
    case = render(anatomy, grid, modality, seed=seed)
    case.params["grid_draws"] = _jsonable(grid_draws)
    return case


def make_ct_phantom(seed: int, *, grid: AcquisitionGrid | None = None, **overrides) -> PhantomCase:
    """A planning CT (HU int16) of the patient of ``seed`` with CT labels.

    ``overrides``: anatomy draws (e.g. ``bladder_volume_ml=300``,
    ``patient_position="FFS"``, ``table=False``) and grid draws (``matrix``,
    ``pixel_spacing_mm``, ``slice_thickness_mm``); ``grid`` replaces the drawn grid.
    """
    return _make("CT", seed, grid, overrides)


def make_mr_phantom(seed: int, *, grid: AcquisitionGrid | None = None, **overrides) -> PhantomCase:
    """A T2w MR (uint16) of the patient of ``seed`` with organ/tumour labels.

    ``overrides`` as :func:`make_ct_phantom` plus ``plane`` ("axial"/"sagittal") and
    ``tilt_deg`` (obliquity about x, y, z in degrees).
    """
    return _make("MR", seed, grid, overrides)


def _uid(seed: int, modality: str, what: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=["CervixAutoSeg phantom", modality, str(seed), what]))


def write_phantom(case: PhantomCase, out_dir: Path, *, shuffle_seed: int | None = None) -> None:
    """Write ``out_dir/dicom/*.dcm`` (one series), ``out_dir/truth.nii.gz`` (labels on
    exactly that grid) and ``out_dir/labels.json``.

    ``shuffle_seed``: random file names and Instance Numbers (neither gives slice order).

    Raises InputError when ``out_dir`` is a file or ``out_dir/dicom`` already holds files
    (a second series there would be mixed with this one).
    """
    from ..dicom_writer import write_dicom_series
    from ..image_io import write_image
    from ..families import family_for_modality
    from ..structures import write_labels_json
    from . import mr

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is an existing file, not a folder")
    dicom_dir = out_dir / "dicom"
    if dicom_dir.exists() and (not dicom_dir.is_dir() or any(dicom_dir.iterdir())):
        raise InputError(f"{dicom_dir} already exists and is not empty; choose a new output folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create output folder {out_dir}: {error.strerror}") from None
    family = case.modality.lower()
    description = f"CervixAutoSeg phantom {case.modality} seed {case.seed} (synthetic, not a patient)"
    mr_sequence = mr.sequence_attributes(case.grid) if case.modality == "MR" and case.grid is not None else None
    write_dicom_series(
        case.image, dicom_dir, modality=case.modality, patient_position=case.patient_position,
        series_description=description[:64],
        patient={"PatientName": f"Phantom^{case.modality}{case.seed}", "PatientID": f"PH{family.upper()}{case.seed}"},
        study_instance_uid=_uid(case.seed, case.modality, "study"),
        series_instance_uid=_uid(case.seed, case.modality, "series"),
        frame_of_reference_uid=_uid(case.seed, case.modality, "frame"),
        mr_sequence=mr_sequence,
        shuffle_seed=shuffle_seed,
    )
    write_image(case.labels, out_dir / "truth.nii.gz")
    # The phantom's truth uses the label values of the family that contours its modality.
    labelled_by = family_for_modality(case.modality)
    write_labels_json(out_dir / "labels.json", labelled_by.name, labelled_by.structures)
