"""Training loop of ResAU-Net: resumable checkpoints, early stopping, LR x batch grid
search, per-structure validation DSC, and export to a model directory.

Work directory layout (``work_dir``)::

    checkpoint.pt   latest state: model, optimizer, epoch/step, RNG states, best val loss,
                    epochs without improvement, history, config (saved every
                    ``checkpoint_minutes`` and at the end of each epoch; atomic)
    best.pt         weights of the epoch with the lowest validation loss + its metrics
    log.jsonl       one JSON object per epoch (and per grid-search trial)
    cache/          preprocessed slices (.npz)

Speed on CPU (the bundled model is trained on 2 shared cores): bf16 autocast
(AVX-512 BF16), channels-last tensors, and random patches (default 160x160) biased
towards the structures.  A fully convolutional network trained on patches runs on the
full 256x256 crop at inference.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..atomic import atomic_path, write_text_atomic
from ..structures import CT_STRUCTURES
from ..volume import Volume
from .augment import NO_AUGMENTATION, AugmentParams
from .config import TrainConfig
from .dataset import CaseSource, PatchSampler, SliceCase, prepare_case
from .losses import make_loss
from .network import ARCHITECTURE, ResAUNet
from .preprocess import CTPreprocessing, preprocess_ct, restore_labels

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
LOG_FILE = "log.jsonl"
CACHE_DIR = "cache"
CLASSES = 1 + len(CT_STRUCTURES)


@dataclasses.dataclass
class TrainOutcome:
    network: torch.nn.Module
    best: dict
    """Metrics of the best epoch (val_loss, dsc per structure, mean_dsc, epoch)."""
    history: list
    stopped_early: bool


# ---------------------------------------------------------------- helpers
def configure_torch(threads: int) -> None:
    torch.set_num_threads(max(1, threads))


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def build_ct_network(config: TrainConfig) -> ResAUNet:
    return ResAUNet(in_channels=1, classes=CLASSES, attention=config.attention).to(
        memory_format=torch.channels_last
    )


def append_log(work_dir: Path, record: dict) -> None:
    """Append one JSON line to the run's log (the log is append-only, never rewritten)."""
    with open(work_dir / LOG_FILE, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(record) + "\n")


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """DSC of two boolean arrays; NaN when both are empty (undefined, left out of means)."""
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def _nanmean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def per_structure_dsc(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float | None]:
    """Mean over cases of the 3D DSC of each CT structure; ``pairs`` = (pred, truth) label maps."""
    result: dict[str, float | None] = {}
    for structure in CT_STRUCTURES:
        result[structure.name] = _nanmean([dice(p == structure.value, t == structure.value) for p, t in pairs])
    return result


def _mean_of(values: dict[str, float | None]) -> float | None:
    present = [v for v in values.values() if v is not None]
    return float(np.mean(present)) if present else None


@torch.no_grad()
def predict_slices(network: torch.nn.Module, batch: np.ndarray, batch_size: int = 8, bf16: bool = True
                   ) -> np.ndarray:
    """Arg-max labels of a preprocessed batch ``(n, 1, S, S)`` → uint8 ``(n, S, S)``."""
    network.eval()
    out = np.zeros((batch.shape[0],) + batch.shape[2:], dtype=np.uint8)
    for start in range(0, batch.shape[0], batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(batch[start:start + batch_size], dtype=np.float32))
        with _autocast(bf16):
            logits = network(chunk.to(memory_format=torch.channels_last))
        out[start:start + batch_size] = logits.float().argmax(dim=1).numpy().astype(np.uint8)
    return out


def predict_volume(network: torch.nn.Module, volume: Volume, params: CTPreprocessing, bf16: bool = True
                   ) -> np.ndarray:
    """Plain (no post-processing) prediction on the input grid, (z, y, x) uint8."""
    batch, context = preprocess_ct(volume, params)
    return restore_labels(predict_slices(network, batch, bf16=bf16), context)


# ------------------------------------------------------------- validation
def _validation_indices(case: SliceCase, max_slices: int) -> np.ndarray:
    """Every slice, or a regular stride of at most ``max_slices`` (keeps a 3D geometry)."""
    n = case.images.shape[0]
    stride = 1 if max_slices <= 0 else max(1, math.ceil(n / max_slices))
    return np.arange(0, n, stride)


