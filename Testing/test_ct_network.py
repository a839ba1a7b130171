"""ResAU-Net architecture: parameter count of the paper, torchvision names, attention gates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from CervixAutoSegLib.ct.attention import ChannelAttention, NoAttention, SpatialAttention, make_attention
from CervixAutoSegLib.ct.network import ResAUNet, build_network, count_parameters

BACKBONE_PARAMETERS = 24_430_677
"""The paper's "backbone alone" (= smp Unet(resnet34), 1 input channel, 5 classes)."""


def test_backbone_without_gates_has_the_papers_parameter_count():
    assert count_parameters(ResAUNet(attention="none")) == BACKBONE_PARAMETERS


@pytest.mark.parametrize("attention", ["channel", "spatial"])
def test_gates_only_add_parameters_to_the_backbone(attention):
    network = ResAUNet(attention=attention)
    assert count_parameters(network, exclude_prefixes=("attention.",)) == BACKBONE_PARAMETERS
    assert count_parameters(network) > BACKBONE_PARAMETERS


def test_encoder_uses_torchvision_resnet34_names_and_depths():
    keys = set(ResAUNet().encoder.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer4.2.bn2.num_batches_tracked"} <= keys
    for layer, blocks in zip(("layer1", "layer2", "layer3", "layer4"), (3, 4, 6, 3)):
        assert f"{layer}.{blocks - 1}.conv2.weight" in keys and f"{layer}.{blocks}.conv1.weight" not in keys
    assert ResAUNet().encoder.conv1.weight.shape == (64, 1, 7, 7)


@pytest.mark.parametrize("attention", ["channel", "spatial", "none"])
def test_forward_gives_full_resolution_logits_for_non_square_input(attention):
    network = build_network("ResAUNet", attention=attention).eval()
    with torch.no_grad():
        out = network(torch.rand(2, 1, 64, 96))
    assert out.shape == (2, 5, 64, 96)
    assert torch.isfinite(out).all()


def test_input_size_must_be_a_multiple_of_32():
    with pytest.raises(ValueError, match="divisible by 32"):
        ResAUNet().eval()(torch.rand(1, 1, 48, 64))


def test_unknown_architecture_and_attention_are_refused():
    with pytest.raises(ValueError):
        build_network("UNet3D")
    with pytest.raises(ValueError):
        make_attention("temporal", 4, 4)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def test_channel_gate_matches_a_hand_computation_of_eqs_1_to_5():
    gate = ChannelAttention(gate_channels=2, skip_channels=3, intermediate_channels=2)
    w_g = np.array([[0.5, -1.0], [1.5, 0.25]])
    b_g = np.array([0.1, -0.2])
    w_x = np.array([[1.0, 0.0, -0.5], [-0.3, 0.7, 0.2]])
    b_x = np.array([0.0, 0.05])
    phi = np.array([[1.0, -2.0], [0.5, 0.5], [-1.0, 3.0]])
    b_phi = np.array([0.2, -0.1, 0.0])
    with torch.no_grad():
        for layer, (w, b) in ((gate.w_g, (w_g, b_g)), (gate.w_x, (w_x, b_x)), (gate.phi, (phi, b_phi))):
            layer.weight.copy_(torch.tensor(w))
            layer.bias.copy_(torch.tensor(b))
    rng = np.random.default_rng(3)
    g = rng.normal(size=(1, 2, 4, 4))
    x = rng.normal(size=(1, 3, 2, 2))
    # Eqs. 1-2: mean over H x W; eq. 3: FC, sum, ReLU, FC Φ; eq. 4: sigmoid; eq. 5: x·α.
    g_bar = g[0].sum(axis=(1, 2)) / 16.0
    x_bar = x[0].sum(axis=(1, 2)) / 4.0
    hidden = np.maximum(w_g @ g_bar + b_g + w_x @ x_bar + b_x, 0.0)
    alpha = _sigmoid(phi @ hidden + b_phi)
    expected = x * alpha[None, :, None, None]
    out = gate(torch.tensor(g, dtype=torch.float32), torch.tensor(x, dtype=torch.float32)).detach()
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    # The gate only rescales whole channels of x.
    ratio = out.numpy() / x
    assert np.allclose(ratio, ratio[:, :, :1, :1], atol=1e-5)


def test_spatial_gate_gives_one_weight_per_pixel():
    gate = SpatialAttention(gate_channels=2, skip_channels=3, intermediate_channels=2).eval()
    with torch.no_grad():
        for conv in (gate.w_g[0], gate.w_x[0], gate.psi[0]):
            conv.weight.fill_(0.5)
            conv.bias.zero_()
    g = torch.rand(1, 2, 4, 4)
    x = torch.rand(1, 3, 4, 4)
    # BatchNorm in eval with fresh statistics divides by sqrt(1 + eps).
    scale = 1.0 / np.sqrt(1.0 + 1e-5)
    hidden = np.maximum(scale * 0.5 * (g.numpy().sum(1) + x.numpy().sum(1)), 0.0)  # both hidden channels equal
    alpha = _sigmoid(scale * 0.5 * 2 * hidden)
    np.testing.assert_allclose(gate(g, x).detach().numpy(), x.numpy() * alpha[:, None], rtol=1e-5)


def test_no_attention_passes_the_skip_through():
    x = torch.rand(1, 3, 4, 4)
    assert NoAttention()(torch.rand(1, 2, 4, 4), x) is x


def test_gradients_reach_encoder_and_gates():
    network = ResAUNet()
    network(torch.rand(2, 1, 64, 64)).mean().backward()
    assert network.encoder.conv1.weight.grad.abs().sum() > 0
    assert all(gate.w_g.weight.grad is not None for gate in network.attention)
