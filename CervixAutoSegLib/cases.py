"""Training and evaluation cases on disk or made in memory, for any model family.

A case is one image with its label map on the same grid.  On disk, ``DATA/<case>/`` holds
either ``image.nii.gz`` + ``labels.nii.gz`` (any ITK-readable format with those stems), or
the phantom layout ``dicom/`` (one image series) + ``truth.nii.gz``; or ``DATA`` is a dataset
folder (``dataset.json``, written by ``cervixautoseg dataset import``), whose manifest lists the
cases, their files (checked against its sha256) and maybe their split (:func:`dataset_cases`).  Synthetic phantoms can
also be generated in memory from a seed range.  Cases are split at case level (never slices
of one patient on both sides of a split).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import InputError
from .volume import Volume

log = logging.getLogger(__name__)

IMAGE_STEMS = ("image",)
LABEL_STEMS = ("labels", "truth")
ITK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
GRID_TOLERANCE_MM = 0.01
"""DICOM decimal strings and NIfTI float32 headers differ by ~1e-4 mm on one grid."""
DEFAULT_SPLIT = (111, 30, 15)
"""Training : validation : test case ratio of the paper (156 patients)."""


@dataclasses.dataclass(frozen=True)
class CaseSource:
    """A case not yet loaded: ``load()`` → (CT volume in HU, labels (z, y, x) on its grid)."""

    name: str
    load: Callable[[], tuple[Volume, np.ndarray]]
    fingerprint: str
    """Changes when the case's data changes (cache key)."""
    split: str | None = None
    """``train`` / ``validation`` / ``test`` when a dataset manifest fixes it, else None."""


