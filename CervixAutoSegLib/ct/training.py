"""The CT family's training task: ResAU-Net on cached 2D slices, trained by the shared loop.

:class:`CTTrainingTask` supplies what :mod:`CervixAutoSegLib.training` needs — the network,
foreground-biased augmented patches (:class:`~.dataset.PatchSampler`), the loss and a fast
per-epoch validation on the cropped slices.  Speed on CPU (the bundled model is trained on 2
shared cores): bf16 autocast (AVX-512 BF16), channels-last tensors, and random patches
(default 160x160); a fully convolutional network trained on patches runs on the full 256x256
crop at inference.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..cases import CaseSource
from ..errors import ModelError
from ..inferers import class_argmax
from ..precision import autocast
from ..training import BatchSource, TrainingTask, TrainOutcome, hd95_by_structure, mean_of, per_structure_dsc
from ..training import grid_search as shared_grid_search
from ..training import train_network as shared_train_network
from .augment import NO_AUGMENTATION, AugmentParams
from .config import TrainConfig
from .dataset import PatchSampler, SliceCase, prepare_case
from .family import CT_STRUCTURES
from .losses import make_loss
from .network import ResAUNet
from .preprocess import CTPreprocessing

log = logging.getLogger(__name__)

CACHE_DIR = "cache"
CLASSES = 1 + len(CT_STRUCTURES)


def build_ct_network(config: TrainConfig) -> ResAUNet:
    return ResAUNet(in_channels=1, classes=CLASSES, attention=config.attention).to(memory_format=torch.channels_last)


class _PatchBatches(BatchSource):
    def __init__(self, sampler: PatchSampler):
        self.sampler = sampler

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.sampler.batch(size)
        return torch.from_numpy(images).to(memory_format=torch.channels_last), torch.from_numpy(labels)


class CTTrainingTask(TrainingTask):
    """ResAU-Net on the slices of ``train_cases``, validated on ``val_cases``."""

    family = "ct"

    def __init__(self, train_cases: Sequence[SliceCase], val_cases: Sequence[SliceCase]):
        self.train_cases, self.val_cases = list(train_cases), list(val_cases)

    def build_network(self, config: TrainConfig) -> torch.nn.Module:
        return build_ct_network(config)

    def batches(self, config: TrainConfig, rng: np.random.Generator) -> BatchSource:
        return _PatchBatches(PatchSampler(
            self.train_cases, config.patch_size, rng, AugmentParams() if config.augment else NO_AUGMENTATION,
            config.foreground_fraction, config.structure_weights, config.end_fraction, config.end_margin_mm))

    def loss(self, config: TrainConfig):
        loss_fn = make_loss(config.loss)
        return lambda logits, labels: loss_fn(logits.float(), labels)

    def validate(self, network: torch.nn.Module, config: TrainConfig) -> dict:
        return validate(network, self.val_cases, config)

    def warm_start(self, model_dir: str | Path, config: TrainConfig) -> dict[str, torch.Tensor]:
        from ..models import read_card

        card = read_card(model_dir)
        if card.family == self.family and card.network().architecture_kwargs.get("attention", "channel") != config.attention:
            raise ModelError(f"model {card.id} in {model_dir} is not a CT ResAU-Net with "
                             f"{config.attention!r} attention: cannot warm-start from it")
        return super().warm_start(model_dir, config)


def train_network(config: TrainConfig, train_cases: Sequence[SliceCase], val_cases: Sequence[SliceCase],
                  work_dir: Path | None = None, resume: bool = False, max_epochs: int | None = None,
                  tag: str = "train", stop_after_steps: int | None = None) -> TrainOutcome:
    """Train ResAU-Net with the shared loop (see :func:`CervixAutoSegLib.training.train_network`)."""
    return shared_train_network(CTTrainingTask(train_cases, val_cases), config, work_dir, resume=resume,
                                max_epochs=max_epochs, tag=tag, stop_after_steps=stop_after_steps)


def grid_search(config: TrainConfig, learning_rates: Sequence[float], batch_sizes: Sequence[int],
                train_cases: Sequence[SliceCase], val_cases: Sequence[SliceCase], epochs: int,
                work_dir: Path | None = None) -> tuple[float, int, list[dict]]:
    """LR x batch-size grid (see :func:`CervixAutoSegLib.training.grid_search`)."""
    return shared_grid_search(CTTrainingTask(train_cases, val_cases), config, learning_rates, batch_sizes, epochs,
                              work_dir)


# ------------------------------------------------------------- validation
def _validation_indices(case: SliceCase, max_slices: int) -> np.ndarray:
    """Every slice, or a regular stride of at most ``max_slices`` (keeps a 3D geometry)."""
    n = case.images.shape[0]
    stride = 1 if max_slices <= 0 else max(1, math.ceil(n / max_slices))
    return np.arange(0, n, stride)


@torch.no_grad()
def validate(network: torch.nn.Module, cases: Sequence[SliceCase], config: TrainConfig) -> dict:
    """Validation loss (mean over slices), per-structure DSC and (on the first
    ``config.hd95_cases`` cases) HD95 in mm, on the full 256x256 crops."""
    loss_fn = make_loss(config.loss)
    network.eval()
    losses, weights, pairs, hd_pairs = [], [], [], []
    for number, case in enumerate(cases):
        indices = _validation_indices(case, config.max_val_slices)
        predictions = []
        for start in range(0, len(indices), config.val_batch_size):
            chosen = indices[start:start + config.val_batch_size]
            images = torch.from_numpy(case.images[chosen].astype(np.float32))[:, None]
            labels = torch.from_numpy(case.labels[chosen].astype(np.int64))
            with autocast(torch.device("cpu"), config.precision):
                logits = network(images.to(memory_format=torch.channels_last))
            losses.append(float(loss_fn(logits.float(), labels)))
            weights.append(len(chosen))
            predictions.append(class_argmax(logits.float()).numpy())
        pred, truth = np.concatenate(predictions), case.labels[indices]
        pairs.append((pred, truth))
        if number < config.hd95_cases:
            stride = int(indices[1] - indices[0]) if len(indices) > 1 else 1
            spacing = (case.spacing_zyx[0] * stride, case.spacing_zyx[1], case.spacing_zyx[2])
            hd_pairs.append((pred, truth, spacing))
    dsc = per_structure_dsc(pairs, CT_STRUCTURES)
    metrics = {"val_loss": float(np.average(losses, weights=weights)) if losses else float("nan"),
               "dsc": dsc, "mean_dsc": mean_of(dsc)}
    if hd_pairs:
        metrics["hd95_mm"] = hd95_by_structure(hd_pairs, CT_STRUCTURES)
        metrics["hd95_cases"] = len(hd_pairs)
    return metrics


def load_slice_cases(sources: Sequence[CaseSource], params: CTPreprocessing, cache_dir: Path | None
                     ) -> list[SliceCase]:
    cases = []
    for index, source in enumerate(sources):
        cases.append(prepare_case(source, params, cache_dir))
        log.info("prepared %s (%d/%d)", source.name, index + 1, len(sources))
    return cases
