"""Training cases for ResAU-Net: preprocessing to 2D slices, caching and foreground-biased
patch sampling.  Finding cases on disk and splitting them is shared (:mod:`CervixAutoSegLib.cases`).

Each case is preprocessed exactly as at inference (:func:`.preprocess.preprocess_ct`),
giving stacks of 256x256 windowed slices and the matching label crops; these are cached
as ``.npz`` so that repeated runs (and resumed ones) skip the work.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..cases import CaseSource, cached_arrays
from ..errors import InputError
from .augment import AugmentParams, augment_pair
from .preprocess import CTPreprocessing, preprocess_ct, preprocess_labels

log = logging.getLogger(__name__)

CACHE_FORMAT = 2


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


# ------------------------------------------------------------ preprocessing
def prepare_case(source: CaseSource, params: CTPreprocessing, cache_dir: Path | None = None) -> SliceCase:
    """Preprocess one case (or read it from ``cache_dir``)."""

    def make() -> dict[str, np.ndarray]:
        image, labels = source.load()
        batch, context = preprocess_ct(image, params)
        return {"images": batch[:, 0].astype(np.float16), "labels": preprocess_labels(labels, context),
                "spacing_zyx": np.array(context.working_spacing[::-1])}

    arrays = cached_arrays(source, CACHE_FORMAT, params.to_dict(), cache_dir, make)
    return SliceCase(source.name, arrays["images"], arrays["labels"], tuple(arrays["spacing_zyx"].tolist()))


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
