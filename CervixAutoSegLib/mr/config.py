"""Training hyper-parameters of the MR family (PocketNet, per stage), importable without torch."""

from __future__ import annotations

import dataclasses

from ..training_config import LoopConfig
from .preprocess import TARGET_SPACING_MM

STAGES = ("organ", "tumor")


@dataclasses.dataclass
class MRTrainConfig(LoopConfig):
    """PocketNet hyper-parameters on top of the shared loop's (stored in checkpoints and the card).

    Defaults follow the PocketNet paper's training (Adam 1e-4 with a cosine schedule, L2,
    Dice + cross-entropy with deep supervision), with a larger start LR for short CPU runs.
    """

    learning_rate: float = 3e-4
    batch_size: int = 2
    max_epochs: int = 100
    steps_per_epoch: int = 50
    patience: int = 20
    lr_schedule: str = "cosine"
    weight_decay: float = 1e-5
    stage: str = "organ"
    """``organ`` (stage 1: T2w → uterus + cervix + vagina) or ``tumor`` (stage 2: T2w + organ mask → tumour)."""
    patch_size_xyz: tuple[int, int, int] = (192, 192, 32)
    """Training patches, (x, y, z) voxels: multiples of the network's size divisor.  Smaller than
    the network's planning patch to fit CPU training; the network is fully convolutional."""
    network_patch_xyz: tuple[int, int, int] = (256, 256, 32)
    """The patch the network is planned for (kernels, strides; the paper's) and inference windows."""
    spacing_xyz: tuple[float, float, float] = TARGET_SPACING_MM
    """Working grid (x, y, z) mm every case is resampled to (the paper's; MIST takes the data's median):
    it plans the network and goes into the card's preprocessing, so inference resamples the same way."""
    residual: bool = True
    foreground_fraction: float = 0.33
    """Share of patches centred on a voxel of the stage's structure (nnU-Net oversampling)."""
    augment: bool = True
    organ_jitter_xyz: tuple[int, int, int] = (6, 6, 1)
    """Stage ``tumor`` only: the true organ channel is randomly grown or shrunk by up to this many
    voxels per axis (x, y, z) and shifted by up to half as many (z: this many), so the tumour
    network tolerates stage 1's boundary errors (≈ 2.8 mm in-plane, one slice)."""
    val_overlap: float = 0.25
    """Sliding-window overlap of the per-epoch validation (inference uses the card's, 0.5)."""
    max_val_cases: int = 2
    """Validation cases per epoch, each on a box around its structure (3D windows are slow on a CPU)."""
    per_patch_dice: bool = True
    """Dice per training patch, averaged (nnU-Net's default), rather than over the pooled batch: the
    0.1/0.2 tumour networks, trained batch-pooled, drew small tumours several times too large.
    A stored config without the key (written before it existed) was trained batch-pooled."""

    @classmethod
    def from_dict(cls, values: dict) -> "MRTrainConfig":
        config = super().from_dict({"per_patch_dice": False, **values})
        config.patch_size_xyz = tuple(int(v) for v in config.patch_size_xyz)  # JSON gives a list
        config.network_patch_xyz = tuple(int(v) for v in config.network_patch_xyz)
        config.organ_jitter_xyz = tuple(int(v) for v in config.organ_jitter_xyz)
        config.spacing_xyz = tuple(float(v) for v in config.spacing_xyz)
        return config
