"""Training-time augmentation of 2D CT slices and their label maps (numpy + scipy).

The paper lists flipping, rotation, random colour augmentation and "random affine
elastic distortion".  Here one backward map ``output pixel → input position`` composes

* left-right flip (the pelvis is near-symmetric; CTV-N has both sides, so labels need no
  swapping),
* rotation and isotropic scaling about the patch centre,
* a random **three-point affine**: three reference points jittered independently, the
  exact affine taking the original points to the jittered ones (what
  ``cv2.getAffineTransform`` computes, solved here with numpy),
* a Simard-style **elastic** displacement: uniform noise in [-1, 1] per pixel, smoothed by
  a Gaussian of ``elastic_sigma`` pixels, times the control factor ``elastic_alpha``,

and is sampled once: linear interpolation for the image, nearest neighbour for labels
(so labels only ever take values already present).  Sampling straight into a patch of
``out_size`` around a chosen centre also performs the random crop, at no extra cost.
Then intensity ("colour") augmentation — brightness, contrast, gamma — acts on the
image only, which stays in [0, 1].

Arrays are ``(H, W)`` = (y, x) = (rows, columns); positions are (y, x) pixel indices.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

FILL_IMAGE = 0.0
"""Air in the windowed image."""
FILL_LABEL = 0


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Probabilities and ranges of each augmentation (defaults: moderate, anatomy-preserving)."""

    flip_probability: float = 0.5
    rotation_degrees: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    three_point_jitter: float = 0.03
    """Jitter of each reference point, as a fraction of the patch size."""
    elastic_probability: float = 0.5
    elastic_alpha: float = 300.0
    """Control factor: ~ alpha / (3.5 sigma) / sqrt(3) pixels RMS displacement."""
    elastic_sigma: float = 12.0
    brightness: float = 0.08
    contrast_range: tuple[float, float] = (0.85, 1.15)
    gamma_range: tuple[float, float] = (0.8, 1.25)
    intensity_probability: float = 0.8


NO_AUGMENTATION = AugmentParams(
    flip_probability=0.0, rotation_degrees=0.0, scale_range=(1.0, 1.0), three_point_jitter=0.0,
    elastic_probability=0.0, intensity_probability=0.0,
)


def affine_from_three_points(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 affine ``M`` with ``target_n = M @ [source_n, 1]`` for three point pairs.

    Args:
        source, target: ``(3, 2)`` points (any consistent coordinate order).

    Raises:
        ValueError: when the source points are collinear.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    homogeneous = np.hstack([source, np.ones((3, 1))])
    if abs(np.linalg.det(homogeneous)) < 1e-9:
        raise ValueError("the three source points are collinear")
    return np.linalg.solve(homogeneous, target).T


def _random_linear_map(rng: np.random.Generator, params: AugmentParams, size: float) -> np.ndarray:
    """2x3 affine on (y, x) offsets from the patch centre: flip · rotation · scale · 3-point."""
    angle = math.radians(rng.uniform(-params.rotation_degrees, params.rotation_degrees))
    scale = rng.uniform(*params.scale_range)
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    linear = np.array([[cos, -sin], [sin, cos]])
    if rng.random() < params.flip_probability:
        linear = linear @ np.diag([1.0, -1.0])  # mirror columns (left-right)
    # Three points a quarter patch from the centre, as in albumentations' ElasticTransform.
    quarter = size / 4.0
    source = np.array([[-quarter, -quarter], [-quarter, quarter], [quarter, -quarter]])
    jitter = rng.uniform(-1.0, 1.0, size=(3, 2)) * params.three_point_jitter * size
    three_point = affine_from_three_points(source, source + jitter)
    combined = np.eye(3)
    combined[:2, :2] = linear
    three = np.vstack([three_point, [0.0, 0.0, 1.0]])
    return (combined @ three)[:2]


def elastic_displacement(shape: tuple[int, int], rng: np.random.Generator, alpha: float,
                         sigma: float) -> np.ndarray:
    """Simard et al. (2003) displacement field ``(2, H, W)`` in pixels (dy, dx)."""
    from scipy import ndimage

    noise = rng.uniform(-1.0, 1.0, size=(2,) + tuple(shape))
    return np.stack([ndimage.gaussian_filter(n, sigma, mode="constant") * alpha for n in noise])


def adjust_intensity(image: np.ndarray, rng: np.random.Generator, params: AugmentParams) -> np.ndarray:
    """Brightness shift, contrast about the mean, gamma; result clipped to [0, 1]."""
    out = image + rng.uniform(-params.brightness, params.brightness)
    mean = float(out.mean())
    out = (out - mean) * rng.uniform(*params.contrast_range) + mean
    out = np.clip(out, 0.0, 1.0)
    return np.power(out, rng.uniform(*params.gamma_range)).astype(np.float32)


def augment_pair(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    params: AugmentParams = AugmentParams(),
    out_size: int | None = None,
    centre: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly deform a slice and its labels identically; also crops.

    Args:
        image: ``(H, W)`` float windowed CT in [0, 1].
        labels: ``(H, W)`` integer labels, same grid.
        rng: the random generator (deterministic given its seed).
        out_size: side of the square output patch (default: the input's H and W).
        centre: (y, x) input position the patch is centred on (default: image centre).

    Returns:
        ``(out, out)`` float32 image and labels of the input's dtype.
    """
    from scipy import ndimage

    height, width = image.shape
    out_shape = (out_size, out_size) if out_size else (height, width)
    if centre is None:
        centre = ((height - 1) / 2.0, (width - 1) / 2.0)
    affine = _random_linear_map(rng, params, float(max(out_shape)))
    yy, xx = np.meshgrid(np.arange(out_shape[0], dtype=np.float64) - (out_shape[0] - 1) / 2.0,
                         np.arange(out_shape[1], dtype=np.float64) - (out_shape[1] - 1) / 2.0, indexing="ij")
    coords = np.einsum("ij,jhw->ihw", affine[:, :2], np.stack([yy, xx]))
    coords += affine[:, 2, None, None] + np.asarray(centre, dtype=np.float64)[:, None, None]
    if rng.random() < params.elastic_probability:
        coords += elastic_displacement(out_shape, rng, params.elastic_alpha, params.elastic_sigma)
    out_image = ndimage.map_coordinates(image.astype(np.float32), coords, order=1, mode="constant",
                                        cval=FILL_IMAGE, prefilter=False)
    out_labels = ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=FILL_LABEL,
                                         prefilter=False)
    if rng.random() < params.intensity_probability:
        out_image = adjust_intensity(out_image, rng, params)
    return out_image.astype(np.float32), out_labels.astype(labels.dtype)