def hd95_by_structure(pairs: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]]) -> dict[str, float | None]:
    """Mean over cases of HD95 (mm, ResAU-Net paper eq. 7) per structure, from
    :mod:`CervixAutoSegLib.metrics`; cases where either mask is empty are left out.

    ``pairs`` = (pred, truth, spacing_zyx).  Empty dict when the metrics module is absent.
    """
    try:
        from ..metrics import compare_masks
    except ImportError:
        return {}
    result: dict[str, float | None] = {}
    for structure in CT_STRUCTURES:
        values = []
        for pred, truth, spacing in pairs:
            p, t = pred == structure.value, truth == structure.value
            if p.any() and t.any():
                values.append(compare_masks(t, p, spacing_zyx=tuple(spacing)).hd95_pooled_mm)
        result[structure.name] = float(np.mean(values)) if values else None
    return result


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
            with _autocast(config.bf16):
                logits = network(images.to(memory_format=torch.channels_last))
            losses.append(float(loss_fn(logits.float(), labels)))
            weights.append(len(chosen))
            predictions.append(logits.float().argmax(1).numpy().astype(np.uint8))
        pred, truth = np.concatenate(predictions), case.labels[indices]
        pairs.append((pred, truth))
        if number < config.hd95_cases:
            stride = int(indices[1] - indices[0]) if len(indices) > 1 else 1
            spacing = (case.spacing_zyx[0] * stride, case.spacing_zyx[1], case.spacing_zyx[2])
            hd_pairs.append((pred, truth, spacing))
    dsc = per_structure_dsc(pairs)
    metrics = {
        "val_loss": float(np.average(losses, weights=weights)) if losses else float("nan"),
        "dsc": dsc,
        "mean_dsc": _mean_of(dsc),
    }
    hd95 = hd95_by_structure(hd_pairs) if hd_pairs else {}
    if hd95:
        metrics["hd95_mm"] = hd95
        metrics["hd95_cases"] = len(hd_pairs)
    return metrics


# --------------------------------------------------------------- training
def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path, suffix=".pt") as temporary:
        torch.save(state, temporary)


def initial_weights(model_dir: str | Path, config: TrainConfig) -> dict[str, torch.Tensor]:
    """Float32 state dict of a verified model directory whose network matches ``config``."""
    from ..errors import ModelError
    from ..models import load_network, read_card

    card = read_card(model_dir)
    if card.family != "ct" or card.architecture_kwargs.get("attention", "channel") != config.attention:
        raise ModelError(f"model {card.id} in {model_dir} is not a CT ResAU-Net with "
                         f"{config.attention!r} attention: cannot warm-start from it")
    return load_network(card).state_dict()


def _load_checkpoint(path: Path) -> dict:
    # Our own file (config, history, numpy RNG state): not weights-only.
    return torch.load(path, map_location="cpu", weights_only=False)


