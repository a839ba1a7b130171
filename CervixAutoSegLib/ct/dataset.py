"""Training cases for ResAU-Net: discovery on disk, preprocessing to 2D slices, caching,
case-level splitting and foreground-biased patch sampling.

A case is one CT volume (HU) with its label map on the same grid (values of
:data:`~CervixAutoSegLib.structures.CT_STRUCTURES`).  On disk, ``DATA/<case>/`` holds
either ``image.nii.gz`` + ``labels.nii.gz`` (any ITK-readable format with those stems),
or the phantom layout ``dicom/`` (one CT series) + ``truth.nii.gz``.  Synthetic
phantoms can also be generated in memory from a seed range.

Each case is preprocessed exactly as at inference (:func:`.preprocess.preprocess_ct`),
giving stacks of 256x256 windowed slices and the matching label crops; these are cached
as ``.npz`` so that repeated runs (and resumed ones) skip the work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from ..volume import Volume
from .augment import AugmentParams, augment_pair
from .preprocess import CTPreprocessing, preprocess_ct, preprocess_labels

log = logging.getLogger(__name__)

IMAGE_STEMS = ("image",)
LABEL_STEMS = ("labels", "truth")
ITK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
GRID_TOLERANCE_MM = 0.01
"""DICOM decimal strings and NIfTI float32 headers differ by ~1e-4 mm on one grid."""
DEFAULT_SPLIT = (111, 30, 15)
"""Training : validation : test case ratio of the paper (156 patients)."""
CACHE_FORMAT = 2


@dataclasses.dataclass(frozen=True)
class CaseSource:
    """A case not yet loaded: ``load()`` → (CT volume in HU, labels (z, y, x) on its grid)."""

    name: str
    load: Callable[[], tuple[Volume, np.ndarray]]
    fingerprint: str
    """Changes when the case's data changes (cache key)."""


@dataclasses.dataclass
class SliceCase:
    """A preprocessed case.

    Attributes:
        images: float16 ``(n, S, S)`` windowed slices in [0, 1] (S = crop size).
        labels: uint8 ``(n, S, S)`` label crops aligned with ``images``.
        spacing_zyx: voxel size (mm) of the stacks in (z, y, x) order.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)


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


def _loader(image_path: Path, labels_path: Path) -> Callable[[], tuple[Volume, np.ndarray]]:
    def load() -> tuple[Volume, np.ndarray]:
        from ..image_io import load_image  # the reader `segment` uses: same geometry handling

        image = load_image(image_path, modality="CT")
        labels = load_image(labels_path)
        if labels.shape != image.shape or not np.allclose(labels.index_to_lps, image.index_to_lps,
                                                          atol=GRID_TOLERANCE_MM):
            raise InputError(f"{labels_path} is not on the grid of its image {image_path}")
        return image, labels.array.astype(np.uint8)

    return load


def discover_cases(data_dir: str | Path) -> list[CaseSource]:
    """Every ``data_dir/<case>/`` holding an image + label pair, sorted by name."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"training data folder {data_dir} does not exist")
    sources = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        labels_path = _find_with_stem(folder, LABEL_STEMS)
        image_path = _find_with_stem(folder, IMAGE_STEMS)
        if image_path is None and (folder / "dicom").is_dir():
            image_path = folder / "dicom"
        if labels_path is None or image_path is None:
            log.info("skipping %s: no image + labels pair", folder)
            continue
        sources.append(CaseSource(folder.name, _loader(image_path, labels_path),
                                  _fingerprint([image_path, labels_path])))
    if not sources:
        raise InputError(
            f"no training cases in {data_dir}: expected <case>/image.nii.gz + labels.nii.gz "
            "or <case>/dicom/ + truth.nii.gz"
        )
    return sources


def phantom_cases(seeds: Sequence[int]) -> list[CaseSource]:
    """Synthetic CT phantoms generated in memory (``CervixAutoSegLib.phantom``)."""

    def loader(seed: int) -> Callable[[], tuple[Volume, np.ndarray]]:
        def load() -> tuple[Volume, np.ndarray]:
            from ..phantom import make_ct_phantom

            case = make_ct_phantom(seed)
            return case.image, np.asarray(case.labels.array, dtype=np.uint8)

        return load

    from ..phantom import PHANTOM_VERSION

    return [CaseSource(f"phantom-ct-{seed}", loader(seed), f"phantom-v{PHANTOM_VERSION}-{seed}") for seed in seeds]


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


# ------------------------------------------------------------ preprocessing
def prepare_case(source: CaseSource, params: CTPreprocessing, cache_dir: Path | None = None) -> SliceCase:
    """Preprocess one case (or read it from ``cache_dir``)."""
    key = hashlib.sha256(
        json.dumps([CACHE_FORMAT, source.fingerprint, params.to_dict()], sort_keys=True).encode()
    ).hexdigest()[:16]
    cache_file = cache_dir / f"{source.name}-{key}.npz" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file) as data:
            return SliceCase(source.name, data["images"], data["labels"], tuple(data["spacing_zyx"].tolist()))
    image, labels = source.load()
    batch, context = preprocess_ct(image, params)
    crops = preprocess_labels(labels, context)
    case = SliceCase(source.name, batch[:, 0].astype(np.float16), crops, tuple(context.working_spacing[::-1]))
    if cache_file is not None:
        with atomic_path(cache_file, suffix=".npz") as temporary:
            np.savez(temporary, images=case.images, labels=case.labels, spacing_zyx=np.array(case.spacing_zyx))
    return case


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


