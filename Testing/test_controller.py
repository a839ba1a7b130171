"""controller: every panel action without Qt — real model cards on disk, a real child process, a real scene."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from CervixAutoSegLib.controller import (
    CANCEL_TEXT,
    CANCELLING_TEXT,
    RUN_TEXT,
    AutoContourController,
    DeviceInfo,
)
from CervixAutoSegLib.ct.family import CT_STRUCTURES
from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.models import ModelCard, NetworkEntry
from CervixAutoSegLib.mr.family import MR_STRUCTURES
from CervixAutoSegLib.worker import BackgroundJob

WAIT_LIMIT_SECONDS = 60.0
NO_GPU = DeviceInfo(cpu="CPU (2 threads)")
WITH_GPU = DeviceInfo(cpu="CPU (16 threads)", cuda="CUDA: RTX 4090, 24.0 GB")


def install_model(root: Path, model_id: str, family: str, version: str = "1", mean_dsc: float = 0.8) -> None:
    """A model card on disk, as models.list_models reads it (weights are not needed to list)."""
    structures = CT_STRUCTURES if family == "ct" else MR_STRUCTURES
    network = NetworkEntry("network", "ResAUNet", {}, "weights.pt", "0" * 64)
    card = ModelCard(id=model_id, family=family, version=version, networks=(network,), structures=structures,
                     preprocessing={}, training={}, validation={"mean_dsc": mean_dsc}, intended_use="test",
                     path=root / model_id)
    card.path.mkdir(parents=True)
    (card.path / "model.json").write_text(json.dumps(card.to_json()))


@dataclasses.dataclass
class FileInput:
    """A RunInput writing a real file (the widget's writes the volume node as NRRD)."""

    name: str
    modality: str
    fail: bool = False

    def write(self, folder: Path) -> Path:
        if self.fail:
            raise OSError("disk full")
        path = folder / "input.nrrd"
        path.write_bytes(b"image")
        return path


@pytest.fixture
def ct_only(tmp_path):
    root = tmp_path / "Models"
    install_model(root, "ct-resaunet-a", "ct", version="1", mean_dsc=0.70)
    install_model(root, "ct-resaunet-b", "ct", version="2", mean_dsc=0.85)
    return root


def controller_for(root: Path, devices: DeviceInfo = NO_GPU, **kwargs) -> AutoContourController:
    return AutoContourController(models_root=root, devices=lambda: devices, **kwargs)


# ------------------------------------------------------------------ models
def test_auto_picks_the_best_model_of_the_image_modality(ct_only):
    controller = controller_for(ct_only)
    assert [c.value for c in controller.view.models] == ["auto", "ct-resaunet-a", "ct-resaunet-b"]
    controller.set_input(FileInput("Pelvis CT", "CT"))
    assert controller.choose_model().id == "ct-resaunet-b"  # higher validation DSC
    assert controller.view.run_enabled and controller.view.run_text == RUN_TEXT
    assert "ct-resaunet-b" in controller.view.run_tooltip


def test_mr_input_without_an_mr_model_gets_a_clear_message_not_a_ct_model(ct_only):
    controller = controller_for(ct_only)
    view = controller.set_input(FileInput("T2 axial", "MR"))
    assert not view.run_enabled
    assert "No MR model is installed" in view.status and "never used instead" in view.status
    with pytest.raises(InputError, match="No MR model"):
        controller.choose_model()
    controller.set_model("ct-resaunet-a")  # explicitly choosing the CT model does not help either
    assert not controller.view.run_enabled and "contours CT images but T2 axial is MR" in controller.view.status


def test_mr_model_is_chosen_for_mr_once_installed_and_unknown_modality_asks(ct_only):
    install_model(ct_only, "mr-pocketnet", "mr")
    controller = controller_for(ct_only)
    controller.set_input(FileInput("T2 axial", "MR"))
    assert controller.choose_model().id == "mr-pocketnet" and controller.view.run_enabled
    controller.set_input(FileInput("anonymous.nrrd", ""))
    assert not controller.view.run_enabled and "choose a model" in controller.view.status
    controller.set_model("mr-pocketnet")
    assert controller.view.run_enabled and controller.choose_model().id == "mr-pocketnet"


def test_no_input_disables_the_button(ct_only):
    view = controller_for(ct_only).set_input(None)
    assert not view.run_enabled and "Select an input volume" in view.status


def test_an_input_with_a_problem_disables_the_button_with_its_sentence(ct_only):
    """An RGB volume (issue 12, item 5) reaches the controller as an input whose ``problem`` says why."""
    rgb = FileInput("Photo", "")
    rgb.problem = "Photo has 3 values per voxel (a colour or vector image), not a CT or MR image."
    controller = controller_for(ct_only)
    controller.set_model("ct-resaunet-a")  # even with an explicit model
    view = controller.set_input(rgb)
    assert not view.run_enabled and view.status == rgb.problem and view.run_tooltip == rgb.problem
    assert controller.start().status == rgb.problem and not controller.running


# ----------------------------------------------------------------- devices
def test_devices_offered_are_the_detected_ones():
    root = Path("/nonexistent-models")
    no_gpu = controller_for(root, NO_GPU)
    assert [c.value for c in no_gpu.view.devices] == ["auto", "cpu"]
    assert no_gpu.view.device_note == "No GPU detected; running on CPU (2 threads)."
    gpu = controller_for(root, WITH_GPU)
    assert [c.value for c in gpu.view.devices] == ["auto", "cuda", "cpu"]
    assert "RTX 4090" in gpu.view.devices[0].label and "RTX 4090" in gpu.view.device_note


def test_a_gpu_choice_falls_back_to_cpu_where_there_is_none():
    controller = controller_for(Path("/nonexistent-models"), NO_GPU)
    view = controller.set_device("cuda")  # e.g. restored from a scene saved on a GPU workstation
    assert view.device == "cpu" and "CUDA is not available" in view.device_note
    assert controller_for(Path("/x"), DeviceInfo(torch_missing=True)).view.device_note.startswith(
        "PyTorch is not installed")


# ----------------------------------------------------------------- running
FAKE_SEGMENT = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    args = sys.argv[1:]
    mode = args[0]
    out = args[args.index("--out") + 1]
    def event(stage, fraction, message):
        print(json.dumps({"stage": stage, "fraction": fraction, "message": message}), flush=True)
    event("load", 0.0, "reading image")
    event("network", 0.5, "slices 50/100")
    if mode == "fail":
        sys.stderr.write("cervixautoseg segment: error: weights of model ct-resaunet-b are missing\\n")
        sys.exit(3)
    if mode == "hang":
        time.sleep(600)
    from CervixAutoSegLib.segfile import write_segmentation_nrrd
    from CervixAutoSegLib.ct.family import CT_STRUCTURES
    from CervixAutoSegLib.structures import write_labels_json
    from CervixAutoSegLib.volume import Volume
    os.makedirs(out)
    labels = np.zeros((4, 5, 6), np.uint8); labels[1:3, 1:3, 1:3] = 1; labels[0, 0, 4:6] = 4
    grid = Volume(labels, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    write_segmentation_nrrd(os.path.join(out, "segmentation.seg.nrrd"), grid, CT_STRUCTURES)
    write_labels_json(os.path.join(out, "labels.json"), "ct-resaunet-b", CT_STRUCTURES)
    report = {"timings_s": {"load": 0.5, "network": 3.25, "total": 4.0}, "device": {"description": "CPU (2 threads)"}}
    if mode == "warn":
        report["warnings"] = ["T2 weighting not checked: the nrrd input has no DICOM sequence tags"]
    open(os.path.join(out, "report.json"), "w").write(json.dumps(report))
    event("done", 1.0, "done")
    """
)


def fake_jobs(mode: str, commands: list):
    """Job factory: records the real command, runs the fake segment with its arguments."""

    def factory(command):
        commands.append(command)
        return BackgroundJob([sys.executable, "-c", FAKE_SEGMENT, mode, *command[4:]])

    return factory


def poll_until_idle(controller, views: list) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while controller.view.polling and time.monotonic() < deadline:
        views.append(dataclasses.replace(controller.poll()))
        time.sleep(0.02)
    assert not controller.view.polling


class SceneStandIn:
    """apply_result target recording what it loaded (the MRML side is tested in test_mrml)."""

    def __init__(self, fail: bool = False):
        self.loaded, self.fail = [], fail

    def __call__(self, out_dir: Path) -> str:
        from CervixAutoSegLib.segfile import read_segmentation_nrrd

        if self.fail:
            raise InputError("segment geometry does not match")
        result = read_segmentation_nrrd(out_dir / "segmentation.seg.nrrd")
        self.loaded.append([s.name for s in result.segments])
        return f"{len(result.segments)} segments"


def test_flip_tta_shows_the_family_default_and_the_users_choice_reaches_the_command(ct_only):
    commands = []
    controller = controller_for(ct_only, job_factory=fake_jobs("ok", commands))
    controller.set_input(FileInput("Pelvis CT", "CT"))
    assert controller.view.flip_tta is True  # the CT family's default
    controller.run_clicked()
    poll_until_idle(controller, [])
    controller.set_flip_tta(False)
    assert controller.view.flip_tta is False
    controller.set_model("ct-resaunet-a")
    assert controller.view.flip_tta is False  # the user's choice outlives a model change
    controller.run_clicked()
    assert "--flip-tta" in commands[0] and "--no-flip-tta" not in commands[0]
    assert "--no-flip-tta" in commands[1] and "--flip-tta" not in commands[1]


def test_a_non_t2_mr_series_is_refused_until_the_user_allows_it_and_the_override_reaches_the_command(ct_only):
    from CervixAutoSegLib.controller import ALLOW_NON_T2_TEXT
    from CervixAutoSegLib.mr_weighting import NOT_T2, T2, Weighting

    install_model(ct_only, "mr-pocketnet", "mr")
    commands = []
    controller = controller_for(ct_only, job_factory=fake_jobs("warn", commands))
    t1 = FileInput("T1 axial", "MR")
    t1.weighting = Weighting(NOT_T2, "T1-weighted (Series Description 't1_tse_tra')")
    view = controller.set_input(t1)
    assert not view.run_enabled and view.status.startswith("T1 axial is not T2-weighted: T1-weighted")
    assert f"Tick '{ALLOW_NON_T2_TEXT}'" in view.status and not view.allow_non_t2
    controller.set_model("mr-pocketnet")  # choosing the MR model does not switch the check off
    assert not controller.view.run_enabled and not controller.start().polling
    view = controller.set_allow_non_t2(True)
    assert view.run_enabled and view.status == ""
    controller.run_clicked()
    poll_until_idle(controller, [])
    assert "--allow-non-t2" in commands[0]
    assert controller.view.status.endswith("Warning: T2 weighting not checked: the nrrd input has no DICOM "
                                           "sequence tags.")
    controller.set_allow_non_t2(False)  # a T2w series, or a CT, never needs the override
    t2 = FileInput("T2 axial", "MR")
    t2.weighting = Weighting(T2, "T2 timing: TE 100 ms, TR 4000 ms")
    assert controller.set_input(t2).run_enabled
    controller.set_model("auto")
    ct = FileInput("Pelvis CT", "CT")
    ct.weighting = Weighting(NOT_T2, "not an MR series")  # only MR models are checked
    assert controller.set_input(ct).run_enabled
    controller.run_clicked()
    poll_until_idle(controller, [])
    assert "--allow-non-t2" not in commands[1]


def test_run_success_button_progress_and_timed_status(ct_only):
    commands, scene = [], SceneStandIn()
    controller = controller_for(ct_only, apply_result=scene, job_factory=fake_jobs("ok", commands))
    controller.set_input(FileInput("Pelvis CT", "CT"))
    controller.set_segmentation(True)
    view = controller.run_clicked()
    assert view.run_text == CANCEL_TEXT and view.run_enabled and view.polling and view.progress_visible
    assert not view.export_enabled  # no export while the segmentation is being replaced
    command = commands[0]
    assert command[command.index("--model") + 1] == "ct" and command[command.index("--device") + 1] == "auto"
    assert command[command.index("--models") + 1] == str(ct_only)
    work_dir = Path(command[4]).parent

    views = []
    poll_until_idle(controller, views)
    fractions = [v.progress for v in views]
    assert fractions == sorted(fractions)
    final = controller.view
    assert final.run_text == RUN_TEXT and final.run_enabled and final.export_enabled and final.progress == 100
    assert final.status == "Done in 4.0 s (load 0.5 s, network 3.2 s) on CPU (2 threads). 4 segments."
    assert scene.loaded == [[s.name for s in CT_STRUCTURES]]
    assert not work_dir.exists()


def test_run_failure_shows_the_one_line_reason_and_loads_nothing(ct_only):
    scene = SceneStandIn()
    controller = controller_for(ct_only, apply_result=scene, job_factory=fake_jobs("fail", []))
    controller.set_input(FileInput("Pelvis CT", "CT"))
    controller.run_clicked()
    poll_until_idle(controller, [])
    assert controller.view.status == "Failed: cervixautoseg segment: error: weights of model ct-resaunet-b are missing"
    assert controller.view.run_text == RUN_TEXT and controller.view.run_enabled
    assert scene.loaded == [] and not controller.view.progress_visible


def test_cancel_transitions_and_leaves_the_scene_alone(ct_only):
    scene = SceneStandIn()
    controller = controller_for(ct_only, apply_result=scene, job_factory=fake_jobs("hang", []))
    controller.set_input(FileInput("Pelvis CT", "CT"))
    controller.run_clicked()
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while controller.view.progress < 50 and time.monotonic() < deadline:
        controller.poll()
        time.sleep(0.02)
    assert controller.view.progress == 50
    assert controller.view.progress_text == "Running network: slices 50/100"
    view = controller.run_clicked()  # the same button now cancels
    assert view.run_text == CANCELLING_TEXT and not view.run_enabled
    poll_until_idle(controller, [])
    assert controller.view.status == "Cancelled; the scene was not changed."
    assert controller.view.run_text == RUN_TEXT and controller.view.run_enabled
    assert scene.loaded == []


def test_a_result_that_cannot_be_loaded_is_reported(ct_only):
    controller = controller_for(ct_only, apply_result=SceneStandIn(fail=True), job_factory=fake_jobs("ok", []))
    controller.set_input(FileInput("Pelvis CT", "CT"))
    controller.run_clicked()
    poll_until_idle(controller, [])
    assert controller.view.status.startswith("Finished, but the result could not be loaded (scene unchanged)")


def test_input_that_cannot_be_written_starts_nothing(ct_only):
    commands = []
    controller = controller_for(ct_only, job_factory=fake_jobs("ok", commands))
    controller.set_input(FileInput("Pelvis CT", "CT", fail=True))
    view = controller.run_clicked()
    assert commands == [] and not view.polling and view.run_text == RUN_TEXT
    assert view.status == "Could not prepare Pelvis CT: disk full"


def test_explicit_model_and_device_reach_the_command(ct_only):
    commands = []
    controller = controller_for(ct_only, WITH_GPU, job_factory=fake_jobs("ok", commands))
    controller.set_input(FileInput("Pelvis CT", "CT"))
    controller.set_model("ct-resaunet-a")
    controller.set_device("cuda")
    controller.run_clicked()
    poll_until_idle(controller, [])
    command = commands[0]
    assert command[command.index("--model") + 1] == "ct-resaunet-a"
    assert command[command.index("--device") + 1] == "cuda"


def test_export_status(ct_only):
    controller = controller_for(ct_only)
    assert controller.export_clicked(lambda: "RTSTRUCT written: /data/RS.dcm (4 ROIs)").status.startswith(
        "RTSTRUCT written")

    def not_dicom():
        raise InputError("the volume was not loaded from DICOM")

    assert controller.export_clicked(not_dicom).status == "RTSTRUCT not exported: the volume was not loaded from DICOM"


FAKE_SEGMENT_ON_INPUT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from CervixAutoSegLib.image_io import load_image
    from CervixAutoSegLib.segfile import write_segmentation_nrrd
    from CervixAutoSegLib.ct.family import CT_STRUCTURES
    from CervixAutoSegLib.structures import write_labels_json
    args = sys.argv[1:]
    image = load_image(args[0])
    out = args[args.index("--out") + 1]
    os.makedirs(out)
    labels = np.zeros(image.shape, np.uint8)
    labels[image.array > 1000] = 1   # "bladder": the bright voxels
    write_segmentation_nrrd(os.path.join(out, "segmentation.seg.nrrd"), image.with_array(labels), CT_STRUCTURES)
    write_labels_json(os.path.join(out, "labels.json"), "ct-resaunet-b", CT_STRUCTURES)
    print(json.dumps({"stage": "done", "fraction": 1.0, "message": "done"}), flush=True)
    """
)


def test_a_run_from_a_volume_node_lands_in_the_real_scene_on_the_node_grid(ct_only):
    """Volume node → NRRD for the child → seg.nrrd → segments in the scene, oblique grid kept."""
    slicer = pytest.importorskip("slicer")
    import numpy as np
    from test_segfile import expected_lps_points, labels_on, slicer_segment_lps_points

    from CervixAutoSegLib import mrml

    scene = slicer.vtkMRMLScene()
    grid = labels_on("oblique")
    image = grid.with_array(np.where(grid.array == 2, 1500, -1000).astype(np.int16))
    volume_node = mrml.node_from_volume(scene, image, "Oblique CT")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(volume_node) or hierarchy.CreateItem(hierarchy.GetSceneItemID(), volume_node)
    hierarchy.SetItemAttribute(item, "DICOM.Modality", "CT")

    def factory(command):
        return BackgroundJob([sys.executable, "-c", FAKE_SEGMENT_ON_INPUT, *command[4:]])

    logic = mrml.AutoContourLogic(scene)
    controller = controller_for(
        ct_only, job_factory=factory,
        apply_result=lambda out_dir: mrml.summary(logic.apply_result(volume_node, out_dir)))
    controller.set_input(mrml.VolumeNodeInput(volume_node))
    controller.run_clicked()
    poll_until_idle(controller, [])
    assert controller.view.status.endswith("4 segments in 'Oblique CT auto-contours'."), controller.view.status
    node = mrml.find_result_node(scene, volume_node)
    assert np.allclose(slicer_segment_lps_points(node, "Bladder"),
                       expected_lps_points(image, image.array > 1000), atol=1e-5)


def test_detect_devices_on_this_cpu_only_machine():
    from CervixAutoSegLib.controller import detect_devices

    pytest.importorskip("torch")
    info = detect_devices()
    assert not info.torch_missing and info.cpu.startswith("CPU (")
    controller = AutoContourController(models_root=Path("/nonexistent-models"), devices=lambda: info)
    if not info.cuda:
        assert "cuda" not in [choice.value for choice in controller.view.devices]


def poll_until_devices_known(controller) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while controller.view.polling and time.monotonic() < deadline:
        controller.poll()
        time.sleep(0.05)
    assert not controller.view.polling


def test_devices_are_probed_in_a_background_process_without_freezing_the_panel(ct_only):
    pytest.importorskip("torch")
    controller = AutoContourController(models_root=ct_only, python=sys.executable)  # devices=None: probe
    view = controller.set_device("cuda")  # e.g. restored from a saved scene, before the probe answered
    assert view.polling and view.device == "cuda" and view.device_note == "Detecting GPUs..."
    controller.set_input(FileInput("Pelvis CT", "CT"))
    assert controller.view.run_enabled  # the panel stays usable while the probe runs
    poll_until_devices_known(controller)
    from CervixAutoSegLib.controller import detect_devices

    here = detect_devices()
    if not here.cuda:
        assert [c.value for c in controller.view.devices] == ["auto", "cpu"]
        assert controller.view.device == "cpu" and "CUDA is not available" in controller.view.device_note
    assert controller.view.devices[-1].label == here.cpu


def test_a_failed_device_probe_offers_the_cpu_only(ct_only):
    def broken_probe(command):
        return BackgroundJob([sys.executable, "-c", "import sys; sys.exit('torch import crashed')"])

    controller = AutoContourController(models_root=ct_only, job_factory=broken_probe)
    poll_until_devices_known(controller)
    assert [c.value for c in controller.view.devices] == ["auto", "cpu"]
    assert controller.view.device == "auto" and controller.view.device_note.startswith("No GPU detected")


@pytest.mark.slow
def test_end_to_end_the_real_segment_command_from_a_volume_node(tmp_path):
    """Real chain: volume node → NRRD → `python -m CervixAutoSegLib segment --progress-json` in a
    child → polled progress → report timings → seg.nrrd → segments in a real scene on the node grid.
    The model has random weights: this checks plumbing and geometry, not contour quality."""
    slicer = pytest.importorskip("slicer")
    vtk = pytest.importorskip("vtk")
    pytest.importorskip("torch")
    import numpy as np
    from test_pipeline import synthetic_ct, write_random_ct_model

    from CervixAutoSegLib import mrml

    models = write_random_ct_model(tmp_path / "Models")
    scene = slicer.vtkMRMLScene()
    image = synthetic_ct("FFS")
    volume_node = mrml.node_from_volume(scene, image, "FFS CT")
    logic = mrml.AutoContourLogic(scene)
    controller = AutoContourController(
        models_root=models, python=sys.executable, devices=lambda: NO_GPU,
        apply_result=lambda out_dir: mrml.summary(logic.apply_result(volume_node, out_dir)))
    controller.set_input(mrml.VolumeNodeInput(volume_node))
    assert controller.view.run_enabled, controller.view.status
    controller.run_clicked()
    texts = []
    deadline = time.monotonic() + 600
    while controller.view.polling and time.monotonic() < deadline:
        texts.append(controller.poll().progress_text)
        time.sleep(0.1)
    status = controller.view.status
    assert status.startswith("Done in") and "network" in status and "4 segments" in status, status
    # Polling samples the latest stage only, so a short stage (the network on a small input)
    # may be missed; what must hold is that intermediate stages reach the view.
    stages = {text.split(":")[0] for text in texts} - {"Starting...", "Done"}
    assert len(stages) >= 2, sorted(set(texts))
    node = mrml.find_result_node(scene, volume_node)
    labels, _, _ = mrml.labels_from_segmentation(node, image)
    assert labels.shape == image.shape
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == \
        [s.name for s in CT_STRUCTURES]
    assert np.isin(labels.array, [0, 1, 2, 3, 4]).all()
    matrix = vtk.vtkMatrix4x4()
    segmentation.GetNthSegment(0).GetRepresentation("Binary labelmap").GetImageToWorldMatrix(matrix)
    image_to_world = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    assert np.allclose(image_to_world, image.ijk_to_ras, atol=1e-5)  # segments on the node's own grid
