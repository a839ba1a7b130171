"""``cervixautoseg qa-calibrate`` and the card's ``qa`` section through training export, on the toy
family (a tiny 3D network on blob images: seconds, not minutes) — the mechanics, not the bundled models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from CervixAutoSegLib import cli, families, models
from CervixAutoSegLib.qa.calibrate import Sample, fit_thresholds, measure

TESTING = Path(__file__).resolve().parent


@pytest.fixture
def toy(monkeypatch):
    import toy_family

    if "toy" not in families.family_names():
        families.register_family(toy_family.TOY_FAMILY)
    monkeypatch.setenv(families.PLUGINS_ENV, "toy_family")
    monkeypatch.setenv("PYTHONPATH", str(TESTING))
    yield toy_family
    families.unregister_family("toy")


def write_blob_cases(folder: Path, seeds) -> Path:
    from test_families import write_blob_cases as write

    write(folder, seeds)
    return folder


def toy_model(root: Path, toy, trained_on=("case0",)) -> Path:
    models.write_model_dir(root / "toy-blob", toy.build_toynet(), model_id="toy-blob", family="toy",
                           architecture=toy.ARCHITECTURE, architecture_kwargs={"hidden": 2},
                           training={"split": {"train": list(trained_on), "validation": [], "test": []}},
                           qa={"selective_tta": {"min_uncertain_fraction": 0.01}})
    return root / "toy-blob"


def test_calibration_writes_thresholds_into_the_card_and_nothing_else(toy, tmp_path, capsys):
    model_dir = toy_model(tmp_path / "models", toy)
    before = json.loads((model_dir / "model.json").read_text())
    weights = (model_dir / "weights.pt").read_bytes()
    cases = write_blob_cases(tmp_path / "cases", range(1, 5))
    assert cli.main(["qa-calibrate", str(model_dir), "--data", str(cases), "--budget", "0.1", "--device", "cpu",
                     "--json", str(tmp_path / "calibration.json")]) == 0
    out = capsys.readouterr().out
    assert "toy-blob on 4 case(s)" in out and "thresholds fitted at quantile" in out
    after = json.loads((model_dir / "model.json").read_text())
    assert {k: v for k, v in after.items() if k != "qa"} == {k: v for k, v in before.items() if k != "qa"}
    assert (model_dir / "weights.pt").read_bytes() == weights and models.read_card(model_dir).qa == after["qa"]
    flags = after["qa"]["slice_flags"]
    assert after["qa"]["selective_tta"] == before["qa"]["selective_tta"]  # the other parts are kept
    assert set(flags["thresholds"]["*"]) >= {"centroid_jump_mm", "overlap_loss", "area_change"}
    calibration = flags["calibration"]
    assert calibration["case_count"] == 4 and calibration["weights_sha256"] == {"network": before["networks"][0]["sha256"]}
    assert calibration["measured_on_calibration_cases"]["false_alarm_rate"] <= 0.1
    assert json.loads((tmp_path / "calibration.json").read_text())["thresholds"] == flags["thresholds"]

    card_bytes = (model_dir / "model.json").read_bytes()
    assert cli.main(["qa-calibrate", str(model_dir), "--data", str(cases), "--evaluate", "--corruptions",
                     "--device", "cpu"]) == 0
    assert (model_dir / "model.json").read_bytes() == card_bytes  # --evaluate writes nothing
    assert "corrupted slices flagged" in capsys.readouterr().out


def test_training_cases_are_refused_for_calibration(toy, tmp_path, capsys):
    model_dir = toy_model(tmp_path / "models", toy, trained_on=("case1",))
    cases = write_blob_cases(tmp_path / "cases", range(1, 3))
    assert cli.main(["qa-calibrate", str(model_dir), "--data", str(cases), "--device", "cpu"]) != 0
    assert "in model toy-blob's training data (case1)" in capsys.readouterr().err
    from CervixAutoSegLib.commands.qa_calibrate import training_overlap

    card = models.read_card(Path(__file__).resolve().parents[1] / "Resources" / "Models" / "ct-resaunet-phantom")
    assert training_overlap(card, ["phantom-ct-1000", "phantom-ct-3000"]) == ["phantom-ct-1000"]


def test_fitted_thresholds_keep_false_alarms_within_the_budget():
    rng = np.random.default_rng(0)
    good = [Sample("c", "S", k, {"centroid_jump_mm": float(v), "gap": 0.0}, 0.95)
            for k, v in enumerate(rng.gamma(2.0, 1.0, 400))]
    bad = [Sample("c", "S", 1000 + k, {"centroid_jump_mm": 12.0 + k, "gap": 0.0}, 0.3) for k in range(10)]
    missed = [Sample("c", "S", 2000, None, 0.0)]  # the truth has it, the result does not: no flag can point there
    thresholds, quantile = fit_thresholds(good + bad + missed, budget=0.05)
    assert 0.9 <= quantile < 1.0 and thresholds["S"]["centroid_jump_mm"] > 1.0
    result = measure(good + bad + missed, thresholds)
    assert result["false_alarm_rate"] <= 0.05 and result["bad_slices"] == 11 and result["flagged_bad"] == 10
    assert result["recall"] == pytest.approx(10 / 11, abs=1e-4) and result["bad_slices_not_drawn"] == 1


def test_training_export_learns_the_ranges_and_keeps_the_rest_of_an_earlier_cards_qa(toy, tmp_path):
    cases = write_blob_cases(tmp_path / "cases", range(3))
    out = tmp_path / "Models" / "toy-blob"
    common = ["train", "toy", "--data", str(cases), "--out", str(out), "--batch-size", "2", "--steps-per-epoch", "1",
              "--max-epochs", "1", "--split", "2:1:0", "--no-bf16"]
    assert cli.main(common) == 0
    learned = models.read_card(out).qa["plausibility"]
    assert learned["cases"] == 3 and learned["structures"]["Blob"]["volume_ml"]["n"] == 3
    assert "training and validation cases" in learned["source"]

    from CervixAutoSegLib.commands.qa_calibrate import write_card_qa

    write_card_qa(out, {"thresholds": {"*": {"centroid_jump_mm": 9.0}}}, "slice_flags")
    shutil.rmtree(cases)  # the data is gone: nothing new can be learned on re-export
    shutil.rmtree(tmp_path / "Models" / "toy-blob.work" / "qa-features")
    assert cli.main([*common, "--export-only"]) == 0
    kept = models.read_card(out).qa
    assert kept["plausibility"] == learned and kept["slice_flags"]["thresholds"]["*"]["centroid_jump_mm"] == 9.0
