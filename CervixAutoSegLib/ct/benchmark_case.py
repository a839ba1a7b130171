"""The CT family's benchmark input: a synthetic 512x512xN pelvis-like planning CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..volume import Volume

MATRIX = 512
PIXEL_SPACING_MM = 0.9765625
SLICE_THICKNESS_MM = 2.5


class SyntheticPelvisCT:
    """:class:`~CervixAutoSegLib.families.BenchmarkCase` of the CT family (sizes are slice counts)."""

    size_help = "slice counts of the synthetic 512x512 CTs"
    default_sizes = (100, 200)

    def make_image(self, size: int, seed: int = 0) -> Volume:
        """A 512x512x``size`` HFS CT in HU: body, fat, pelvic bones, bladder, rectal gas, noise."""
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:MATRIX, 0:MATRIX].astype(np.float32)
        cy, cx = MATRIX / 2 + 20, MATRIX / 2
        hu = np.empty((size, MATRIX, MATRIX), dtype=np.int16)
        for k in range(size):
            hu[k] = _slice_hu(x, y, cx, cy, 1.0 + 0.08 * np.sin(np.pi * k / max(size - 1, 1)), rng)
        spacing = (PIXEL_SPACING_MM, PIXEL_SPACING_MM, SLICE_THICKNESS_MM)
        origin = (-(MATRIX - 1) / 2 * PIXEL_SPACING_MM, -(MATRIX - 1) / 2 * PIXEL_SPACING_MM, 0.0)
        return Volume(hu, spacing, origin, np.eye(3), modality="CT")

    def random_model(self, out_dir: Path, model_id: str):
        """A randomly initialised ResAU-Net model directory (same cost as a trained one)."""
        import torch

        from ..models import write_model_dir
        from .network import ResAUNet
        from .preprocess import CTPreprocessing

        torch.manual_seed(0)
        return write_model_dir(out_dir, ResAUNet(), model_id=model_id, family="ct", architecture="ResAUNet",
                               preprocessing=CTPreprocessing().to_dict())


def _slice_hu(x: np.ndarray, y: np.ndarray, cx: float, cy: float, scale: float, rng: np.random.Generator
              ) -> np.ndarray:
    """One axial slice (HU int16) of ellipses: body, muscle, bones, bladder, rectal gas."""
    body = ((x - cx) / (190 * scale)) ** 2 + ((y - cy) / (130 * scale)) ** 2 <= 1
    muscle = ((x - cx) / (165 * scale)) ** 2 + ((y - cy) / (108 * scale)) ** 2 <= 1
    bones = ((((x - cx - 95) / 28) ** 2 + ((y - cy + 10) / 45) ** 2 <= 1)
             | (((x - cx + 95) / 28) ** 2 + ((y - cy + 10) / 45) ** 2 <= 1)
             | (((x - cx) / 30) ** 2 + ((y - cy - 75) / 22) ** 2 <= 1))
    bladder = ((x - cx) / 45) ** 2 + ((y - cy + 40) / 35) ** 2 <= 1
    rectum = ((x - cx) / 16) ** 2 + ((y - cy - 35) / 14) ** 2 <= 1
    slice_hu = np.full(x.shape, -1000.0, np.float32)
    slice_hu[body] = -100.0
    slice_hu[muscle] = 45.0
    slice_hu[bladder] = 8.0
    slice_hu[rectum] = -600.0
    slice_hu[bones] = 650.0
    slice_hu += rng.normal(0.0, 12.0, slice_hu.shape).astype(np.float32)
    return np.clip(slice_hu, -1024, 3000).astype(np.int16)
