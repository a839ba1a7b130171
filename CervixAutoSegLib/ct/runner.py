"""The CT family's network stage: HU volume → ResAU-Net on every body slice → labels on the input grid.

Besides the labels it hands the per-slice QA the network's evidence on the input grid
(:class:`~CervixAutoSegLib.qa.maps.EvidenceMaps`: top-2 softmax uncertainty, plain-vs-mirrored
disagreement and where the mirrored pass ran), mapped back exactly as the labels are: crops pasted
into the working grid, nearest-neighbour in-plane resampling when the labels were resampled,
reorientation undone.  Selective flip TTA follows the card's ``qa.selective_tta``.
"""

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
    """:class:`~CervixAutoSegLib.families.PreparingRunner` of the CT family (torch imported when called)."""

    def prepare(self, volume: Volume, card: Any) -> tuple[np.ndarray, Any]:
        """(batch ``(n, 1, crop, crop)`` float32, :class:`~.preprocess.PreprocessContext`): :func:`~.preprocess.preprocess_ct`."""
        from .preprocess import preprocess_ct

        return preprocess_ct(volume, card.preprocessing)

    def __call__(self, volume: Volume, card: Any, device: Any, options: InferenceOptions,
                 progress: FractionProgress, cancel: CancelCheck | None, prepared: Any = None) -> NetworkOutput:
        from ..inferers import SliceInferer, prepare_network
        from ..models import load_network
        from ..qa.config import QAConfig
        from .preprocess import restore_labels

        timings: dict[str, float] = {}
        started = time.perf_counter()
        batch, context = self.prepare(volume, card) if prepared is None else prepared
        timings["preprocess"] = time.perf_counter() - started
        check_cancelled(cancel)

        started = time.perf_counter()
        network = prepare_network(load_network(card), device, options, spatial_dims=2)
        timings["model_load"] = time.perf_counter() - started
        started = time.perf_counter()
        inferer = SliceInferer(options, QAConfig.from_card(card).selective_flip)
        crop_labels, evidence, info = inferer.infer(
            network, batch, device=device, cancel=cancel,
            progress=lambda done, count: progress(done / max(count, 1), f"slices {done}/{count}"),
        )
        del batch, network
        timings["network"] = time.perf_counter() - started

        started = time.perf_counter()
        labels = restore_labels(crop_labels, context)
        border = field_of_view_border(crop_labels.shape, context)
        maps = restore_evidence(evidence, context)
        timings["restore"] = time.perf_counter() - started
        log.info("network: %d slices (%d mirrored) in %.1f s", len(context.slice_indices), info.mirrored_items,
                 timings["network"])
        return NetworkOutput(labels=labels, field_of_view_border=border, inference=info.to_json(),
                             preprocessing=context.to_dict(), timings=timings, evidence=[maps])


def restore_map(crops: np.ndarray, context: Any) -> Any:
    """A per-pixel map of the network's crops ``(n, crop, crop)`` → :class:`~CervixAutoSegLib.qa.maps.BoxedMap`
    ``(z, y, x)`` on the input grid, same dtype, 0 off the crops and on slices the network did not see
    (nearest neighbour: no new values)."""
    from ..qa.maps import BoxedMap, nearest_in_plane
    from .preprocess import restore_crops_boxed

    start, values = restore_crops_boxed(crops, context, nearest_in_plane)
    return BoxedMap(values, start, tuple(context.input_shape))


def field_of_view_border(crop_shape: tuple[int, ...], context: Any) -> Any:
    """bool :class:`~CervixAutoSegLib.qa.maps.BoxedMap` (z, y, x) on the input grid: True on the outermost
    input pixels of the network's crops (a ring of :func:`ring_width` crop pixels, mapped back like labels)."""
    from ..qa.maps import BoxedMap
    from .preprocess import resample_label_slices, restore_crops_boxed

    start, ring = restore_crops_boxed(crop_ring(crop_shape, ring_width(context)), context, resample_label_slices)
    return BoxedMap(ring.view(bool), start, tuple(context.input_shape))  # 0/1 viewed as bool: no copy


def restore_evidence(evidence: Any, context: Any) -> Any:
    """:class:`~CervixAutoSegLib.inferers.Evidence` on the crops → :class:`~CervixAutoSegLib.qa.maps.EvidenceMaps`."""
    from ..qa.maps import EvidenceMaps

    mirrored = evidence.mirrored.any()
    return EvidenceMaps(
        uncertainty=restore_map(evidence.uncertainty, context),
        disagreement=restore_map(evidence.disagreement, context) if evidence.disagreement is not None else None,
        mirrored=restore_map(np.ascontiguousarray(evidence.mirrored), context) if mirrored else None)


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
