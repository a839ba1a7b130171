"""Run a prepared network over a whole preprocessed image: 2D slice batches or 3D sliding windows.

Both inferers (MONAI's ``Inferer`` idea, with the policies a clinical tool needs):

* run under ``torch.inference_mode`` in batches, so memory is bounded by the batch, not by
  the image, with freed blocks kept for the next batch (:func:`~CervixAutoSegLib.heap.retained_heap`);
* use mixed precision where it pays (:mod:`.precision`);
* optionally add the left-right mirrored pass (flip test-time augmentation): the softmax of
  the mirrored input is mirrored back and averaged with the plain one, so on a mirrored item the
  result is exactly equivariant under mirroring along the array's last axis (x, the patient's
  left-right in the LPS layout the families feed);
* selective flip TTA (a :class:`~CervixAutoSegLib.qa.config.SelectiveFlip` gate from the model
  card): the mirrored pass only for items (slices, windows) whose plain pass was unsure — more than
  ``min_uncertain_fraction`` of their pixels with a top-2 softmax margin below
  ``uncertain_below_margin`` — and at most ``max_mirrored_fraction`` of them, the most unsure;
* hand the QA the network's own evidence next to the labels (:class:`Evidence`): top-2 softmax
  uncertainty, plain-vs-mirrored disagreement, and where the mirrored pass ran;
* on an accelerator out-of-memory error halve the batch and retry; when even one item does
  not fit, move the network to the CPU, log a warning and carry on (same result, slower);
* report progress after every batch and poll ``cancel()`` before every batch
  (:class:`~CervixAutoSegLib.errors.Cancelled`).

:class:`SliceInferer` takes ``(n_slices, C, H, W)`` and returns arg-max labels ``(n_slices, H, W)``;
:class:`SlidingWindowInferer` takes ``(C, Z, Y, X)`` and returns ``(Z, Y, X)``, blending
overlapping windows with a Gaussian importance map (MONAI ``sliding_window_inference``).
Calling an inferer gives ``(labels, info)``; :meth:`Inferer.infer` also gives the :class:`Evidence`.
:func:`prepare_network` folds BatchNorm into convolutions and sets the memory format.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .devices import is_out_of_memory, release_cached_memory
from .errors import Cancelled, InputError
from .heap import retained_heap
from .inference_options import InferenceInfo, InferenceOptions
from .precision import autocast, choose_precision
from .qa.config import SelectiveFlip
from .qa.maps import UNIT

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (items done, items in all) after each batch."""
CancelCheck = Callable[[], bool]


# ------------------------------------------------------------------ network preparation
def fuse_conv_batchnorm(conv: nn.Conv2d | nn.Conv3d, bn: nn.BatchNorm2d | nn.BatchNorm3d) -> nn.Module:
    """A convolution equal to ``bn(conv(x))`` for an eval-mode BatchNorm.

    BN(y) = γ (y - μ) / sqrt(σ² + ε) + β, so with s = γ / sqrt(σ² + ε):
    W' = W · s (per output channel), b' = (b - μ) · s + β.
    """
    # Built on the meta device and given its computed weights: no random initialisation to throw
    # away (0.13 s per CT network), and no nn.utils.skip_init, whose to_empty imports sympy (0.5 s).
    with torch.device("meta"):
        fused = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                           padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                           padding_mode=conv.padding_mode)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.weight = nn.Parameter(conv.weight * scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1)))
        fused.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
    return fused


