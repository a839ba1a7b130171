"""Planning-CT appearance of the phantom: HU per tissue, acquisition grid, blur and noise."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .anatomy import Anatomy, Tissue
from .grids import AcquisitionGrid, make_grid

HU_MIN, HU_MAX = -1024, 3071
"""Range a 12-bit CT stores (and the DICOM writer stores exactly as HU + 1024)."""
MATRICES = (512, 512, 512, 512, 512, 384, 448, 576)
"""Image matrices drawn (512 x 512 mostly)."""
SLICE_THICKNESSES_MM = (2.0, 2.5, 3.0, 3.0, 5.0)
FOV_MARGIN_MM = 30.0
GAUSSIAN_TRUNCATE = 3.0
"""Blur kernels end at 3 sigma (the tail below 1 % changes nothing visible)."""
"""Minimum air around the body inside the reconstructed field of view."""


def draw_ct_appearance(rng: np.random.Generator) -> dict:
    """HU of each tissue, noise and contrast for one scan (JSON-able)."""
    contrast = bool(rng.random() < 0.5)
    u = lambda low, high: float(rng.uniform(low, high))  # noqa: E731 - tiny local helper
    hu = {
        Tissue.AIR: -1000.0, Tissue.FAT: u(-115, -85), Tissue.MUSCLE: u(40, 60), Tissue.CORTEX: u(700, 1200),
        Tissue.MARROW: u(200, 300), Tissue.DISC: u(70, 100), Tissue.CSF: u(5, 15),
        Tissue.ARTERY: u(150, 250) if contrast else u(35, 45), Tissue.VEIN: u(120, 200) if contrast else u(35, 45),
        Tissue.LYMPH_NODE: u(30, 45), Tissue.BLADDER_WALL: u(35, 50), Tissue.URINE: u(0, 15),
        Tissue.RECTAL_WALL: u(35, 50), Tissue.FAECES: u(-60, 60), Tissue.GAS: u(-950, -850),
        Tissue.BOWEL_WALL: u(35, 55), Tissue.BOWEL_FLUID: u(5, 30), Tissue.BOWEL_CONTRAST: u(180, 320),
        Tissue.MYOMETRIUM: u(40, 60) + (u(20, 50) if contrast else 0.0), Tissue.ENDOMETRIUM: u(25, 40),
        Tissue.CERVICAL_STROMA: u(40, 55), Tissue.VAGINA: u(35, 50), Tissue.TUMOUR: u(35, 55),
        Tissue.TABLE_SHELL: u(150, 400), Tissue.TABLE_FOAM: u(-950, -850),
    }
    return {
        "contrast": contrast,
        "hu": {tissue.name: value for tissue, value in hu.items()},
        "noise_sigma_hu": u(8, 25),
        "psf_sigma_mm": u(0.4, 0.8),
        # Mottled faeces (mixed stool and small gas pockets) mark rectum and colon.
        "texture": {Tissue.FAECES.name: u(40, 90), Tissue.BOWEL_FLUID.name: u(3, 10), Tissue.FAT.name: 0.0},
    }


def intensities(appearance: Mapping) -> dict[Tissue, float]:
    """Tissue → HU from a drawn appearance."""
    return {Tissue[name]: float(value) for name, value in appearance["hu"].items()}


def textures(appearance: Mapping) -> dict[Tissue, float]:
    """Tissue → texture amplitude (HU)."""
    return {Tissue[name]: float(value) for name, value in appearance.get("texture", {}).items()}


def draw_ct_grid(rng: np.random.Generator, anatomy: Anatomy, **overrides) -> tuple[AcquisitionGrid, dict]:
    """Axial CT grid from below the ischial tuberosities to above the aortic bifurcation.

    ``overrides``: ``pixel_spacing_mm``, ``slice_thickness_mm``, ``matrix``,
    ``patient_position``.  Returns the grid and the JSON-able draws.
    """
    marks = anatomy.landmarks
    draws = {
        "matrix": int(rng.choice(MATRICES)),
        "pixel_spacing_mm": float(rng.uniform(0.8, 1.2)),
        "slice_thickness_mm": float(rng.choice(SLICE_THICKNESSES_MM)),
        "z_below_mm": float(rng.uniform(15, 40)),
        "z_above_mm": float(rng.uniform(15, 40)),
        "centre_jitter_mm": [float(rng.uniform(-15, 15)), float(rng.uniform(-15, 15))],
        "patient_position": anatomy.patient_position,
    }
    draws.update({k: v for k, v in overrides.items() if v is not None})
    # The field of view must hold the whole body (plus table): widen the pixels if not.
    body_width = 2 * max(abs(v) for v in (marks["anterior_skin_y"], marks["posterior_skin_y"])) + 2 * FOV_MARGIN_MM
    body_width = max(body_width, 2 * (anatomy.params["femoral_head_x_mm"] + 70 + 1.3 * anatomy.params["fat_mm"])
                     + 2 * FOV_MARGIN_MM)
    if "pixel_spacing_mm" not in overrides:
        draws["pixel_spacing_mm"] = max(draws["pixel_spacing_mm"], body_width / draws["matrix"])
    z_low = marks["ischial_tuberosity_z"] - draws["z_below_mm"]
    z_high = marks["bifurcation_z"] + draws["z_above_mm"]
    scale_z = float(anatomy.pose[2, 2]) if abs(anatomy.pose[2, 2]) > 0.5 else 1.0
    centre = anatomy.to_lps([draws["centre_jitter_mm"][0], 15.0 + draws["centre_jitter_mm"][1],
                             (z_low + z_high) / 2])
    spacing = draws["pixel_spacing_mm"]
    grid = make_grid(centre, (0, 0, (z_high - z_low) * scale_z), (spacing, spacing), draws["slice_thickness_mm"],
                     matrix=(draws["matrix"], draws["matrix"]), plane="axial",
                     patient_position=draws["patient_position"])
    return grid, draws


def finish_ct(image: np.ndarray, grid: AcquisitionGrid, appearance: Mapping, rng: np.random.Generator) -> np.ndarray:
    """Blur by the scanner PSF, add noise, round to int16 HU; ``image`` (z, y, x) float32 HU."""
    from scipy import ndimage

    psf = float(appearance["psf_sigma_mm"])
    # Sigma in voxels along (k, j, i); through-plane the slice profile already averages.
    sigma = (0.35, psf / grid.spacing[1], psf / grid.spacing[0])
    blurred = ndimage.gaussian_filter(image, sigma=sigma, mode="nearest", truncate=GAUSSIAN_TRUNCATE)
    noise = rng.standard_normal(size=image.shape, dtype=np.float32)
    # CT noise is spatially correlated (filtered back-projection): smooth, renormalise.
    noise = ndimage.gaussian_filter(noise, sigma=(0, 0.7, 0.7), truncate=GAUSSIAN_TRUNCATE)
    noise *= np.float32(appearance["noise_sigma_hu"]) / max(float(noise.std()), 1e-6)
    blurred += noise
    return np.clip(np.round(blurred), HU_MIN, HU_MAX).astype(np.int16)
