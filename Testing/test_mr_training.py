"""Training one PocketNet stage: the loss, the patch sampler, the stage-1 error model, and
``train mr`` for both stages into one model directory that ``segment`` then runs."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from CervixAutoSegLib import cli, models
from CervixAutoSegLib.image_io import load_image, write_image
from CervixAutoSegLib.mr.config import MRTrainConfig
from CervixAutoSegLib.mr.training import MRCase, PatchBatches, deep_supervision_loss, dice_ce, jitter_organ
from CervixAutoSegLib.phantom import make_mr_phantom
from CervixAutoSegLib.precision import ThinSlabSafeConv3d, autocast, guard_thin_slab_convolutions

SMALL_GRID = {"matrix": 64, "pixel_spacing_mm": 2.5, "slice_thickness_mm": 5.0}


def box_organ(shape=(16, 64, 64)) -> np.ndarray:
    organ = np.zeros(shape, bool)
    organ[4:12, 20:44, 16:48] = True
    return organ


def test_jitter_grows_shrinks_and_shifts_within_its_limits():
    organ = box_organ()
    rng = np.random.default_rng(1)
    volumes, moved = [], 0
    for _ in range(40):
        jittered = jitter_organ(organ, (1, 4, 4), rng)
        assert jittered.dtype == np.float32 and set(np.unique(jittered)) <= {0.0, 1.0}
        z, y, x = np.nonzero(jittered)
        # grown by <= 4 voxels and shifted by <= 2 in-plane; grown by <= 1 and shifted by <= 1 along z
        assert 16 - 6 <= x.min() and x.max() <= 47 + 6 and 20 - 6 <= y.min() and y.max() <= 43 + 6
        assert 2 <= z.min() and z.max() <= 13
        volumes.append(jittered.sum() / organ.sum())
        moved += not np.array_equal(jittered > 0, organ)
    assert min(volumes) < 0.9 and max(volumes) > 1.1 and moved >= 35
    assert np.array_equal(jitter_organ(organ, (0, 0, 0), rng) > 0, organ)


def test_shrinking_keeps_an_organ_that_runs_on_beyond_the_patch_edge():
    organ = np.zeros((8, 32, 32), bool)
    organ[:, :, :16] = True  # cut by the patch at x = 0 and along all of z and y
    for seed in range(10):
        jittered = jitter_organ(organ, (0, 3, 3), np.random.default_rng(seed))
        # eroded away from the cut edges only where a shift moved it there
        assert jittered[:, 3:-3, 2].all()


def small_target() -> torch.Tensor:
    target = torch.zeros((1, 4, 16, 16), dtype=torch.int64)
    target[:, 1:3, 4:12, 4:12] = 1
    return target


def test_dice_ce_is_small_for_a_confident_right_answer_and_large_for_a_wrong_one():
    target = small_target()
    right = torch.stack([(1 - target) * 10.0, target * 10.0], dim=1).float()
    assert float(dice_ce(right, target)) < 0.01
    assert float(dice_ce(-right, target)) > 5.0


def test_per_patch_dice_makes_an_over_drawn_small_tumour_cost_as_much_as_in_a_batch_of_its_own():
    """The batch-pooled Dice hides a small tumour drawn four times too large behind a large tumour
    drawn right; per-patch Dice (the default for new runs) does not."""
    target = torch.zeros((2, 8, 32, 32), dtype=torch.int64)
    target[0, 2:6, 4:28, 4:28] = 1  # large, drawn right
    target[1, 3:5, 14:18, 14:18] = 1  # small, drawn as 4x the volume
    drawn = target.clone()
    drawn[1, 2:6, 13:19, 13:19] = 1
    logits = torch.stack([(1 - drawn) * 10.0, drawn * 10.0], dim=1).float()
    pooled, per_patch = float(dice_ce(logits, target)), float(dice_ce(logits, target, per_patch=True))
    small = 2 * 32 / (32 + 144)  # Dice of the small tumour alone
    batch = 2 * (2304 + 32) / (2304 + 2304 + 32 + 144)
    # the cross-entropy is the same in both; only the Dice term differs
    assert per_patch - pooled == pytest.approx((1 - small) / 2 - (1 - batch), abs=0.01)
    assert per_patch - pooled > 0.25
    assert MRTrainConfig().per_patch_dice and MRTrainConfig.from_dict(MRTrainConfig().to_dict()).per_patch_dice
    assert not MRTrainConfig.from_dict({"stage": "tumor"}).per_patch_dice  # a checkpoint from before the option


def test_deep_supervision_weights_the_main_output_most():
    target = small_target()
    good = torch.stack([(1 - target) * 10.0, target * 10.0], dim=1).float()
    bad = -good
    # MONAI's training output stacks (main, head 1, head 2) along dim 1
    main_wrong = deep_supervision_loss(torch.stack([bad, good, good], dim=1), target)
    head_wrong = deep_supervision_loss(torch.stack([good, good, bad], dim=1), target)
    assert float(main_wrong) > 3 * float(head_wrong) > 0


def phantom_case(seed: int) -> MRCase:
    phantom = make_mr_phantom(seed, **SMALL_GRID)
    image = phantom.image.array.astype(np.float32)
    return MRCase(f"case-{seed}", ((image - image.mean()) / image.std()).astype(np.float16), phantom.labels.array)


@pytest.mark.parametrize("stage", ["organ", "tumor"])
def test_patches_have_the_stage_inputs_and_oversample_its_structure(stage):
    cases = [phantom_case(seed) for seed in (1, 2)]
    config = MRTrainConfig(stage=stage, patch_size_xyz=(32, 32, 8), foreground_fraction=1.0)
    inputs, target = PatchBatches(cases, config, np.random.default_rng(0)).batch(6)
    assert inputs.shape == (6, 1 if stage == "organ" else 2, 8, 32, 32) and inputs.dtype == torch.float32
    assert target.shape == (6, 8, 32, 32) and target.dtype == torch.int64
    assert all(t.any() for t in target)  # every patch centred on the structure holds some of it
    if stage == "tumor":
        assert set(np.unique(inputs[:, 1].numpy())) <= {0.0, 1.0}
        assert (inputs[:, 1] > 0).any()
    background = PatchBatches(cases, MRTrainConfig(stage=stage, patch_size_xyz=(32, 32, 8), foreground_fraction=0.0),
                              np.random.default_rng(0)).batch(6)[1]
    assert background.float().mean() < target.float().mean()


def test_stage_two_learns_and_is_validated_where_it_runs_around_the_organ():
    """Its non-tumour patches are centred in the organ box the runner gives stage 2, and its
    validation box is that organ box, not a box around the tumour that hides false tumour."""
    from CervixAutoSegLib.mr.training import _validation_box

    labels = np.zeros((40, 96, 96), np.uint8)
    labels[10:30, 30:60, 40:70] = 1
    labels[12:16, 40:46, 50:56] = 2
    case = MRCase("box", np.zeros(labels.shape, np.float16), labels)
    config = MRTrainConfig(stage="tumor", patch_size_xyz=(16, 16, 4), foreground_fraction=0.0, spacing_xyz=(2.0, 2.0, 5.0))
    (z0, y0, x0), (nz, ny, nx) = case.organ_box(config.spacing_xyz)
    assert (z0, y0, x0, nz, ny, nx) == (8, 20, 30, 24, 50, 50)  # margins 10/10/2 voxels of (20, 20, 10) mm
    batches = PatchBatches([case], config, np.random.default_rng(0))
    for _ in range(200):
        z, y, x = (s + p // 2 for s, p in zip(batches._start(0), (4, 16, 16)))
        assert z0 <= z < z0 + nz and y0 <= y < y0 + ny and x0 <= x < x0 + nx
    inputs, target = _validation_box(case, config)
    assert inputs.shape == (2, nz, ny, nx) and target.sum() == (labels == 2).sum()
    organ_stage = dataclasses.replace(config, stage="organ")
    assert PatchBatches([case], organ_stage, np.random.default_rng(0)).context_boxes == [None]

def write_phantom_cases(folder, seeds):
    for seed in seeds:
        phantom = make_mr_phantom(seed, **SMALL_GRID)
        (folder / f"case{seed}").mkdir(parents=True)
        write_image(phantom.image, folder / f"case{seed}" / "image.nii.gz")
        write_image(phantom.labels, folder / f"case{seed}" / "labels.nii.gz")


@pytest.mark.slow
def test_train_mr_writes_both_stages_into_one_model_directory_that_segment_runs(tmp_path):
    write_phantom_cases(tmp_path / "cases", (11, 12, 13))
    out = tmp_path / "Models" / "mr-small"
    common = ["--data", str(tmp_path / "cases"), "--out", str(out), "--split", "2:1:0", "--patch-size", "64", "64",
              "8", "--batch-size", "1", "--steps-per-epoch", "2", "--max-epochs", "1", "--threads", "1",
              "--spacing", "2.5", "2.5", "5"]  # the phantoms' own grid: the paper's 0.469 mm costs minutes here
    assert cli.main(["train", "mr", "--stage", "organ", "--work", str(tmp_path / "organ"), *common]) == 0
    assert [n.role for n in models.read_card(out).networks] == ["organ"]
    organ_weights = (out / models.read_card(out).network("organ").weights_file).read_bytes()
    assert cli.main(["train", "mr", "--stage", "tumor", "--work", str(tmp_path / "tumor"), *common]) == 0
    card = models.read_card(out)
    assert [(n.role, n.architecture_kwargs["in_channels"]) for n in card.networks] == [("organ", 1), ("tumor", 2)]
    assert (out / card.network("organ").weights_file).read_bytes() == organ_weights  # kept as trained
    assert card.training["config"]["stage"] == "tumor" and card.training["config"]["organ_jitter_xyz"] == [6, 6, 1]
    assert sorted(card.validation["stages"]) == sorted(card.training["stages"]) == ["organ", "tumor"]
    assert card.training["stages"]["organ"]["config"]["stage"] == "organ"  # the organ run's record is kept
    assert "reference code" in card.training["architecture"]  # the paper's text and code disagree: say which
    assert card.preprocessing["spacing_mm"] == [2.5, 2.5, 5.0]  # inference resamples as training did
    assert all(n.architecture_kwargs["spacing"] == [2.5, 2.5, 5.0] for n in card.networks)
    for role in ("organ", "tumor"):
        models.verify_weights(card, role)

    phantom = make_mr_phantom(14, **SMALL_GRID)
    write_image(phantom.image, tmp_path / "t2.nii.gz")
    assert cli.main(["segment", str(tmp_path / "t2.nii.gz"), "--out", str(tmp_path / "seg"), "--model", card.id,
                     "--models", str(out.parent), "--no-flip-tta"]) == 0
    labels = load_image(tmp_path / "seg" / "labels.nii.gz")
    assert labels.array.shape == phantom.image.array.shape
    report = json.loads((tmp_path / "seg" / "report.json").read_text())
    assert [n["role"] for n in report["model"]["networks"]] == ["organ", "tumor"]


def test_a_conv3d_over_a_two_slice_input_trains_under_bf16_with_a_weight_gradient_that_repeats():
    """oneDNN's bf16 weight gradient of a 3x3x3 convolution over 2 slices reads memory it never
    wrote (see ThinSlabSafeConv3d): the guarded layer gives the same gradient on every backward
    pass, close to float32's, and leaves everything else to Conv3d."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv3d(32, 32, 3, padding=1, bias=False))
    guarded = copy.deepcopy(plain)
    assert guard_thin_slab_convolutions(guarded) == 1 and isinstance(guarded[0], ThinSlabSafeConv3d)
    assert list(guarded.state_dict()) == list(plain.state_dict())  # weights files are unchanged
    x, upstream = torch.randn(1, 32, 2, 16, 16), torch.randn(1, 32, 2, 16, 16)
    gradients = []
    for _ in range(12):
        guarded.zero_grad(set_to_none=True)
        with autocast(torch.device("cpu"), "bf16"):
            out = guarded(x)
        out.backward(upstream)
        gradients.append(guarded[0].weight.grad.clone())
    assert all(torch.equal(g, gradients[0]) for g in gradients[1:])
    plain(x).backward(upstream)
    torch.testing.assert_close(gradients[0], plain[0].weight.grad, rtol=1e-2, atol=1e-3)
    with autocast(torch.device("cpu"), "bf16"):
        assert guarded(x).dtype == torch.float32  # the thin slab in float32
        assert guarded(torch.randn(1, 32, 4, 16, 16)).dtype == torch.bfloat16  # thick enough: bf16 as before
        with torch.no_grad():
            assert guarded(x).dtype == torch.bfloat16  # no backward (inference): bf16 as before


