"""Hyper-parameters of the shared training loop (:mod:`.training`), importable without torch."""

from __future__ import annotations

import dataclasses
import math

from .errors import InputError

LR_SCHEDULES = ("exponential", "cosine")


@dataclasses.dataclass
class LoopConfig:
    """Hyper-parameters the shared loop reads; a family's config subclasses it (stored in
    checkpoints and model cards)."""

    learning_rate: float = 1e-3
    batch_size: int = 8
    max_epochs: int = 200
    steps_per_epoch: int = 200
    patience: int = 3
    """Early stopping: epochs without validation-loss improvement."""
    lr_schedule: str = "exponential"
    """``exponential``: LR x ``lr_decay`` per epoch; ``cosine``: cosine decay to 0 over ``max_epochs``."""
    lr_decay: float = 1.0
    """Per-epoch factor of the exponential schedule (1.0 = constant)."""
    weight_decay: float = 0.0
    """L2 penalty of Adam."""
    checkpoint_minutes: float = 5.0
    seed: int = 0
    init_from: str | None = None
    """Model directory whose weights start a fresh run (warm start); None = random init."""
    bf16: bool = True
    """bf16 autocast on CPU (fast with AVX-512 BF16 / AMX)."""
    threads: int = 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "LoopConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @property
    def precision(self) -> str:
        """The autocast precision training and its validation run in ("bf16" or "fp32")."""
        return "bf16" if self.bf16 else "fp32"

    def learning_rate_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``."""
        if self.lr_schedule == "cosine":
            return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(epoch / max(self.max_epochs, 1), 1.0)))
        if self.lr_schedule != "exponential":
            raise InputError(f"learning-rate schedule must be one of {', '.join(LR_SCHEDULES)}, "
                             f"got {self.lr_schedule!r}")
        return self.learning_rate * self.lr_decay ** epoch
