"""ResAU-Net: a ResNet34 encoder and an attention-gated U-Net decoder (2D, one CT slice).

Architecture (ResAU-Net paper, Fig. 3):

* Encoder = ResNet34 without its classifier, one input channel: 7x7 stride-2 stem
  (``conv1``/``bn1``), max-pool, then ``layer1..layer4`` of 3/4/6/3 BasicBlocks with
  64/64/128/256/512 channels.  Parameter names are torchvision's, so ImageNet weights
  could be copied in (sum the stem's RGB kernels into the single channel).
* Decoder = four stages that each upsample ×2 (nearest), concatenate the attention-gated
  encoder skip and apply 2 x [conv3x3-BN-ReLU] (256/128/64/32 channels), a fifth
  stage back to full resolution without skip (16 channels), and a 3x3 head → classes.

Without gates this is exactly segmentation_models_pytorch's ``Unet("resnet34",
in_channels=1, classes=5, decoder_channels=(256, 128, 64, 32, 16))``: 24,430,677
parameters (the paper's "backbone alone"), ~15.5 GFLOP per 256x256 slice.

Tensors are ``(N, C, H, W)`` with H and W multiples of :data:`SIZE_MULTIPLE`; the
output holds raw class scores (logits) ``(N, classes, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import make_attention

ARCHITECTURE = "ResAUNet"
ENCODER_CHANNELS = (64, 64, 128, 256, 512)
"""Channels of the stem and of layer1..layer4."""
ENCODER_BLOCKS = (3, 4, 6, 3)
"""BasicBlocks per stage: ResNet34."""
DECODER_CHANNELS = (256, 128, 64, 32, 16)
SIZE_MULTIPLE = 32
"""The encoder halves the resolution five times."""
DEFAULT_CLASSES = 5
"""Background + bladder, rectum, CTV-N, CTV-UV."""


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions + identity or 1x1 projection)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet34Encoder(nn.Module):
    """ResNet34 feature extractor; returns the five feature maps the decoder uses.

    ``forward(x (N, C_in, H, W))`` → ``[stem (N,64,H/2,W/2), layer1 (N,64,H/4,W/4),
    layer2 (N,128,H/8,W/8), layer3 (N,256,H/16,W/16), layer4 (N,512,H/32,W/32)]``.
    """

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, ENCODER_CHANNELS[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(ENCODER_CHANNELS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        layers = []
        in_ch = ENCODER_CHANNELS[0]
        for index, (blocks, out_ch) in enumerate(zip(ENCODER_BLOCKS, ENCODER_CHANNELS[1:])):
            stride = 1 if index == 0 else 2
            stage = [BasicBlock(in_ch, out_ch, stride)] + [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
            layers.append(nn.Sequential(*stage))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias: BN follows) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DecoderBlock(nn.Module):
    """Nearest ×2 upsampling, concat with the (gated) skip, 2 x conv3x3-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = conv_bn_relu(out_channels, out_channels)

    def forward(self, up: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = up if skip is None else torch.cat([up, skip], dim=1)
        return self.conv2(self.conv1(x))


class ResAUNet(nn.Module):
    """ResAU-Net for 2D slices.

    Args:
        in_channels: image channels (1 for windowed CT).
        classes: output classes including background.
        attention: ``"channel"`` (eqs. 1-5, default), ``"spatial"`` (Oktay gate) or
            ``"none"`` (plain U-Net skips) — see :mod:`.attention`.

    ``forward(x (N, in_channels, H, W))`` → logits ``(N, classes, H, W)``; H and W
    must be multiples of 32.
    """

    def __init__(self, in_channels: int = 1, classes: int = DEFAULT_CLASSES, attention: str = "channel"):
        super().__init__()
        self.attention_kind = attention
        self.encoder = ResNet34Encoder(in_channels)
        # Skips for decoder stages 1..4 come from layer3, layer2, layer1, stem; stage 5 has none.
        skip_channels = (ENCODER_CHANNELS[3], ENCODER_CHANNELS[2], ENCODER_CHANNELS[1], ENCODER_CHANNELS[0], 0)
        in_channels_per_stage = (ENCODER_CHANNELS[4],) + DECODER_CHANNELS[:-1]
        self.decoder = nn.ModuleList(
            DecoderBlock(in_ch, skip_ch, out_ch)
            for in_ch, skip_ch, out_ch in zip(in_channels_per_stage, skip_channels, DECODER_CHANNELS)
        )
        self.attention = nn.ModuleList(
            make_attention(attention, in_ch, skip_ch)
            for in_ch, skip_ch in zip(in_channels_per_stage[:4], skip_channels[:4])
        )
        self.head = nn.Conv2d(DECODER_CHANNELS[-1], classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise ValueError(f"ResAU-Net needs H and W divisible by {SIZE_MULTIPLE}, got {height}x{width}")
        stem, f1, f2, f3, f4 = self.encoder(x)
        skips = (f3, f2, f1, stem, None)
        y = f4
        for stage, block in enumerate(self.decoder):
            y = F.interpolate(y, scale_factor=2, mode="nearest")
            skip = skips[stage]
            if skip is not None:
                skip = self.attention[stage](y, skip)
            y = block(y, skip)
        return self.head(y)


def build_network(architecture: str = ARCHITECTURE, **kwargs) -> nn.Module:
    """Instantiate a network by the ``architecture`` name a model card records."""
    if architecture != ARCHITECTURE:
        raise ValueError(f"unknown CT architecture {architecture!r}; expected {ARCHITECTURE!r}")
    return ResAUNet(**kwargs)


def count_parameters(module: nn.Module, exclude_prefixes: tuple[str, ...] = ()) -> int:
    """Number of trainable parameters whose name does not start with an excluded prefix."""
    return sum(
        p.numel() for name, p in module.named_parameters()
        if p.requires_grad and not name.startswith(exclude_prefixes)
    )
