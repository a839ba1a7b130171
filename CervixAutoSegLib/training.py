"""The training loop every model family shares: resumable checkpoints, warm start, learning-rate
schedule, validation, early stopping and a per-epoch log.

A family supplies a :class:`TrainingTask` — its network, batches, loss and validation — and
its hyper-parameters as a :class:`LoopConfig` subclass; :func:`train_network` does the rest::

    outcome = train_network(task, config, work_dir=Path("runs/ct"), resume=True)

Work directory layout (``work_dir``)::

    checkpoint.pt   latest state: model, optimizer, epoch/step, RNG states, best validation loss,
                    epochs without improvement, history, config (saved every
                    ``checkpoint_minutes`` and at the end of each epoch; atomic)
    best.pt         weights of the epoch with the lowest validation loss + its metrics
    log.jsonl       one JSON object per epoch (and per grid-search trial)

A run interrupted anywhere (a kill, the end of a session) resumes from ``checkpoint.pt`` and
continues exactly as the uninterrupted run would have: the optimiser, both RNG streams and
the position inside the epoch are part of the checkpoint.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path, write_text_atomic
from .errors import ModelError, TrainingError
from .precision import autocast, guard_thin_slab_convolutions
from .training_config import LoopConfig

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
LOG_FILE = "log.jsonl"


class BatchSource(abc.ABC):
    """Random training batches of one family."""

    @abc.abstractmethod
    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(network input, target) tensors of ``size`` samples, in the network's memory format."""


class TrainingTask(abc.ABC):
    """What the shared loop needs from a family (the network role it trains, e.g. ``"network"``)."""

    family: str
    role: str = "network"

    @abc.abstractmethod
    def build_network(self, config: LoopConfig) -> torch.nn.Module:
        """A freshly initialised network (after ``torch.manual_seed(config.seed)``)."""

    @abc.abstractmethod
    def batches(self, config: LoopConfig, rng: np.random.Generator) -> BatchSource:
        """The training batch source, drawing from ``rng`` (whose state the checkpoint keeps)."""

    @abc.abstractmethod
    def loss(self, config: LoopConfig) -> Callable[[Any, torch.Tensor], torch.Tensor]:
        """``loss(network output, target)``; the output is whatever the network returns in train mode."""

    @abc.abstractmethod
    def validate(self, network: torch.nn.Module, config: LoopConfig) -> dict:
        """``{"val_loss": float, "dsc": {structure: float | None}, "mean_dsc": float | None, ...}``."""

    def warm_start(self, model_dir: str | Path, config: LoopConfig) -> dict[str, torch.Tensor]:
        """Float32 state dict of a verified model directory of this family (ModelError otherwise)."""
        from .models import load_network, read_card

        card = read_card(model_dir)
        if card.family != self.family:
            raise ModelError(f"model {card.id} in {model_dir} is a {card.family} model: cannot warm-start "
                             f"a {self.family} network from it")
        return load_network(card, self.role if self.role in card.roles else None).state_dict()


@dataclasses.dataclass
class TrainOutcome:
    network: torch.nn.Module
    best: dict
    """Metrics of the best epoch (val_loss, dsc per structure, mean_dsc, epoch)."""
    history: list
    stopped_early: bool


# ---------------------------------------------------------------- files
def append_log(work_dir: Path, record: dict) -> None:
    """Append one JSON line to the run's log (the log is append-only, never rewritten)."""
    with open(work_dir / LOG_FILE, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(record) + "\n")


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path, suffix=".pt") as temporary:
        torch.save(state, temporary)


def load_checkpoint(path: Path) -> dict:
    # Our own file (config, history, numpy RNG state): not weights-only.
    return torch.load(path, map_location="cpu", weights_only=False)


def write_json(path: Path, document: dict) -> None:
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def environment_summary() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}


