"""Training hyper-parameters and option names of the CT family, importable without torch.

The command line builds its parser from these (``import CervixAutoSegLib.cli`` must
work with numpy alone), and checkpoints and model cards store :class:`TrainConfig`.
"""

from __future__ import annotations

import dataclasses

from ..training_config import LoopConfig

LOSS_NAMES = ("lovasz", "ce", "sce", "dice", "lovasz+ce")
DEFAULT_LOSS = "lovasz"
ATTENTION_KINDS = ("channel", "spatial", "none")


@dataclasses.dataclass
class TrainConfig(LoopConfig):
    """ResAU-Net hyper-parameters on top of the shared loop's (stored in checkpoints and the model card)."""

    loss: str = DEFAULT_LOSS
    patch_size: int = 160
    """Side of the random training patches in pixels (multiple of 32)."""
    attention: str = "channel"
    foreground_fraction: float = 0.7
    structure_weights: dict[int, float] | None = None
    """Relative odds of centring a foreground patch on each label value (None = equal)."""
    end_fraction: float = 0.0
    """Share of patches taken from the slices just beyond a structure's cranial or caudal end."""
    end_margin_mm: float = 30.0
    """How far beyond a structure's end those slices reach (mm along z)."""
    augment: bool = True
    val_batch_size: int = 8
    max_val_slices: int = 0
    """Validate on at most this many slices per case, at a regular stride (0 = all)."""
    hd95_cases: int = 4
    """Validation cases whose HD95 is logged each epoch (surface distances are slow)."""

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        config = super().from_dict(values)
        if config.structure_weights:
            # JSON turns the integer keys into strings.
            config.structure_weights = {int(k): float(v) for k, v in config.structure_weights.items()}
        return config
