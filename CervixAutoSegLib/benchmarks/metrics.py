"""``cervixautoseg benchmark metrics``: every metric on a full-size CT label pair.

The pair is synthetic but realistic in size: a 512 x 512 x 150 grid at
0.9 x 0.9 x 3 mm (x, y, z) holding bladder, rectum, nodal CTV (two iliac tubes) and
primary CTV, and a "prediction" whose surfaces are displaced by smooth noise of a few mm.
Target: all structures, all metrics, under 5 s on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HELP = "time DSC/HD95/MSD/surface-DSC/APL on a 512x512x150 four-structure pair"

GRID_SHAPE_ZYX = (150, 512, 512)
SPACING_ZYX_MM = (3.0, 0.9, 0.9)
SURFACE_NOISE_MM = 3.0
"""Amplitude of the smooth displacement between truth and prediction surfaces."""
NOISE_SMOOTHING_MM = 15.0

# Structure centres (z, y, x mm from the grid origin) and ellipsoid semi-axes (mm).
_ELLIPSOIDS = {
    "Bladder": ((225.0, 190.0, 230.0), (30.0, 35.0, 45.0)),
    "CTVp": ((270.0, 235.0, 230.0), (50.0, 30.0, 40.0)),
}
_RECTUM = ((150.0, 300.0), (270.0, 230.0), 15.0)  # z range, (y, x) centre, radius
_ILIAC_TUBES = (((170.0, 330.0), (250.0, 160.0), (200.0, 210.0), 12.0),
                ((170.0, 330.0), (250.0, 300.0), (200.0, 250.0), 12.0))
"""Nodal CTV: (z range, (y, x) at the bottom, (y, x) at the top, radius) per side."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is reported)")
    parser.add_argument("--tolerance", type=float, default=2.0, help="surface tolerance in mm")
    parser.add_argument("--json", type=Path, help="also write the timings to this JSON file")


def _coordinates_mm(shape: tuple[int, ...], spacing: tuple[float, ...]) -> list[np.ndarray]:
    return [np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing)]


def synthetic_pair(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Truth and prediction masks (z, y, x) per structure on the benchmark grid."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    z, y, x = _coordinates_mm(GRID_SHAPE_ZYX, SPACING_ZYX_MM)
    zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]
    signed: dict[str, np.ndarray] = {}
    for name, (centre, axes) in _ELLIPSOIDS.items():
        radius = np.sqrt(((zz - centre[0]) / axes[0]) ** 2 + ((yy - centre[1]) / axes[1]) ** 2
                         + ((xx - centre[2]) / axes[2]) ** 2)
        signed[name] = (radius - 1.0) * min(axes)  # ~mm outside the surface
    (z0, z1), (cy, cx), r = _RECTUM
    signed["Rectum"] = np.maximum(np.hypot(yy - cy, xx - cx) - r, np.maximum(z0 - zz, zz - z1))
    tubes = []
    for (z0, z1), bottom, top, r in _ILIAC_TUBES:
        t = np.clip((zz - z0) / (z1 - z0), 0, 1)
        centre_y, centre_x = bottom[0] + t * (top[0] - bottom[0]), bottom[1] + t * (top[1] - bottom[1])
        tubes.append(np.maximum(np.hypot(yy - centre_y, xx - centre_x) - r, np.maximum(z0 - zz, zz - z1)))
    signed["CTVn"] = np.minimum(*tubes)
    sigma = [NOISE_SMOOTHING_MM / s / 4 for s in SPACING_ZYX_MM]
    coarse_shape = tuple(n // 4 for n in GRID_SHAPE_ZYX)
    truth, pred = {}, {}
    for name, distance in signed.items():
        noise = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), sigma)
        noise *= SURFACE_NOISE_MM / max(float(noise.std()), 1e-6)
        noise = ndimage.zoom(noise, [g / c for g, c in zip(GRID_SHAPE_ZYX, coarse_shape)], order=1)
        truth[name] = distance <= 0
        pred[name] = distance <= noise[: GRID_SHAPE_ZYX[0], : GRID_SHAPE_ZYX[1], : GRID_SHAPE_ZYX[2]]
    return truth, pred


def run(args: argparse.Namespace) -> int:
    from ..metrics import compare_masks

    start = time.perf_counter()
    truth, pred = synthetic_pair()
    print(f"synthetic pair {GRID_SHAPE_ZYX} (z,y,x) at {SPACING_ZYX_MM} mm (z,y,x): "
          f"{time.perf_counter() - start:.1f} s to build (not timed below)")
    best_total, best_timings, results = float("inf"), {}, {}
    for _ in range(max(1, args.repeat)):
        timings: dict[str, float] = {}
        start = time.perf_counter()
        for name in truth:
            results[name] = compare_masks(truth[name], pred[name], spacing_zyx=SPACING_ZYX_MM,
                                          tolerance_mm=args.tolerance, timings=timings)
        total = time.perf_counter() - start
        if total < best_total:
            best_total, best_timings = total, timings
    print(f"{'structure':<10}{'DSC':>7}{'HD95pool':>10}{'HD95dmax':>10}{'MSD':>7}{'sDSC':>7}{'APL mm':>9}")
    for name, result in results.items():
        print(f"{name:<10}{result.dsc:7.3f}{result.hd95_pooled_mm:10.2f}{result.hd95_directed_max_mm:10.2f}"
              f"{result.msd_mm:7.2f}{result.surface_dsc:7.3f}{result.apl_mm:9.0f}")
    print("per-metric time, all four structures (best of %d runs):" % max(1, args.repeat))
    for name, seconds in best_timings.items():
        print(f"  {name:<28}{seconds:7.3f} s")
    print(f"  {'total':<28}{best_total:7.3f} s  (target < 5 s)")
    if args.json:
        from ..atomic import write_text_atomic

        document = {"grid_shape_zyx": GRID_SHAPE_ZYX, "spacing_zyx_mm": SPACING_ZYX_MM,
                    "total_s": best_total, "timings_s": best_timings,
                    "results": {n: r.scalars() for n, r in results.items()}}
        write_text_atomic(args.json, json.dumps(document, indent=2) + "\n")
    return 0
