"""The MR family's training task: PocketNet per stage on preprocessed 3D cases, trained by the shared loop.

Each case is preprocessed exactly as at inference (:func:`.preprocess.preprocess_mr`) and
cached (``.npz``).  Stage ``organ`` learns uterus + cervix + vagina (label > 0) from the
T2w image; stage ``tumor`` learns the tumour (label 2) from the image plus the true organ
mask as a second channel — randomly grown, shrunk and shifted (:func:`jitter_organ`), since
at inference the channel is stage 1's imperfect organ.  Loss: soft Dice + cross-entropy on the main output and both deep-supervision
heads (weights 1, 1/2, 1/4, normalised), as MIST trains PocketNet.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..cases import CaseSource, cached_arrays
from ..training import BatchSource, TrainingTask, mean_of, per_structure_dsc
from .config import MRTrainConfig
from .family import MR_STRUCTURES
from .network import build_pocketnet, split_deep_supervision
from .preprocess import MRPreprocessing, preprocess_labels, preprocess_mr

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
HEAD_WEIGHTS = (1.0, 0.5, 0.25)


class MRCase:
    """A preprocessed case: ``image`` float16 (z, y, x) on the working grid, ``labels`` uint8 (0, 1 organ, 2 tumour)."""

    def __init__(self, name: str, image: np.ndarray, labels: np.ndarray):
        self.name, self.image, self.labels = name, image, labels

    def inputs(self, stage: str) -> np.ndarray:
        """Network input (C, z, y, x) float32 of ``stage`` (the true organ as stage 2's second channel)."""
        image = self.image.astype(np.float32)[None]
        return image if stage == "organ" else np.concatenate([image, (self.labels > 0)[None].astype(np.float32)])

    def target(self, stage: str) -> np.ndarray:
        return (self.labels > 0 if stage == "organ" else self.labels == 2).astype(np.int64)

    def organ_box(self, spacing_xyz: Sequence[float]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """(start, size) (z, y, x) of the box stage 2 sees at inference: the organ plus the runner's
        :data:`~.runner.ORGAN_BOX_MARGIN_MM`; None without an organ."""
        from ..cropping import bounding_box
        from .runner import ORGAN_BOX_MARGIN_MM

        if not (self.labels > 0).any():
            return None
        margin = tuple(int(np.ceil(m / s)) for m, s in zip(ORGAN_BOX_MARGIN_MM[::-1], spacing_xyz[::-1]))
        return bounding_box(self.labels > 0, margin)  # type: ignore[return-value]


def prepare_case(source: CaseSource, params: MRPreprocessing, cache_dir: Path | None) -> MRCase:
    """Preprocess one case (or read it from ``cache_dir``)."""

    def make() -> dict[str, np.ndarray]:
        volume, labels = source.load()
        image, context = preprocess_mr(volume, params)
        return {"image": image.astype(np.float16), "labels": preprocess_labels(labels, context)}

    arrays = cached_arrays(source, CACHE_FORMAT, params.to_dict(), cache_dir, make)
    return MRCase(source.name, arrays["image"], arrays["labels"])


class PatchBatches(BatchSource):
    """Random 3D patches (z, y, x), a share centred on the stage's structure; left-right flips
    and intensity scaling as augmentation.

    Stage ``organ`` draws the other patches anywhere in the image.  Stage ``tumor`` draws them
    around the organ box, since stage 2 only ever runs there: a patch of empty pelvis teaches it
    nothing the organ channel does not already say, while telling tumour from the rest of the
    organ is the whole task."""

    def __init__(self, cases: Sequence[MRCase], config: MRTrainConfig, rng: np.random.Generator):
        self.cases, self.config, self.rng = list(cases), config, rng
        self.patch = tuple(int(v) for v in config.patch_size_xyz[::-1])
        focus = [(c.labels > 0) if config.stage == "organ" else (c.labels == 2) for c in self.cases]
        self.focus_voxels = [np.argwhere(mask) for mask in focus]
        self.context_boxes = [c.organ_box(config.spacing_xyz) if config.stage == "tumor" else None
                              for c in self.cases]

    def _start(self, case: int) -> list[int]:
        shape = self.cases[case].image.shape
        voxels = self.focus_voxels[case]
        if len(voxels) and self.rng.random() < self.config.foreground_fraction:
            centre = voxels[self.rng.integers(len(voxels))]
            return [int(c) - p // 2 + int(self.rng.integers(-p // 4, p // 4 + 1)) for c, p in zip(centre, self.patch)]
        box = self.context_boxes[case]
        if box is not None:
            centre = [int(self.rng.integers(b, b + max(n, 1))) for b, n in zip(*box)]
            return [c - p // 2 for c, p in zip(centre, self.patch)]
        return [int(self.rng.integers(min(0, n - p), max(n - p, 0) + 1)) for n, p in zip(shape, self.patch)]

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        from ..cropping import extract_box

        case = int(self.rng.integers(len(self.cases)))
        start = self._start(case)
        inputs = extract_box(self.cases[case].inputs(self.config.stage), start, self.patch)
        target = extract_box(self.cases[case].target(self.config.stage), start, self.patch)
        if self.config.stage == "tumor" and self.config.augment:
            inputs = inputs.copy()
            inputs[1] = jitter_organ(inputs[1] > 0.5, self.config.organ_jitter_xyz[::-1], self.rng)
        if self.config.augment:
            if self.rng.random() < 0.5:
                inputs, target = inputs[..., ::-1], target[..., ::-1]
            inputs = inputs.copy()
            inputs[0] = inputs[0] * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-0.1, 0.1)
        return np.ascontiguousarray(inputs), np.ascontiguousarray(target)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.sample() for _ in range(size)]
        return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))


