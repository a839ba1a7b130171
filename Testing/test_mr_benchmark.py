"""``cervixautoseg benchmark mr``: its series, the doubling baseline network, per-stage times, the
targets and speed-ups.  Never asserts a time (speed is measured by the command, not by tests)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from CervixAutoSegLib import models
from CervixAutoSegLib.benchmarks import segment as bench
from CervixAutoSegLib.benchmarks.segment_report import judge, summarise
from CervixAutoSegLib.families import ComparativeBenchmarkCase, get_family
from CervixAutoSegLib.mr import benchmark_case
from CervixAutoSegLib.mr import runner as mr_runner
from CervixAutoSegLib.mr.network import PAPER_PATCH_SIZE_XYZ, PAPER_SPACING_XYZ, build_pocketnet

TINY_PATCH_XYZ = (32, 32, 4)
"""4 levels (x, y halved three times, z kept): a small PocketNet with both heads; doubling net 32-64-128-256."""
TINY_WORKING_SPACING_XYZ = (8.0, 8.0, 10.0)
"""A coarse working grid (30 x 30 pixels over the 240 mm field of view): every window is tiny."""


def tiny_benchmark_models(root):
    """A two-stage PocketNet model directory whose organ network calls every voxel organ (the
    output bias is pushed to class 1), so stage 2 always runs, on the whole image."""
    torch.manual_seed(0)
    specs = {}
    for role, channels in (("organ", 1), ("tumor", 2)):
        kwargs = {"in_channels": channels, "out_channels": 2, "patch_size": list(TINY_PATCH_XYZ),
                  "spacing": list(PAPER_SPACING_XYZ)}
        network = build_pocketnet(**kwargs).eval()
        if role == "organ":
            with torch.no_grad():
                network.output_block.conv.conv.bias.copy_(torch.tensor([-50.0, 50.0]))
        specs[role] = models.NetworkSpec(network, "PocketNet", kwargs)
    return models.write_model_dir(root / "mr-bench-tiny", specs, model_id="mr-bench-tiny", family="mr",
                                  preprocessing={"spacing_mm": list(TINY_WORKING_SPACING_XYZ)})


def test_doubling_network_has_pocketnets_kernels_and_strides_and_the_pinned_parameter_count():
    paper = build_pocketnet(1, 2, PAPER_PATCH_SIZE_XYZ, PAPER_SPACING_XYZ)
    doubling = benchmark_case.build_doubling_unet(1, 2, PAPER_PATCH_SIZE_XYZ, PAPER_SPACING_XYZ)
    assert doubling.kernel_size == paper.kernel_size and doubling.strides == paper.strides
    assert list(doubling.filters) == [32, 64, 128, 256, 320, 320]
    # 32-64-128-256-320-320, plain blocks, both deep-supervision heads, 1 input channel, 2 outputs.
    assert sum(p.numel() for p in doubling.parameters()) == 30_170_118
    assert benchmark_case.DOUBLING_NETWORK_PARAMETERS_PAPER_PLAN == 30_170_118
    tiny = benchmark_case.build_doubling_unet(1, 2, TINY_PATCH_XYZ, PAPER_SPACING_XYZ)  # 4 levels: 4 widths
    assert list(tiny.filters) == [32, 64, 128, 256]


@pytest.mark.parametrize("name, thickness", [("axial", 5.0), ("sagittal", 4.0)])
def test_series_have_30_slices_over_a_240_mm_field_of_view(name, thickness):
    case = get_family("mr").benchmark
    assert isinstance(case, ComparativeBenchmarkCase) and case.series == ("axial", "sagittal")
    image = case.make_series(name, 32)
    assert image.modality == "MR" and image.shape == (30, 32, 32)
    assert np.allclose(image.spacing, (0.469 * 512 / 32, 0.469 * 512 / 32, thickness))
    slice_axis = np.abs(np.asarray(image.direction)[:, 2])
    assert np.argmax(slice_axis) == (2 if name == "axial" else 0)  # LPS z (head-feet) or x (left-right)
    assert np.allclose(case.make_image(32).array, case.make_series("axial", 32).array)


def test_runner_reports_each_stage_it_ran(tmp_path, monkeypatch):
    """Stages replaced by planted answers: the organ stage always reports, the tumour stage only
    when there is an organ."""
    card = tiny_benchmark_models(tmp_path)
    image = get_family("mr").benchmark.make_series("axial", 32)
    organ_found = {"value": True}

    def planted(self, card, role, inputs, device, options, timings, cancel, progress):
        labels = np.zeros(inputs.shape[1:], np.uint8)
        labels[:, 5:15, 5:15] = organ_found["value"]
        return labels, {"passes": 3 if role == "organ" else 1, "item_shape": [inputs.shape[0], 8, 32, 32]}, None  # no evidence maps

    monkeypatch.setattr(mr_runner.PocketNetRunner, "_stage", planted)
    run = lambda: get_family("mr").runner(image, card, torch.device("cpu"),  # noqa: E731
                                          get_family("mr").inference_defaults, lambda f, m: None, None)
    stages = run().inference["stages"]
    assert [(s["role"], s["passes"], s["item_shape"][0]) for s in stages] == [("organ", 3, 1), ("tumor", 1, 2)]
    assert all(s["seconds"] >= 0 and s["network_s"] >= 0 for s in stages)
    organ_found["value"] = False
    assert [s["role"] for s in run().inference["stages"]] == ["organ"]


def _case(series, flip, total, rss=1.0, target_run=True):
    return {"slices": 32, "series": series, "flip_tta": flip, "target_run": target_run, "peak_rss_gb": rss,
            "timings_s": {"total": total, "network": total / 2}, "network_gflops_per_s": 1.0,
            "gflop_per_item": 1.0, "precision": "bf16"}


def test_targets_are_judged_on_the_first_flip_setting_and_the_speedup_is_baseline_over_whole_case():
    targets = get_family("mr").benchmark.targets
    cases = [_case("axial", False, 30.0), _case("axial", True, 90.0, rss=9.0, target_run=False)]
    baselines = [{"name": "doubling_dynunet", "slices": 32, "series": "axial", "network_s": 75.0}]
    plan = {"flip_tta_runs": [False, True], "targets": targets, "baselines": True, "comparative": True}
    card = argparse.Namespace(id="mr-x")
    summary = summarise(cases, 2.0, card, False, plan, baselines, {"organ": 5})
    assert summary["baselines"][0]["speedup_whole_case"] == pytest.approx(2.5)
    assert summary["baselines"][0]["speedup_network"] == pytest.approx(5.0)
    assert summary["targets_judged_on"] == "flip TTA off"
    assert {k: v["met"] for k, v in summary["targets"].items()} == {
        "total_s": True, "peak_rss_gb": True, "speedup_vs_baseline": True}
    baselines[0]["network_s"] = 50.0
    slow = judge(summarise(cases, 2.0, card, False, plan, baselines)["cases"], baselines, targets)
    assert slow["speedup_vs_baseline"]["met"] is False
    assert slow["speedup_vs_baseline"]["measure"] == "speedup_whole_case"  # no process times: the passes alone
    assert judge(cases, [], targets)["speedup_vs_baseline"]["met"] is None  # --no-baselines: not measured
    # With both processes timed, the judged speed-up is process over process (54 s / 26 s).
    cases[0]["process_s"], baselines[0]["process_s"] = 26.0, 54.0
    summary = summarise(cases, 2.0, card, False, plan, baselines)
    assert summary["baselines"][0]["speedup_process"] == pytest.approx(54.0 / 26.0)
    assert summary["targets"]["speedup_vs_baseline"] == {"target": ">= 2.0", "met": True,
                                                         "measure": "speedup_process"}
    baselines[0]["process_s"] = 50.0
    assert summarise(cases, 2.0, card, False, plan, baselines)["targets"]["speedup_vs_baseline"]["met"] is False


def test_mr_times_both_series_with_flip_tta_off_then_on_and_ct_keeps_one_run_per_size_and_its_targets():
    args = argparse.Namespace(flip_tta=None, series=["axial", "sagittal"], baselines=True)
    plan = bench._plan(get_family("mr").benchmark, args)
    assert plan["flip_tta_runs"] == [False, True] and plan["series"] == ["axial", "sagittal"] and plan["baselines"]
    forced = argparse.Namespace(**{**vars(args), "flip_tta": True})
    assert bench._plan(get_family("mr").benchmark, forced)["flip_tta_runs"] == [True]
    plan = bench._plan(get_family("ct").benchmark, argparse.Namespace(flip_tta=None))
    assert plan["series"] == [None] and plan["flip_tta_runs"] == [None] and not plan["baselines"]
    assert plan["full_tta_comparison"]  # CT judges selective against full flip TTA in the same run
    names = ["network_fraction_of_matmul", "total_s_100_slices", "peak_rss_gb", "selective_tta_network_fraction",
             "outside_network_s"]
    assert list(judge([], [], plan["targets"])) == names
    assert not bench._plan(get_family("ct").benchmark, argparse.Namespace(flip_tta=False))["full_tta_comparison"]
    assert not bench._plan(get_family("mr").benchmark, args)["full_tta_comparison"]  # MR's targets do not judge it


def _ct_run(mode, network_s, process_s, target_run, mirrored):
    return {"slices": 100, "series": None, "tta_mode": mode, "target_run": target_run, "process_s": process_s,
            "network_fraction_of_matmul": 0.6, "peak_rss_gb": 1.0,
            "timings_s": {"network": network_s, "total": process_s - 1.0}, "items": 100, "mirrored_items": mirrored}


def test_selective_flip_tta_is_judged_against_its_full_twin_and_the_time_outside_the_network():
    from CervixAutoSegLib.benchmarks.segment_report import selective_tta_comparison

    targets = bench.DEFAULT_TARGETS
    cases = [_ct_run("selective", 5.5, 7.9, True, 10), _ct_run("full", 10.0, 12.5, False, 100)]
    comparison = selective_tta_comparison(cases)
    assert comparison["network_fraction_of_full"] == pytest.approx(0.55)
    assert comparison["outside_network_s"] == pytest.approx(2.4) and comparison["mirrored_items"] == 10
    judged = judge(cases, [], targets)
    assert judged["selective_tta_network_fraction"]["met"] and judged["outside_network_s"]["met"]
    slow = [_ct_run("selective", 6.5, 10.0, True, 30), cases[1]]
    judged = judge(slow, [], targets)
    assert judged["selective_tta_network_fraction"]["met"] is False and judged["outside_network_s"]["met"] is False
    assert judge(cases[:1], [], targets)["selective_tta_network_fraction"]["met"] is None  # no twin: not measured
    assert bench._tta_mode({"flip_tta": True, "items": 100, "mirrored_items": 12}) == "selective"
    assert bench._tta_mode({"flip_tta": True, "items": 100, "mirrored_items": 100}) == "full"
    assert bench._tta_mode({"flip_tta": False, "items": 100, "mirrored_items": 0}) == "off"


def test_with_repeats_selective_tta_is_judged_round_by_round():
    """Each round's selective run and its full twin are neighbours in time: the fraction is the
    median of the rounds' own ratios, and the time outside the network the median of the rounds'."""
    from CervixAutoSegLib.benchmarks.segment_report import outside_network_s, selective_tta_comparison

    selective = {**_ct_run("selective", 5.6, 8.4, True, 15),
                 "repeats_s": [8.4, 11.0, 8.0], "repeats_network_s": [5.6, 8.0, 5.2]}
    full = {**_ct_run("full", 9.6, 11.8, False, 100), "repeats_s": [11.8, 12.9, 11.2],
            "repeats_network_s": [9.6, 9.0, 8.6]}  # the second round in a slow spell for the selective run
    comparison = selective_tta_comparison([selective, full])
    assert comparison["network_fraction_of_full"] == pytest.approx(5.2 / 8.6)
    assert comparison["round_fractions"] == [round(5.6 / 9.6, 4), round(8.0 / 9.0, 4), round(5.2 / 8.6, 4)]
    assert outside_network_s(selective) == pytest.approx(2.8)  # of 2.8, 3.0 and 2.8
    assert comparison["outside_network_s"] == pytest.approx(2.8)
    assert judge([selective, full], [], bench.DEFAULT_TARGETS)["outside_network_s"]["met"]
    single = {**_ct_run("selective", 5.6, 8.4, True, 15), "repeats_s": [8.4], "repeats_network_s": [5.6]}
    assert selective_tta_comparison([single, _ct_run("full", 9.0, 11.8, False, 100)])["network_fraction_of_full"] \
        == pytest.approx(5.6 / 9.0)  # one round: the plain ratio
    assert outside_network_s(single) == pytest.approx(2.8)


def test_workers_run_in_a_fresh_process_and_their_failure_is_reported():
    with pytest.raises(RuntimeError, match="benchmark worker failed"):
        bench._run_worker({"family": "mr", "model": "no-such-model", "models_root": "."}, "_baseline_worker")


@pytest.mark.slow
def test_a_small_benchmark_reports_both_series_stage_times_and_the_speedup(tmp_path, capsys, monkeypatch):
    from CervixAutoSegLib.cli import main

    tiny_benchmark_models(tmp_path / "models")
    out = tmp_path / "bench.json"
    # The workers run in this process (through JSON, as from a fresh one): a fresh process per
    # run costs seconds of imports each; the process plumbing is tested above.  Flip TTA off
    # only: the default off-then-on runs are checked above.
    monkeypatch.setattr(bench, "_run_worker", lambda config, worker="_segment_worker": json.loads(
        json.dumps(getattr(bench, worker)(config))))
    assert main(["benchmark", "mr", "--sizes", "32", "--models", str(tmp_path / "models"), "--no-flip-tta",
                 "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["model"] == "mr-bench-tiny" and not summary["random_weights"]
    assert [(c["series"], c["flip_tta"]) for c in summary["cases"]] == [("axial", False), ("sagittal", False)]
    for case in summary["cases"]:
        assert [s["role"] for s in case["stages"]] == ["organ", "tumor"]
        assert all(s["seconds"] > 0 and s["passes"] > 0 for s in case["stages"])
        assert case["target_run"] and case["peak_rss_gb"] > 0
    tiny_doubling = benchmark_case.build_doubling_unet(1, 2, TINY_PATCH_XYZ, PAPER_SPACING_XYZ)
    assert [b["series"] for b in summary["baselines"]] == ["axial", "sagittal"]
    for baseline in summary["baselines"]:
        assert baseline["name"] == "doubling_dynunet" and baseline["passes"] > 0
        assert baseline["parameters"] == sum(p.numel() for p in tiny_doubling.parameters())
        assert baseline["speedup_whole_case"] > 0 and baseline["speedup_network"] > 0
    assert set(summary["targets"]) == {"total_s", "peak_rss_gb", "speedup_vs_baseline"}
    printed = capsys.readouterr().out
    assert "stage:organ" in printed and "stage:tumor" in printed and "baseline doubling_dynunet" in printed
    assert "target speedup_vs_baseline >= 2.0:" in printed


def test_random_benchmark_model_calls_everything_organ_and_nothing_tumour(tmp_path):
    """So that without trained weights stage 2 runs on the whole image (its worst case) and the
    writers do not contour random speckle."""
    card = get_family("mr").benchmark.random_model(tmp_path / "random", "mr-random")
    for role, channels, expected in (("organ", 1, 1), ("tumor", 2, 0)):
        network = models.load_network(card, role)
        with torch.inference_mode():
            labels = network(torch.randn(1, channels, 8, 64, 64) * 3).argmax(1)  # (N, z, y, x)
        assert (labels == expected).all()


def test_repeated_runs_take_turns_and_each_measurement_reports_its_median_run(monkeypatch, tmp_path):
    """``--repeat 3``: segment and baseline alternate round by round, and each row is its median run
    (by the whole process for a case, by the network for a baseline), every repetition listed."""
    calls = []
    seconds = {"_segment_worker": iter([30.0, 10.0, 20.0]), "_baseline_worker": iter([5.0, 9.0, 7.0])}

    def fake_worker(config, worker="_segment_worker"):
        calls.append(worker)
        value = next(seconds[worker])
        if worker == "_segment_worker":
            return {"process_s": value, "timings_s": {"total": value - 1}, "out": config["out"]}
        return {"network_s": value, "passes": 6}

    monkeypatch.setattr(bench, "_run_worker", fake_worker)
    plan = {"flip_tta_runs": [False], "full_tta_comparison": False}
    family = get_family("mr")
    baselines = [argparse.Namespace(name="doubling_dynunet")]
    jobs = bench._jobs(family, plan, baselines, "32x32x30", "axial", True)
    case, baseline = bench._repeated(jobs, {"dicom": "x"}, tmp_path, 3)
    assert calls == ["_segment_worker", "_baseline_worker"] * 3
    assert case["process_s"] == 20.0 and case["repeats_s"] == [30.0, 10.0, 20.0] and case["target_run"]
    assert case["repeats_network_s"] == [0.0, 0.0, 0.0] and "repeats_network_s" not in baseline
    assert "config" not in case and "label" not in case
    assert baseline["network_s"] == 7.0 and baseline["name"] == "doubling_dynunet"