# ---------------------------------------------------------------- the loop
class _Run:
    """The mutable state of one training run (what a checkpoint holds)."""

    def __init__(self, task: TrainingTask, config: LoopConfig, work_dir: Path | None, resume: bool):
        self.work_dir = work_dir
        state = None
        if resume and work_dir is not None and (work_dir / CHECKPOINT_FILE).is_file():
            state = load_checkpoint(work_dir / CHECKPOINT_FILE)
            # threads is how the run executes, not what it learns: the caller's machine decides
            config = dataclasses.replace(type(config).from_dict(state["config"]), threads=config.threads)
            log.info("resuming at epoch %d step %d", state["epoch"], state["step_in_epoch"])
        self.config = config
        torch.set_num_threads(max(1, config.threads))
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.network = task.build_network(config)
        guard_thin_slab_convolutions(self.network)  # a oneDNN bf16 defect; see there
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.learning_rate, betas=(0.9, 0.999),
                                          weight_decay=config.weight_decay)
        self.epoch, self.step_in_epoch, self.epoch_losses = 0, 0, []
        self.best: dict = {"val_loss": float("inf")}
        self.best_state: dict | None = None
        self.history: list = []
        self.bad_epochs = 0
        if state is not None:
            self._restore(state)
        elif config.init_from:
            self.network.load_state_dict(task.warm_start(config.init_from, config))
            log.info("warm start from the weights in %s", config.init_from)

    def _restore(self, state: dict) -> None:
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.epoch_losses = list(state["epoch_losses"])
        self.best, self.history, self.bad_epochs = state["best"], state["history"], state["bad_epochs"]
        if self.work_dir is not None and (self.work_dir / BEST_FILE).is_file():
            self.best_state = load_checkpoint(self.work_dir / BEST_FILE)["model"]

    def snapshot(self) -> dict:
        return {
            "config": self.config.to_dict(), "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(), "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "epoch_losses": self.epoch_losses, "best": self.best, "history": self.history,
            "bad_epochs": self.bad_epochs,
        }

    def checkpoint(self) -> None:
        if self.work_dir is not None:
            save_checkpoint(self.work_dir / CHECKPOINT_FILE, self.snapshot())

    @property
    def stopped_early(self) -> bool:
        return self.bad_epochs >= self.config.patience

    def end_epoch(self, metrics: dict, started: float, tag: str) -> None:
        """Log the epoch, keep the best weights, count epochs without improvement."""
        record = {"event": tag, "epoch": self.epoch + 1, "lr": self.config.learning_rate_at(self.epoch),
                  "train_loss": float(np.mean(self.epoch_losses)), **metrics,
                  "seconds": round(time.monotonic() - started, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.history.append(record)
        if not math.isfinite(metrics["val_loss"]):  # NaN compares false: say so instead of silently never improving
            log.warning("epoch %d: validation loss is %s; this epoch cannot become the best", self.epoch + 1,
                        metrics["val_loss"])
        elif metrics["val_loss"] < self.best["val_loss"]:
            self.best = {**metrics, "epoch": self.epoch + 1}
            self.best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
            self.bad_epochs = 0
            if self.work_dir is not None:
                save_checkpoint(self.work_dir / BEST_FILE, {"model": self.best_state, "metrics": self.best,
                                                            "config": self.config.to_dict()})
        else:
            self.bad_epochs += 1
        record["best_epoch"] = self.best.get("epoch")
        if self.work_dir is not None:
            append_log(self.work_dir, record)
        log.info("epoch %d: train %.4f val %.4f mean DSC %s", self.epoch + 1, record["train_loss"],
                 metrics["val_loss"], metrics.get("mean_dsc"))
        self.epoch, self.step_in_epoch, self.epoch_losses = self.epoch + 1, 0, []


def train_network(task: TrainingTask, config: LoopConfig, work_dir: Path | None = None, *, resume: bool = False,
                  max_epochs: int | None = None, tag: str = "train", stop_after_steps: int | None = None
                  ) -> TrainOutcome:
    """Train ``task``'s network from scratch (or resume from ``work_dir/checkpoint.pt``) until early stop.

    Args:
        config: hyper-parameters.  On resume, the checkpoint's config wins (but for ``threads``).
        work_dir: where checkpoints and the log go; None keeps everything in memory
            (grid-search trials).
        max_epochs: override of ``config.max_epochs`` for this call.
        stop_after_steps: save a checkpoint and return after this many optimiser steps in
            this call (an interrupted run, for tests and time-boxed sessions).
    """
    run = _Run(task, config, work_dir, resume)
    config = run.config
    batches, loss_fn = task.batches(config, run.rng), task.loss(config)
    limit = max_epochs if max_epochs is not None else config.max_epochs
    last_save, steps_this_call = time.monotonic(), 0
    while run.epoch < limit and not run.stopped_early:
        for group in run.optimizer.param_groups:
            group["lr"] = config.learning_rate_at(run.epoch)
        run.network.train()
        started = time.monotonic()
        while run.step_in_epoch < config.steps_per_epoch:
            inputs, targets = batches.batch(config.batch_size)
            with autocast(torch.device("cpu"), config.precision):
                outputs = run.network(inputs)
            loss = loss_fn(outputs, targets)
            if not torch.isfinite(loss):  # one NaN step would poison every weight through Adam
                raise TrainingError(f"the training loss became {loss.item()} at epoch {run.epoch + 1} step "
                                    f"{run.step_in_epoch + 1}; resume from the last checkpoint with a lower --lr "
                                    "or --no-bf16")
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.epoch_losses.append(loss.item())
            run.step_in_epoch += 1
            steps_this_call += 1
            if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                run.checkpoint()
                return TrainOutcome(run.network.eval(), run.best, run.history, stopped_early=False)
            if time.monotonic() - last_save > config.checkpoint_minutes * 60:
                run.checkpoint()
                last_save = time.monotonic()
        run.end_epoch(task.validate(run.network, config), started, tag)
        run.checkpoint()
        last_save = time.monotonic()
    if run.best_state is not None:
        run.network.load_state_dict(run.best_state)
    return TrainOutcome(run.network.eval(), run.best, run.history, run.stopped_early)


def grid_search(task: TrainingTask, config: LoopConfig, learning_rates, batch_sizes, epochs: int,
                work_dir: Path | None = None) -> tuple[float, int, list[dict]]:
    """Short runs on every (learning rate, batch size) pair; best = lowest validation loss.

    Returns:
        ``(best_lr, best_batch_size, trials)``.
    """
    trials = []
    for lr in learning_rates:
        for batch in batch_sizes:
            trial_config = dataclasses.replace(config, learning_rate=float(lr), batch_size=int(batch), patience=10 ** 6)
            outcome = train_network(task, trial_config, None, max_epochs=epochs, tag="grid")
            trial = {"event": "grid_trial", "learning_rate": lr, "batch_size": batch,
                     "val_loss": outcome.best["val_loss"], "mean_dsc": outcome.best.get("mean_dsc")}
            trials.append(trial)
            if work_dir is not None:
                append_log(work_dir, trial)
    best = min(trials, key=lambda t: t["val_loss"])
    return float(best["learning_rate"]), int(best["batch_size"]), trials


# ---------------------------------------------------------------- validation metrics
def _nanmean(values) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def per_structure_dsc(pairs, structures) -> dict[str, float | None]:
    """Mean over cases of the 3D DSC of each structure; ``pairs`` = (pred, truth) label maps (z, y, x).

    A case where both masks are empty is left out of that structure's mean (None when all are).
    """
    from .metrics import dice

    return {s.name: _nanmean([dice(t == s.value, p == s.value) for p, t in pairs]) for s in structures}


def hd95_by_structure(pairs, structures) -> dict[str, float | None]:
    """Mean over cases of HD95 (mm, pooled over both directions) per structure; cases where
    either mask is empty are left out.  ``pairs`` = (pred, truth, spacing_zyx)."""
    from .metrics import compare_masks

    result: dict[str, float | None] = {}
    for structure in structures:
        values = [compare_masks(t == structure.value, p == structure.value, spacing_zyx=tuple(spacing)).hd95_pooled_mm
                  for p, t, spacing in pairs if (p == structure.value).any() and (t == structure.value).any()]
        result[structure.name] = float(np.mean(values)) if values else None
    return result


def mean_of(values: dict[str, float | None]) -> float | None:
    present = [v for v in values.values() if v is not None]
    return float(np.mean(present)) if present else None


def evaluate_model(card: Any, sources, description: str, device: str = "cpu") -> dict:
    """DSC and HD95 of ``card`` on ``sources`` through exactly what ``segment`` runs (the family's
    runner with its default inference options, then post-processing), on each input grid."""
    from .pipeline import segment

    pairs, hd_pairs, per_case = [], [], {}
    for source in sources:
        volume, truth = source.load()
        pred = segment(volume, None, model=card, device=device).labels.array
        pairs.append((pred, truth))
        if volume.is_orthogonal:
            hd_pairs.append((pred, truth, tuple(volume.spacing[::-1])))
        per_case[source.name] = per_structure_dsc([(pred, truth)], card.structures)
    dsc = per_structure_dsc(pairs, card.structures)
    result = {"description": description, "cases": len(pairs), "dsc": dsc, "mean_dsc": mean_of(dsc),
              "per_case": per_case}
    hd95 = hd95_by_structure(hd_pairs, card.structures)
    if hd95:
        result["hd95_mm"] = hd95
    return result
