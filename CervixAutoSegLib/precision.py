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
