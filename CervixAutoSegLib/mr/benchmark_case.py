"""The MR family's benchmark (``cervixautoseg benchmark mr``): T2w phantom series and the network
PocketNet is measured against.

Series (issue 13, item 8), each a T2w pelvis phantom of seed 0 with a 240 mm square field of
view (``size`` x ``size`` pixels; 0.469 mm at the default 512):

* ``axial``: 30 axial slices of 5 mm (the paper's working spacing: only the crop changes it);
* ``sagittal``: 30 sagittal slices of 4 mm across the midline (resampled to 5 mm head-feet
  and 0.469 mm left-right, so its working grid and windows differ from the axial one).

Each is segmented with flip TTA off (the targets: whole two-stage case ≤ 60 s, peak RSS
≤ 4 GB on the 2-core CPU) and on.  The baseline is "the heavier network a user would otherwise
run": the conventional nnU-Net layout, whose feature maps double per level from 32 up to 320
(32-64-128-256-320-320), with PocketNet's own kernels and strides (:func:`plan_unet` of the
organ network's patch and spacing), nnU-Net's plain (non-residual) blocks and the same two
deep-supervision heads — run once (one sliding-window pass, no second stage) over the same
preprocessed image with the same windows, overlap, blending and precision.  The paper's claim
is that PocketNet is much cheaper than that network; the target is the whole two-stage case at
least twice as fast as that one pass, both as a user runs them: each a fresh process that starts,
imports, reads and preprocesses the same DICOM, then the case runs both stages, cleans and writes
every output, the baseline runs its one pass and writes nothing (``speedup_process``).  The table
also gives the baseline's passes alone against the whole case (the strictest reading) and passes
against passes.

Without an installed MR model the benchmark uses random weights (:meth:`PhantomT2Series.random_model`):
its organ network calls the whole image organ, so stage 2 runs on the whole image — an upper
bound on the tumour stage's time; a trained model's stage 2 sees a box around the organ.

Axis order: arrays (z, y, x); patch sizes and spacings quoted (x, y, z) as in the model card.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..benchmarks.spec import BaselineRun, BenchmarkTargets

PAPER_PIXEL_MM = 0.469
REFERENCE_MATRIX = 512
FIELD_OF_VIEW_MM = PAPER_PIXEL_MM * REFERENCE_MATRIX
"""In-plane field of view of every series (mm): 0.469 mm pixels at the default 512 matrix."""
SERIES: Mapping[str, tuple[int, float]] = {"axial": (30, 5.0), "sagittal": (30, 4.0)}
"""Plane → (slices, slice thickness mm)."""
RANDOM_MODEL_LOGIT_BIAS = {"organ": (-50.0, 50.0), "tumor": (50.0, -50.0)}
"""(background, structure) output biases of the random benchmark model: organ everywhere, no tumour."""
DOUBLING_FILTERS = (32, 64, 128, 256, 320, 320)
"""nnU-Net's default widths for 3D: 32 doubled per level, capped at 320."""
DOUBLING_NETWORK_PARAMETERS_PAPER_PLAN = 30_170_118
"""Parameters of :func:`build_doubling_unet` for the paper's plan (256x256x32 at 0.469x0.469x5 mm),
1 input channel, 2 outputs, both deep-supervision heads (PocketNet there: 546,822 basic, 552,390
residual) — pinned by the tests."""


def build_doubling_unet(in_channels: int, out_channels: int, patch_size: Sequence[int], spacing: Sequence[float],
                        max_depth: int | None = None, filters: Sequence[int] = DOUBLING_FILTERS) -> Any:
    """The nnU-Net-default doubling network on PocketNet's plan (MONAI ``DynUNet``, eval mode).

    Args:
        patch_size: planning patch (x, y, z) voxels; spacing: (x, y, z) mm — as the PocketNet's.
        filters: widths per level from the input level; the first ``levels`` are used.

    Input ``(N, in_channels, z, y, x)``, output logits ``(N, out_channels, z, y, x)``.
    """
    from monai.networks.nets import DynUNet

    from .network import ACTIVATION, DEEP_SUPERVISION_HEADS, MAX_DEPTH, NORM, plan_unet

    plan = plan_unet(patch_size, spacing, MAX_DEPTH if max_depth is None else max_depth)
    if plan.levels > len(filters):
        raise ValueError(f"{plan.levels} levels need {plan.levels} filter counts, got {tuple(filters)}")
    return DynUNet(
        spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
        kernel_size=[list(k) for k in plan.kernels_zyx], strides=[list(s) for s in plan.strides_zyx],
        upsample_kernel_size=[list(s) for s in plan.strides_zyx[1:]],
        filters=[int(f) for f in filters[:plan.levels]],
        norm_name=NORM, act_name=ACTIVATION, deep_supervision=True, deep_supr_num=DEEP_SUPERVISION_HEADS,
        res_block=False, trans_bias=True,
    ).eval()


