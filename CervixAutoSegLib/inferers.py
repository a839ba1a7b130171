"""Run a prepared network over a whole preprocessed image: 2D slice batches or 3D sliding windows.

Both inferers (MONAI's ``Inferer`` idea, with the policies a clinical tool needs):

* run under ``torch.inference_mode`` in batches, so memory is bounded by the batch, not by
  the image;
* use mixed precision where it pays (:mod:`.precision`);
* optionally add the left-right mirrored pass (flip test-time augmentation): the softmax of
  the mirrored input is mirrored back and added, so the result is exactly equivariant under
  mirroring along the array's last axis (x, the patient's left-right in the LPS layout the
  families feed);
* on an accelerator out-of-memory error halve the batch and retry; when even one item does
  not fit, move the network to the CPU, log a warning and carry on (same result, slower);
* report progress after every batch and poll ``cancel()`` before every batch
  (:class:`~CervixAutoSegLib.errors.Cancelled`).

:class:`SliceInferer` takes ``(n_slices, C, H, W)`` and returns arg-max labels ``(n_slices, H, W)``;
:class:`SlidingWindowInferer` takes ``(C, Z, Y, X)`` and returns ``(Z, Y, X)``, blending
overlapping windows with a Gaussian importance map (MONAI ``sliding_window_inference``).
:func:`prepare_network` folds BatchNorm into convolutions and sets the memory format.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .devices import is_out_of_memory, release_cached_memory
from .errors import Cancelled, InputError
from .inference_options import InferenceInfo, InferenceOptions
from .precision import autocast, choose_precision

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
    fused = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                       padding_mode=conv.padding_mode).to(conv.weight.device)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(conv.weight * scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1)))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
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


def memory_format(spatial_dims: int, channels_last: bool) -> torch.memory_format:
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def prepare_network(network: nn.Module, device: torch.device, options: InferenceOptions = InferenceOptions(),
                    spatial_dims: int = 2) -> nn.Module:
    """Eval mode, BN folded (optional), channels-last (optional), on ``device``."""
    network = network.eval()
    if options.fuse_batchnorm:
        fuse_batchnorms(network)
    network = network.to(device)
    if options.channels_last:
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


def mirrored_softmax(network: nn.Module, inputs: torch.Tensor, flip: bool,
                     layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Softmax of ``network(inputs)`` (class axis 1), plus that of the x-mirrored input mirrored back."""
    scores = network(inputs).float().softmax(dim=1)
    if flip:
        mirrored = network(inputs.flip(-1).contiguous(memory_format=layout))
        scores += mirrored.float().softmax(dim=1).flip(-1)
    return scores


class Inferer(abc.ABC):
    """Runs a prepared network over one preprocessed image and returns arg-max labels.

    Args:
        options: batch size, precision, flip TTA (and overlap for windows).
    """

    default_batch: dict[str, int] = {"cpu": 1, "cuda": 1, "mps": 1}

    def __init__(self, options: InferenceOptions = InferenceOptions()):
        self.options = options

    @abc.abstractmethod
    def __call__(self, network: nn.Module, inputs: np.ndarray, *, device: torch.device | str = "cpu",
                 progress: Progress | None = None, cancel: CancelCheck | None = None
                 ) -> tuple[np.ndarray, InferenceInfo]:
        """Labels uint8 for ``inputs`` and what ran; see the subclass for the shapes."""


