"""``train ct --data DATASET``: a tiny model trained for a few steps from an imported DICOM-RT dataset.

The manifest's split wins over ``--split`` and is recorded in the model card; a case whose
RTSTRUCT lacks a structure stays out of training; the model directory is found and loaded by
the model registry and ``segment`` runs it, with no code change.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from dicom_factory import small_ct_phantom, write_named_rtstruct, write_patient_series

from CervixAutoSegLib import models
from CervixAutoSegLib.cli import main
from CervixAutoSegLib.dataset import load_dataset

ROIS = [("Bladder", (1,)), ("RECTUM", (2,)), ("CTV_LN", (3,)), ("CTV_UV", (4,))]
TINY = ["--patch-size", "64", "--batch-size", "2", "--steps-per-epoch", "2", "--max-epochs", "1",
        "--max-val-slices", "2", "--no-augment", "--threads", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    for n, seed in enumerate((3000, 3001, 3002, 3003)):
        case = small_ct_phantom(seed, matrix=48, pixel_mm=9.0, slice_mm=10.0)
        reference = write_patient_series(case, root / "dicom" / f"pt{n}", patient_id=f"TRAIN-{n}",
                                         patient_name=f"Train^{n}", shuffle_seed=seed)
        rois = ROIS if n != 3 else ROIS[:2] + ROIS[3:]  # the last patient has no nodal CTV drawn
        write_named_rtstruct(root / "dicom" / f"pt{n}" / "rs.dcm", case.labels.array, reference, rois)
    out = root / "dataset"
    assert main(["dataset", "import", str(root / "dicom"), "--out", str(out), "--split", "2:1:0", "--seed", "2"]) == 0
    return out


def test_train_from_a_dataset_keeps_its_split_and_loads_through_the_registry(dataset, tmp_path, caplog):
    manifest = load_dataset(dataset)
    incomplete = [c.id for c in manifest.cases if c.structures["CTVn"] != "matched"]
    assert len(incomplete) == 1
    expected = {split: sorted(c.id for c in manifest.cases if c.split == split and c.id not in incomplete)
                for split in ("train", "validation", "test")}
    assert expected["train"] and expected["validation"]

    out = tmp_path / "models" / "clinic-ct"
    with caplog.at_level(logging.INFO, logger="CervixAutoSegLib"):
        code = main(["train", "ct", "--data", str(dataset), "--out", str(out), "--split", "1:1:1",
                     "--model-id", "clinic-ct", *TINY])
    assert code == 0
    assert "the dataset's own split is used" in caplog.text and "--split 1:1:1 is ignored" in caplog.text
    assert f"dataset case {incomplete[0]} left out of training" in caplog.text

    card = models.find_model("clinic-ct", root=tmp_path / "models")
    assert card.family == "ct" and card.id == "clinic-ct"
    assert {k: sorted(v) for k, v in card.training["split"].items()} == expected
    assert card.training["data"]["kind"] == "dataset" and card.training["data"]["split_source"] == "dataset manifest"
    assert card.training["data"]["split_ratio"] == "dataset manifest"
    assert [c.id for c in models.list_models(tmp_path / "models")] == ["clinic-ct"]
    network = models.load_network(card)
    assert network(torch.rand(1, 1, 64, 64)).shape == (1, 5, 64, 64)

    # segment finds it by id in --models and runs it on an image of the dataset.
    image = manifest.cases[0].image
    assert main(["segment", str(image), "--out", str(tmp_path / "seg"), "--models", str(tmp_path / "models"),
                 "--model", "clinic-ct", "--device", "cpu", "--no-flip-tta"]) == 0
    report = json.loads((tmp_path / "seg" / "report.json").read_text())
    assert report["model"]["id"] == "clinic-ct"


def test_a_dataset_of_another_family_or_changed_files_is_refused_in_one_line(dataset, tmp_path, capsys):
    code = main(["train", "mr", "--data", str(dataset), "--out", str(tmp_path / "m"), "--split", "2:1:0"])
    err = capsys.readouterr().err
    assert code == 2 and "train it with `cervixautoseg train ct`" in err and len(err.strip().splitlines()) == 1
    changed = tmp_path / "changed"
    import shutil

    shutil.copytree(dataset, changed)
    labels = sorted(changed.glob("case-*/labels.nii.gz"))[0]
    labels.write_bytes(labels.read_bytes() + b"\0")  # a trailing byte: still a readable gzip, another sha256
    code = main(["train", "ct", "--data", str(changed), "--out", str(tmp_path / "m"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "changed since import" in err and len(err.strip().splitlines()) == 1
