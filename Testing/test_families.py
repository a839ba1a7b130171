"""The family registry: built-in families named once, and a third family plugged in from outside.

The toy family (``Testing/toy_family.py``) is registered through the registry alone; the
pipeline, the ``segment``/``train``/``export-rtstruct`` commands, the ``.seg.nrrd`` writer,
the MRML logic and the Slicer panel's controller then run it with no family-specific code.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from CervixAutoSegLib import cli, families, models
from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.metrics import dice
from CervixAutoSegLib.volume import Volume

TESTING = Path(__file__).resolve().parent
SPACING = (1.2, 1.2, 3.0)


def test_built_in_families_are_found_by_name_and_by_modality():
    assert families.family_names()[:2] == ("ct", "mr")
    assert families.get_family("CT").modality == "CT" and families.family_for_modality("mr").name == "mr"
    assert [s.name for s in families.structures_of("ct")] == ["Bladder", "Rectum", "CTVn", "CTVp"]
    assert families.family_for_modality("US") is None
    with pytest.raises(InputError, match="unknown model family 'pet'.*known: ct, mr"):
        families.get_family("pet")
    with pytest.raises(ValueError, match="already registered"):
        families.register_family(families.get_family("ct"))
    with pytest.raises(ValueError, match="distinct and non-zero"):
        families.ModelFamily("bad", "CT", "bad", structures_of_values(1, 1), runner=None)


def structures_of_values(*values):
    from dataclasses import replace

    blob = families.get_family("ct").structures[0]
    return tuple(replace(blob, value=value) for value in values)


def test_a_family_without_a_runner_says_so_in_one_line(tmp_path, network_free_family):
    from test_models import write as write_ct_model  # a real model directory, relabelled below

    from CervixAutoSegLib.ct.network import ResAUNet
    from CervixAutoSegLib.pipeline import segment

    card = write_ct_model(tmp_path / "draft-x", ResAUNet(), model_id="draft-x")
    document = json.loads((card.path / "model.json").read_text())
    document["family"] = network_free_family.name
    (card.path / "model.json").write_text(json.dumps(document))
    image = Volume(np.zeros((4, 8, 8), np.int16), SPACING, (0, 0, 0), np.eye(3), modality="MR")
    with pytest.raises(models.ModelError, match="has no network in this version"):
        segment(image, None, model="draft-x", models_root=tmp_path)


@pytest.fixture
def network_free_family():
    """A family with structures but no network yet (as MR was before its runner existed)."""
    draft = families.ModelFamily("draft", "MR", "Draft family", families.get_family("ct").structures, runner=None)
    families.register_family(draft)
    yield draft
    families.unregister_family("draft")


# ---------------------------------------------------------------- the toy family
@pytest.fixture
def toy(monkeypatch):
    """The toy family registered here and in every child process (plug-in environment variable)."""
    import toy_family

    if "toy" not in families.family_names():
        families.register_family(toy_family.TOY_FAMILY)
    monkeypatch.setenv(families.PLUGINS_ENV, "toy_family")
    monkeypatch.setenv("PYTHONPATH", str(TESTING))
    yield toy_family
    families.unregister_family("toy")


def write_blob_cases(folder: Path, seeds) -> None:
    import toy_family

    from CervixAutoSegLib.image_io import write_image

    for seed in seeds:
        image, labels = toy_family.blob_case(seed)
        case = folder / f"case{seed}"
        case.mkdir(parents=True)
        write_image(Volume(image, SPACING, (0, 0, 0), np.eye(3), modality="MR"), case / "image.nii.gz")
        write_image(Volume(labels, SPACING, (0, 0, 0), np.eye(3)), case / "labels.nii.gz")


@pytest.mark.slow
def test_toy_family_trains_with_a_resume_on_the_shared_loop(toy, tmp_path):
    from CervixAutoSegLib.cases import discover_cases
    from CervixAutoSegLib.training import train_network

    write_blob_cases(tmp_path / "cases", range(3))
    sources = discover_cases(tmp_path / "cases", "MR")
    config = toy.ToyConfig(batch_size=2, steps_per_epoch=3, max_epochs=2, learning_rate=1e-2, checkpoint_minutes=60,
                           bf16=False, seed=5)
    straight = train_network(toy.ToyTask(sources[:2], sources[2:]), config, tmp_path / "straight")
    train_network(toy.ToyTask(sources[:2], sources[2:]), config, tmp_path / "cut", stop_after_steps=4)
    resumed = train_network(toy.ToyTask(sources[:2], sources[2:]), config, tmp_path / "cut", resume=True)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    for name, tensor in straight.network.state_dict().items():
        assert np.array_equal(tensor.numpy(), resumed.network.state_dict()[name].numpy()), name
    assert straight.best["dsc"]["Blob"] > 0.8


def test_a_nan_validation_loss_never_becomes_the_best_and_a_nan_training_loss_stops_with_one_line(toy, tmp_path):
    import torch

    from CervixAutoSegLib.cases import discover_cases
    from CervixAutoSegLib.errors import TrainingError
    from CervixAutoSegLib.training import train_network

    write_blob_cases(tmp_path / "cases", range(3))
    sources = discover_cases(tmp_path / "cases", "MR")
    config = toy.ToyConfig(batch_size=1, steps_per_epoch=1, max_epochs=2, checkpoint_minutes=60, bf16=False)

    class NanValidation(toy.ToyTask):
        def validate(self, network, config):
            return {**super().validate(network, config), "val_loss": float("nan")}

    (tmp_path / "nan-val").mkdir()
    outcome = train_network(NanValidation(sources[:2], sources[2:]), config, tmp_path / "nan-val")
    assert [h["best_epoch"] for h in outcome.history] == [None, None] and "epoch" not in outcome.best
    assert not (tmp_path / "nan-val" / "best.pt").exists()

    class NanLoss(toy.ToyTask):
        def loss(self, config):
            return lambda logits, targets: logits.float().sum() * torch.tensor(float("nan"))

    with pytest.raises(TrainingError, match="training loss became nan at epoch 1 step 1"):
        train_network(NanLoss(sources[:2], sources[2:]), config, tmp_path / "nan-loss")


@pytest.mark.slow
def test_toy_family_runs_through_every_command_the_mrml_logic_and_the_controller(toy, tmp_path):
    pytest.importorskip("slicer")
    from rtstruct_oracle import assert_dciodvfy_clean

    from CervixAutoSegLib.dicom_writer import write_dicom_series
    from CervixAutoSegLib.image_io import load_image

    write_blob_cases(tmp_path / "cases", range(4))
    root = tmp_path / "Models"
    assert cli.main(["train", "toy", "--data", str(tmp_path / "cases"), "--out", str(root / "toy-blob"),
                     "--batch-size", "2", "--steps-per-epoch", "3", "--max-epochs", "2", "--split", "2:1:1",
                     "--lr", "1e-3", "--no-bf16"]) == 0
    card = models.read_card(root / "toy-blob")
    assert card.family == "toy" and card.network().architecture == "ToyNet3D"
    assert card.validation["test"]["dsc"]["Blob"] > 0.8  # measured through segment's own path

    image, truth = toy.blob_case(99)
    volume = Volume(image, SPACING, (-20.0, 10.0, 5.0), np.eye(3), modality="MR")
    write_dicom_series(volume, tmp_path / "dicom", modality="MR")
    out = tmp_path / "out"
    assert cli.main(["segment", str(tmp_path / "dicom"), "--out", str(out), "--model", "toy",
                     "--models", str(root)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".cervixautoseg-manifest.json", "labels.json", "labels.nii.gz",
                                                      "preview.png", "report.json", "rtstruct.dcm",
                                                      "segmentation.seg.nrrd"]
    labels = load_image(out / "labels.nii.gz").array
    assert dice(labels == 1, truth == 1) > 0.9
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["family"] == "toy" and report["device"]["flip_tta"] is True
    assert report["device"]["passes"] == 2 * toy_windows(image.shape)
    assert_dciodvfy_clean(out / "rtstruct.dcm")
    assert cli.main(["export-rtstruct", "--dicom", str(tmp_path / "dicom"), "--labels", str(out / "labels.nii.gz"),
                     "--out", str(tmp_path / "again.dcm")]) == 0
    assert_dciodvfy_clean(tmp_path / "again.dcm")

    check_mrml_and_controller(tmp_path, root, volume, truth)


@pytest.mark.slow
def test_cross_validation_trains_every_fold_and_summarises_them(toy, tmp_path):
    write_blob_cases(tmp_path / "cases", range(5))
    out = tmp_path / "cv"
    assert cli.main(["train", "toy", "--data", str(tmp_path / "cases"), "--out", str(out), "--folds", "2",
                     "--fold", "all", "--split", "4:0:1", "--batch-size", "2", "--steps-per-epoch", "2",
                     "--max-epochs", "1", "--lr", "1e-3", "--no-bf16"]) == 0
    summary = json.loads((out / "cross_validation.json").read_text())
    cards = [models.read_card(out / f"fold-{fold}") for fold in (0, 1)]
    splits = [card.training["split"] for card in cards]
    assert splits[0]["test"] == splits[1]["test"] and len(splits[0]["test"]) == 1
    assert sorted(splits[0]["validation"] + splits[1]["validation"]) == sorted(splits[0]["train"] +
                                                                               splits[0]["validation"])
    assert [card.training["data"]["fold"] for card in cards] == [0, 1]
    assert summary["folds"] == 2
    assert summary["mean_dsc"] == pytest.approx(np.mean([card.validation["mean_dsc"] for card in cards]))
    assert cli.main(["train", "toy", "--data", str(tmp_path / "cases"), "--out", str(out), "--folds", "2",
                     "--fold", "2"]) != 0


def toy_windows(shape) -> int:
    import toy_family

    from CervixAutoSegLib.inferers import SlidingWindowInferer

    return SlidingWindowInferer(toy_family.ROI_ZYX).window_count(shape)


def check_mrml_and_controller(tmp_path: Path, root: Path, volume: Volume, truth: np.ndarray) -> None:
    import slicer

    from CervixAutoSegLib import mrml
    from CervixAutoSegLib.controller import AutoContourController, DeviceInfo

    scene = slicer.vtkMRMLScene()
    node = mrml.node_from_volume(scene, volume, "Blob MR")
    logic = mrml.AutoContourLogic(scene)
    reports: list[dict] = []

    def apply(out_dir: Path) -> str:
        reports.append(json.loads((out_dir / "report.json").read_text()))  # the folder goes once loaded
        return mrml.summary(logic.apply_result(node, out_dir))

    controller = AutoContourController(models_root=root, python=sys.executable,
                                       devices=lambda: DeviceInfo(cpu="CPU"), apply_result=apply)
    controller.set_input(mrml.VolumeNodeInput(node))
    assert "No MR model is installed" in controller.view.status  # auto = the built-in MR family
    controller.set_model("toy-blob")
    assert controller.view.run_enabled and controller.view.flip_tta, controller.view.status
    controller.set_flip_tta(False)
    controller.run_clicked()
    deadline = time.monotonic() + 300
    while controller.view.polling and time.monotonic() < deadline:
        controller.poll()
        time.sleep(0.1)
    assert controller.view.status.startswith("Done in") and "1 segment" in controller.view.status, \
        controller.view.status
    assert reports[0]["device"]["flip_tta"] is False and reports[0]["model"]["id"] == "toy-blob"
    result = mrml.find_result_node(scene, node)
    labels, structures, _ = mrml.labels_from_segmentation(result, volume)
    assert [s.name for s in structures] == ["Blob"]
    assert dice(labels.array == 1, truth == 1) > 0.9