# ------------------------------------------------------------------ reading
def _find_with_stem(folder: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for suffix in ITK_SUFFIXES:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _fingerprint(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            stat = file.stat()
            digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _loader(image_path: Path, labels_path: Path, modality: str) -> Callable[[], tuple[Volume, np.ndarray]]:
    def load() -> tuple[Volume, np.ndarray]:
        from .image_io import load_image  # the reader `segment` uses: same geometry handling

        image = load_image(image_path, modality=modality)
        labels = load_image(labels_path)
        if labels.shape != image.shape or not np.allclose(labels.index_to_lps, image.index_to_lps,
                                                          atol=GRID_TOLERANCE_MM):
            raise InputError(f"{labels_path} is not on the grid of its image {image_path}")
        return image, labels.array.astype(np.uint8)

    return load


def discover_cases(data_dir: str | Path, modality: str) -> list[CaseSource]:
    """Every ``data_dir/<case>/`` holding an image + label pair, sorted by name.

    ``modality`` ("CT", "MR"): what the images are; a DICOM folder's series choice is limited
    to it and a NIfTI image is read as it.
    """
    from .dataset.manifest import is_dataset

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"training data folder {data_dir} does not exist")
    if is_dataset(data_dir):
        return dataset_cases(data_dir, modality)
    sources = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        labels_path = _find_with_stem(folder, LABEL_STEMS)
        image_path = _find_with_stem(folder, IMAGE_STEMS)
        if image_path is None and (folder / "dicom").is_dir():
            image_path = folder / "dicom"
        if labels_path is None or image_path is None:
            log.info("skipping %s: no image + labels pair", folder)
            continue
        sources.append(CaseSource(folder.name, _loader(image_path, labels_path, modality),
                                  _fingerprint([image_path, labels_path])))
    if not sources:
        raise InputError(
            f"no training cases in {data_dir}: expected <case>/image.nii.gz + labels.nii.gz "
            "or <case>/dicom/ + truth.nii.gz"
        )
    return sources


def dataset_cases(root: str | Path, modality: str, *, include_incomplete: bool = False,
                  structures: Sequence[str] | None = None) -> list[CaseSource]:
    """The cases of a dataset folder (``dataset.json``) with labels, in manifest order.

    Files are checked against the manifest's sha256 first (a changed or missing file stops
    here, naming it).  A case whose manifest marks a structure ``missing`` or ``ambiguous`` has
    that structure's voxels as background in its label map: training on it would teach the
    network to leave the structure out, so such cases are left out (one log line each) unless
    ``include_incomplete``.  ``structures``: the TG-263 names that must be complete (default all
    the manifest lists).  Each source carries the manifest's split (None: not assigned).

    Raises:
        InputError: a bad manifest, a changed file, images of another modality, or no usable case.
    """
    from .dataset.manifest import load_dataset

    dataset = load_dataset(root, verify=True)
    wanted = list(structures) if structures is not None else [s.name for s in dataset.structures]
    sources = []
    for case in dataset.cases:
        if case.labels is None:
            log.info("dataset case %s has no label map; not a training case", case.id)
            continue
        if case.modality and modality and case.modality != modality.upper():
            raise InputError(f"dataset {dataset.root}: case {case.id} is {case.modality}, training needs {modality.upper()}")
        lacking = [name for name in wanted if case.structures.get(name, "matched") != "matched"]
        if lacking and not include_incomplete:
            log.warning("dataset case %s left out of training: %s not drawn (or ambiguous) in it; "
                        "--include-incomplete trains on it with those as background", case.id, ", ".join(lacking))
            continue
        fingerprint = hashlib.sha256(f"{case.sha256.get('image')}:{case.sha256.get('labels')}".encode()).hexdigest()[:16]
        sources.append(CaseSource(case.id, _loader(case.image, case.labels, modality), fingerprint, case.split))
    if not sources:
        raise InputError(f"dataset {dataset.root} has no case with a complete label map to train on "
                         "(see its import report; --include-incomplete uses incomplete ones)")
    return sources


def manifest_split(sources: Sequence[CaseSource]) -> tuple[list[CaseSource], list[CaseSource], list[CaseSource]] | None:
    """(train, validation, test) as a dataset manifest fixed them; None when no source carries a split.

    Sources without a split, beside others that have one, belong to no part (logged).
    """
    if not any(source.split for source in sources):
        return None
    parts: dict[str, list[CaseSource]] = {"train": [], "validation": [], "test": []}
    for source in sources:
        if source.split in parts:
            parts[source.split].append(source)
        else:
            log.warning("dataset case %s has no split in the manifest; not used", source.name)
    return parts["train"], parts["validation"], parts["test"]


def phantom_cases(seeds: Sequence[int], modality: str = "CT") -> list[CaseSource]:
    """Synthetic phantoms of ``modality`` generated in memory (:mod:`CervixAutoSegLib.phantom`)."""
    from .phantom import PHANTOM_VERSION

    def loader(seed: int) -> Callable[[], tuple[Volume, np.ndarray]]:
        def load() -> tuple[Volume, np.ndarray]:
            from .phantom import make_ct_phantom, make_mr_phantom

            case = (make_ct_phantom if modality.upper() == "CT" else make_mr_phantom)(seed)
            return case.image, np.asarray(case.labels.array, dtype=np.uint8)

        return load

    prefix = f"phantom-{modality.lower()}"
    # The cache key of a CT phantom predates MR phantoms: keep it, so existing caches stay valid.
    key = "phantom-v" if modality.upper() == "CT" else f"{prefix}-v"
    return [CaseSource(f"{prefix}-{seed}", loader(seed), f"{key}{PHANTOM_VERSION}-{seed}") for seed in seeds]


def parse_seed_range(text: str) -> list[int]:
    """``"1000-1149"`` or ``"1000,1003,1010-1012"`` → list of seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                low, high = part.strip().split("-", 1)
                seeds.extend(range(int(low), int(high) + 1))
            elif part.strip():
                seeds.append(int(part))
    except ValueError:
        raise InputError(f"invalid seed range {text!r}; use e.g. 1000-1149 or 1000,1002") from None
    if not seeds:
        raise InputError(f"empty seed range {text!r}")
    return seeds


def split_cases(sources: Sequence[CaseSource], ratios: Sequence[int] = DEFAULT_SPLIT, seed: int = 0
                ) -> tuple[list[CaseSource], list[CaseSource], list[CaseSource]]:
    """Case-level random split (train, validation, test) in proportion to ``ratios``.

    Validation gets at least one case whenever there are two or more cases.
    """
    order = np.random.default_rng(seed).permutation(len(sources))
    shuffled = [sources[i] for i in order]
    total = float(sum(ratios))
    n = len(shuffled)
    n_val = int(round(n * ratios[1] / total))
    n_test = int(round(n * ratios[2] / total)) if len(ratios) > 2 else 0
    if n >= 2 and n_val == 0:
        n_val = 1
    if n - n_val - n_test < 1:
        n_test = max(0, n - n_val - 1)
    n_train = n - n_val - n_test
    return shuffled[:n_train], shuffled[n_train:n_train + n_val], shuffled[n_train + n_val:]


def fold_split(sources: Sequence[CaseSource], folds: int, fold: int, ratios: Sequence[int] = DEFAULT_SPLIT,
               seed: int = 0) -> tuple[list[CaseSource], list[CaseSource], list[CaseSource]]:
    """(train, validation, test) of fold ``fold`` (0-based) of ``folds``-fold cross-validation.

    The test cases are :func:`split_cases`'s for the same ``ratios`` and ``seed`` — the same in
    every fold, so they stay unseen by all folds; the other cases are dealt into ``folds``
    near-equal parts, part ``fold`` validating and the rest training.
    """
    if folds < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {folds}")
    if not 0 <= fold < folds:
        raise InputError(f"fold must be between 0 and {folds - 1}, got {fold}")
    train, validation, test = split_cases(sources, ratios, seed)
    pool = train + validation
    if len(pool) < folds:
        raise InputError(f"{folds} folds need at least {folds} cases outside the test split, found {len(pool)}")
    parts = [pool[i::folds] for i in range(folds)]
    return [s for i, part in enumerate(parts) if i != fold for s in part], parts[fold], test


# ------------------------------------------------------------------ cache
def cached_arrays(source: CaseSource, cache_format: int, settings: object, cache_dir: Path | None,
                  make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays ``make()`` computes from ``source`` — read from ``cache_dir`` when present, else
    computed and saved there atomically (``<case>-<key>.npz``).

    The key hashes ``cache_format``, the case's fingerprint and ``settings`` (JSON-able, e.g.
    the preprocessing parameters), so a change of any of them makes a new entry.
    """
    import json

    from .atomic import atomic_path

    key = hashlib.sha256(json.dumps([cache_format, source.fingerprint, settings],
                                    sort_keys=True).encode()).hexdigest()[:16]
    cache_file = cache_dir / f"{source.name}-{key}.npz" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file) as data:
            return {name: data[name] for name in data.files}
    arrays = make()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_file, suffix=".npz") as temporary:
            np.savez(temporary, **arrays)
    return arrays