_FUSABLE = ((nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def fuse_batchnorms(module: nn.Module) -> int:
    """Fold every BatchNorm registered right after a convolution of the same module into it.

    Relies on child registration order following data flow (true for ``nn.Sequential``
    and for the ResNet/U-Net blocks of this package: ``conv1, bn1, ..., conv2, bn2``).
    The BatchNorm is replaced by ``nn.Identity``.  Returns the number of fused pairs.
    """
    fused = 0
    for parent in module.modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (any(isinstance(conv, c) and isinstance(bn, b) for c, b in _FUSABLE) and bn.track_running_stats
                    and bn.num_features == conv.out_channels and bn.running_mean is not None):
                setattr(parent, conv_name, fuse_conv_batchnorm(conv, bn))
                setattr(parent, bn_name, nn.Identity())
                fused += 1
    return fused


class LayoutKeepingInstanceNorm(nn.Module):
    """An InstanceNorm whose output keeps its input's memory layout (channels-last stays).

    ``torch.instance_norm`` runs batch norm over a (1, N*C, ...) view of its input, which it
    first makes contiguous: on a channels-last 3D feature map that is a copy in and a copy out,
    55 % of a PocketNet window's CPU time.  Group norm with one group per channel is the same
    normalisation (biased variance, the same eps, affine weight and bias shared with the module
    it replaces), and its CPU kernel works on channels-last data as it lies — but it takes the
    variance as E[x²] - E[x]², which loses float32 digits once a channel's mean is large
    against its spread (0.03 logits over a PocketNet window, labels changed).  So only bf16/fp16
    feature maps, whose own rounding is coarser than that, take the group-norm path; float32
    ones are normalised by ``instance_norm`` as before.
    """

    def __init__(self, norm: nn.modules.instancenorm._InstanceNorm):
        super().__init__()
        self.channels, self.eps, self.weight, self.bias = norm.num_features, norm.eps, norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, C, *spatial), any memory format → same shape (bf16/fp16: same format)."""
        if x.dtype in (torch.bfloat16, torch.float16):
            return nn.functional.group_norm(x, self.channels, self.weight, self.bias, self.eps)
        return nn.functional.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


def keep_layout_in_instance_norms(module: nn.Module) -> int:
    """Replace every InstanceNorm without running statistics by :class:`LayoutKeepingInstanceNorm`;
    returns how many were replaced."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.instancenorm._InstanceNorm) and not child.track_running_stats:
                setattr(parent, name, LayoutKeepingInstanceNorm(child))
                replaced += 1
    return replaced


def memory_format(spatial_dims: int, channels_last: bool) -> torch.memory_format:
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def in_layout(tensor: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """``tensor`` (N, C, *spatial) laid out as ``layout``, a one-channel tensor included.

    ``contiguous(memory_format=channels_last)`` leaves a one-channel tensor as it is (its strides
    fit both layouts), and oneDNN then writes a 1x1 convolution of it channels-first: in PocketNet's
    input block that branch's output meets the channels-last one in the residual sum, an
    element-wise add across layouts (0.12 s of a 1.0 s window, against 0.01 s).  So one channel gets
    the layout's own strides.
    """
    if layout == torch.contiguous_format or tensor.shape[1] != 1:
        return tensor.contiguous(memory_format=layout)
    return torch.empty_like(tensor, memory_format=layout).copy_(tensor)


def prepare_network(network: nn.Module, device: torch.device, options: InferenceOptions = InferenceOptions(),
                    spatial_dims: int = 2) -> nn.Module:
    """Eval mode, BN folded (optional), channels-last (optional; InstanceNorms then keep the layout), on ``device``."""
    network = network.eval()
    if options.fuse_batchnorm:
        fuse_batchnorms(network)
    network = network.to(device)
    if options.channels_last:
        keep_layout_in_instance_norms(network)
        network = network.to(memory_format=memory_format(spatial_dims, True))
    return network


# ------------------------------------------------------------------ shared policies
class _Attempt:
    """Device, precision and batch size of the current try; :meth:`shrink` after an out-of-memory."""

    def __init__(self, options: InferenceOptions, device: torch.device, default_batch: dict[str, int]):
        self.options = options
        self.default_batch = default_batch
        self.device = device
        self.precision = choose_precision(options.precision, device)
        self.batch_size = options.batch_size or default_batch.get(device.type, 1)
        self.info = InferenceInfo(device=str(device), precision=self.precision, batch_size=self.batch_size,
                                  flip_tta=options.flip_tta)

    def shrink(self, error: BaseException, network: nn.Module) -> nn.Module:
        """Smaller batch, else the CPU; re-raises ``error`` when it is not an out-of-memory."""
        if not is_out_of_memory(error):
            raise error
        self.info.out_of_memory_retries += 1
        release_cached_memory(self.device)
        if self.batch_size > 1:
            self.batch_size = max(self.batch_size // 2, 1)
            log.warning("out of memory on %s; retrying with batches of %d", self.device, self.batch_size)
        elif self.device.type != "cpu":
            log.warning("out of memory on %s even for one item; continuing on the CPU (slower)", self.device)
            self.device = torch.device("cpu")
            network = network.to(self.device)
            self.precision = choose_precision(self.options.precision, self.device)
            self.batch_size = self.options.batch_size or self.default_batch["cpu"]
            self.info.fell_back_to_cpu = True
            self.info.device, self.info.precision = str(self.device), self.precision
        else:
            raise InputError("not enough memory to run the network even on one item on the CPU") from error
        self.info.batch_size = self.batch_size
        return network


def _check_cancel(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the user")


def softmax_pair(network: nn.Module, inputs: torch.Tensor, layout: torch.memory_format = torch.contiguous_format
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 softmax (class axis 1) of ``network(inputs)`` and of the x-mirrored input mirrored back."""
    plain = network(inputs).float().softmax(dim=1)
    mirrored = network(in_layout(inputs.flip(-1), layout)).float().softmax(dim=1).flip(-1)
    return plain, mirrored


def mirrored_softmax(network: nn.Module, inputs: torch.Tensor, flip: bool,
                     layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Softmax of ``network(inputs)`` (class axis 1), plus that of the x-mirrored input mirrored back."""
    if not flip:
        return network(inputs).float().softmax(dim=1)
    plain, mirrored = softmax_pair(network, inputs, layout)
    return plain + mirrored


def class_argmax(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Index (uint8) of the largest score along the class axis ``dim``, the first one on a tie as
    ``argmax`` gives, by a running comparison over the classes.

    ``argmax`` over a short class axis that is not the innermost walks the tensor with a stride:
    0.59 s on a 2 x 48 x 506 x 256 float32 map of one MR stage, 7 ms class by class.
    """
    best = scores.select(dim, 0)
    labels = torch.zeros(best.shape, dtype=torch.uint8, device=scores.device)
    for index in range(1, scores.shape[dim]):
        candidate = scores.select(dim, index)
        better = candidate > best
        labels.masked_fill_(better, index)
        best = torch.maximum(best, candidate)
    return labels


def top2_uncertainty(probabilities: torch.Tensor) -> torch.Tensor:
    """1 − (largest − second-largest probability) over class axis 1: (N, C, ...) → (N, ...) in [0, 1].

    Class by class for the reason :func:`class_argmax` gives.
    """
    first = probabilities[:, 0]
    second = torch.full_like(first, -math.inf)
    for index in range(1, probabilities.shape[1]):
        candidate = probabilities[:, index]
        second = torch.maximum(second, torch.minimum(first, candidate))
        first = torch.maximum(first, candidate)
    return 1.0 - (first - second)


def uncertain_fraction(uncertainty: torch.Tensor, gate: SelectiveFlip) -> torch.Tensor:
    """Per item (axis 0), the share of pixels whose top-2 margin is below the gate's margin."""
    return (uncertainty > 1.0 - gate.uncertain_below_margin).flatten(1).float().mean(dim=1)


def _to_unit8(values: torch.Tensor) -> np.ndarray:
    return (values.clamp(0.0, 1.0) * UNIT).round_().to(torch.uint8).cpu().numpy()


@dataclasses.dataclass
class Evidence:
    """What an inferer saw besides the labels; every array has the labels' shape.

    Attributes:
        uncertainty: uint8 ``UNIT`` × (1 − top-2 margin) of the final (averaged) softmax.
        disagreement: uint8 ``UNIT`` where the plain and mirrored arg-max differ (blended over
            windows), None when nothing was mirrored.
        mirrored: bool, where a mirrored pass ran.
    """

    uncertainty: np.ndarray
    disagreement: np.ndarray | None
    mirrored: np.ndarray


class Inferer(abc.ABC):
    """Runs a prepared network over one preprocessed image and returns arg-max labels.

    Args:
        options: batch size, precision, flip TTA (and overlap for windows).
        gate: when to mirror an item (selective flip TTA, from the model card's ``qa.selective_tta``);
            None, or ``options.selective_tta`` False, mirrors every item when ``options.flip_tta``.
    """

    default_batch: dict[str, int] = {"cpu": 1, "cuda": 1, "mps": 1}

    def __init__(self, options: InferenceOptions = InferenceOptions(), gate: SelectiveFlip | None = None):
        self.options = options
        self.gate = gate if options.flip_tta and options.selective_tta else None

    def __call__(self, network: nn.Module, inputs: np.ndarray, *, device: torch.device | str = "cpu",
                 progress: Progress | None = None, cancel: CancelCheck | None = None
                 ) -> tuple[np.ndarray, InferenceInfo]:
        """Labels uint8 for ``inputs`` and what ran; see the subclass for the shapes."""
        labels, _, info = self.infer(network, inputs, device=device, progress=progress, cancel=cancel)
        return labels, info

    @abc.abstractmethod
    def infer(self, network: nn.Module, inputs: np.ndarray, *, device: torch.device | str = "cpu",
              progress: Progress | None = None, cancel: CancelCheck | None = None
              ) -> tuple[np.ndarray, Evidence, InferenceInfo]:
        """Labels, the :class:`Evidence` beside them, and what ran."""

    def _attempt(self, device: torch.device | str) -> _Attempt:
        attempt = _Attempt(self.options, torch.device(device), self.default_batch)
        attempt.info.selective_tta = self.gate.to_json() if self.gate is not None else None
        return attempt


class SliceInferer(Inferer):
    """A 2D network over a stack of slices: ``(n, C, H, W)`` float32 → labels ``(n, H, W)`` uint8.

    Selective flip TTA runs in two rounds: the plain pass over every slice, keeping the softmax
    (float16) of the slices the gate finds uncertain — at most ``max_mirrored_fraction`` of them, the
    most uncertain — then the mirrored pass over those alone.
    """

    default_batch = {"cpu": 4, "cuda": 16, "mps": 8}
    """Slices per forward pass.  CPU: large enough to keep both cores' GEMMs busy, small enough
    that the 64-channel full-resolution activations of a batch stay in the last-level cache's
    neighbourhood (measured with ``cervixautoseg benchmark ct``)."""

    def infer(self, network, inputs, *, device="cpu", progress=None, cancel=None):
        run = _SliceRun(self, network, inputs, self._attempt(device), progress, cancel)
        with torch.inference_mode(), retained_heap():
            run.first_pass()
            if self.gate is not None:
                run.mirror(run.chosen())
        return run.labels, run.evidence(), run.attempt.info


class _SliceRun:
    """State of one :class:`SliceInferer` call (labels and evidence filled batch by batch)."""

    def __init__(self, inferer: SliceInferer, network: nn.Module, inputs: np.ndarray, attempt: _Attempt,
                 progress: Progress | None, cancel: CancelCheck | None):
        self.inferer, self.network, self.inputs, self.attempt = inferer, network, inputs, attempt
        self.progress, self.cancel, self.gate = progress, cancel, inferer.gate
        self.flip_all = inferer.options.flip_tta and self.gate is None
        n = int(inputs.shape[0])
        shape = (n,) + tuple(inputs.shape[2:])
        self.labels, self.uncertainty = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
        self.disagreement = np.zeros(shape, np.uint8) if inferer.options.flip_tta else None
        self.mirrored = np.zeros(n, bool)
        self.fraction = np.zeros(n)
        self.kept: dict[int, torch.Tensor] = {}
        cap = self.gate.max_mirrored_fraction if self.gate is not None else None
        self.budget = n if cap is None else int(math.ceil(cap * n))
        self.total = n + (self.budget if self.gate is not None else 0)
        self.layout = memory_format(2, inferer.options.channels_last)
        attempt.info.item_shape = tuple(int(s) for s in inputs.shape[1:])
        attempt.info.items = n

    def _tensor(self, chunk: np.ndarray) -> torch.Tensor:
        inputs = torch.from_numpy(np.ascontiguousarray(self.inputs[chunk], dtype=np.float32))
        return in_layout(inputs.to(self.attempt.device, non_blocking=True), self.layout)

    def _batches(self, indices: np.ndarray, step: Callable[[np.ndarray], None], done: int) -> None:
        """``step(chunk)`` over ``indices`` in batches, with the out-of-memory policy, cancel and progress."""
        start = 0
        while start < len(indices):
            _check_cancel(self.cancel)
            chunk = indices[start:start + self.attempt.batch_size]
            try:
                step(chunk)
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, anything else re-raised
                self.network = self.attempt.shrink(error, self.network)
                continue
            start += len(chunk)
            if self.progress is not None:
                self.progress(done + start, self.total)

    def first_pass(self) -> None:
        self._batches(np.arange(len(self.labels)), self._plain_step, 0)

    def _plain_step(self, chunk: np.ndarray) -> None:
        inputs = self._tensor(chunk)
        with autocast(self.attempt.device, self.attempt.precision):
            if self.flip_all:
                plain, mirrored = softmax_pair(self.network, inputs, self.layout)
            else:
                plain, mirrored = self.network(inputs).float().softmax(dim=1), None
        self._store(chunk, plain, mirrored)
        self.attempt.info.passes += len(chunk) * (2 if self.flip_all else 1)
        if self.gate is not None:
            self._keep_uncertain(chunk, plain)

    def _store(self, chunk: np.ndarray, plain: torch.Tensor, mirrored: torch.Tensor | None) -> None:
        """Labels and evidence of ``chunk`` from its plain (and mirrored) softmax."""
        if mirrored is None:
            scores, mean = plain, plain
        else:
            scores = plain + mirrored  # the sum, as full flip TTA always did: bit-identical labels
            mean = scores / 2
            self.disagreement[chunk] = _to_unit8((class_argmax(plain) != class_argmax(mirrored)).float())
            self.mirrored[chunk] = True
            self.attempt.info.mirrored_items += len(chunk)
        self.labels[chunk] = class_argmax(scores).cpu().numpy()
        self.uncertainty[chunk] = _to_unit8(top2_uncertainty(mean))

    def _keep_uncertain(self, chunk: np.ndarray, plain: torch.Tensor) -> None:
        """Remember the softmax of the items above the gate; only the ``budget`` most uncertain ones."""
        fraction = uncertain_fraction(top2_uncertainty(plain), self.gate).cpu().numpy()
        self.fraction[chunk] = fraction
        for position, index in enumerate(chunk.tolist()):
            if fraction[position] > self.gate.min_uncertain_fraction:
                self.kept[index] = plain[position].to("cpu", torch.float16)
        if len(self.kept) > self.budget:
            for index in sorted(self.kept, key=lambda i: self.fraction[i])[:len(self.kept) - self.budget]:
                del self.kept[index]

    def chosen(self) -> np.ndarray:
        chosen = np.array(sorted(self.kept), dtype=np.intp)
        self.total = len(self.labels) + len(chosen)
        return chosen

    def mirror(self, chosen: np.ndarray) -> None:
        self._batches(chosen, self._mirror_step, len(self.labels))
        self.kept.clear()

    def _mirror_step(self, chunk: np.ndarray) -> None:
        inputs = self._tensor(chunk)
        with autocast(self.attempt.device, self.attempt.precision):
            mirrored = self.network(in_layout(inputs.flip(-1), self.layout)).float().softmax(dim=1)
        plain = torch.stack([self.kept[i] for i in chunk.tolist()]).to(mirrored.device, torch.float32)
        self._store(chunk, plain, mirrored.flip(-1))
        self.attempt.info.passes += len(chunk)

    def evidence(self) -> Evidence:
        mirrored = np.broadcast_to(self.mirrored[:, None, None], self.labels.shape)
        return Evidence(self.uncertainty, self.disagreement if self.mirrored.any() else None, mirrored)


class SlidingWindowInferer(Inferer):
    """A 3D network over overlapping windows: ``(C, Z, Y, X)`` float32 → labels ``(Z, Y, X)`` uint8.

    Args:
        roi_size: window ``(z, y, x)`` in voxels; each must suit the network's strides.  An
            image smaller than the window is padded by MONAI (and cropped back).
        options: as :class:`Inferer`; ``options.overlap`` between windows, Gaussian blending.
        gate: as :class:`Inferer`.  Windows are decided one batch at a time (MONAI visits them in
            order), so ``max_mirrored_fraction`` is a running budget: once spent, no more windows
            are mirrored.

    Each window's softmax is the average of its plain and mirrored pass when it was mirrored, so
    mirrored and plain windows blend on the same scale.
    """

    default_batch = {"cpu": 1, "cuda": 2, "mps": 1}

    def __init__(self, roi_size: Sequence[int], options: InferenceOptions = InferenceOptions(),
                 gate: SelectiveFlip | None = None):
        super().__init__(options, gate)
        self.roi_size = tuple(int(s) for s in roi_size)

    def window_count(self, shape: Sequence[int]) -> int:
        """Windows MONAI visits on an image of ``shape`` (z, y, x) with this overlap."""
        count = 1
        for size, roi in zip(shape, self.roi_size):
            step = max(int(roi * (1.0 - self.options.overlap)), 1)
            count *= 1 if size <= roi else math.ceil((size - roi) / step) + 1
        return count

    def infer(self, network, inputs, *, device="cpu", progress=None, cancel=None):
        blended, info = self._blended(network, inputs, device, progress, cancel)
        classes = blended.shape[0] - (2 if self.options.flip_tta else 0)
        probabilities = blended[:classes]
        labels = class_argmax(probabilities, dim=0).numpy()
        uncertainty = _to_unit8(top2_uncertainty(probabilities[None])[0])
        if not self.options.flip_tta:
            return labels, Evidence(uncertainty, None, np.zeros(labels.shape, bool)), info
        mirrored = blended[classes + 1] >= 0.5
        disagreement = _to_unit8(blended[classes]) if info.mirrored_items else None
        return labels, Evidence(uncertainty, disagreement, mirrored.numpy()), info

    def scores(self, network: nn.Module, inputs: np.ndarray, *, device: torch.device | str = "cpu",
               progress: Progress | None = None, cancel: CancelCheck | None = None
               ) -> tuple[torch.Tensor, InferenceInfo]:
        """Blended softmax ``(classes, Z, Y, X)`` float32 on the CPU (each mirrored window's the average
        of its two passes), and what ran."""
        blended, info = self._blended(network, inputs, device, progress, cancel)
        return blended[:blended.shape[0] - (2 if self.options.flip_tta else 0)], info

    def _blended(self, network: nn.Module, inputs: np.ndarray, device: torch.device | str,
                 progress: Progress | None, cancel: CancelCheck | None) -> tuple[torch.Tensor, InferenceInfo]:
        attempt = self._attempt(device)
        attempt.info.item_shape = (int(inputs.shape[0]),) + self.roi_size
        while True:
            try:
                return self._blend(network, inputs, attempt, progress, cancel), attempt.info
            except Cancelled:
                raise
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, anything else re-raised
                network = attempt.shrink(error, network)

    def _blend(self, network: nn.Module, inputs: np.ndarray, attempt: _Attempt, progress: Progress | None,
               cancel: CancelCheck | None) -> torch.Tensor:
        """Gaussian-blended ``(classes [+ disagreement + mirrored], Z, Y, X)`` float32 on the CPU."""
        from monai.inferers import sliding_window_inference

        total = self.window_count(inputs.shape[1:])
        attempt.info.passes = attempt.info.mirrored_items = 0  # a retry after an out-of-memory starts again
        attempt.info.items = total
        window = _WindowPredictor(self, network, attempt, total, progress, cancel)
        image = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))[None]
        with torch.inference_mode(), retained_heap():
            blended = sliding_window_inference(
                image, roi_size=self.roi_size, sw_batch_size=attempt.batch_size, predictor=window,
                overlap=self.options.overlap, mode="gaussian", sw_device=attempt.device, device=torch.device("cpu"),
            )
        return blended[0]


class _WindowPredictor:
    """MONAI's predictor: plain softmax of each window, averaged with the mirrored one where it pays;
    with flip TTA two extra channels say where the passes disagreed and where a mirrored pass ran."""

    def __init__(self, inferer: SlidingWindowInferer, network: nn.Module, attempt: _Attempt, total: int,
                 progress: Progress | None, cancel: CancelCheck | None):
        self.inferer, self.network, self.attempt, self.total = inferer, network, attempt, total
        self.progress, self.cancel, self.gate = progress, cancel, inferer.gate
        cap = self.gate.max_mirrored_fraction if self.gate is not None else None
        self.budget = total if cap is None else int(math.ceil(cap * total))
        self.done = 0
        self.layout = memory_format(3, inferer.options.channels_last)

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        _check_cancel(self.cancel)
        windows = in_layout(windows.to(self.attempt.device), self.layout)
        with autocast(self.attempt.device, self.attempt.precision):
            plain = self.network(windows).float().softmax(dim=1)
            out = self._with_mirrored(windows, plain) if self.inferer.options.flip_tta else plain
        count = int(windows.shape[0])
        self.done += count
        self.attempt.info.passes += count
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)
        return out.float()

    def _which(self, plain: torch.Tensor) -> torch.Tensor:
        """Indices of the windows of this batch to mirror (all of them without a gate)."""
        if self.gate is None:
            return torch.arange(plain.shape[0], device=plain.device)
        fraction = uncertain_fraction(top2_uncertainty(plain), self.gate)
        order = torch.argsort(fraction, descending=True)
        wanted = order[fraction[order] > self.gate.min_uncertain_fraction]
        return wanted[:max(self.budget - self.attempt.info.mirrored_items, 0)]

    def _with_mirrored(self, windows: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
        chosen = self._which(plain)
        extra = torch.zeros((plain.shape[0], 2) + tuple(plain.shape[2:]), device=plain.device)
        if len(chosen):
            subset = in_layout(windows[chosen].flip(-1), self.layout)
            mirrored = self.network(subset).float().softmax(dim=1).flip(-1)
            extra[chosen, 0] = (class_argmax(plain[chosen]) != class_argmax(mirrored)).float()
            extra[chosen, 1] = 1.0
            plain = plain.clone()
            plain[chosen] = (plain[chosen] + mirrored) / 2
            self.attempt.info.passes += len(chosen)
            self.attempt.info.mirrored_items += len(chosen)
        return torch.cat([plain, extra], dim=1)