class SliceInferer(Inferer):
    """A 2D network over a stack of slices: ``(n, C, H, W)`` float32 → labels ``(n, H, W)`` uint8."""

    default_batch = {"cpu": 4, "cuda": 16, "mps": 8}
    """Slices per forward pass.  CPU: large enough to keep both cores' GEMMs busy, small enough
    that the 64-channel full-resolution activations of a batch stay in the last-level cache's
    neighbourhood (measured with ``cervixautoseg benchmark ct``)."""

    def __call__(self, network, inputs, *, device="cpu", progress=None, cancel=None):
        attempt = _Attempt(self.options, torch.device(device), self.default_batch)
        total = int(inputs.shape[0])
        attempt.info.item_shape = tuple(int(s) for s in inputs.shape[1:])
        labels = np.zeros((total,) + tuple(inputs.shape[2:]), dtype=np.uint8)
        start = 0
        with torch.inference_mode():
            while start < total:
                _check_cancel(cancel)
                stop = min(start + attempt.batch_size, total)
                try:
                    labels[start:stop] = self.forward_argmax(network, inputs[start:stop], attempt)
                except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, anything else re-raised
                    network = attempt.shrink(error, network)
                    continue
                attempt.info.passes += (stop - start) * (2 if self.options.flip_tta else 1)
                start = stop
                if progress is not None:
                    progress(start, total)
        return labels, attempt.info

    def forward_argmax(self, network: nn.Module, slices: np.ndarray, attempt: _Attempt) -> np.ndarray:
        """(n, C, H, W) float32 → arg-max (n, H, W) uint8, computed on the attempt's device."""
        layout = memory_format(2, self.options.channels_last)
        inputs = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32)).to(attempt.device, non_blocking=True)
        inputs = inputs.contiguous(memory_format=layout)
        with autocast(attempt.device, attempt.precision):
            if not self.options.flip_tta:
                return network(inputs).argmax(dim=1).to(torch.uint8).cpu().numpy()
            scores = mirrored_softmax(network, inputs, flip=True, layout=layout)
        return scores.argmax(dim=1).to(torch.uint8).cpu().numpy()


class SlidingWindowInferer(Inferer):
    """A 3D network over overlapping windows: ``(C, Z, Y, X)`` float32 → labels ``(Z, Y, X)`` uint8.

    Args:
        roi_size: window ``(z, y, x)`` in voxels; each must suit the network's strides.  An
            image smaller than the window is padded by MONAI (and cropped back).
        options: as :class:`Inferer`; ``options.overlap`` between windows, Gaussian blending.
    """

    default_batch = {"cpu": 1, "cuda": 2, "mps": 1}

    def __init__(self, roi_size: Sequence[int], options: InferenceOptions = InferenceOptions()):
        super().__init__(options)
        self.roi_size = tuple(int(s) for s in roi_size)

    def window_count(self, shape: Sequence[int]) -> int:
        """Windows MONAI visits on an image of ``shape`` (z, y, x) with this overlap."""
        count = 1
        for size, roi in zip(shape, self.roi_size):
            step = max(int(roi * (1.0 - self.options.overlap)), 1)
            count *= 1 if size <= roi else math.ceil((size - roi) / step) + 1
        return count

    def __call__(self, network, inputs, *, device="cpu", progress=None, cancel=None):
        scores, info = self.scores(network, inputs, device=device, progress=progress, cancel=cancel)
        return scores.argmax(dim=0).to(torch.uint8).numpy(), info

    def scores(self, network: nn.Module, inputs: np.ndarray, *, device: torch.device | str = "cpu",
               progress: Progress | None = None, cancel: CancelCheck | None = None
               ) -> tuple[torch.Tensor, InferenceInfo]:
        """Blended softmax ``(classes, Z, Y, X)`` float32 on the CPU (summed over the mirrored
        pass when flip TTA is on), and what ran."""
        attempt = _Attempt(self.options, torch.device(device), self.default_batch)
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
        """Gaussian-blended softmax ``(classes, Z, Y, X)`` float32 on the CPU."""
        from monai.inferers import sliding_window_inference

        total = self.window_count(inputs.shape[1:])
        done = [0]
        attempt.info.passes = 0  # a retry after an out-of-memory starts the count again
        layout = memory_format(3, self.options.channels_last)

        def predict(windows: torch.Tensor) -> torch.Tensor:
            _check_cancel(cancel)
            windows = windows.to(attempt.device).contiguous(memory_format=layout)
            with autocast(attempt.device, attempt.precision):
                scores = mirrored_softmax(network, windows, flip=self.options.flip_tta, layout=layout)
            done[0] += int(windows.shape[0])
            attempt.info.passes += int(windows.shape[0]) * (2 if self.options.flip_tta else 1)
            if progress is not None:
                progress(min(done[0], total), total)
            return scores.float()

        image = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))[None]
        with torch.inference_mode():
            blended = sliding_window_inference(
                image, roi_size=self.roi_size, sw_batch_size=attempt.batch_size, predictor=predict,
                overlap=self.options.overlap, mode="gaussian", sw_device=attempt.device, device=torch.device("cpu"),
            )
        return blended[0]
