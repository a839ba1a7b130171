"""The MR family's network stage: T2w MR → organ (stage 1), then tumour inside it (stage 2).

As the PocketNet paper runs it: stage 1 segments the gynecologic organ (uterus, cervix,
vagina, tumour included) on the whole preprocessed image and keeps its largest connected
component; stage 2 sees only a box around that organ (plus :data:`ORGAN_BOX_MARGIN_MM`) with
the organ mask as a second input channel, and the tumour is forced inside the organ; tumour
islands below the card's ``min_tumour_ml`` are dropped (a tumour may be multifocal).  Both
stages use the shared 3D sliding-window inferer (Gaussian blending, optional flip TTA).
Label map on the working grid: 1 organ, 2 tumour painted over it; restored onto exactly the
input grid.  A card with only an ``organ`` network gives the organ alone.  Each stage's seconds,
forward passes and window shape go into the inference facts as ``stages`` (report.json
``device.stages``; ``cervixautoseg benchmark mr`` prints them).

Each stage's evidence (softmax uncertainty, plain-vs-mirrored disagreement and where the mirrored
pass ran, :class:`~CervixAutoSegLib.qa.maps.EvidenceMaps`) is restored onto the input grid for the
per-slice QA: the organ stage's speaks for the organ, the tumour stage's for the tumour.
Selective flip TTA follows the card's ``qa.selective_tta`` in both stages.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..cropping import bounding_box, extract_box, paste_box
from ..families import FractionProgress, NetworkOutput
from ..inference_options import InferenceOptions
from ..progress import CancelCheck, check_cancelled
from ..volume import Volume

log = logging.getLogger(__name__)

ORGAN_ROLE, TUMOR_ROLE = "organ", "tumor"
ORGAN_LABEL, TUMOR_LABEL = 1, 2
ORGAN_BOX_MARGIN_MM = (20.0, 20.0, 10.0)
"""Margin (x, y, z) around the stage-1 organ that stage 2 sees: context beyond the organ wall."""
DEFAULT_MIN_TUMOUR_ML = 0.1


def roi_for(card: Any, role: str, shape_zyx: tuple[int, ...]) -> tuple[int, int, int]:
    """Sliding-window size (z, y, x): the trained patch, or the image rounded up to the network's
    size divisor when the image is smaller (MONAI pads the image to the window)."""
    from .network import plan_unet

    kwargs = card.network(role).architecture_kwargs
    plan = plan_unet(kwargs["patch_size"], kwargs["spacing"], kwargs.get("max_depth", 5))
    patch_zyx = tuple(int(v) for v in kwargs["patch_size"][::-1])
    roi = []
    for size, patch, divisor in zip(shape_zyx, patch_zyx, plan.size_divisor_zyx):
        roi.append(min(patch, -(-int(size) // divisor) * divisor))
    return tuple(roi)  # type: ignore[return-value]


NO_ORGAN_WARNING = ("no uterus, cervix or vagina was found, so no tumour was looked for: "
                    "is this a T2-weighted MR of the female pelvis?")


class PocketNetRunner:
    """:class:`~CervixAutoSegLib.families.PreparingRunner` of the MR family (torch imported when called)."""

    def prepare(self, volume: Volume, card: Any) -> tuple[np.ndarray, Any]:
        """(image on the working grid, :class:`~.preprocess.MRPreprocessContext`): :func:`~.preprocess.preprocess_mr`."""
        from .preprocess import preprocess_mr

        return preprocess_mr(volume, card.preprocessing)

    def __call__(self, volume: Volume, card: Any, device: Any, options: InferenceOptions,
                 progress: FractionProgress, cancel: CancelCheck | None, prepared: Any = None) -> NetworkOutput:
        from ..postprocess import largest_piece
        from .preprocess import restore_labels

        timings: dict[str, float] = {"model_load": 0.0, "network": 0.0}
        started = time.perf_counter()
        image, context = self.prepare(volume, card) if prepared is None else prepared
        timings["preprocess"] = time.perf_counter() - started
        check_cancelled(cancel)
        two_stages = TUMOR_ROLE in card.roles
        stages = _StageClock(timings)
        organ, info, organ_evidence = self._stage(card, ORGAN_ROLE, image[None], device, options, timings, cancel,
                                                  lambda f, m: progress(f / (2 if two_stages else 1), f"organ: {m}"))
        organ = largest_piece(organ == 1)
        stages.lap(ORGAN_ROLE, info)
        working = organ.astype(np.uint8) * ORGAN_LABEL
        evidence = [(organ_evidence, None, (ORGAN_LABEL,))]
        if two_stages and organ.any():
            tumour, tumour_info, tumour_evidence, start = self._tumour(
                card, image, organ, context, device, options, timings, cancel,
                lambda f, m: progress(0.5 + f / 2, f"tumour: {m}"))
            stages.lap(TUMOR_ROLE, tumour_info)
            working[tumour] = TUMOR_LABEL
            evidence.append((tumour_evidence, start, (TUMOR_LABEL,)))
            for key in ("passes", "items", "mirrored_items"):
                info[key] = info.get(key, 0) + tumour_info.get(key, 0)
        info["stages"] = stages.laps
        started = time.perf_counter()
        labels = restore_labels(working, context)
        maps = [restore_evidence(e, context, start, values) for e, start, values in evidence if e is not None]
        timings["restore"] = time.perf_counter() - started
        return NetworkOutput(labels=labels, field_of_view_border=None, inference=info,
                             preprocessing=context.to_dict(), timings=timings,
                             warnings=[] if organ.any() else [NO_ORGAN_WARNING], evidence=maps)

    def _stage(self, card: Any, role: str, inputs: np.ndarray, device: Any, options: InferenceOptions,
               timings: dict, cancel: CancelCheck | None, progress: FractionProgress
               ) -> tuple[np.ndarray, dict, Any]:
        """One network over ``inputs`` (C, z, y, x) → arg-max (z, y, x), the inference facts and the
        :class:`~CervixAutoSegLib.inferers.Evidence` on the same grid."""
        from ..inferers import SlidingWindowInferer, prepare_network
        from ..models import load_network
        from ..qa.config import QAConfig

        started = time.perf_counter()
        network = prepare_network(load_network(card, role), device, options, spatial_dims=3)
        timings["model_load"] += time.perf_counter() - started
        started = time.perf_counter()
        inferer = SlidingWindowInferer(roi_for(card, role, inputs.shape[1:]), options,
                                       QAConfig.from_card(card).selective_flip)
        labels, evidence, info = inferer.infer(
            network, inputs, device=device, cancel=cancel,
            progress=lambda done, total: progress(done / max(total, 1), f"windows {done}/{total}"))
        timings["network"] += time.perf_counter() - started
        return labels, info.to_json(), evidence

    def _tumour(self, card: Any, image: np.ndarray, organ: np.ndarray, context: Any, device: Any,
                options: InferenceOptions, timings: dict, cancel: CancelCheck | None,
                progress: FractionProgress) -> tuple[np.ndarray, dict, Any, tuple[int, ...]]:
        """Stage 2 in a box around the organ; tumour ∩ organ, small islands dropped.  Also the stage's
        evidence on the box and where the box starts in the working grid."""
        spacing_zyx = np.asarray(context.working_spacing[::-1], dtype=float)
        margin = tuple(int(np.ceil(m / s)) for m, s in zip(ORGAN_BOX_MARGIN_MM[::-1], spacing_zyx))
        start, size = bounding_box(organ, margin)
        inputs = np.stack([extract_box(image, start, size), extract_box(organ.astype(np.float32), start, size)])
        box_labels, info, evidence = self._stage(card, TUMOR_ROLE, inputs, device, options, timings, cancel, progress)
        tumour = paste_box(box_labels == 1, start, organ.shape, False) & organ
        min_ml = float(card.qa.get("min_tumour_ml", card.preprocessing.get("min_tumour_ml", DEFAULT_MIN_TUMOUR_ML)))
        return _drop_small_islands(tumour, min_ml / (float(np.prod(spacing_zyx)) / 1000.0)), info, evidence, start


def restore_evidence(evidence: Any, context: Any, start: tuple[int, ...] | None, values: tuple[int, ...]) -> Any:
    """A stage's :class:`~CervixAutoSegLib.inferers.Evidence` on the working grid (or on a box of it
    starting at ``start``) → :class:`~CervixAutoSegLib.qa.maps.EvidenceMaps` on the input grid.

    Nearest neighbour: each input voxel takes the working voxel whose centre is closest, one uint8
    gather per map (linear interpolation, as probabilities are restored, cost seconds per stage on a
    512x512 MR for maps the QA only averages over each slice's contour).
    """
    from ..orientation import unreorient
    from ..qa.maps import EvidenceMaps

    maps = [evidence.uncertainty, evidence.mirrored.astype(np.uint8)]
    if evidence.disagreement is not None:
        maps.append(evidence.disagreement)
    stacked = np.stack(maps)
    if start is not None:
        stacked = paste_box(stacked, start, context.working_shape, 0)
    nearest = [np.clip(np.floor(np.arange(n) * (step_in / step_out) + 0.5).astype(np.intp), 0, size - 1)
               for n, step_in, step_out, size in zip(context.crop_size, context.oriented_spacing[::-1],
                                                       context.working_spacing[::-1], context.working_shape)]
    crop = stacked[(slice(None), *np.ix_(*nearest))]
    full = paste_box(crop, context.crop_start, context.oriented_shape, 0)
    restored = [np.ascontiguousarray(unreorient(channel, context.axes, context.flips)) for channel in full]
    return EvidenceMaps(uncertainty=restored[0], mirrored=restored[1].astype(bool) if len(restored) > 2 else None,
                        disagreement=restored[2] if len(restored) > 2 else None, values=values)


class _StageClock:
    """Per-stage facts for the report's ``device.stages`` (``benchmark mr`` reads them): one entry per
    network stage that ran, ``{"role", "seconds", "network_s", "passes", "item_shape"}``.

    ``seconds`` is the stage's wall time (weights, windows, its own cleaning); ``network_s`` its
    forward passes only; ``item_shape`` one window's input ``(C, z, y, x)``.
    """

    def __init__(self, timings: dict) -> None:
        self.timings = timings
        self.laps: list[dict] = []
        self._started, self._network = time.perf_counter(), timings.get("network", 0.0)

    def lap(self, role: str, info: dict) -> None:
        now, network = time.perf_counter(), self.timings.get("network", 0.0)
        self.laps.append({"role": role, "seconds": now - self._started, "network_s": network - self._network,
                          "passes": int(info.get("passes", 0)), "item_shape": list(info.get("item_shape", []))})
        self._started, self._network = now, network


def _drop_small_islands(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    from ..postprocess import label_pieces

    labels, count = label_pieces(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]
