"""Selective flip TTA and the evidence the inferers hand to the QA (CervixAutoSegLib.inferers, qa.maps,
ct/mr runners' restore): the mirrored pass runs only where the plain pass was unsure."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from CervixAutoSegLib.inference_options import InferenceOptions
from CervixAutoSegLib.inferers import SliceInferer, SlidingWindowInferer
from CervixAutoSegLib.qa.config import QAConfig, SelectiveFlip
from CervixAutoSegLib.qa.maps import UNIT

FP32 = InferenceOptions(precision="fp32", batch_size=3)


class SteepRamp(nn.Module):
    """Two classes whose logit difference is ``steepness · (x − 0.5) + tilt · (column ramp)``: a slice
    whose pixels sit near 0.5 is unsure (margin ≈ 0) and the column ramp makes mirroring matter."""

    def __init__(self, steepness: float = 20.0, tilt: float = 0.3):
        super().__init__()
        self.steepness, self.tilt = steepness, tilt
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(int(x.shape[0]))
        ramp = torch.linspace(-1.0, 1.0, x.shape[-1], device=x.device) * self.tilt
        difference = self.steepness * (x[:, :1] - 0.5) + ramp
        return torch.cat([torch.zeros_like(difference), difference], dim=1)


def slices_with_unsure(n: int, unsure: list[int], shape=(16, 20)) -> np.ndarray:
    """(n, 1, H, W): confident slices (far from 0.5) except ``unsure`` ones (near 0.5)."""
    rng = np.random.default_rng(0)
    batch = np.where(rng.random((n, 1) + shape) > 0.5, 0.95, 0.05).astype(np.float32)
    for k in unsure:
        batch[k] = 0.5 + rng.normal(0.0, 0.01, (1,) + shape).astype(np.float32)
    return batch


def test_only_uncertain_slices_are_mirrored_and_they_get_the_full_tta_answer():
    batch = slices_with_unsure(10, [2, 7])
    gate = SelectiveFlip(uncertain_below_margin=0.5, min_uncertain_fraction=0.1, max_mirrored_fraction=None)
    network = SteepRamp()
    labels, evidence, info = SliceInferer(FP32, gate).infer(network, batch)
    full, full_evidence, full_info = SliceInferer(FP32.replace(selective_tta=False)).infer(SteepRamp(), batch)
    plain, plain_evidence, _ = SliceInferer(FP32.replace(flip_tta=False)).infer(SteepRamp(), batch)
    assert info.mirrored_items == 2 and info.passes == 12 and info.items == 10
    assert full_info.mirrored_items == 10 and full_info.passes == 20
    assert evidence.mirrored[:, 0, 0].tolist() == [k in (2, 7) for k in range(10)]
    np.testing.assert_array_equal(labels[[2, 7]], full[[2, 7]])  # mirrored slices: the full-TTA labels
    np.testing.assert_array_equal(np.delete(labels, [2, 7], 0), np.delete(plain, [2, 7], 0))  # the rest: plain
    assert not np.array_equal(full[[2, 7]], plain[[2, 7]])  # (mirroring did change those slices)
    assert evidence.uncertainty[2].mean() > 100 and evidence.uncertainty[0].max() < 10
    assert evidence.disagreement is not None and evidence.disagreement[[0, 1, 3]].max() == 0
    assert plain_evidence.disagreement is None and not plain_evidence.mirrored.any()
    assert info.selective_tta["min_uncertain_fraction"] == 0.1


def test_the_cap_keeps_the_most_uncertain_slices_and_progress_counts_the_mirrored_ones():
    batch = slices_with_unsure(10, [4])  # slice 4: every pixel on the fence
    for k in (1, 8):  # half of slices 1 and 8 unsure: above the gate, but less unsure than slice 4
        batch[k, 0, :8] = 0.5
    gate = SelectiveFlip(uncertain_below_margin=0.5, min_uncertain_fraction=0.01, max_mirrored_fraction=0.1)
    calls = []
    _, evidence, info = SliceInferer(FP32, gate).infer(SteepRamp(), batch, progress=lambda d, t: calls.append((d, t)))
    assert info.mirrored_items == 1 and evidence.mirrored[4].all() and not evidence.mirrored[[1, 8]].any()
    assert calls[-1] == (11, 11) and [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_without_a_gate_flip_tta_mirrors_every_slice_bit_for_bit_as_before():
    batch = slices_with_unsure(5, [0, 3])
    network = SteepRamp()
    labels, info = SliceInferer(FP32)(network, batch)
    with torch.no_grad():
        x = torch.from_numpy(batch)
        by_hand = network(x).softmax(1) + network(x.flip(-1)).softmax(1).flip(-1)
    np.testing.assert_array_equal(labels, by_hand.argmax(1).numpy())
    assert info.mirrored_items == 5 and info.selective_tta is None


def test_selective_tta_off_in_the_options_mirrors_everything_whatever_the_card_says():
    gate = SelectiveFlip(min_uncertain_fraction=0.5)
    inferer = SliceInferer(FP32.replace(selective_tta=False), gate)
    assert inferer.gate is None
    assert SliceInferer(FP32.replace(flip_tta=False), gate).gate is None


def test_sliding_windows_mirror_only_uncertain_windows_within_a_running_budget():
    image = np.full((1, 8, 16, 48), 0.95, np.float32)
    image[0, :, :, 32:] = 0.5  # only the right third is unsure
    gate = SelectiveFlip(uncertain_below_margin=0.5, min_uncertain_fraction=0.05, max_mirrored_fraction=None)
    inferer = SlidingWindowInferer((8, 16, 16), InferenceOptions(precision="fp32", overlap=0.0), gate)
    labels, evidence, info = inferer.infer(SteepRamp(), image)
    assert info.items == 3 and info.mirrored_items == 1 and info.passes == 4
    assert evidence.mirrored[:, :, 32:].all() and not evidence.mirrored[:, :, :32].any()
    assert evidence.uncertainty[:, :, 32:].mean() > 200 and evidence.uncertainty[:, :, :32].max() < 10
    capped = SlidingWindowInferer((8, 16, 16), InferenceOptions(precision="fp32", overlap=0.0),
                                  SelectiveFlip(min_uncertain_fraction=0.05, max_mirrored_fraction=0.34))
    unsure = np.full_like(image, 0.5)  # every window above the gate
    assert capped.infer(SteepRamp(), unsure)[2].mirrored_items == 2  # ceil(0.34 · 3): the budget, then no more
    scores, _ = inferer.scores(SteepRamp(), image)
    assert scores.shape == (2, 8, 16, 48) and torch.allclose(scores.sum(0), torch.ones(8, 16, 48))


def test_a_card_without_a_selective_tta_section_mirrors_everything():
    assert QAConfig.from_json({}).selective_flip is None
    gate = QAConfig.from_json({"selective_tta": {"min_uncertain_fraction": 0.01, "max_mirrored_fraction": None}})
    assert gate.selective_flip == SelectiveFlip(0.5, 0.01, None)


def test_ct_evidence_goes_back_onto_the_input_grid_like_the_labels():
    from CervixAutoSegLib.ct.preprocess import preprocess_ct, restore_labels
    from CervixAutoSegLib.ct.runner import restore_map
    from CervixAutoSegLib.volume import Volume

    hu = np.full((4, 60, 50), -1000, np.int16)
    hu[:, 10:50, 5:45] = 40
    volume = Volume(hu, (2.0, 2.0, 3.0), (0, 0, 0), np.diag([-1.0, 1.0, -1.0]), modality="CT")  # resampled, flipped
    batch, context = preprocess_ct(volume, {"crop_size": 64})
    assert context.resampled
    crops = (batch[:, 0] > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(restore_map(crops * UNIT, context)) > 0, restore_labels(crops, context) > 0)


def test_mr_evidence_goes_back_onto_a_sagittal_input_grid_where_the_labels_go():
    from CervixAutoSegLib.inferers import Evidence
    from CervixAutoSegLib.mr.preprocess import preprocess_mr, restore_labels
    from CervixAutoSegLib.mr.runner import restore_evidence
    from CervixAutoSegLib.phantom import make_mr_phantom

    phantom = make_mr_phantom(3, plane="sagittal", matrix=64, pixel_spacing_mm=2.5, slice_thickness_mm=5.0)
    image, context = preprocess_mr(phantom.image, {"spacing_mm": [2.5, 2.5, 5.0]})
    bright = image > 0.5
    evidence = Evidence(bright.astype(np.uint8) * UNIT, np.zeros(image.shape, np.uint8), np.ones(image.shape, bool))
    maps = restore_evidence(evidence, context, None, (1,))
    labels = restore_labels(bright.astype(np.uint8), context)
    assert maps.uncertainty.shape == phantom.image.shape and maps.values == (1,)
    assert np.mean((maps.uncertainty > 0) == (labels > 0)) > 0.97
    box = restore_evidence(Evidence(evidence.uncertainty[2:5], None, np.zeros((3,) + image.shape[1:], bool)),
                           context, (2, 0, 0), (2,))
    assert box.disagreement is None and box.mirrored is None and box.uncertainty.any()


def test_full_flip_tta_option_reaches_the_pipeline_as_selective_tta_off(monkeypatch, tmp_path):
    from CervixAutoSegLib import cli, pipeline
    from CervixAutoSegLib.errors import InputError
    from CervixAutoSegLib.families import get_family

    seen = []

    def fake_segment(*args, options=None, **kwargs):  # the pipeline itself is tested above and in test_pipeline
        seen.append(dict(options))
        raise InputError("stop here")

    monkeypatch.setattr(pipeline, "segment", fake_segment)
    for extra, selective in (([], None), (["--full-flip-tta"], False)):
        assert cli.main(["segment", str(tmp_path), "--out", str(tmp_path / "out"), *extra]) == 2
        assert seen[-1]["selective_tta"] is selective
        assert pipeline.inference_options(get_family("ct"), seen[-1]).selective_tta is (selective is None)