def test_two_bf16_training_runs_with_one_seed_give_the_same_weights(tmp_path):
    write_phantom_cases(tmp_path / "cases", (11, 12, 13))
    states = []
    for run in ("a", "b"):
        out = tmp_path / run / "mr-small"
        assert cli.main(["train", "mr", "--stage", "organ", "--work", str(tmp_path / run / "work"), "--data",
                         str(tmp_path / "cases"), "--out", str(out), "--split", "2:1:0", "--patch-size", "64", "64",
                         "8", "--batch-size", "1", "--steps-per-epoch", "3", "--max-epochs", "1", "--threads", "1",
                         "--spacing", "2.5", "2.5", "5"]) == 0  # 8 slices: the third level is 2 slices deep
        card = models.read_card(out)
        assert card.training["config"]["bf16"] is True
        states.append(models.load_network(card, "organ").state_dict())
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])


@pytest.mark.parametrize("spacing", [["0", "0.5", "5"], ["0.5", "0.5", "-5"], ["0.5", "0.5", "50"]])
def test_a_working_spacing_that_cannot_be_used_is_one_line(tmp_path, capsys, spacing):
    code = cli.main(["train", "mr", "--phantom-seeds", "1-3", "--out", str(tmp_path / "m"), "--spacing", *spacing])
    assert code == 2 and "--spacing" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
