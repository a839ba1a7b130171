"""The MR family's benchmark input: an axial T2w pelvis phantom of a clinical field of view."""

from __future__ import annotations

from pathlib import Path

FIELD_OF_VIEW_MM = 220.0
SLICE_THICKNESS_MM = 4.0


class PhantomT2Axial:
    """:class:`~CervixAutoSegLib.families.BenchmarkCase` of the MR family (sizes are in-plane matrices)."""

    size_help = f"in-plane matrix of an axial T2w phantom, {FIELD_OF_VIEW_MM:g} mm field of view, 4 mm slices"
    default_sizes = (320, 512)

    def make_image(self, size: int, seed: int = 0):
        """A T2w MR Volume (uint16) ``size`` x ``size`` in-plane: the phantom of ``seed``."""
        from ..phantom import make_mr_phantom

        return make_mr_phantom(seed, plane="axial", matrix=size, pixel_spacing_mm=FIELD_OF_VIEW_MM / size,
                               slice_thickness_mm=SLICE_THICKNESS_MM).image

    def random_model(self, out_dir: Path, model_id: str):
        """Randomly initialised organ and tumour PocketNets for the paper's patch (same cost as trained ones)."""
        import torch

        from ..models import NetworkSpec, write_model_dir
        from .config import MRTrainConfig
        from .network import ARCHITECTURE, build_pocketnet
        from .training import pocketnet_kwargs

        torch.manual_seed(0)
        networks = {}
        for stage in ("organ", "tumor"):
            kwargs = pocketnet_kwargs(MRTrainConfig(stage=stage))
            networks[stage] = NetworkSpec(build_pocketnet(**kwargs).eval(), ARCHITECTURE, kwargs)
        return write_model_dir(out_dir, networks, model_id=model_id, family="mr")
