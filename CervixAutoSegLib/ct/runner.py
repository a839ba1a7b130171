"""The CT family's network stage: HU volume → ResAU-Net on every body slice → labels on the input grid."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..families import FractionProgress, NetworkOutput
from ..inference_options import InferenceOptions
from ..progress import CancelCheck, check_cancelled
from ..volume import Volume

log = logging.getLogger(__name__)


class ResAUNetRunner:
    """:class:`~CervixAutoSegLib.families.NetworkRunner` of the CT family (torch imported when called)."""

    def __call__(self, volume: Volume, card: Any, device: Any, options: InferenceOptions,
                 progress: FractionProgress, cancel: CancelCheck | None) -> NetworkOutput:
        from ..inferers import SliceInferer, prepare_network
        from ..models import load_network
        from .preprocess import preprocess_ct, restore_labels

        timings: dict[str, float] = {}
        started = time.perf_counter()
        batch, context = preprocess_ct(volume, card.preprocessing)
        timings["preprocess"] = time.perf_counter() - started
        check_cancelled(cancel)

        started = time.perf_counter()
        network = prepare_network(load_network(card), device, options, spatial_dims=2)
        timings["model_load"] = time.perf_counter() - started
        started = time.perf_counter()
        crop_labels, info = SliceInferer(options)(
            network, batch, device=device, cancel=cancel,
            progress=lambda done, count: progress(done / max(count, 1), f"slices {done}/{count}"),
        )
        del batch, network
        timings["network"] = time.perf_counter() - started

        started = time.perf_counter()
        labels = restore_labels(crop_labels, context)
        border = restore_labels(crop_ring(crop_labels.shape, ring_width(context)), context).astype(bool)
        timings["restore"] = time.perf_counter() - started
        log.info("network: %d slices in %.1f s", len(context.slice_indices), timings["network"])
        return NetworkOutput(labels=labels, field_of_view_border=border, inference=info.to_json(),
                             preprocessing=context.to_dict(), timings=timings)


def ring_width(context: Any) -> int:
    """Crop pixels per input pixel (rounded up): a ring this wide survives the way back to a coarser input grid."""
    input_xy = np.asarray(context.oriented_spacing[:2], dtype=float)
    working_xy = np.asarray(context.working_spacing[:2], dtype=float)
    return max(int(np.ceil(float(np.max(input_xy / working_xy)) - 1e-6)), 1)


def crop_ring(shape: tuple[int, ...], width: int = 1) -> np.ndarray:
    """uint8 (n, H, W): 1 on the ``width`` outermost rows/columns of every crop (mapped back like labels)."""
    ring = np.ones(shape, dtype=np.uint8)
    ring[:, width:-width, width:-width] = 0
    return ring
