"""A tiny training run: the loss goes down, checkpoints resume exactly, and the command
writes a model directory that loads."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from CervixAutoSegLib import cli, models
from CervixAutoSegLib.ct.config import TrainConfig
from CervixAutoSegLib.cases import discover_cases, parse_seed_range, split_cases
from CervixAutoSegLib.ct.dataset import PatchSampler, SliceCase, prepare_case
from CervixAutoSegLib.ct.augment import NO_AUGMENTATION
from CervixAutoSegLib.ct.losses import make_loss
from CervixAutoSegLib.ct.preprocess import CTPreprocessing
from CervixAutoSegLib.ct.training import build_ct_network, train_network
from CervixAutoSegLib.training import CHECKPOINT_FILE, LOG_FILE
from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.volume import Volume

TINY = TrainConfig(batch_size=2, patch_size=64, steps_per_epoch=3, max_epochs=2, patience=3, augment=False,
                   bf16=True, max_val_slices=2, checkpoint_minutes=60.0, seed=3, hd95_cases=0)


def tiny_case(seed: int, nz: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(HU, labels) (z, y, x) of a small pelvis-like phantom; positions vary with the seed."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:nz, :110, :130]
    cy, cx = 55 + rng.uniform(-5, 5), 65 + rng.uniform(-5, 5)
    hu = np.full(zz.shape, -1000, np.int16)
    hu[((yy - cy) / 45.0) ** 2 + ((xx - cx) / 60.0) ** 2 < 1] = 30
    labels = np.zeros(zz.shape, np.uint8)
    for value, (dy, dx, radius, value_hu) in enumerate([(-15, 0, 12, 80), (20, 0, 7, -60), (0, -35, 5, 150),
                                                         (0, 12, 6, 180)], start=1):
        disc = (yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 < radius ** 2
        labels[disc] = value
        hu[disc] = value_hu
    return hu, labels


def write_cases(folder, seeds):
    for seed in seeds:
        hu, labels = tiny_case(seed)
        case = folder / f"case{seed}"
        case.mkdir(parents=True)
        for array, name in ((hu, "image"), (labels, "labels")):
            sitk.WriteImage(Volume(array, (1.0, 1.0, 3.0), (0, 0, 0), np.eye(3)).to_sitk(),
                            str(case / f"{name}.nii.gz"))


@pytest.fixture(scope="module")
def slice_cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    write_cases(folder, range(3))
    sources = discover_cases(folder, "CT")
    params = CTPreprocessing()
    return [prepare_case(source, params, folder / "cache") for source in sources]


@pytest.mark.slow
def test_training_lowers_the_loss(slice_cases):
    torch.manual_seed(0)
    config = dataclasses.replace(TINY, steps_per_epoch=12, max_epochs=1, learning_rate=1e-3)
    sampler = PatchSampler(slice_cases, 64, np.random.default_rng(11), NO_AUGMENTATION)
    images, labels = sampler.batch(8)
    loss_fn = make_loss(config.loss)

    def loss_of(network):
        network.train()  # batch statistics: comparable before and after, independent of running stats
        with torch.no_grad():
            return float(loss_fn(network(torch.from_numpy(images)), torch.from_numpy(labels)))

    torch.manual_seed(config.seed)
    before = loss_of(build_ct_network(config))
    outcome = train_network(config, slice_cases, slice_cases[:1])
    after = loss_of(outcome.network)
    assert after < 0.8 * before
    assert outcome.history[0]["dsc"].keys() == {"Bladder", "Rectum", "CTVn", "CTVp"}


@pytest.mark.slow
def test_resume_from_a_mid_epoch_checkpoint_matches_an_uninterrupted_run(slice_cases, tmp_path):
    straight = train_network(TINY, slice_cases, slice_cases[:1], tmp_path / "straight")
    interrupted_dir = tmp_path / "interrupted"
    train_network(TINY, slice_cases, slice_cases[:1], interrupted_dir, stop_after_steps=4)  # epoch 2, step 1
    checkpoint = torch.load(interrupted_dir / CHECKPOINT_FILE, weights_only=False)
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"]) == (1, 1)
    resumed = train_network(TINY, slice_cases, slice_cases[:1], interrupted_dir, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for (name, a), b in zip(straight.network.state_dict().items(), resumed.network.state_dict().values()):
        assert torch.equal(a, b), name
    lines = [json.loads(line) for line in (interrupted_dir / LOG_FILE).read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]


def test_early_stopping_after_patience_epochs_without_improvement(slice_cases):
    config = dataclasses.replace(TINY, learning_rate=0.0, max_epochs=10, patience=1, steps_per_epoch=1)
    outcome = train_network(config, slice_cases, slice_cases[:1])
    # LR 0: the weights never move (only BatchNorm statistics drift), so validation stops improving.
    assert outcome.stopped_early and len(outcome.history) <= 4


def test_train_command_writes_a_model_directory_that_loads(tmp_path, capsys):
    write_cases(tmp_path / "cases", range(3))
    out = tmp_path / "model"
    code = cli.main(["train", "ct", "--data", str(tmp_path / "cases"), "--out", str(out), "--patch-size", "64",
                     "--batch-size", "2", "--steps-per-epoch", "2", "--max-epochs", "1", "--split", "2:1:0",
                     "--max-val-slices", "2", "--no-augment", "--end-fraction", "0.25"])
    assert code == 0
    card = models.read_card(out)
    assert card.training["config"]["end_fraction"] == 0.25
    assert card.family == "ct" and card.network().architecture == "ResAUNet"
    assert card.validation["best_epoch"] == 1 and set(card.validation["dsc"]) == {"Bladder", "Rectum", "CTVn", "CTVp"}
    assert card.training["cases"] == {"train": 2, "validation": 1, "test": 0}
    assert card.preprocessing["window_width"] == 300
    network = models.load_network(card)
    assert network(torch.rand(1, 1, 64, 64)).shape == (1, 5, 64, 64)
    assert (tmp_path / "model.work" / LOG_FILE).is_file()


def test_train_command_errors_are_one_line(tmp_path, capsys):
    code = cli.main(["train", "ct", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m")])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    assert cli.main(["train", "ct", "--out", str(tmp_path / "m"), "--patch-size", "100",
                     "--phantom-seeds", "1-2"]) != 0
    assert "multiple of 32" in capsys.readouterr().err
    assert cli.main(["train", "ct", "--out", str(tmp_path / "m"), "--end-fraction", "1.5",
                     "--phantom-seeds", "1-2"]) != 0
    assert "--end-fraction must be between 0 and 1" in capsys.readouterr().err


def test_split_is_case_level_and_uses_the_papers_ratio():
    sources = list(range(156))
    train, val, test = split_cases(sources, (111, 30, 15), seed=0)
    assert (len(train), len(val), len(test)) == (111, 30, 15)
    assert sorted(train + val + test) == sources
    assert split_cases(list(range(2)), (111, 30, 15))[1]  # validation never empty with 2 cases


def test_folds_partition_the_non_test_cases_and_keep_the_test_cases_out_of_every_fold():
    from CervixAutoSegLib.cases import fold_split
    from CervixAutoSegLib.errors import InputError

    sources = list(range(24))
    _, _, test = split_cases(sources, (111, 30, 15), seed=3)
    validations = []
    for fold in range(5):
        train, val, fold_test = fold_split(sources, 5, fold, (111, 30, 15), seed=3)
        assert fold_test == test and not set(train) & set(val) and not (set(train) | set(val)) & set(test)
        assert sorted(train + val + test) == sources
        validations.append(val)
    assert sorted(v for val in validations for v in val) == sorted(set(sources) - set(test))
    assert {len(val) for val in validations} <= {4, 5}
    for folds, fold in ((1, 0), (5, 5), (5, -1), (30, 0)):
        with pytest.raises(InputError):
            fold_split(sources, folds, fold, (111, 30, 15))


def test_phantom_cache_entries_change_with_the_phantom_version(monkeypatch):
    # A new phantom version draws other patients from the same seeds: cached slices of
    # the old ones must not be reused.
    from CervixAutoSegLib import phantom
    from CervixAutoSegLib.cases import phantom_cases

    current = phantom_cases([7])[0].fingerprint
    monkeypatch.setattr(phantom, "PHANTOM_VERSION", phantom.PHANTOM_VERSION + 1)
    assert phantom_cases([7])[0].fingerprint != current


def test_seed_ranges():
    assert parse_seed_range("1000-1002,1010") == [1000, 1001, 1002, 1010]
    with pytest.raises(InputError):
        parse_seed_range("a-b")


def test_sampler_balances_structures(slice_cases):
    sampler = PatchSampler(slice_cases, 64, np.random.default_rng(0), NO_AUGMENTATION, foreground_fraction=1.0)
    seen = np.zeros(5)
    for _ in range(40):
        _, labels = sampler.sample()
        seen += np.bincount(labels.reshape(-1), minlength=5) > 0
    assert (seen[1:] >= 8).all()  # every structure in a good share of patches


def test_sampler_structure_weights_set_the_odds_of_each_centre_structure(slice_cases):
    sampler = PatchSampler(slice_cases, 64, np.random.default_rng(1), NO_AUGMENTATION, foreground_fraction=1.0,
                           structure_weights={3: 6.0, 1: 0.0})
    targets = []
    centre = sampler._centre
    sampler._centre = lambda labels, value: targets.append(value) or centre(labels, value)
    for _ in range(400):
        sampler.sample()
    share = np.bincount(targets, minlength=5) / len(targets)
    assert share[1] == 0 and 0.65 < share[3] < 0.85 and 0.05 < share[2] < 0.2 and 0.05 < share[4] < 0.2
    assert sampler.value_odds.tolist() == [0.0, 1 / 8, 6 / 8, 1 / 8]
    with pytest.raises(InputError):
        PatchSampler(slice_cases, 64, np.random.default_rng(1), structure_weights={1: 0, 2: 0, 3: 0, 4: 0})


def test_end_patches_come_from_the_slices_beyond_each_end_centred_where_the_structure_stops():
    # One structure (CTV-N, value 3) on slices 5..9 of 20 (2.5 mm apart): its caudal end
    # is a blob near (42, 52), its cranial end one near (12, 112), far apart in-plane.
    labels = np.zeros((20, 128, 128), np.uint8)
    labels[5:9, 40:45, 50:55] = 3
    labels[9, 10:15, 110:115] = 3
    case = SliceCase("ends", np.zeros((20, 128, 128), np.float16), labels, spacing_zyx=(2.5, 1.0, 1.0))
    sampler = PatchSampler([case], 64, np.random.default_rng(4), NO_AUGMENTATION, end_fraction=1.0,
                           end_margin_mm=5.0)
    drawn = []
    sampler._patch = lambda c, s, centre: drawn.append((s, centre)) or (None, None)
    for _ in range(200):
        sampler.sample()
    slices = {s for s, _ in drawn}
    assert slices == {3, 4, 10, 11}  # 5 mm = 2 slices beyond each end, never the structure's own
    quarter = 64 / 4
    for s, (y, x) in drawn:
        expected = (42, 52) if s < 5 else (12, 112)
        assert abs(y - expected[0]) <= quarter + 2 and abs(x - expected[1]) <= quarter + 2
    with pytest.raises(InputError):
        PatchSampler([case], 64, np.random.default_rng(4), end_fraction=1.5)


def test_structure_weights_option_is_parsed_by_name_and_survives_the_checkpoint_json():
    from CervixAutoSegLib.commands.train import parse_structure_weights
    from CervixAutoSegLib.ct.family import CT_STRUCTURES

    weights = parse_structure_weights("ctvn=3,Rectum=1.5", CT_STRUCTURES)
    assert weights == {3: 3.0, 2: 1.5}
    config = TrainConfig(structure_weights=weights)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for bad in ("Liver=2", "CTVn=x", "CTVn=-1"):
        with pytest.raises(InputError):
            parse_structure_weights(bad, CT_STRUCTURES)


@pytest.mark.slow
def test_warm_start_begins_from_the_given_model_weights(slice_cases, tmp_path):
    first = train_network(TINY, slice_cases, slice_cases[:1], max_epochs=1)
    models.write_model_dir(tmp_path / "first", first.network, model_id="first", family="ct",
                           architecture="ResAUNet", architecture_kwargs={"in_channels": 1, "classes": 5,
                                                                         "attention": "channel"},
                           version="1", preprocessing={}, training={}, validation={})
    warm = dataclasses.replace(TINY, init_from=str(tmp_path / "first"), learning_rate=0.0, max_epochs=1)
    outcome = train_network(warm, slice_cases, slice_cases[:1])
    # LR 0: only BatchNorm running statistics move, so the convolutions are the saved (fp16) ones.
    saved = models.load_network(models.read_card(tmp_path / "first")).state_dict()
    name = "encoder.conv1.weight"
    assert torch.equal(outcome.network.state_dict()[name], saved[name])
    assert not torch.equal(build_ct_network(TINY).state_dict()[name], saved[name])
    with pytest.raises(InputError, match="attention"):
        train_network(dataclasses.replace(warm, attention="spatial"), slice_cases, slice_cases[:1])


def test_grid_search_trains_every_pair_and_keeps_the_best_on_validation_loss(tmp_path):
    write_cases(tmp_path / "cases", range(3))
    out = tmp_path / "model"
    code = cli.main(["train", "ct", "--data", str(tmp_path / "cases"), "--out", str(out), "--patch-size", "64",
                     "--steps-per-epoch", "2", "--max-epochs", "1", "--split", "2:1:0", "--max-val-slices", "1",
                     "--no-augment", "--grid-search", "--lrs", "1e-3", "0", "--batch-sizes", "2",
                     "--grid-epochs", "1", "--hd95-cases", "0"])
    assert code == 0
    grid = models.read_card(out).training["grid_search"]
    trials = grid["trials"]
    assert [(t["learning_rate"], t["batch_size"]) for t in trials] == [(1e-3, 2), (0.0, 2)]
    best = min(trials, key=lambda t: t["val_loss"])
    assert grid["chosen"] == {"learning_rate": best["learning_rate"], "batch_size": 2}
    assert models.read_card(out).training["config"]["learning_rate"] == best["learning_rate"]


def test_phantom_folder_layout_is_read_and_every_structure_survives_the_crop(tmp_path):
    phantom = pytest.importorskip("CervixAutoSegLib.phantom")
    case = phantom.make_ct_phantom(1000)  # a training seed (evaluation seeds start at 5000)
    phantom.write_phantom(case, tmp_path / "data" / "p1000")
    sources = discover_cases(tmp_path / "data", "CT")
    assert [s.name for s in sources] == ["p1000"]
    prepared = prepare_case(sources[0], CTPreprocessing())
    truth_counts = np.bincount(case.labels.array.reshape(-1), minlength=5)[1:]
    assert (truth_counts > 0).all()
    np.testing.assert_array_equal(np.bincount(prepared.labels.reshape(-1), minlength=5)[1:], truth_counts)
    assert prepared.images.shape[1:] == (256, 256) and prepared.images.dtype == np.float16
