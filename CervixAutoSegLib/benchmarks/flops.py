"""What a network costs and what the cores can do: analytic FLOP counts and a matmul yardstick."""

from __future__ import annotations

import math
import time
from typing import Any

MATMUL_SIZE = 2048
MATMUL_SECONDS = 1.0


def count_flops(network: Any, input_shape: tuple[int, ...], *, on_meta: bool = True) -> int:
    """FLOPs (2 per multiply-add) of the convolutions (2D, 3D, transposed) and linear layers for
    one forward pass of an input of ``input_shape`` ``(N, C, *spatial)``.

    A transposed convolution is counted per *input* element (each spreads its kernel over the
    output), an ordinary one per output element.  ``on_meta``: run a copy of the network on
    PyTorch's "meta" device, which propagates shapes without arithmetic or memory (a 3D window
    of a 30 M-parameter U-Net counts in well under a second); a network with an operation that
    has no meta kernel is run for real on the CPU instead.
    """
    import copy

    import torch

    if on_meta:
        try:
            return _hooked_forward(copy.deepcopy(network).to("meta"), torch.zeros(input_shape, device="meta"))
        except (NotImplementedError, RuntimeError):
            pass
    return _hooked_forward(network, torch.zeros(input_shape))


def _hooked_forward(network: Any, inputs: Any) -> int:
    """FLOPs counted by forward hooks while ``network(inputs)`` runs (see :func:`count_flops`)."""
    import torch
    from torch import nn

    total = 0
    convolutions = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

    def conv_hook(module, inputs, output) -> None:
        nonlocal total
        per_element = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        if isinstance(module, transposed):
            total += 2 * inputs[0].numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
        else:
            total += 2 * output.numel() * per_element

    def linear_hook(module: nn.Linear, _inputs, output) -> None:
        nonlocal total
        total += 2 * output.numel() * module.in_features

    handles = []
    for module in network.modules():
        if isinstance(module, convolutions + transposed):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        with torch.inference_mode():
            network(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total


def matmul_gflops(precision: str, size: int = MATMUL_SIZE, seconds: float = MATMUL_SECONDS) -> float:
    """GFLOP/s of a square ``size`` matmul on the CPU in the network path's dtype.

    The best single multiplication over ``seconds`` is taken: on a shared machine that is
    the closest estimate of what the cores can do (the network time is not best-of, so the
    ratio errs against the network).
    """
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best, started = float("inf"), time.perf_counter()
    while time.perf_counter() - started < seconds:
        tick = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - tick)
    return 2.0 * size ** 3 / best / 1e9
