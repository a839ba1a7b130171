"""T2-weighted MR appearance: signal per tissue, axial/sagittal/oblique grids, bias field, Rician noise.

T2w contrast the tests and the MR model rely on: urine and fat bright,
muscle and cervical stroma dark, tumour intermediate, endometrium brighter than the
myometrium, gas, cortical bone and flowing blood almost black.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .anatomy import Anatomy, Tissue
from .grids import AcquisitionGrid, make_grid

MR_MATRICES = (256, 320, 384, 448, 512)
MR_FOV_MM = (200.0, 320.0)
"""Allowed in-plane field of view."""
MR_SLICE_THICKNESSES_MM = (3.0, 3.5, 4.0, 5.0)
MR_MAX_STORED = 4000.0
"""Largest stored value after scaling (fits uint16 comfortably)."""
T2_TSE = {"EchoTime": 100, "RepetitionTime": 4500, "ScanningSequence": "SE", "SequenceVariant": "SK",
          "ScanOptions": "", "MRAcquisitionType": "2D"}
"""DICOM MR Image attributes of a T2 TSE acquisition (overridden per plane)."""


def draw_mr_appearance(rng: np.random.Generator) -> dict:
    """Signal of each tissue (arbitrary units), bias field and noise for one scan."""
    u = lambda low, high: float(rng.uniform(low, high))  # noqa: E731 - tiny local helper
    signal = {
        Tissue.AIR: 0.0, Tissue.FAT: u(700, 900), Tissue.MUSCLE: u(120, 220), Tissue.CORTEX: u(20, 50),
        Tissue.MARROW: u(500, 700), Tissue.DISC: u(350, 600), Tissue.CSF: u(1000, 1300), Tissue.ARTERY: u(30, 90),
        Tissue.VEIN: u(60, 200), Tissue.LYMPH_NODE: u(380, 480), Tissue.BLADDER_WALL: u(150, 250),
        Tissue.URINE: u(950, 1250), Tissue.RECTAL_WALL: u(180, 280), Tissue.FAECES: u(200, 500),
        Tissue.GAS: u(10, 40), Tissue.BOWEL_WALL: u(200, 300), Tissue.BOWEL_FLUID: u(700, 1100),
        Tissue.BOWEL_CONTRAST: u(700, 1100), Tissue.MYOMETRIUM: u(480, 620), Tissue.ENDOMETRIUM: u(850, 1050),
        Tissue.CERVICAL_STROMA: u(120, 220), Tissue.VAGINA: u(250, 380), Tissue.TUMOUR: u(380, 520),
        Tissue.TABLE_SHELL: 0.0, Tissue.TABLE_FOAM: 0.0,
    }
    return {
        "signal": {tissue.name: value for tissue, value in signal.items()},
        "noise_sigma": u(8, 30),
        "bias_coefficients": [u(-0.25, 0.25) for _ in range(6)],
        "gain": u(0.8, 2.5),
        "psf_sigma_mm": u(0.3, 0.6),
        "texture": {Tissue.FAECES.name: u(60, 150), Tissue.MYOMETRIUM.name: u(10, 30),
                    Tissue.TUMOUR.name: u(15, 40)},
    }


def intensities(appearance: Mapping) -> dict[Tissue, float]:
    """Tissue → T2w signal (arbitrary units)."""
    return {Tissue[name]: float(value) for name, value in appearance["signal"].items()}


def textures(appearance: Mapping) -> dict[Tissue, float]:
    """Tissue → texture amplitude (signal units)."""
    return {Tissue[name]: float(value) for name, value in appearance.get("texture", {}).items()}


def draw_mr_grid(rng: np.random.Generator, anatomy: Anatomy, **overrides) -> tuple[AcquisitionGrid, dict]:
    """A small-FOV T2w grid around the cervix: axial (mostly) or sagittal, sometimes oblique.

    ``overrides``: ``plane``, ``pixel_spacing_mm``, ``slice_thickness_mm``, ``matrix``,
    ``tilt_deg``, ``patient_position``.
    """
    marks = anatomy.landmarks
    matrix = int(rng.choice(MR_MATRICES))
    low = max(0.4, MR_FOV_MM[0] / matrix)
    high = min(0.8, MR_FOV_MM[1] / matrix)
    oblique = rng.random() < 0.3
    draws = {
        "plane": str(rng.choice(["axial", "sagittal"], p=[0.65, 0.35])),
        "matrix": matrix,
        "pixel_spacing_mm": float(rng.uniform(low, max(low, high))),
        "slice_thickness_mm": float(rng.choice(MR_SLICE_THICKNESSES_MM)),
        "tilt_deg": [float(rng.uniform(-20, 20)) if oblique else 0.0, 0.0,
                     float(rng.uniform(-10, 10)) if oblique else 0.0],
        "centre_jitter_mm": [float(v) for v in rng.uniform(-10, 10, size=3)],
        "patient_position": anatomy.patient_position,
    }
    draws.update({k: v for k, v in overrides.items() if v is not None})
    z_low = marks["external_os_z"] - anatomy.params["vagina_length_mm"] - 10
    z_high = max(marks["internal_os_z"] + 80, 90.0)
    jitter = draws["centre_jitter_mm"]
    centre = anatomy.to_lps([jitter[0], 30.0 + jitter[1], (z_low + z_high) / 2 + jitter[2]])
    fov = draws["matrix"] * draws["pixel_spacing_mm"]
    extent_k = (z_high - z_low) if draws["plane"] == "axial" else float(rng.uniform(110, 150))
    grid = make_grid(centre, (fov, fov, extent_k), (draws["pixel_spacing_mm"],) * 2, draws["slice_thickness_mm"],
                     matrix=(draws["matrix"], draws["matrix"]), plane=draws["plane"],
                     patient_position=draws["patient_position"], tilt_degrees=draws["tilt_deg"])
    return grid, draws


def sequence_attributes(grid: AcquisitionGrid) -> dict:
    """MR Image module attributes for the DICOM writer (protocol named after the plane)."""
    plane = {"axial": "tra", "sagittal": "sag", "coronal": "cor"}[grid.plane]
    return {**T2_TSE, "ProtocolName": f"t2_tse_{plane}", "SequenceName": "*tse2d1_15"}


def _bias_field(grid: AcquisitionGrid, coefficients, shape) -> np.ndarray:
    """Smooth multiplicative field (z, y, x) from a quadratic in normalised LPS coordinates."""
    nz, ny, nx = shape
    k = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None] if nz > 1 else np.zeros((1, 1, 1), np.float32)
    j = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    i = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    c = [np.float32(v) for v in coefficients]
    field = 1 + c[0] * i + c[1] * j + c[2] * k * 0.5 + c[3] * i * j + c[4] * (i * i - 0.33) + c[5] * (j * j - 0.33)
    return np.clip(field, 0.4, 1.8).astype(np.float32)


def finish_mr(image: np.ndarray, grid: AcquisitionGrid, appearance: Mapping, rng: np.random.Generator) -> np.ndarray:
    """Blur, bias field, Rician noise, scanner gain; returns uint16 (z, y, x)."""
    from scipy import ndimage

    psf = float(appearance["psf_sigma_mm"])
    image = ndimage.gaussian_filter(image, sigma=(0.35, psf / grid.spacing[1], psf / grid.spacing[0]), mode="nearest")
    image *= _bias_field(grid, appearance["bias_coefficients"], image.shape)
    sigma = np.float32(appearance["noise_sigma"])
    # Magnitude of a complex signal with Gaussian noise in both channels: Rician.
    real = image + sigma * rng.standard_normal(size=image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(size=image.shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary) * np.float32(appearance["gain"])
    return np.clip(np.round(magnitude), 0, MR_MAX_STORED * 4).astype(np.uint16)
