"""How a network is run (options) and how it did run (info): plain data, importable without torch.

The command line, the Slicer panel's controller and the background worker pass
:class:`InferenceOptions` around without importing torch; :mod:`.inferers` executes them.
"""

from __future__ import annotations

import dataclasses

from .errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""``auto``: fp16 autocast on CUDA/MPS, bf16 autocast on a CPU with native bf16 support, else fp32.

Why bf16 is the CPU default where the CPU has it (measured on this project's 2-core AMD EPYC
with AVX-512 BF16, ``cervixautoseg benchmark ct --check-bf16 32`` and a phantom-trained
ResAU-Net): the network runs 2.1x faster (0.49 s vs 1.09 s for 12 slices; ~500 vs ~250
GFLOP/s), and the labels are accuracy-neutral — 99.94 % of pixels identical to fp32, per-structure
Dice bf16-vs-fp32 ≥ 0.994, Dice against the phantom truth equal to fp32's within ±0.01.
``--precision fp32`` is always available."""


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How to run a network over one image.

    Attributes:
        batch_size: items (2D slices, or 3D windows) per forward pass; 0 = the inferer's
            default for the device.
        precision: one of :data:`PRECISIONS`.
        channels_last: channels-last memory format for inputs and weights (faster oneDNN /
            cuDNN convolutions).
        fuse_batchnorm: fold eval-mode BatchNorm into the preceding convolution.
        flip_tta: test-time augmentation: also run items mirrored left-right (along the
            patient's x axis) and average the two softmax maps. On every item it doubles the
            network time; on held-out CT phantoms CTV-N DSC gains 0.01-0.02.
        selective_tta: with ``flip_tta``, mirror only the items (CT slices, MR windows) whose plain
            pass was uncertain, as the model card's ``qa.selective_tta`` says (a card without it:
            every item).  False mirrors every item whatever the card says.
        overlap: sliding-window overlap between neighbouring 3D windows, in [0, 1).
    """

    batch_size: int = 0
    precision: str = "auto"
    channels_last: bool = True
    fuse_batchnorm: bool = True
    flip_tta: bool = True
    selective_tta: bool = True
    overlap: float = 0.5

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.batch_size < 0:
            raise InputError(f"batch size must be positive, got {self.batch_size}")
        if not 0.0 <= self.overlap < 1.0:
            raise InputError(f"sliding-window overlap must be in [0, 1), got {self.overlap}")

    def replace(self, **changes) -> "InferenceOptions":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class InferenceInfo:
    """What actually ran (for report.json): device, precision, batch size, fallbacks, work done.

    Attributes:
        passes: forward-pass items computed, mirrored ones included (slices or windows).
        item_shape: input shape of one item, ``(C, H, W)`` or ``(C, D, H, W)`` (for FLOP counts).
        items: items (slices or windows) of the plain pass.
        mirrored_items: items that also got the mirrored pass (all of them without selective TTA).
        selective_tta: the gate that chose them (``qa.selective_tta`` of the card), or None.
    """

    device: str
    precision: str
    batch_size: int
    fell_back_to_cpu: bool = False
    out_of_memory_retries: int = 0
    flip_tta: bool = False
    passes: int = 0
    item_shape: tuple[int, ...] = ()
    items: int = 0
    mirrored_items: int = 0
    selective_tta: dict | None = None

    def to_json(self) -> dict:
        document = dataclasses.asdict(self)
        document["item_shape"] = list(self.item_shape)
        return document
