"""Model directories: write → read → load round trip, registry, checksum and corrupt files."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from CervixAutoSegLib import models
from CervixAutoSegLib.ct.network import ResAUNet
from CervixAutoSegLib.errors import InputError, ModelError
from CervixAutoSegLib.ct.family import CT_STRUCTURES

MAX_BUNDLE_BYTES = 60 * 1024 * 1024


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return ResAUNet(attention="channel").eval()


def write(path, network, model_id="ct-test", mean_dsc=0.5, version="1"):
    return models.write_model_dir(
        path, network, model_id=model_id, family="ct", architecture="ResAUNet",
        architecture_kwargs={"in_channels": 1, "classes": 5, "attention": "channel"}, version=version,
        preprocessing={"window_level": 50, "window_width": 300}, training={"data": "unit test"},
        validation={"mean_dsc": mean_dsc},
    )


def test_round_trip_write_read_load(tmp_path, network):
    card = write(tmp_path / "ct-test", network)
    read = models.read_card(tmp_path / "ct-test")
    assert read == card
    assert read.structures == CT_STRUCTURES and read.preprocessing["window_width"] == 300
    document = json.loads((tmp_path / "ct-test" / "model.json").read_text())
    assert [entry["name"] for entry in document["labels"]] == ["Bladder", "Rectum", "CTVn", "CTVp"]
    assert "NOT FOR CLINICAL USE" in document["intended_use"] and document["networks"][0]["sha256"] == card.network().sha256
    weights = tmp_path / "ct-test" / "weights.pt"
    assert weights.stat().st_size < MAX_BUNDLE_BYTES
    assert weights.stat().st_mode & stat.S_IROTH  # shared, read-only data
    state = torch.load(weights, weights_only=True)
    assert state["encoder.conv1.weight"].dtype == torch.float16
    assert state["encoder.bn1.num_batches_tracked"].dtype == torch.int64
    loaded = models.load_network(read)
    assert not loaded.training
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        expected, got = network(x), loaded(x)
    # fp16 storage: same network up to half-precision rounding of the weights.
    assert torch.allclose(expected, got, atol=2e-2, rtol=2e-2)
    assert (expected.argmax(1) == got.argmax(1)).float().mean() > 0.99


def test_rewriting_replaces_the_whole_directory(tmp_path, network):
    write(tmp_path / "m", network, version="1")
    (tmp_path / "m" / "stale.txt").write_text("old")
    card = write(tmp_path / "m", network, version="2")
    assert models.read_card(tmp_path / "m").version == "2" == card.version
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "weights.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging left-overs


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc/self/maps")
def test_a_loaded_network_keeps_nothing_of_its_weights_file_mapped(tmp_path, network):
    """The weights are read through a memory map: every tensor must be copied out of it, fp16 and
    fp32 files alike, or the mapping would outlive the load (and pin a file an update replaces)."""
    import gc

    card = write(tmp_path / "m", network)
    fp32 = {k: v.detach().clone() for k, v in network.state_dict().items()}
    torch.save(fp32, tmp_path / "fp32.pt")
    for weights in (None, tmp_path / "fp32.pt"):
        if weights is not None:  # the same model with float32 weights: .float() alone would not copy them
            shutil.copyfile(weights, card.weights_path())
            document = json.loads((tmp_path / "m" / "model.json").read_text())
            document["networks"][0]["sha256"] = models.file_sha256(card.weights_path())
            (tmp_path / "m" / "model.json").write_text(json.dumps(document))
        loaded = models.load_network(models.read_card(tmp_path / "m"))
        gc.collect()
        assert str(card.weights_path()) not in Path("/proc/self/maps").read_text()
        if weights is not None:
            assert all(torch.equal(loaded.state_dict()[k], v) for k, v in fp32.items())
        assert all(t.dtype != torch.float16 for t in loaded.state_dict().values())


def test_checksum_mismatch_is_a_one_line_model_error(tmp_path, network):
    card = write(tmp_path / "m", network)
    data = bytearray(card.weights_path().read_bytes())
    data[len(data) // 2] ^= 0xFF
    card.weights_path().write_bytes(bytes(data))
    with pytest.raises(ModelError) as raised:
        models.load_network(models.read_card(tmp_path / "m"))
    assert str(raised.value) == (
        "weights of model ct-test (weights.pt) do not match the sha256 in its model card (file corrupt or replaced)"
    )


def test_truncated_weights_with_matching_checksum_are_a_model_error(tmp_path, network):
    card = write(tmp_path / "m", network)
    card.weights_path().write_bytes(card.weights_path().read_bytes()[:4096])
    document = json.loads((tmp_path / "m" / "model.json").read_text())
    document["networks"][0]["sha256"] = models.file_sha256(card.weights_path())
    (tmp_path / "m" / "model.json").write_text(json.dumps(document))
    with pytest.raises(ModelError, match="cannot be loaded") as raised:
        models.load_network(models.read_card(tmp_path / "m"))
    assert "\n" not in str(raised.value)


def test_missing_weights_and_bad_cards_are_model_errors(tmp_path, network):
    card = write(tmp_path / "m", network)
    card.weights_path().unlink()
    with pytest.raises(ModelError, match="missing"):
        models.load_network(card)
    with pytest.raises(ModelError, match="not a model directory"):
        models.read_card(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        models.read_card(tmp_path / "bad")
    (tmp_path / "bad" / "model.json").write_text(json.dumps({"id": "x", "family": "ct"}))
    with pytest.raises(ModelError, match="invalid"):
        models.read_card(tmp_path / "bad")


def test_registry_lists_valid_cards_and_finds_the_best_per_family(tmp_path, network):
    write(tmp_path / "a", network, model_id="ct-a", mean_dsc=0.7)
    write(tmp_path / "b", network, model_id="ct-b", mean_dsc=0.9)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.json").write_text("[]")
    assert [c.id for c in models.list_models(tmp_path)] == ["ct-a", "ct-b"]
    assert models.find_model("ct", tmp_path).id == "ct-b"
    assert models.find_model("ct-a", tmp_path).id == "ct-a"
    with pytest.raises(ModelError, match="no model 'mr'"):
        models.find_model("mr", tmp_path)


def test_resources_dir_can_be_overridden(tmp_path, monkeypatch, network):
    write(tmp_path / "Models" / "env-model", network, model_id="ct-env")
    monkeypatch.setenv(models.RESOURCES_ENV, str(tmp_path))
    assert models.models_dir() == tmp_path / "Models"
    assert models.find_model("ct").id == "ct-env"


def test_unknown_architecture_is_a_model_error(tmp_path, network):
    write(tmp_path / "m", network)
    document = json.loads((tmp_path / "m" / "model.json").read_text())
    document["networks"][0]["architecture"] = "MysteryNet"
    (tmp_path / "m" / "model.json").write_text(json.dumps(document))
    with pytest.raises(ModelError, match="unknown network architecture"):
        models.load_network(models.read_card(tmp_path / "m"))


def test_a_format_1_card_still_loads_as_one_network(tmp_path, network):
    card = write(tmp_path / "m", network)
    entry = card.network()
    document = json.loads((tmp_path / "m" / "model.json").read_text())
    del document["networks"], document["qa"]
    document.update(format_version=1, architecture=entry.architecture, architecture_kwargs=entry.architecture_kwargs,
                    weights_file=entry.weights_file, sha256=entry.sha256)
    (tmp_path / "m" / "model.json").write_text(json.dumps(document))
    old = models.read_card(tmp_path / "m")
    assert old.networks == card.networks and old.roles == ("network",)
    assert torch.equal(models.load_network(old).state_dict()["head.weight"], models.load_network(card).state_dict()["head.weight"])


def test_bad_architecture_settings_and_unknown_families_are_model_errors(tmp_path, network):
    write(tmp_path / "m", network)
    document = json.loads((tmp_path / "m" / "model.json").read_text())
    document["networks"][0]["architecture_kwargs"]["attention"] = "psychic"
    (tmp_path / "m" / "model.json").write_text(json.dumps(document))
    with pytest.raises(ModelError, match="ResAUNet settings in its card are invalid") as raised:
        models.load_network(models.read_card(tmp_path / "m"))
    assert "\n" not in str(raised.value)
    document["networks"][0]["architecture_kwargs"] = {"no_such_argument": 1}
    (tmp_path / "m" / "model.json").write_text(json.dumps(document))
    with pytest.raises(ModelError, match="invalid"):
        models.load_network(models.read_card(tmp_path / "m"))
    document["family"] = "pet"
    (tmp_path / "m" / "model.json").write_text(json.dumps(document))
    with pytest.raises(ModelError, match="unknown model family 'pet'"):
        models.read_card(tmp_path / "m")


def test_a_two_network_card_keeps_each_role_with_its_own_weights_and_checksum(tmp_path, network):
    torch.manual_seed(1)
    other = ResAUNet(attention="none").eval()
    specs = {"organ": models.NetworkSpec(network, "ResAUNet", {"attention": "channel"}),
             "tumor": models.NetworkSpec(other, "ResAUNet", {"attention": "none"})}
    card = models.write_model_dir(tmp_path / "two", specs, model_id="ct-two", family="ct")
    read = models.read_card(tmp_path / "two")
    assert read.roles == ("organ", "tumor") and read == card
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["model.json", "weights-organ.pt", "weights-tumor.pt"]
    assert read.network("organ").sha256 != read.network("tumor").sha256
    tumor = models.load_network(read, "tumor")
    assert tumor.attention_kind == "none"
    with pytest.raises(ModelError, match="no single network"):
        read.network()
    (tmp_path / "two" / "weights-tumor.pt").write_bytes(b"swapped")
    models.load_network(read, "organ")  # the intact network still loads ...
    with pytest.raises(ModelError, match="weights-tumor.pt"):
        models.load_network(read, "tumor")  # ... the broken one is named


def test_a_regular_install_finds_the_resources_under_its_prefix(tmp_path, monkeypatch):
    installed = tmp_path / models.INSTALLED_RESOURCES
    (installed / "Models").mkdir(parents=True)
    monkeypatch.delenv(models.RESOURCES_ENV, raising=False)
    monkeypatch.setattr("sys.prefix", str(tmp_path))
    monkeypatch.setattr(models, "__file__", str(tmp_path / "site-packages" / "CervixAutoSegLib" / "models.py"))
    assert models.resources_dir() == installed


def test_bundled_models_if_any_verify_and_load():
    assert {card.family for card in models.list_models()} >= {"ct", "mr"}
    for card in models.list_models():
        assert card.validation, f"{card.id} has no measured validation metrics"
        for entry in card.networks:
            models.verify_weights(card, entry.role)
            assert card.weights_path(entry.role).stat().st_size < MAX_BUNDLE_BYTES
            network = models.load_network(card, entry.role)
            kwargs = entry.architecture_kwargs
            # 3D networks (a planned patch) take (N, C, z, y, x), 2D ones (N, C, y, x)
            shape = (1, kwargs.get("in_channels", 1), *((8, 64, 64) if "patch_size" in kwargs else (64, 64)))
            with torch.no_grad():
                out = network(torch.zeros(shape))
            assert out.shape[2:] == shape[2:] and np.isfinite(out.numpy()).all()
            classes = 1 + len(card.structures) if len(card.networks) == 1 else 2  # a stage: its structure or not
            assert out.shape[1] == classes

# ---------------------------------------------------------------- broken cards are named (issue 14)
def test_a_broken_card_is_named_instead_of_no_model_directories(tmp_path):
    (tmp_path / "ct-clinic").mkdir()
    (tmp_path / "ct-clinic" / "model.json").write_text('{"id": "ct-clinic", "family": "ct",,}')
    with pytest.raises(InputError) as raised:
        models.choose_model("CT", "auto", tmp_path)
    message = str(raised.value)
    assert "no model directories" not in message
    card = tmp_path / "ct-clinic" / "model.json"
    assert message.startswith(f"no CT model is usable in {tmp_path}; skipped 1 broken model card(s): "
                              f"model card {card} is unreadable: Expecting property name")
    with pytest.raises(ModelError) as by_id:
        models.find_model("ct-clinic", tmp_path)
    assert str(by_id.value).startswith(f"no model 'ct-clinic' in {tmp_path} (installed: none); skipped 1 "
                                       f"broken model card(s): model card {card} is unreadable")


def test_segment_with_only_a_broken_card_says_which_card_and_why(tmp_path, capsys):
    from dicom_factory import make_volume
    from dicom_factory import write as write_series

    from CervixAutoSegLib.cli import main

    (tmp_path / "models" / "ct-clinic").mkdir(parents=True)
    card = tmp_path / "models" / "ct-clinic" / "model.json"
    card.write_text(json.dumps({"id": "ct-clinic", "family": "ct", "networks": [
        {"role": "network", "architecture": "ResAUNet", "sha256": "0" * 64}]}))
    write_series(make_volume((4, 16, 16)), tmp_path / "dicom")
    code = main(["segment", str(tmp_path / "dicom"), "--out", str(tmp_path / "out"), "--progress-json",
                 "--models", str(tmp_path / "models"), "--device", "cpu"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == InputError.exit_code and len(lines) == 1
    assert lines[0] == (f"cervixautoseg segment: error: no CT model is usable in {tmp_path / 'models'}; "
                        f"skipped 1 broken model card(s): model card {card} is invalid: 'labels' is missing")
    assert not (tmp_path / "out").exists()


def test_cards_that_are_not_objects_or_lack_a_field_say_so(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text("[]")
    with pytest.raises(ModelError, match=r"is invalid: it holds a JSON list, not an object$"):
        models.read_card(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text(json.dumps({"id": "x"}))
    with pytest.raises(ModelError, match=r"is invalid: 'family' is missing$"):
        models.read_card(tmp_path / "m")


def test_a_broken_card_beside_a_usable_model_is_warned_about_once(tmp_path, network, caplog):
    write(tmp_path / "ct-good", network, model_id="ct-good")
    (tmp_path / "ct-clinic").mkdir()
    (tmp_path / "ct-clinic" / "model.json").write_text("{")
    with caplog.at_level("WARNING", logger="CervixAutoSegLib.models"):
        assert models.find_model("ct", tmp_path).id == "ct-good"
        assert models.find_model("ct", tmp_path).id == "ct-good"
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and str(tmp_path / "ct-clinic" / "model.json") in warnings[0]
    assert warnings[0].endswith("that model is skipped")


def test_loaded_networks_hold_the_file_weights_and_nothing_left_on_the_meta_device(monkeypatch):
    """Networks are built on the meta device (no random init) and get the file's tensors assigned; a
    buffer the file does not hold sends the load back to a normal build."""
    import torch

    from CervixAutoSegLib import models

    card = models.find_model("ct")
    network = models.load_network(card)
    stored = torch.load(card.weights_path(None), map_location="cpu", weights_only=True)
    assert not any(t.is_meta for t in (*network.parameters(), *network.buffers()))
    for name, value in network.state_dict().items():
        torch.testing.assert_close(value, stored[name].to(value.dtype), rtol=0, atol=0)

    real_build = models.build_network

    def with_scratch_buffer(card, role=None):
        built = real_build(card, role)
        built.register_buffer("scratch", torch.ones(3), persistent=False)  # not in any weights file
        return built

    monkeypatch.setattr(models, "build_network", with_scratch_buffer)
    rebuilt = models.load_network(card)
    assert not any(t.is_meta for t in (*rebuilt.parameters(), *rebuilt.buffers()))
    assert torch.equal(rebuilt.scratch, torch.ones(3))
    torch.testing.assert_close(rebuilt.state_dict(), network.state_dict(), rtol=0, atol=0)