# ----------------------------------------------------------------- sampling
def _end_slices(present: np.ndarray, n_slices: int, reach: int, case: int) -> list[tuple[int, int, int]]:
    """(case, slice, last slice of the structure) for the slices within ``reach`` beyond
    either end of ``present`` (sorted slice indices holding the structure)."""
    first, last = int(present[0]), int(present[-1])
    below = [(case, s, first) for s in range(max(0, first - reach), first)]
    above = [(case, s, last) for s in range(last + 1, min(n_slices, last + reach + 1))]
    return below + above


class PatchSampler:
    """Random training patches, biased towards foreground and balanced across structures.

    With probability ``end_fraction`` the patch is an *end patch*: a structure is drawn
    (by the odds below), then one of the slices within ``end_margin_mm`` beyond its
    cranial or caudal end, and the patch is centred where the structure is on its last
    slice.  A 2D network cannot see where a structure stops along z (CTV-N at the
    aortic bifurcation, CTV-UV along the vagina); these slices teach it, where uniform
    sampling shows them rarely.

    Otherwise, with probability ``foreground_fraction`` a structure is drawn among those
    present in the training set (uniformly, or in proportion to ``structure_weights``
    keyed by label value), then a slice containing it, and the patch is centred on one
    of its pixels (jittered by up to a quarter patch); else the slice and the centre are
    uniform.  Rare thin structures (CTV-N) are thus seen at least as often as the bladder.
    """

    def __init__(self, cases: Sequence[SliceCase], patch_size: int, rng: np.random.Generator,
                 augment: AugmentParams = AugmentParams(), foreground_fraction: float = 0.7,
                 structure_weights: dict[int, float] | None = None, end_fraction: float = 0.0,
                 end_margin_mm: float = 30.0):
        if not cases:
            raise InputError("no training slices")
        if not 0.0 <= end_fraction <= 1.0:
            raise InputError(f"the share of end patches must be in [0, 1], got {end_fraction}")
        self.cases = list(cases)
        self.patch_size = patch_size
        self.rng = rng
        self.augment = augment
        self.foreground_fraction = foreground_fraction
        self.end_fraction = end_fraction
        self.all_slices = [(c, s) for c, case in enumerate(self.cases) for s in range(case.images.shape[0])]
        self.slices_with: dict[int, list[tuple[int, int]]] = {}
        self.ends_of: dict[int, list[tuple[int, int, int]]] = {}
        """Label value → (case, slice beyond the structure, its last slice on that side)."""
        for c, case in enumerate(self.cases):
            reach = max(1, int(round(end_margin_mm / case.spacing_zyx[0])))
            for value in range(1, int(case.labels.max()) + 1):
                present = np.flatnonzero((case.labels == value).any(axis=(1, 2)))
                if not present.size:
                    continue
                self.slices_with.setdefault(value, []).extend((c, int(s)) for s in present)
                self.ends_of.setdefault(value, []).extend(_end_slices(present, len(case.labels), reach, c))
        self.values = sorted(self.slices_with)
        weights = np.array([(structure_weights or {}).get(v, 1.0) for v in self.values], dtype=float)
        if self.values and (np.any(weights < 0) or weights.sum() <= 0):
            raise InputError(f"structure sampling weights must be >= 0 and not all 0, got {structure_weights}")
        self.value_odds = weights / weights.sum() if self.values else weights

    def _centre(self, labels: np.ndarray, value: int | None) -> tuple[float, float]:
        size = labels.shape[0]
        if value is None:
            return tuple(self.rng.uniform(0, size - 1, size=2))  # type: ignore[return-value]
        pixels = np.argwhere(labels == value)
        y, x = pixels[self.rng.integers(len(pixels))]
        jitter = self.rng.uniform(-0.25, 0.25, size=2) * self.patch_size
        return float(y + jitter[0]), float(x + jitter[1])

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One augmented patch: image float32 ``(P, P)``, labels uint8 ``(P, P)``."""
        if self.end_fraction and self.values and self.rng.random() < self.end_fraction:
            value = self._draw_value()
            ends = self.ends_of[value]
            if ends:
                c, s, last = ends[self.rng.integers(len(ends))]
                centre = self._centre(self.cases[c].labels[last], value)
                return self._patch(c, s, centre)
        if self.slices_with and self.rng.random() < self.foreground_fraction:
            value = self._draw_value()
            c, s = self.slices_with[value][self.rng.integers(len(self.slices_with[value]))]
        else:
            value = None
            c, s = self.all_slices[self.rng.integers(len(self.all_slices))]
        return self._patch(c, s, self._centre(self.cases[c].labels[s], value))

    def _draw_value(self) -> int:
        return self.values[self.rng.choice(len(self.values), p=self.value_odds)]

    def _patch(self, case: int, index: int, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        image = self.cases[case].images[index].astype(np.float32)
        return augment_pair(image, self.cases[case].labels[index], self.rng, self.augment, self.patch_size, centre)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Images ``(B, 1, P, P)`` float32 and labels ``(B, P, P)`` int64."""
        pairs = [self.sample() for _ in range(size)]
        images = np.stack([p[0] for p in pairs])[:, np.newaxis]
        labels = np.stack([p[1] for p in pairs]).astype(np.int64)
        return images, labels