class DoublingUNetBaseline:
    """:class:`~CervixAutoSegLib.benchmarks.spec.BenchmarkBaseline`: one sliding-window pass of
    :func:`build_doubling_unet` (random weights: timing only) where stage 1 runs."""

    name = "doubling_dynunet"
    description = ("DynUNet " + "-".join(str(f) for f in DOUBLING_FILTERS)
                   + " (nnU-Net default widths; PocketNet's kernels and strides), one pass")

    def __init__(self, organ_kwargs: Mapping[str, Any]) -> None:
        """``organ_kwargs``: the model card's stage-1 ``architecture_kwargs`` (channels, patch, spacing)."""
        self.kwargs = dict(organ_kwargs)

    def build(self) -> Any:
        import torch

        torch.manual_seed(0)
        k = self.kwargs
        return build_doubling_unet(int(k["in_channels"]), int(k["out_channels"]), k["patch_size"], k["spacing"],
                                   k.get("max_depth"))

    def run(self, volume: Any, card: Any, device: Any, options: Any) -> BaselineRun:
        """Preprocess as stage 1 does, then the stage-1 windows over the whole image (seconds: windows only)."""
        from ..inferers import SlidingWindowInferer, prepare_network
        from .preprocess import preprocess_mr
        from .runner import ORGAN_ROLE, roi_for

        image, _ = preprocess_mr(volume, card.preprocessing)
        network = prepare_network(self.build(), device, options, spatial_dims=3)
        inferer = SlidingWindowInferer(roi_for(card, ORGAN_ROLE, image.shape), options)
        started = time.perf_counter()
        _, info = inferer(network, image[None], device=device)
        return BaselineRun(network_s=time.perf_counter() - started, passes=info.passes,
                           item_shape=list(info.item_shape), precision=info.precision)


class PhantomT2Series:
    """:class:`~CervixAutoSegLib.families.ComparativeBenchmarkCase` of the MR family (sizes are
    in-plane matrices; see the module docstring)."""

    size_help = (f"in-plane matrix of the T2w phantom series ({FIELD_OF_VIEW_MM:.0f} mm field of view: "
                 f"{PAPER_PIXEL_MM} mm pixels at {REFERENCE_MATRIX}); axial 30 x 5 mm, sagittal 30 x 4 mm slices")
    default_sizes = (REFERENCE_MATRIX,)
    series = tuple(SERIES)
    flip_tta_runs = (False, True)
    targets = BenchmarkTargets(max_total_s=60.0, max_peak_rss_gb=4.0, min_speedup_vs_baseline=2.0)

    def make_image(self, size: int, seed: int = 0) -> Any:
        """The axial series (see :meth:`make_series`)."""
        return self.make_series("axial", size, seed)

    def make_series(self, name: str, size: int, seed: int = 0) -> Any:
        """T2w Volume (uint16, (z, y, x)) of the phantom of ``seed``: ``size`` x ``size`` pixels over
        :data:`FIELD_OF_VIEW_MM`, the slices of :data:`SERIES` ``[name]``, centred on the cervix."""
        import numpy as np

        from ..phantom import make_anatomy, make_grid, render
        from ..phantom.mr import draw_mr_grid

        if name not in SERIES:
            raise ValueError(f"unknown MR benchmark series {name!r}; known: {', '.join(SERIES)}")
        slices, thickness = SERIES[name]
        pixel = FIELD_OF_VIEW_MM / size
        anatomy = make_anatomy(seed)
        # The phantom's own grid rule finds the centre (cervix, no jitter, no tilt); the slice
        # count is then fixed here so every run times the same series.
        drawn, _ = draw_mr_grid(np.random.default_rng(seed), anatomy, plane=name, matrix=size,
                                pixel_spacing_mm=pixel, slice_thickness_mm=thickness, tilt_deg=[0.0, 0.0, 0.0],
                                centre_jitter_mm=[0.0] * 3)
        grid = make_grid(drawn.center, (FIELD_OF_VIEW_MM, FIELD_OF_VIEW_MM, (slices - 1) * thickness),
                         (pixel, pixel), thickness, matrix=(size, size), plane=name,
                         patient_position=drawn.patient_position)
        return render(anatomy, grid, "MR", seed=seed).image

    def random_model(self, out_dir: Path, model_id: str) -> Any:
        """Randomly initialised organ and tumour PocketNets for the paper's patch (same cost per window as
        trained ones), their output biases set to :data:`RANDOM_MODEL_LOGIT_BIAS`.

        Why the biases: unbiased random networks call a speckle of voxels organ and tumour, and
        writing thousands of speckle contours (RTSTRUCT, segmentation) then dominates the case.
        Biased, the organ is the whole image, so stage 2 runs on the whole image (its worst
        case: an upper bound on the tumour stage's time), and the tumour is empty.
        """
        import torch

        from ..models import NetworkSpec, write_model_dir
        from .config import MRTrainConfig
        from .network import ARCHITECTURE, build_pocketnet
        from .training import pocketnet_kwargs

        torch.manual_seed(0)
        networks = {}
        for stage in ("organ", "tumor"):
            kwargs = pocketnet_kwargs(MRTrainConfig(stage=stage))
            network = build_pocketnet(**kwargs).eval()
            with torch.no_grad():
                network.output_block.conv.conv.bias.copy_(torch.tensor(RANDOM_MODEL_LOGIT_BIAS[stage]))
            networks[stage] = NetworkSpec(network, ARCHITECTURE, kwargs)
        return write_model_dir(out_dir, networks, model_id=model_id, family="mr")

    def baselines(self, card: Any) -> tuple[DoublingUNetBaseline, ...]:
        """The doubling network on the plan of ``card``'s organ network."""
        from .runner import ORGAN_ROLE

        return (DoublingUNetBaseline(card.network(ORGAN_ROLE).architecture_kwargs),)


PhantomT2Axial = PhantomT2Series
"""The name :mod:`.family` registers (the case now makes a sagittal series too)."""
