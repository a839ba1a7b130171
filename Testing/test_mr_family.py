"""The MR family on the shared core: two-stage runner logic, windows, model directories, training export."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from CervixAutoSegLib import models
from CervixAutoSegLib.families import get_family
from CervixAutoSegLib.mr import runner as mr_runner
from CervixAutoSegLib.mr.network import build_pocketnet
from CervixAutoSegLib.phantom import make_mr_phantom

SMALL_PATCH = (64, 64, 16)
SMALL_GRID = {"matrix": 64, "pixel_spacing_mm": 2.5, "slice_thickness_mm": 5.0}
"""A 16 cm field of view: every working grid stays small enough for CPU tests."""


def tiny_mr_model(root, roles=("organ", "tumor"), working_spacing_mm=None):
    """Random PocketNets planned for :data:`SMALL_PATCH`; ``working_spacing_mm`` (x, y, z) replaces the
    paper's 0.469 x 0.469 x 5 mm working grid when only the plumbing is under test (a 16 cm field at
    0.469 mm is a 341x341 grid: minutes of CPU windows for nothing)."""
    torch.manual_seed(0)
    preprocessing = {"min_tumour_ml": 0.5}
    if working_spacing_mm is not None:
        preprocessing["spacing_mm"] = list(working_spacing_mm)
    specs = {role: models.NetworkSpec(build_pocketnet(1 if role == "organ" else 2, 2, SMALL_PATCH, (0.469, 0.469, 5.0)),
                                      "PocketNet", {"in_channels": 1 if role == "organ" else 2, "out_channels": 2,
                                                    "patch_size": list(SMALL_PATCH), "spacing": [0.469, 0.469, 5.0]})
             for role in roles}
    return models.write_model_dir(root / "mr-tiny", specs, model_id="mr-tiny", family="mr",
                                  preprocessing=preprocessing)


def test_windows_are_the_trained_patch_or_the_image_rounded_up_to_the_network_divisor(tmp_path):
    card = tiny_mr_model(tmp_path)
    # PocketNet for a 64x64x16 patch: sizes must be multiples of (x, y, z) = (32, 32, 4)... per its plan.
    divisor = build_pocketnet(1, 2, SMALL_PATCH, (0.469, 0.469, 5.0)).plan.size_divisor_zyx
    assert mr_runner.roi_for(card, "organ", (40, 300, 300)) == (16, 64, 64)
    small = mr_runner.roi_for(card, "tumor", (5, 33, 20))
    assert all(r % d == 0 and r >= s for r, d, s in zip(small, divisor, (5, 33, 20)))
    assert all(r <= p for r, p in zip(small, (16, 64, 64)))


@pytest.mark.parametrize(("plane", "prepared_ahead"), [("axial", False), ("sagittal", False), ("sagittal", True)])
def test_stage_two_sees_a_box_around_the_largest_organ_and_the_tumour_is_kept_inside(tmp_path, monkeypatch, plane,
                                                                                    prepared_ahead):
    """The network stages are replaced by planted answers: what is tested is the two-stage logic,
    on the working grid, and its way back onto an axial or a sagittal input grid; ``prepared_ahead``:
    the image was preprocessed by ``prepare`` and came through pickle, as from the prefetch child."""
    card = tiny_mr_model(tmp_path)
    phantom = make_mr_phantom(3, plane=plane, **SMALL_GRID)
    seen = {}

    def planted(self, card, role, inputs, device, options, timings, cancel, progress):
        seen[role] = inputs
        labels = np.zeros(inputs.shape[1:], np.uint8)
        z, y, x = (n // 2 for n in labels.shape)
        if role == "organ":
            labels[z - 2:z + 3, y - 20:y + 20, x - 20:x + 20] = 1  # the organ
            labels[0, :3, :3] = 1  # a stray island: not the largest component
        else:  # inside the box: a tumour spilling out of the organ, and a tiny island
            labels[:, y - 5:y + 40, x - 5:x + 5] = 1
            labels[z, 2, 2] = 1
        return labels, {"passes": 1}, None  # (labels, inference facts, evidence)

    monkeypatch.setattr(mr_runner.PocketNetRunner, "_stage", planted)
    runner = get_family("mr").runner
    extra = {"prepared": pickle.loads(pickle.dumps(runner.prepare(phantom.image, card)))} if prepared_ahead else {}
    output = runner(phantom.image, card, torch.device("cpu"), get_family("mr").inference_defaults,
                    lambda f, m: None, None, **extra)
    organ_input, tumour_input = seen["organ"], seen["tumor"]
    assert organ_input.shape[0] == 1 and tumour_input.shape[0] == 2
    organ_in_box = tumour_input[1] > 0
    assert organ_in_box.sum() == 5 * 40 * 40  # the island is gone, the organ is whole
    # The box holds the organ plus a margin of >= 20 mm in-plane (0.469 mm voxels) and >= 10 mm in z.
    assert tumour_input.shape[2] >= 40 + 2 * int(20 / 0.469) and tumour_input.shape[1] >= 5 + 2 * 2
    assert set(np.unique(output.labels)) <= {0, 1, 2}
    assert output.labels.shape == phantom.image.shape and output.inference["passes"] == 2
    tumour = output.labels == 2
    assert tumour.any() and (output.labels[tumour] == 2).all()
    # Everything tumour is where the organ was planted (forced inside), never the island at the corner.
    organ_or_tumour = output.labels > 0
    from scipy import ndimage

    assert ndimage.label(organ_or_tumour)[1] == 1


@pytest.mark.slow
def test_segment_runs_a_two_stage_and_an_organ_only_model_onto_the_input_grid(tmp_path):
    from CervixAutoSegLib.pipeline import segment

    phantom = make_mr_phantom(4, **SMALL_GRID)
    coarse = (SMALL_GRID["pixel_spacing_mm"],) * 2 + (SMALL_GRID["slice_thickness_mm"],)
    card = tiny_mr_model(tmp_path / "two", working_spacing_mm=coarse)
    result = segment(phantom.image, tmp_path / "out", model="mr", models_root=tmp_path / "two",
                     options={"flip_tta": False, "overlap": 0.0})
    assert result.labels.shape == phantom.image.shape and np.allclose(result.labels.origin, phantom.image.origin)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [n["role"] for n in report["model"]["networks"]] == ["organ", "tumor"]
    assert report["model"]["weights_sha256"] == {e.role: e.sha256 for e in card.networks}
    organ_only = tiny_mr_model(tmp_path / "one", roles=("organ",), working_spacing_mm=coarse)
    result = segment(phantom.image, None, model=organ_only.id, models_root=tmp_path / "one",
                     options={"flip_tta": False, "overlap": 0.0})
    assert not (result.labels.array == 2).any()


def test_benchmark_case_is_an_axial_t2w_phantom_and_its_random_model_loads(tmp_path):
    case = get_family("mr").benchmark  # its series and baseline: test_mr_benchmark.py
    image = case.make_image(48)
    assert image.modality == "MR" and image.shape == (30, 48, 48)
    assert np.allclose(image.spacing[:2], 0.469 * 512 / 48) and image.spacing[2] == pytest.approx(5.0)
    card = case.random_model(tmp_path / "mr-random", "mr-random")
    assert card.roles == ("organ", "tumor")
    tumour = models.load_network(card, "tumor")
    assert sum(p.numel() for p in tumour.parameters()) == 552_678  # residual blocks, 2 inputs, both heads


REAL_MR = Path(__file__).parent / "Data" / "real_mr_abdomen_3mm.nii.gz"  # see Data/README.md


def organ_blind_model(root):
    """A two-stage model at the paper's patch whose organ network never calls organ."""
    torch.manual_seed(0)
    specs = {}
    for role, channels in (("organ", 1), ("tumor", 2)):
        kwargs = {"in_channels": channels, "out_channels": 2, "patch_size": [256, 256, 32],
                  "spacing": [0.469, 0.469, 5.0]}
        network = build_pocketnet(**kwargs)
        with torch.no_grad():  # (background, organ) logits far apart whatever the image
            network.output_block.conv.conv.weight.zero_()
            network.output_block.conv.conv.bias.copy_(torch.tensor([10.0, -10.0]))
        specs[role] = models.NetworkSpec(network, "PocketNet", kwargs)
    return models.write_model_dir(root / "mr-blind", specs, model_id="mr-blind", family="mr")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["organ-blind", "bundled"])
def test_real_mr_runs_onto_its_grid_and_says_plainly_when_no_organ_is_found(tmp_path, capsys, model):
    from CervixAutoSegLib import cli
    from CervixAutoSegLib.image_io import load_image
    from CervixAutoSegLib.mr.runner import NO_ORGAN_WARNING

    extra = ["--model", "mr"]
    if model == "organ-blind":
        extra = ["--model", organ_blind_model(tmp_path / "models").id, "--models", str(tmp_path / "models")]
    assert cli.main(["segment", str(REAL_MR), "--out", str(tmp_path / "out"), "--no-flip-tta", *extra]) == 0
    image, labels = load_image(REAL_MR), load_image(tmp_path / "out" / "labels.nii.gz")
    assert labels.shape == image.shape and labels.same_grid(image, tolerance=1e-4)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    no_organ = not (labels.array > 0).any()
    assert (NO_ORGAN_WARNING in report["warnings"]) == no_organ
    assert (NO_ORGAN_WARNING in capsys.readouterr().out) == no_organ
    if model == "organ-blind":
        assert no_organ and [s["role"] for s in report["device"]["stages"]] == ["organ"]