def train_network(
    config: TrainConfig,
    train_cases: Sequence[SliceCase],
    val_cases: Sequence[SliceCase],
    work_dir: Path | None = None,
    resume: bool = False,
    max_epochs: int | None = None,
    tag: str = "train",
    stop_after_steps: int | None = None,
) -> TrainOutcome:
    """Train from scratch (or resume from ``work_dir/checkpoint.pt``) until early stop.

    Args:
        config: hyper-parameters.  On resume, the checkpoint's config wins.
        work_dir: where checkpoints and the log go; None keeps everything in memory
            (grid-search trials).
        max_epochs: override of ``config.max_epochs`` for this call.
        stop_after_steps: save a checkpoint and return after this many optimiser steps in
            this call (an interrupted run, for tests and time-boxed sessions).
    """
    configure_torch(config.threads)
    checkpoint_path = work_dir / CHECKPOINT_FILE if work_dir else None
    state: dict[str, Any] | None = None
    if resume and checkpoint_path is not None and checkpoint_path.is_file():
        state = _load_checkpoint(checkpoint_path)
        config = TrainConfig.from_dict(state["config"])
        log.info("resuming at epoch %d step %d", state["epoch"], state["step_in_epoch"])
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    network = build_ct_network(config)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate, betas=(0.9, 0.999))
    epoch, step_in_epoch, epoch_losses = 0, 0, []
    best: dict = {"val_loss": float("inf")}
    best_state: dict | None = None
    history: list = []
    bad_epochs = 0
    if state is not None:
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
        epoch_losses = list(state["epoch_losses"])
        best, history, bad_epochs = state["best"], state["history"], state["bad_epochs"]
        if work_dir is not None and (work_dir / BEST_FILE).is_file():
            best_state = _load_checkpoint(work_dir / BEST_FILE)["model"]
    elif config.init_from:
        network.load_state_dict(initial_weights(config.init_from, config))
        log.info("warm start from the weights in %s", config.init_from)
    sampler = PatchSampler(train_cases, config.patch_size, rng,
                           AugmentParams() if config.augment else NO_AUGMENTATION,
                           config.foreground_fraction, config.structure_weights,
                           config.end_fraction, config.end_margin_mm)
    loss_fn = make_loss(config.loss)
    limit = max_epochs if max_epochs is not None else config.max_epochs
    stopped_early = bad_epochs >= config.patience
    last_save = time.monotonic()
    steps_this_call = 0

    def snapshot() -> dict:
        return {
            "config": config.to_dict(), "model": network.state_dict(), "optimizer": optimizer.state_dict(),
            "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "epoch_losses": epoch_losses,
            "best": best, "history": history, "bad_epochs": bad_epochs,
        }

    while epoch < limit and not stopped_early:
        lr = config.learning_rate * config.lr_decay ** epoch
        for group in optimizer.param_groups:
            group["lr"] = lr
        network.train()
        started = time.monotonic()
        while step_in_epoch < config.steps_per_epoch:
            images, labels = sampler.batch(config.batch_size)
            images_t = torch.from_numpy(images).to(memory_format=torch.channels_last)
            with _autocast(config.bf16):
                logits = network(images_t)
            loss = loss_fn(logits.float(), torch.from_numpy(labels))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
            step_in_epoch += 1
            steps_this_call += 1
            if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                if checkpoint_path:
                    _save_checkpoint(checkpoint_path, snapshot())
                return TrainOutcome(network.eval(), best, history, stopped_early=False)
            if checkpoint_path and time.monotonic() - last_save > config.checkpoint_minutes * 60:
                _save_checkpoint(checkpoint_path, snapshot())
                last_save = time.monotonic()
        metrics = validate(network, val_cases, config)
        record = {
            "event": tag, "epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(epoch_losses)),
            **metrics, "seconds": round(time.monotonic() - started, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        history.append(record)
        if metrics["val_loss"] < best["val_loss"]:
            best = {**metrics, "epoch": epoch + 1}
            best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            bad_epochs = 0
            if work_dir is not None:
                _save_checkpoint(work_dir / BEST_FILE, {"model": best_state, "metrics": best,
                                                         "config": config.to_dict()})
        else:
            bad_epochs += 1
        stopped_early = bad_epochs >= config.patience
        record["best_epoch"] = best["epoch"]
        if work_dir is not None:
            append_log(work_dir, record)
        log.info("epoch %d: train %.4f val %.4f mean DSC %s", epoch + 1, record["train_loss"],
                 metrics["val_loss"], metrics["mean_dsc"])
        epoch, step_in_epoch, epoch_losses = epoch + 1, 0, []
        if checkpoint_path:
            _save_checkpoint(checkpoint_path, snapshot())
            last_save = time.monotonic()
    if best_state is not None:
        network.load_state_dict(best_state)
    return TrainOutcome(network.eval(), best, history, stopped_early)


def grid_search(
    config: TrainConfig,
    learning_rates: Sequence[float],
    batch_sizes: Sequence[int],
    train_cases: Sequence[SliceCase],
    val_cases: Sequence[SliceCase],
    epochs: int,
    work_dir: Path | None = None,
) -> tuple[float, int, list[dict]]:
    """Short runs on every (learning rate, batch size) pair; best = lowest validation loss.

    Returns:
        ``(best_lr, best_batch_size, trials)``.
    """
    trials = []
    for lr in learning_rates:
        for batch in batch_sizes:
            trial_config = dataclasses.replace(config, learning_rate=float(lr), batch_size=int(batch), patience=10 ** 6)
            outcome = train_network(trial_config, train_cases, val_cases, None, max_epochs=epochs, tag="grid")
            trial = {"event": "grid_trial", "learning_rate": lr, "batch_size": batch,
                     "val_loss": outcome.best["val_loss"], "mean_dsc": outcome.best.get("mean_dsc")}
            trials.append(trial)
            if work_dir is not None:
                append_log(work_dir, trial)
    best = min(trials, key=lambda t: t["val_loss"])
    return float(best["learning_rate"]), int(best["batch_size"]), trials


# ------------------------------------------------------------ evaluation
def evaluate_cases(network: torch.nn.Module, sources: Sequence[CaseSource], params: CTPreprocessing,
                   bf16: bool = True) -> dict:
    """Full-pipeline DSC (preprocess → network → restore, no post-processing) on the input grids."""
    pairs, hd_pairs, per_case = [], [], {}
    for source in sources:
        volume, truth = source.load()
        pred = predict_volume(network, volume, params, bf16)
        pairs.append((pred, truth))
        if volume.is_orthogonal:
            hd_pairs.append((pred, truth, tuple(volume.spacing[::-1])))
        per_case[source.name] = per_structure_dsc([(pred, truth)])
    dsc = per_structure_dsc(pairs)
    result = {"cases": len(pairs), "dsc": dsc, "mean_dsc": _mean_of(dsc), "per_case": per_case}
    hd95 = hd95_by_structure(hd_pairs)
    if hd95:
        result["hd95_mm"] = hd95
    return result


def load_slice_cases(sources: Sequence[CaseSource], params: CTPreprocessing, cache_dir: Path | None
                     ) -> list[SliceCase]:
    cases = []
    for index, source in enumerate(sources):
        cases.append(prepare_case(source, params, cache_dir))
        log.info("prepared %s (%d/%d)", source.name, index + 1, len(sources))
    return cases


def environment_summary() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}


def write_json(path: Path, document: dict) -> None:
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")