def jitter_organ(organ: np.ndarray, limits_zyx: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A plausible stage-1 error of the (z, y, x) boolean ``organ``: grown or shrunk by a random
    number of voxels per axis (at most ``limits_zyx``), then shifted in-plane by up to half of
    the limit and along z by up to the limit (zero fill).  Returns float32 (z, y, x)."""
    from scipy import ndimage

    mask = organ
    for axis, limit in enumerate(limits_zyx):
        radius = int(rng.integers(-limit, limit + 1)) if limit else 0
        if radius:
            line = np.zeros((3, 3, 3), bool)
            line[tuple(slice(None) if a == axis else 1 for a in range(3))] = True
            if radius > 0:
                mask = ndimage.binary_dilation(mask, structure=line, iterations=radius)
            else:  # the organ goes on beyond a patch edge it touches: do not erode it there
                mask = ndimage.binary_erosion(mask, structure=line, iterations=-radius, border_value=1)
    shifts = [int(rng.integers(-lim, lim + 1)) if a == 0 else int(rng.integers(-(lim // 2), lim // 2 + 1))
              for a, lim in enumerate(limits_zyx)]
    shifted = np.zeros(mask.shape, np.float32)
    source = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shifts, mask.shape))
    target = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(shifts, mask.shape))
    shifted[target] = mask[source]
    return shifted


def dice_ce(logits: torch.Tensor, target: torch.Tensor, per_patch: bool = False) -> torch.Tensor:
    """Soft Dice of the foreground class + cross-entropy of (N, 2, z, y, x) logits.

    ``per_patch``: Dice of each patch, then averaged (nnU-Net's default) — a small tumour counts
    as much as a large one, so drawing it four times too big costs as much as missing half of a
    large one; otherwise one Dice over the pooled batch, which large structures dominate."""
    ce = torch.nn.functional.cross_entropy(logits, target)
    probability = logits.softmax(dim=1)[:, 1]
    truth = (target == 1).float()
    axes = tuple(range(1, probability.ndim)) if per_patch else tuple(range(probability.ndim))
    dice = (2 * (probability * truth).sum(axes) + 1.0) / (probability.sum(axes) + truth.sum(axes) + 1.0)
    return ce + 1.0 - dice.mean()


def deep_supervision_loss(output: torch.Tensor, target: torch.Tensor, per_patch: bool = False) -> torch.Tensor:
    """:func:`dice_ce` on the main output and each head (MONAI upsamples the heads to full size)."""
    main, heads = split_deep_supervision(output.float())
    weights = HEAD_WEIGHTS[:1 + len(heads)]
    losses = [dice_ce(logits, target, per_patch) for logits in [main, *heads]]
    return sum(w * loss for w, loss in zip(weights, losses)) / sum(weights)


def pocketnet_kwargs(config: MRTrainConfig) -> dict:
    """The ``architecture_kwargs`` of ``config.stage``'s PocketNet (what its model card records)."""
    return {"in_channels": 1 if config.stage == "organ" else 2, "out_channels": 2,
            "patch_size": list(config.network_patch_xyz), "spacing": list(config.spacing_xyz),
            "residual": config.residual}


class PocketNetTask(TrainingTask):
    """One PocketNet stage on ``train_cases``, validated by sliding windows on ``val_cases``."""

    family = "mr"

    def __init__(self, stage: str, train_cases: Sequence[MRCase], val_cases: Sequence[MRCase]):
        self.role = stage
        self.train_cases, self.val_cases = list(train_cases), list(val_cases)

    def build_network(self, config: MRTrainConfig) -> torch.nn.Module:
        return build_pocketnet(**pocketnet_kwargs(config))

    def batches(self, config: MRTrainConfig, rng: np.random.Generator) -> BatchSource:
        return PatchBatches(self.train_cases, config, rng)

    def loss(self, config: MRTrainConfig):
        return functools.partial(deep_supervision_loss, per_patch=config.per_patch_dice)

    @torch.no_grad()
    def validate(self, network: torch.nn.Module, config: MRTrainConfig) -> dict:
        """Dice + CE and DSC of the stage's structure on the first ``max_val_cases`` cases, each on a
        box around its structure (one or a few windows: full images take minutes per case on a CPU)."""
        from ..inference_options import InferenceOptions
        from ..inferers import SlidingWindowInferer, class_argmax

        network.eval()
        inferer = SlidingWindowInferer(config.patch_size_xyz[::-1], InferenceOptions(
            precision=config.precision, flip_tta=False, overlap=config.val_overlap))
        structure = MR_STRUCTURES[0] if config.stage == "organ" else MR_STRUCTURES[1]
        losses, pairs = [], []
        for case in self.val_cases[:max(config.max_val_cases, 1)]:
            inputs, target = _validation_box(case, config)
            scores, _ = inferer.scores(network, inputs)
            losses.append(float(dice_ce(torch.log(scores.clamp_min(1e-6))[None], torch.from_numpy(target)[None])))
            if not np.isfinite(losses[-1]):  # name the case: a NaN mean alone cannot be traced
                log.warning("validation case %s: loss %s (%d non-finite scores of %d, box %s)", case.name, losses[-1],
                            int((~torch.isfinite(scores)).sum()), scores.numel(), tuple(target.shape))
            predicted = class_argmax(scores, 0).numpy().astype(bool)
            if config.stage == "tumor":  # as the runner does: the tumour lies inside the organ
                predicted &= inputs[1] > 0.5
            pairs.append((predicted.astype(np.uint8) * structure.value, target.astype(np.uint8) * structure.value))
        dsc = per_structure_dsc(pairs, (structure,))
        return {"val_loss": float(np.mean(losses)), "dsc": dsc, "mean_dsc": mean_of(dsc)}


VALIDATION_MARGIN_ZYX = (4, 32, 32)


def _validation_box(case: MRCase, config: MRTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, target) of ``case`` cut to what the stage sees at inference: stage ``tumor`` the
    organ box of :meth:`MRCase.organ_box` (a box around the tumour alone would hide every false
    tumour elsewhere in the organ), stage ``organ`` the organ plus :data:`VALIDATION_MARGIN_ZYX`."""
    from ..cropping import bounding_box, extract_box

    target = case.target(config.stage)
    box = case.organ_box(config.spacing_xyz) if config.stage == "tumor" else None
    if box is None:
        box = bounding_box(target > 0 if target.any() else case.labels >= 0, VALIDATION_MARGIN_ZYX)
    start, size = box  # type: ignore[misc]
    return extract_box(case.inputs(config.stage), start, size), extract_box(target, start, size)
