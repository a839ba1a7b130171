"""Arithmetic precision of network inference and training: which one, and the autocast for it."""

from __future__ import annotations

import contextlib

import torch

from .errors import InputError

_BF16_CPU_CAPABILITIES = ("AVX512", "AMX")
"""ATen CPU capabilities under which oneDNN runs bf16 convolutions natively."""


def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 convolutions natively (AVX-512 BF16 or AMX)."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # very old torch
        return False
    if not any(name in capability for name in _BF16_CPU_CAPABILITIES):
        return False
    mkldnn = getattr(torch.ops, "mkldnn", None)
    check = getattr(mkldnn, "_is_mkldnn_bf16_supported", None) if mkldnn is not None else None
    try:
        return bool(check()) if check is not None else True
    except RuntimeError:
        return False


def choose_precision(requested: str, device: torch.device) -> str:
    """Resolve ``"auto"`` for ``device``; refuse fp16 on CPU (no fast fp16 convolutions there)."""
    if requested == "auto":
        if device.type in ("cuda", "mps"):
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if requested == "fp16" and device.type == "cpu":
        raise InputError("fp16 inference is for GPUs; on the CPU use bf16 or fp32")
    return requested


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` ("fp32": none) on ``device``'s type."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class ThinSlabSafeConv3d(torch.nn.Conv3d):
    """A ``Conv3d`` that, while training under CPU bf16 autocast, convolves an input thinner along
    z than its kernel in float32 (anything else exactly as ``Conv3d``).

    oneDNN in torch's CPU build computes the bf16 weight gradient of a 3x3x3, stride-1 convolution
    over a 2-slice-deep input ``(N, C, 2, H, W)`` from memory it never wrote: two backward passes
    over the same tensors differ, by up to 1e34 or NaN in about one training step in twenty of a
    PocketNet on 8-slice patches (whose third level is 2 slices deep).  The forward values, the
    input's gradient and float32 are all right.  Such levels are a U-Net's smallest, so float32
    there costs little.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, C, z, y, x)``."""
        thin = x.shape[2] < self.kernel_size[0] and x.device.type == "cpu"
        if not (thin and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return super().forward(x.float())


def guard_thin_slab_convolutions(network: torch.nn.Module) -> int:
    """Make every plain ``Conv3d`` of ``network`` a :class:`ThinSlabSafeConv3d`, in place (same
    parameters, same state-dict keys); returns how many.  For training: inference has no backward."""
    guarded = 0
    for module in network.modules():
        if type(module) is torch.nn.Conv3d:
            module.__class__ = ThinSlabSafeConv3d
            guarded += 1
    return guarded
