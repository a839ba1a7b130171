"""PocketNet 3D for T2w MR, as MIST's ``nnunet --pocket`` builds it, on MONAI's DynUNet.

Architecture (seed 004 and its reference code, MIST ``NNUnet``/``DynUNet``):

* a U-Net whose every level has **32 feature maps** (the "pocket" rule: the width is not
  doubled when the resolution halves);
* kernel sizes and strides from **nnU-Net's planning rule** (:func:`plan_unet`): an axis
  whose spacing is more than twice the finest spacing gets kernel 1 and stride 1; every
  other axis that still has at least 8 voxels is halved; the spacing of halved axes
  doubles and the rule repeats, at most 5 times; a stride-1 input level and a 3x3x3
  bottleneck kernel are added.  For the paper's 256 x 256 x 32 patch at 0.469 x 0.469 x
  5 mm this gives 6 levels, kernels (3,3,1) x 3 then (3,3,3) x 3 and strides (1,1,1),
  (2,2,1) x 3, (2,2,2) x 2, in (x, y, z) order;
* blocks conv - InstanceNorm(affine) - LeakyReLU(0.01), twice per level, with an optional
  residual shortcut (MONAI ``UnetResBlock``; the paper trained with residual blocks, so
  ``residual=True`` is the default here), transposed-convolution up-sampling with bias;
* two deep-supervision heads (1x1x1 convolutions on the two decoder levels below the
  output), used in training mode only.

Axis order.  MIST reads images with ANTs, whose numpy arrays are (x, y, z); this project's
arrays are (z, y, x) (``Volume.array``).  The network is fed **(N, C, z, y, x)**, i.e. the
project's arrays with a batch and a channel axis in front, and every kernel and stride of
the (x, y, z) plan is reversed to (z, y, x) before it reaches DynUNet.  The two layouts
give the same network up to a transposition of every weight tensor (the parameter count is
identical).  Patch sizes and spacings passed to :func:`plan_unet` and
:func:`build_pocketnet` are in **(x, y, z)** order, as the paper and the model card quote
them; :class:`UNetPlan` gives both orders.

Outputs.  Eval mode: logits ``(N, out_channels, z, y, x)``.  Training mode with deep
supervision: MONAI's stacked tensor ``(N, 1 + heads, out_channels, z, y, x)``, index 0 the
main output, then the heads (nearest-neighbour up-sampled to full size, shallowest first);
:func:`split_deep_supervision` separates them.  Spatial sizes must be multiples of
:attr:`UNetPlan.size_divisor_zyx` (the sliding-window inferer always feeds the patch size).

Paper versus code.  The paper's Figure 2 caption describes a DenseNet-style PocketNet:
four resolution levels, every layer fed with the feature maps of all preceding layers
("dense links"), 3x3 kernels each followed by batch normalisation and ReLU.  That caption
comes from the original PocketNet paper; the network the authors actually trained is
MIST's ``nnunet`` with ``--pocket`` (the text says the MIST pipeline was used, with
residual blocks and deep supervision), whose code builds what is described above:
plain (or residual) U-Net blocks without dense links, instance normalisation, leaky ReLU,
anisotropic 3x3x1 kernels on thick-slice levels and six levels for the paper's patch.  We
follow the code.  Check: with basic (non-residual) blocks and both heads, 1 input channel
and 2 outputs, the paper's patch and spacing give 546,822 parameters (stage 2, with the
organ mask as second input channel, 288 more); residual blocks add 5,536.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from monai.networks.nets import DynUNet
from torch import nn

ARCHITECTURE = "PocketNet"
FEATURES = 32
"""Feature maps at every level (the pocket rule)."""
MAX_DEPTH = 5
"""At most this many down-sampling levels (MIST ``MAX_DEPTH``)."""
ANISOTROPY_RATIO = 2.0
"""An axis whose spacing exceeds this multiple of the finest spacing is not down-sampled."""
MIN_SIZE_FOR_STRIDE = 8
"""An axis is halved only while it still has at least this many voxels."""
DEEP_SUPERVISION_HEADS = 2
NORM = ("INSTANCE", {"affine": True})
ACTIVATION = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})
PAPER_PATCH_SIZE_XYZ = (256, 256, 32)
PAPER_SPACING_XYZ = (0.469, 0.469, 5.0)

Triple = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class UNetPlan:
    """Kernel sizes and strides per level, input level first.

    Attributes:
        kernels_xyz: one (x, y, z) kernel per level (input block ... bottleneck).
        strides_xyz: one (x, y, z) stride per level; the first is (1, 1, 1).
        bottleneck_size_xyz: patch size (x, y, z) after all down-sampling.
    """

    kernels_xyz: tuple[Triple, ...]
    strides_xyz: tuple[Triple, ...]
    bottleneck_size_xyz: Triple

    @property
    def levels(self) -> int:
        return len(self.strides_xyz)

    @property
    def kernels_zyx(self) -> tuple[Triple, ...]:
        """Kernels in the network's tensor order (z, y, x)."""
        return tuple(_reverse(k) for k in self.kernels_xyz)

    @property
    def strides_zyx(self) -> tuple[Triple, ...]:
        """Strides in the network's tensor order (z, y, x)."""
        return tuple(_reverse(s) for s in self.strides_xyz)

    @property
    def size_divisor_xyz(self) -> Triple:
        """Every input size (x, y, z) must be a multiple of this (product of strides)."""
        product = [1, 1, 1]
        for stride in self.strides_xyz:
            product = [p * s for p, s in zip(product, stride)]
        return tuple(product)  # type: ignore[return-value]

    @property
    def size_divisor_zyx(self) -> Triple:
        return _reverse(self.size_divisor_xyz)

    def to_dict(self) -> dict:
        """JSON-able, (x, y, z) order."""
        return {"axis_order": "xyz", "kernels": [list(k) for k in self.kernels_xyz],
                "strides": [list(s) for s in self.strides_xyz],
                "bottleneck_size": list(self.bottleneck_size_xyz)}


