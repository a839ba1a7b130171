"""Training hyper-parameters and option names, importable without torch.

The command line builds its parser from these (``import CervixAutoSegLib.cli`` must
work with numpy alone), and checkpoints and model cards store :class:`TrainConfig`.
"""

from __future__ import annotations

import dataclasses

LOSS_NAMES = ("lovasz", "ce", "sce", "dice", "lovasz+ce")
DEFAULT_LOSS = "lovasz"
ATTENTION_KINDS = ("channel", "spatial", "none")


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of one training run (stored in checkpoints and the model card)."""

    loss: str = DEFAULT_LOSS
    learning_rate: float = 1e-3
    batch_size: int = 8
    patch_size: int = 160
    """Side of the random training patches in pixels (multiple of 32)."""
    max_epochs: int = 200
    steps_per_epoch: int = 200
    patience: int = 3
    """Early stopping: epochs without validation-loss improvement (paper: 3)."""
    lr_decay: float = 1.0
    """Learning rate multiplied by this after every epoch (1.0 = constant, as the paper)."""
    checkpoint_minutes: float = 5.0
    seed: int = 0
    attention: str = "channel"
    foreground_fraction: float = 0.7
    structure_weights: dict[int, float] | None = None
    """Relative odds of centring a foreground patch on each label value (None = equal)."""
    end_fraction: float = 0.0
    """Share of patches taken from the slices just beyond a structure's cranial or caudal end."""
    end_margin_mm: float = 30.0
    """How far beyond a structure's end those slices reach (mm along z)."""
    init_from: str | None = None
    """Model directory whose weights start a fresh run (warm start); None = random init."""
    augment: bool = True
    bf16: bool = True
    """bf16 autocast on CPU (fast with AVX-512 BF16 / AMX)."""
    threads: int = 2
    val_batch_size: int = 8
    max_val_slices: int = 0
    """Validate on at most this many slices per case, at a regular stride (0 = all)."""
    hd95_cases: int = 4
    """Validation cases whose HD95 is logged each epoch (surface distances are slow)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in names}
        if kept.get("structure_weights"):
            # JSON turns the integer keys into strings.
            kept["structure_weights"] = {int(k): float(v) for k, v in kept["structure_weights"].items()}
        return cls(**kept)
