"""Slice-batch inference (the 2D inferer): arg-max per slice, BN folding, batching, OOM fallback, cancel, progress."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from CervixAutoSegLib.errors import Cancelled, InputError
from CervixAutoSegLib.inference_options import InferenceOptions
from CervixAutoSegLib.inferers import SliceInferer, fuse_batchnorms, prepare_network
from CervixAutoSegLib.precision import choose_precision

CLASSES = 5


def predict_slices(network, batch, *, device="cpu", options=InferenceOptions(), progress=None, cancel=None):
    return SliceInferer(options)(network, batch, device=device, progress=progress, cancel=cancel)


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
    from CervixAutoSegLib.benchmarks.flops import count_flops
    from CervixAutoSegLib.ct.network import ResAUNet

    conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
    # 8 output channels x 16 x 16 output pixels x (3 x 3 x 3) multiply-adds x 2 FLOPs
    assert count_flops(conv, (1, 3, 32, 32)) == 2 * 8 * 16 * 16 * 27
    # The ResAU-Net paper's backbone: about 15.5 GFLOP per 256x256 slice.
    assert count_flops(ResAUNet().eval(), (1, 1, 256, 256)) / 1e9 == pytest.approx(15.5, rel=0.02)


# ---------------------------------------------------------------- 3D sliding windows
class VoxelThreshold3D(nn.Module):
    """(N, 1, z, y, x) → 2 logits per voxel, class 1 where the voxel's value > 0.5 (known answer).

    ``mirror_bias``: adds a ramp along x to class 1, so that the plain network is *not*
    mirror-symmetric and flip TTA is what makes the answer equivariant.
    """

    def __init__(self, mirror_bias: float = 0.0, oom_above: int | None = None):
        super().__init__()
        self.mirror_bias, self.oom_above = mirror_bias, oom_above
        self.batch_sizes: list[int] = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        if self.oom_above is not None and x.shape[0] > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        ramp = torch.linspace(-1, 1, x.shape[-1]) * self.mirror_bias
        return torch.cat([torch.zeros_like(x), 8 * (x - 0.5) + ramp], dim=1)


def test_sliding_window_inferer_blends_windows_into_the_known_answer_and_reports_progress():
    from CervixAutoSegLib.inferers import SlidingWindowInferer

    image = np.random.default_rng(0).random((1, 13, 40, 37)).astype(np.float32)
    inferer = SlidingWindowInferer((8, 16, 16), InferenceOptions(precision="fp32", flip_tta=False, overlap=0.5))
    calls = []
    labels, info = inferer(VoxelThreshold3D(), image, progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_array_equal(labels, (image[0] > 0.5).astype(np.uint8))
    windows = inferer.window_count(image.shape[1:])
    assert windows == 3 * 4 * 4 and info.passes == windows and info.item_shape == (1, 8, 16, 16)
    assert calls[-1] == (windows, windows) and [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_sliding_window_flip_tta_is_mirror_equivariant_and_counts_both_passes():
    from CervixAutoSegLib.inferers import SlidingWindowInferer

    image = np.random.default_rng(1).random((1, 8, 24, 24)).astype(np.float32)
    network = VoxelThreshold3D(mirror_bias=0.6)
    tta = SlidingWindowInferer((8, 24, 24), InferenceOptions(precision="fp32", flip_tta=True))
    plain = SlidingWindowInferer((8, 24, 24), InferenceOptions(precision="fp32", flip_tta=False))
    labels, info = tta(network, image)
    np.testing.assert_array_equal(tta(network, image[..., ::-1].copy())[0], labels[..., ::-1])
    assert not np.array_equal(plain(network, image[..., ::-1].copy())[0], plain(network, image)[0][..., ::-1])
    assert info.passes == 2


def test_sliding_window_halves_the_batch_on_out_of_memory_and_cancels():
    from CervixAutoSegLib.inferers import SlidingWindowInferer

    image = np.random.default_rng(2).random((1, 8, 32, 32)).astype(np.float32)
    network = VoxelThreshold3D(oom_above=1)
    inferer = SlidingWindowInferer((8, 16, 16), InferenceOptions(precision="fp32", flip_tta=False, batch_size=4))
    labels, info = inferer(network, image)
    np.testing.assert_array_equal(labels, (image[0] > 0.5).astype(np.uint8))
    assert info.out_of_memory_retries == 2 and info.batch_size == 1 and set(network.batch_sizes) == {4, 2, 1}
    with pytest.raises(Cancelled):
        inferer(VoxelThreshold3D(), image, cancel=lambda: True)


# ------------------------------------------------------------------ layout-keeping instance norm
def _instance_norm_reference(norm: torch.nn.InstanceNorm3d, x: torch.Tensor) -> torch.Tensor:
    weight, bias = (norm.weight.double(), norm.bias.double()) if norm.affine else (None, None)
    return torch.nn.functional.instance_norm(x.double(), weight=weight, bias=bias, eps=norm.eps)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_layout_keeping_instance_norm_is_instance_norm_in_float32(affine, layout):
    """A realistic feature map whose mean is large against its spread: group norm's E[x²] - E[x]²
    would be off by 0.1 here, so float32 must take instance norm's path."""
    from CervixAutoSegLib.inferers import LayoutKeepingInstanceNorm

    torch.manual_seed(1)
    stock = torch.nn.InstanceNorm3d(4, affine=affine, eps=1e-5)
    if affine:
        torch.nn.init.normal_(stock.weight)
        torch.nn.init.normal_(stock.bias)
    x = (torch.randn(1, 4, 32, 128, 128) + 30).to(memory_format=layout)
    with torch.no_grad():
        got = LayoutKeepingInstanceNorm(stock)(x)
    torch.testing.assert_close(got.double(), _instance_norm_reference(stock, x), rtol=0, atol=1e-4)


