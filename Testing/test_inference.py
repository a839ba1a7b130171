"""Slice-batch inference: arg-max per slice, BN folding, batching, OOM fallback, cancel, progress."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from CervixAutoSegLib.ct.inference import (
    InferenceOptions,
    choose_precision,
    fuse_batchnorms,
    predict_slices,
    prepare_network,
)
from CervixAutoSegLib.errors import Cancelled, InputError

CLASSES = 5


class IntensityClassifier(nn.Module):
    """Logits that make class = round(4 * intensity): the right answer is known per pixel.

    ``oom_above``: raise an out-of-memory error for batches larger than this;
    ``oom_on``: raise it for every input on this device type (an accelerator that is full).
    """

    def __init__(self, oom_above: int | None = None, oom_on: str | None = None):
        super().__init__()
        self.oom_above = oom_above
        self.oom_on = oom_on
        self.batch_sizes: list[int] = []
        self.devices: list[str] = []
        self.register_buffer("centres", torch.arange(CLASSES, dtype=torch.float32) / (CLASSES - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        self.devices.append(x.device.type)
        if self.oom_on == x.device.type or (self.oom_above is not None and x.shape[0] > self.oom_above):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return -((x - self.centres.to(x.device).view(1, CLASSES, 1, 1)) ** 2)


def expected_labels(batch: np.ndarray) -> np.ndarray:
    return np.rint(batch[:, 0] * (CLASSES - 1)).astype(np.uint8)


@pytest.fixture
def batch() -> np.ndarray:
    rng = np.random.default_rng(3)
    values = rng.integers(0, CLASSES, size=(11, 1, 32, 48)) / (CLASSES - 1)
    return values.astype(np.float32)


def test_labels_are_the_per_pixel_argmax_in_input_order(batch):
    labels, info = predict_slices(IntensityClassifier(), batch, options=InferenceOptions(batch_size=4, precision="fp32"))
    assert labels.dtype == np.uint8 and labels.shape == (11, 32, 48)
    np.testing.assert_array_equal(labels, expected_labels(batch))
    assert info.batch_size == 4 and not info.fell_back_to_cpu


def test_progress_after_every_batch_and_cancel_between_batches(batch):
    seen = []
    predict_slices(IntensityClassifier(), batch, options=InferenceOptions(batch_size=4, precision="fp32"),
                   progress=lambda done, total: seen.append((done, total)))
    assert seen == [(4, 11), (8, 11), (11, 11)]

    network = IntensityClassifier()
    calls = iter([False, False, True])
    with pytest.raises(Cancelled):
        predict_slices(network, batch, options=InferenceOptions(batch_size=4, precision="fp32"),
                       cancel=lambda: next(calls))
    assert network.batch_sizes == [4, 4, 4, 4]  # two batches (plain + mirrored pass each), not the third


def test_out_of_memory_halves_the_batch_and_retries_the_same_slices(batch):
    network = IntensityClassifier(oom_above=2)
    labels, info = predict_slices(network, batch, options=InferenceOptions(batch_size=8, precision="fp32"))
    np.testing.assert_array_equal(labels, expected_labels(batch))
    assert network.batch_sizes[:3] == [8, 4, 2]
    assert info.batch_size == 2 and info.out_of_memory_retries == 2


def test_accelerator_out_of_memory_at_one_slice_falls_back_to_cpu(batch, caplog):
    # The "meta" device stands in for a full GPU: every forward there runs out of memory.
    network = IntensityClassifier(oom_on="meta")
    labels, info = predict_slices(network, batch, device="meta",
                                  options=InferenceOptions(batch_size=2, precision="fp32"))
    np.testing.assert_array_equal(labels, expected_labels(batch))
    assert info.fell_back_to_cpu and info.device == "cpu"
    assert network.devices[:2] == ["meta", "meta"] and set(network.devices[2:]) == {"cpu"}
    assert "continuing on the CPU" in caplog.text


def test_flip_tta_averages_the_mirrored_softmax_and_makes_the_labels_mirror_equivariant():
    torch.manual_seed(0)
    network = nn.Conv2d(1, CLASSES, kernel_size=(3, 7), padding=(1, 3)).eval()  # not mirror-symmetric
    slices = np.random.default_rng(5).random((3, 1, 16, 24)).astype(np.float32)
    mirrored = np.ascontiguousarray(slices[..., ::-1])
    fp32_tta, fp32_plain = (InferenceOptions(precision="fp32", flip_tta=flag) for flag in (True, False))

    tta, info = predict_slices(network, slices, options=fp32_tta)
    assert info.flip_tta
    with torch.no_grad():
        x = torch.from_numpy(slices)
        by_hand = network(x).softmax(1) + network(x.flip(-1)).softmax(1).flip(-1)
    np.testing.assert_array_equal(tta, by_hand.argmax(1).numpy())
    np.testing.assert_array_equal(predict_slices(network, mirrored, options=fp32_tta)[0], tta[..., ::-1])
    plain = predict_slices(network, slices, options=fp32_plain)[0]
    assert not np.array_equal(predict_slices(network, mirrored, options=fp32_plain)[0], plain[..., ::-1])


def test_cpu_out_of_memory_at_one_slice_is_a_clear_error(batch):
    with pytest.raises(InputError, match="not enough memory"):
        predict_slices(IntensityClassifier(oom_above=0), batch, options=InferenceOptions(batch_size=1, precision="fp32"))


def test_other_errors_are_not_swallowed(batch):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        predict_slices(Broken(), batch, options=InferenceOptions(precision="fp32"))


def _network_with_trained_looking_batchnorm() -> nn.Module:
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, CLASSES, 3, padding=1, bias=True), nn.BatchNorm2d(CLASSES),
    )
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.3, 3.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
    return network.eval()


def test_batchnorm_folding_keeps_the_output():
    network = _network_with_trained_looking_batchnorm()
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        reference = network(x)
        fused = copy.deepcopy(network)
        assert fuse_batchnorms(fused) == 2
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        torch.testing.assert_close(fused(x), reference, rtol=1e-5, atol=1e-5)


def test_resaunet_folding_and_channels_last_keep_the_labels():
    from CervixAutoSegLib.ct.network import ResAUNet

    torch.manual_seed(1)
    network = ResAUNet().eval()
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.uniform_(-0.2, 0.2)
    batch = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        reference = network(batch)
    prepared = prepare_network(copy.deepcopy(network), torch.device("cpu"),
                               InferenceOptions(precision="fp32", channels_last=True, fuse_batchnorm=True))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    with torch.no_grad():
        fused = prepared(batch.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fused, reference, rtol=1e-3, atol=1e-4)


def test_precision_choice():
    assert choose_precision("auto", torch.device("cuda")) == "fp16"
    assert choose_precision("auto", torch.device("cpu")) in ("bf16", "fp32")
    assert choose_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(InputError, match="fp16"):
        choose_precision("fp16", torch.device("cpu"))
    with pytest.raises(InputError):
        InferenceOptions(precision="int8")


def test_flop_count_of_a_convolution_and_of_resaunet():
    from CervixAutoSegLib.benchmarks.ct import count_flops
    from CervixAutoSegLib.ct.network import ResAUNet

    conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
    # 8 output channels x 16 x 16 output pixels x (3 x 3 x 3) multiply-adds x 2 FLOPs
    assert count_flops(conv, (1, 3, 32, 32)) == 2 * 8 * 16 * 16 * 27
    # DESIGN.md: about 15.5 GFLOP per 256x256 slice.
    assert count_flops(ResAUNet().eval(), (1, 1, 256, 256)) / 1e9 == pytest.approx(15.5, rel=0.02)
