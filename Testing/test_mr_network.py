"""PocketNet (MIST ``nnunet --pocket`` on MONAI DynUNet): parameter count of the paper's
configuration, nnU-Net kernel/stride planning, axis order, training/eval outputs."""

from __future__ import annotations

import json

import pytest
import torch

from CervixAutoSegLib.mr.network import (ARCHITECTURE, PAPER_PATCH_SIZE_XYZ, PAPER_SPACING_XYZ, PocketNet,
                                         build_network, build_pocketnet, count_parameters, plan_unet,
                                         split_deep_supervision)

PAPER_BASIC_PARAMETERS = 546_822
"""1 input channel, 2 classes, basic blocks, both deep-supervision heads (DESIGN: ~547k)."""
SECOND_CHANNEL_PARAMETERS = 288
"""Stage 2 adds the organ mask as input channel: one more 3x3x1 kernel slice per filter of
the input convolution, 32 x 9 = 288."""


def test_paper_plan_is_anisotropic_until_the_spacing_evens_out():
    plan = plan_unet(PAPER_PATCH_SIZE_XYZ, PAPER_SPACING_XYZ)
    assert plan.levels == 6
    assert plan.kernels_xyz == ((3, 3, 1), (3, 3, 1), (3, 3, 1), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    assert plan.strides_xyz == ((1, 1, 1), (2, 2, 1), (2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2))
    assert plan.bottleneck_size_xyz == (8, 8, 8)
    assert plan.size_divisor_xyz == (32, 32, 4)
    # The network's tensors are (N, C, z, y, x): every plan entry reversed.
    assert plan.kernels_zyx[0] == (1, 3, 3) and plan.strides_zyx[1] == (1, 2, 2)
    assert plan.size_divisor_zyx == (4, 32, 32)
    assert json.loads(json.dumps(plan.to_dict()))["strides"][4] == [2, 2, 2]


def test_isotropic_plan_halves_every_axis_down_to_the_depth_limit():
    plan = plan_unet((128, 128, 128), (1.0, 1.0, 1.0))
    assert plan.kernels_xyz == ((3, 3, 3),) * 6
    assert plan.strides_xyz == ((1, 1, 1),) + ((2, 2, 2),) * 5
    assert plan.bottleneck_size_xyz == (4, 4, 4)


def test_small_axes_stop_being_halved_below_eight_voxels():
    plan = plan_unet((64, 64, 16), PAPER_SPACING_XYZ)
    assert plan.strides_xyz == ((1, 1, 1), (2, 2, 1), (2, 2, 1), (2, 2, 1), (2, 2, 2), (1, 1, 2))
    assert plan.kernels_xyz[-1] == (3, 3, 3)
    assert plan.size_divisor_zyx == (4, 16, 16)


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError):
        plan_unet((256, 256), (0.5, 0.5))
    with pytest.raises(ValueError):
        plan_unet((64, 64, 16), (0.5, 0.0, 5.0))
    with pytest.raises(ValueError, match="at least 3"):
        build_pocketnet(1, 2, (8, 8, 4), (1.0, 1.0, 1.0))


def test_paper_configuration_has_the_reference_parameter_count():
    stage1 = build_pocketnet(1, 2, PAPER_PATCH_SIZE_XYZ, PAPER_SPACING_XYZ, residual=False)
    stage2 = build_pocketnet(2, 2, PAPER_PATCH_SIZE_XYZ, PAPER_SPACING_XYZ, residual=False)
    assert count_parameters(stage1) == PAPER_BASIC_PARAMETERS
    assert count_parameters(stage2) == PAPER_BASIC_PARAMETERS + SECOND_CHANNEL_PARAMETERS
    # The heads are two 1x1x1 convolutions 32 -> 2 with bias.
    heads = build_pocketnet(1, 2, PAPER_PATCH_SIZE_XYZ, PAPER_SPACING_XYZ, residual=False, deep_supervision=False)
    assert count_parameters(stage1) - count_parameters(heads) == 2 * (32 * 2 + 2)


def test_pocket_rule_and_default_blocks():
    network = build_pocketnet(1, 2, PAPER_PATCH_SIZE_XYZ, PAPER_SPACING_XYZ)
    convolutions = [m for m in network.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    assert {m.out_channels for m in convolutions} == {32, 2}
    assert all(m.in_channels in (1, 32, 64) for m in convolutions)  # 64: skip concatenated in the decoder
    assert all(m.bias is not None for m in convolutions if isinstance(m, torch.nn.ConvTranspose3d))
    norms = [m for m in network.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert norms and all(m.affine for m in norms)
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in network.modules())
    # Residual blocks are the default (the paper trained with them): 1x1x1 shortcuts exist.
    assert any(m.kernel_size == (1, 1, 1) and m.out_channels == 32 for m in convolutions)
    assert count_parameters(network) > PAPER_BASIC_PARAMETERS


def test_forward_shapes_in_training_and_eval_mode():
    torch.manual_seed(0)
    network = build_pocketnet(2, 2, (64, 64, 16), PAPER_SPACING_XYZ)
    inputs = torch.randn(1, 2, 16, 64, 64)  # (N, C, z, y, x)
    network.train()
    output = network(inputs)
    assert output.shape == (1, 3, 2, 16, 64, 64)
    main, heads = split_deep_supervision(output)
    assert main.shape == (1, 2, 16, 64, 64) and len(heads) == 2
    assert all(h.shape == main.shape for h in heads)
    network.eval()
    with torch.no_grad():
        logits = network(inputs)
    assert logits.shape == (1, 2, 16, 64, 64)
    assert split_deep_supervision(logits) == (logits, [])
    assert torch.isfinite(logits).all()


def test_forward_rejects_sizes_the_strides_cannot_halve():
    network = build_pocketnet(1, 2, (64, 64, 16), PAPER_SPACING_XYZ).eval()
    with pytest.raises(ValueError, match="multiples"):
        network(torch.zeros(1, 1, 16, 64, 60))


def test_model_card_kwargs_rebuild_the_same_network():
    network = build_pocketnet(1, 2, (64, 64, 16), PAPER_SPACING_XYZ, residual=False)
    kwargs = json.loads(json.dumps(network.kwargs))
    again = build_network(ARCHITECTURE, **kwargs)
    assert isinstance(again, PocketNet)
    assert again.load_state_dict(network.state_dict(), strict=True) is not None
    with pytest.raises(ValueError):
        build_network("ResAUNet", **kwargs)