def test_layout_keeping_instance_norm_keeps_bf16_channels_last_as_accurate_as_instance_norm():
    """bf16 feature maps stay channels-last, and at PocketNet's offsets (|mean| / std ≤ 2) the
    normalisation is as close to exact as torch's own instance norm of the same bf16 input."""
    from CervixAutoSegLib.inferers import LayoutKeepingInstanceNorm

    torch.manual_seed(3)
    stock = torch.nn.InstanceNorm3d(8, affine=False, eps=1e-5)
    x = (torch.randn(1, 8, 32, 128, 128) + 2.0).bfloat16().to(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        got = LayoutKeepingInstanceNorm(stock)(x)
        theirs = torch.nn.functional.instance_norm(x.float(), eps=1e-5).bfloat16()
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last_3d)
    exact = _instance_norm_reference(stock, x)
    assert float((got.double() - exact).abs().max()) <= 1.25 * float((theirs.double() - exact).abs().max())


def test_prepared_pocketnet_swaps_its_instance_norms_and_gives_the_same_logits():
    from CervixAutoSegLib.inferers import LayoutKeepingInstanceNorm
    from CervixAutoSegLib.mr.network import build_pocketnet

    torch.manual_seed(2)
    stock = build_pocketnet(1, 2, (64, 64, 16), (0.469, 0.469, 5.0), deep_supervision=False).eval()
    for module in stock.modules():  # non-trivial affine parameters
        if isinstance(module, torch.nn.InstanceNorm3d):
            torch.nn.init.normal_(module.weight, 1.0, 0.2)
            torch.nn.init.normal_(module.bias, 0.0, 0.2)
    x = torch.randn(1, 1, 16, 64, 64)
    with torch.no_grad():
        expected = stock(x)
    prepared = prepare_network(copy.deepcopy(stock), torch.device("cpu"), InferenceOptions(channels_last=True),
                               spatial_dims=3)
    assert not any(isinstance(m, torch.nn.InstanceNorm3d) for m in prepared.modules())
    assert sum(isinstance(m, LayoutKeepingInstanceNorm) for m in prepared.modules()) == sum(
        isinstance(m, torch.nn.InstanceNorm3d) for m in stock.modules()) > 0
    with torch.no_grad():
        got = prepared(x.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ layouts and class-axis reductions
def test_one_channel_input_gets_channels_last_strides_and_pocketnet_stays_channels_last():
    """``contiguous(memory_format=...)`` leaves a one-channel tensor ambiguous; the residual 1x1x1
    convolution of PocketNet's input block then wrote channels-first and met a channels-last map in the
    sum (in bf16, the CPU's inference precision; float32 1x1x1 convolutions write channels-first anyway)."""
    from CervixAutoSegLib.inferers import in_layout
    from CervixAutoSegLib.mr.network import build_pocketnet

    x = torch.randn(1, 1, 16, 64, 64)
    laid = in_layout(x, torch.channels_last_3d)
    assert laid.stride(1) == 1 and torch.equal(laid, x)
    assert in_layout(torch.randn(2, 3, 4, 5), torch.contiguous_format).is_contiguous()
    network = prepare_network(build_pocketnet(1, 2, (64, 64, 16), (0.469, 0.469, 5.0), deep_supervision=False),
                              torch.device("cpu"), InferenceOptions(channels_last=True), spatial_dims=3)
    outputs = {}
    network.input_block.conv3.register_forward_hook(lambda module, args, out: outputs.setdefault("residual", out))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        network(laid)
    residual = outputs["residual"]
    assert residual.is_contiguous(memory_format=torch.channels_last_3d) and not residual.is_contiguous()


@pytest.mark.parametrize("shape", [(3, 2, 7, 9), (1, 5, 4, 6, 8), (2, 1, 5, 5), (4, 6, 3)])
def test_class_argmax_and_top2_uncertainty_match_argmax_and_topk_ties_included(shape):
    from CervixAutoSegLib.inferers import class_argmax, top2_uncertainty

    generator = torch.Generator().manual_seed(sum(shape))
    scores = torch.randint(0, 4, shape, generator=generator).float() / 4  # many exact ties
    assert torch.equal(class_argmax(scores), scores.argmax(dim=1).to(torch.uint8))
    assert torch.equal(class_argmax(scores, dim=0), scores.argmax(dim=0).to(torch.uint8))
    if shape[1] >= 2:
        top = scores.topk(2, dim=1).values
        torch.testing.assert_close(top2_uncertainty(scores), 1.0 - (top[:, 0] - top[:, 1]), rtol=0, atol=0)


@pytest.mark.parametrize("model_id", ["ct-resaunet-phantom", "mr-pocketnet-phantom"])
def test_loading_and_preparing_a_bundled_network_imports_no_compiler_stack_and_leaves_nothing_on_meta(model_id):
    """A fresh interpreter, as a case runs: DynUNet's kaiming_normal_ on meta tensors imports
    torch._dynamo (1.1 s), and Module.to_empty (nn.utils.skip_init) imports sympy (0.5 s); the
    MR builder draws on the CPU and batch-norm folding assigns its computed weights instead."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from CervixAutoSegLib.families import get_family\n"
            "from CervixAutoSegLib.inferers import prepare_network\n"
            "from CervixAutoSegLib.models import find_model, load_network\n"
            "from CervixAutoSegLib.pipeline import inference_options\n"
            f"card = find_model({model_id!r})\n"
            "family = get_family(card.family)\n"
            "dims = 2 if card.family == 'ct' else 3\n"
            "nets = [prepare_network(load_network(card, n.role), torch.device('cpu'), inference_options(family),\n"
            "                        spatial_dims=dims) for n in card.networks]\n"
            "assert not any(t.is_meta for n in nets for t in (*n.parameters(), *n.buffers()))\n"
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"
