"""Attention blocks that gate ResAU-Net's skip connections.

Notation follows the ResAU-Net paper (seed 000, eqs. 1-5): ``g`` is the decoder
("gating") feature map arriving from the coarser level, already upsampled to the skip's
size, ``x`` is the encoder skip feature map.  Tensors are ``(N, C, H, W)``.

Our reading of eqs. 1-5 (:class:`ChannelAttention`, the default).  Eqs. 1-2 average ``g``
and ``x`` over H x W, so what reaches eq. 3 are two channel descriptors
``ḡ ∈ R^{C_g}`` and ``x̄ ∈ R^{C_x}``; "W_g dot multiplication g ... realised the fully
connected operation" then makes ``W_g`` and ``W_x`` fully connected layers on those
descriptors, and the text says the block yields *channel* weights ("amplified the channel
weights", "channel-level feature fusion").  Hence::

    q_att = Φ · ReLU(W_g · ḡ + W_x · x̄)        (eq. 3, one vector per image, length C_x)
    α     = sigmoid(q_att)                       (eq. 4)
    out   = x · α   (α broadcast over H x W)     (eq. 5)

The literal alternative — eq. 3 applied per pixel as in Oktay et al.'s attention U-Net,
with 1x1 convolutions and a single spatial map α(h, w) — is :class:`SpatialAttention`.
Select with ``make_attention("channel" | "spatial" | "none", ...)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ATTENTION_KINDS

INTERMEDIATE_REDUCTION = 2
"""Hidden width of the gate = C_x // INTERMEDIATE_REDUCTION (Oktay et al. use C/2)."""

MIN_INTERMEDIATE_CHANNELS = 8


def _intermediate_channels(skip_channels: int) -> int:
    return max(skip_channels // INTERMEDIATE_REDUCTION, MIN_INTERMEDIATE_CHANNELS)


class ChannelAttention(nn.Module):
    """Eqs. 1-5 read as channel attention from globally pooled descriptors.

    Args:
        gate_channels: C_g, channels of the decoder map ``g``.
        skip_channels: C_x, channels of the skip map ``x``.
        intermediate_channels: width of the hidden layer (default C_x // 2, at least 8).

    ``forward(g, x)`` takes ``g`` ``(N, C_g, H, W)`` and ``x`` ``(N, C_x, H', W')``
    (sizes may differ: both are pooled) and returns ``x * α`` with α ``(N, C_x, 1, 1)``.
    """

    def __init__(self, gate_channels: int, skip_channels: int, intermediate_channels: int | None = None):
        super().__init__()
        hidden = intermediate_channels or _intermediate_channels(skip_channels)
        self.w_g = nn.Linear(gate_channels, hidden)
        self.w_x = nn.Linear(skip_channels, hidden)
        self.phi = nn.Linear(hidden, skip_channels)

    def weights(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """α of eq. 4, shape ``(N, C_x)``."""
        g_mean = g.mean(dim=(2, 3))  # eq. 1
        x_mean = x.mean(dim=(2, 3))  # eq. 2
        q_att = self.phi(torch.relu(self.w_g(g_mean) + self.w_x(x_mean)))  # eq. 3
        return torch.sigmoid(q_att)  # eq. 4

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        alpha = self.weights(g, x)
        return x * alpha[:, :, None, None].to(x.dtype)  # eq. 5


class SpatialAttention(nn.Module):
    """Oktay et al. (2018) additive attention gate: one weight per pixel of ``x``.

    ``α(h, w) = sigmoid(ψ · ReLU(W_g g(h, w) + W_x x(h, w)))`` with 1x1 convolutions
    (+ BatchNorm as in the reference attention U-Net); ``g`` and ``x`` must have the same
    H x W.  Returns ``x * α`` with α ``(N, 1, H, W)``.
    """

    def __init__(self, gate_channels: int, skip_channels: int, intermediate_channels: int | None = None):
        super().__init__()
        hidden = intermediate_channels or _intermediate_channels(skip_channels)
        self.w_g = nn.Sequential(nn.Conv2d(gate_channels, hidden, 1), nn.BatchNorm2d(hidden))
        self.w_x = nn.Sequential(nn.Conv2d(skip_channels, hidden, 1), nn.BatchNorm2d(hidden))
        self.psi = nn.Sequential(nn.Conv2d(hidden, 1, 1), nn.BatchNorm2d(1))

    def weights(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """α, shape ``(N, 1, H, W)``."""
        return torch.sigmoid(self.psi(torch.relu(self.w_g(g) + self.w_x(x))))

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(g, x)


class NoAttention(nn.Module):
    """Plain U-Net skip: returns ``x`` unchanged (the ablation / "backbone alone")."""

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x


def make_attention(kind: str, gate_channels: int, skip_channels: int) -> nn.Module:
    """Attention block of ``kind`` ∈ :data:`ATTENTION_KINDS` for one skip connection."""
    if kind == "channel":
        return ChannelAttention(gate_channels, skip_channels)
    if kind == "spatial":
        return SpatialAttention(gate_channels, skip_channels)
    if kind == "none":
        return NoAttention()
    raise ValueError(f"unknown attention {kind!r}; expected one of {ATTENTION_KINDS}")