def _reverse(values: Sequence[int]) -> Triple:
    return tuple(int(v) for v in reversed(tuple(values)))  # type: ignore[return-value]


def plan_unet(patch_size_xyz: Sequence[int], spacing_xyz: Sequence[float],
              max_depth: int = MAX_DEPTH) -> UNetPlan:
    """nnU-Net / MIST kernel and stride plan for a patch.

    Args:
        patch_size_xyz: training patch size in voxels, (x, y, z).
        spacing_xyz: voxel spacing in mm of the working grid, (x, y, z).
        max_depth: most down-sampling levels.

    Returns:
        The :class:`UNetPlan`: ``levels = down-sampling levels + 1`` kernels and strides.
        Level ``l >= 1`` down-samples by ``strides[l]``; ``kernels[l]`` is the kernel
        chosen at the spacing reached after ``l`` halvings (the last is 3x3x3).
    """
    if len(patch_size_xyz) != 3 or len(spacing_xyz) != 3:
        raise ValueError(f"patch size and spacing need 3 values (x, y, z), "
                         f"got {patch_size_xyz}, {spacing_xyz}")
    if min(spacing_xyz) <= 0 or min(patch_size_xyz) < 1:
        raise ValueError(f"spacing and patch size must be positive, got {spacing_xyz}, {patch_size_xyz}")
    sizes = [int(v) for v in patch_size_xyz]
    spacing = [float(v) for v in spacing_xyz]
    kernels: list[Triple] = []
    strides: list[Triple] = []
    while len(strides) < max_depth:
        finest = min(spacing)
        coarse = [s / finest > ANISOTROPY_RATIO for s in spacing]
        stride = tuple(1 if c or n < MIN_SIZE_FOR_STRIDE else 2 for c, n in zip(coarse, sizes))
        if all(s == 1 for s in stride):
            break
        kernels.append(tuple(1 if c else 3 for c in coarse))  # type: ignore[arg-type]
        strides.append(stride)  # type: ignore[arg-type]
        sizes = [n // s for n, s in zip(sizes, stride)]
        spacing = [p * s for p, s in zip(spacing, stride)]
    strides.insert(0, (1, 1, 1))
    kernels.append((3, 3, 3))
    return UNetPlan(tuple(kernels), tuple(strides), tuple(sizes))  # type: ignore[arg-type]


class PocketNet(DynUNet):
    """MONAI DynUNet configured as PocketNet (see the module docstring).

    Input ``(N, in_channels, z, y, x)`` float; output logits as described in the module
    docstring.  ``patch_size`` and ``spacing`` are (x, y, z).  The state dict has exactly
    DynUNet's keys (MIST's checkpoints differ only by its own key names and the (x, y, z)
    layout of every kernel).
    """

    def __init__(self, in_channels: int, out_channels: int, patch_size: Sequence[int],
                 spacing: Sequence[float], residual: bool = True, deep_supervision: bool = True,
                 features: int = FEATURES, deep_supervision_heads: int = DEEP_SUPERVISION_HEADS,
                 max_depth: int = MAX_DEPTH) -> None:
        plan = plan_unet(patch_size, spacing, max_depth)
        if plan.levels < 3:
            raise ValueError(f"patch {tuple(patch_size)} at {tuple(spacing)} mm gives {plan.levels} levels; "
                             "a U-Net needs at least 3 (use a larger patch)")
        super().__init__(
            spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
            kernel_size=[list(k) for k in plan.kernels_zyx], strides=[list(s) for s in plan.strides_zyx],
            upsample_kernel_size=[list(s) for s in plan.strides_zyx[1:]],
            filters=[int(features)] * plan.levels, norm_name=NORM, act_name=ACTIVATION,
            deep_supervision=deep_supervision, deep_supr_num=deep_supervision_heads,
            res_block=residual, trans_bias=True,
        )
        self.plan = plan
        self.kwargs = {
            "in_channels": int(in_channels), "out_channels": int(out_channels),
            "patch_size": [int(v) for v in patch_size], "spacing": [float(v) for v in spacing],
            "residual": bool(residual), "deep_supervision": bool(deep_supervision), "features": int(features),
            "deep_supervision_heads": int(deep_supervision_heads), "max_depth": int(max_depth),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, C, z, y, x); each spatial size a multiple of ``plan.size_divisor_zyx``."""
        divisor = self.plan.size_divisor_zyx
        if x.ndim != 5 or any(n % d for n, d in zip(x.shape[2:], divisor)):
            raise ValueError(f"PocketNet needs (N, C, z, y, x) with z, y, x multiples of {divisor}, "
                             f"got shape {tuple(x.shape)}")
        return super().forward(x)


def build_pocketnet(in_channels: int, out_channels: int, patch_size: Sequence[int], spacing: Sequence[float],
                    residual: bool = True, deep_supervision: bool = True, features: int = FEATURES,
                    deep_supervision_heads: int = DEEP_SUPERVISION_HEADS,
                    max_depth: int = MAX_DEPTH) -> PocketNet:
    """A PocketNet for ``patch_size`` voxels at ``spacing`` mm, both (x, y, z).

    Stage 1 (organ): ``in_channels=1`` (T2w), ``out_channels=2``; stage 2 (tumour):
    ``in_channels=2`` (T2w and the stage-1 organ mask), ``out_channels=2``.
    ``pocketnet.kwargs`` is what a model card stores as ``architecture_kwargs``.
    """
    return PocketNet(in_channels, out_channels, patch_size, spacing, residual=residual,
                     deep_supervision=deep_supervision, features=features,
                     deep_supervision_heads=deep_supervision_heads, max_depth=max_depth)


def build_network(architecture: str = ARCHITECTURE, **kwargs: Any) -> nn.Module:
    """Instantiate by the ``architecture`` name a model card records (``models.load_network`` style)."""
    if architecture != ARCHITECTURE:
        raise ValueError(f"unknown MR architecture {architecture!r}; expected {ARCHITECTURE!r}")
    return build_pocketnet(**kwargs)


def split_deep_supervision(output: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(main logits (N, C, z, y, x), [head logits, same shape, shallowest first]).

    Accepts the eval-mode output (no heads) and the training-mode stacked output.
    """
    if output.ndim == 6:
        return output[:, 0], [output[:, i] for i in range(1, output.shape[1])]
    return output, []


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
