"""MR inputs (issue 13, item 4 and the MR part of item 7): the T2-weighting check on real DICOM
headers, ``--model auto`` on an MR series, ``--allow-non-t2``, NIfTI without tags, and the
RTSTRUCT of an MR series (MR Image Storage referenced, ORGAN containing the GTV, dciodvfy-clean).

Series are written with pydicom through the product's DICOM writer (as scanners' headers look:
Siemens-style sequence names, GE-style exam protocol names, Enhanced MR functional groups).
The end-to-end runs use a random-weight two-stage PocketNet on a 30 mm field of view, so that
each stage is one small sliding window.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import edit_files
from rtstruct_oracle import assert_dciodvfy_clean, oracle_masks, oracle_volume_mask, semantic_problems

from CervixAutoSegLib.cli import main
from CervixAutoSegLib.dicom_series import find_series, read_dicom_series
from CervixAutoSegLib.dicom_writer import MR_IMAGE_STORAGE, write_dicom_series
from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.image_io import load_image, write_image
from CervixAutoSegLib.mr_weighting import NOT_T2, T2, UNKNOWN, check_input_weighting, mr_weighting
from CervixAutoSegLib.volume import Volume

ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
ORGAN_NAME, TUMOUR_NAME = "Uterus_Cx_Vagina", "GTVp"


def small_mr(shape_zyx: tuple[int, int, int] = (4, 12, 12)) -> Volume:
    """A 30 mm x 30 mm x 20 mm MR (2.5 mm pixels, 5 mm slices): a bright disc on a dim background."""
    nz, ny, nx = shape_zyx
    y, x = np.mgrid[:ny, :nx]
    disc = (y - ny / 2 + 0.5) ** 2 + (x - nx / 2 + 0.5) ** 2 < (nx / 3) ** 2
    array = np.where(disc, 1200, 150).astype(np.int16)[np.newaxis].repeat(nz, axis=0)
    array += np.arange(nz, dtype=np.int16)[:, np.newaxis, np.newaxis] * 10  # every slice differs
    return Volume(array, (2.5, 2.5, 5.0), (-15.0, -15.0, 40.0), np.eye(3), modality="MR")


def write_mr(folder: Path, description: str, *, image_type: tuple[str, ...] = (), edits: dict | None = None,
             **sequence) -> Path:
    """One MR series as a scanner writes it; ``sequence`` overrides the writer's T2 TSE tags."""
    files = write_dicom_series(small_mr(), folder, modality="MR", series_description=description,
                               mr_sequence=sequence)
    if image_type or edits:
        def edit(ds):
            if image_type:  # the writer sets ORIGINAL\PRIMARY\OTHER; diffusion series say more
                ds.ImageType = list(image_type)
            for keyword, value in (edits or {}).items():
                setattr(ds, keyword, value)

        edit_files(files, edit)
    return folder


# What the scanners write (Siemens names unless said otherwise), and the verdict a radiation
# oncologist would give: only T2 spin echo without contrast is what PocketNet was trained on.
SERIES = {
    "t2_tse_sag": ({"ProtocolName": "t2_tse_sag"}, (), None, T2, "T2 timing: TE 100 ms, TR 4000 ms"),
    "t2_spc_sag_iso": ({"SequenceName": "*spcR_282", "EchoTime": 128, "RepetitionTime": 1400}, (), None,
                       T2, "T2 spin echo by name"),  # SPACE: long TE, TR below 1500 ms
    "Ax T2 FRFSE": ({"ProtocolName": "PELVIS W/WO GAD", "SequenceName": "frfse", "EchoTime": 102,
                     "RepetitionTime": 5000}, (), None, T2, "T2 timing"),  # GE: the exam's protocol name
    "t1_tse_tra": ({"SequenceName": "*tse2d1_3", "EchoTime": 11, "RepetitionTime": 600}, (), None,
                   NOT_T2, "T1-weighted (Series Description 't1_tse_tra')"),
    "": ({"ProtocolName": "", "SequenceName": "*fl3d1", "ScanningSequence": ["GR"], "EchoTime": 2.4,
          "RepetitionTime": 5.2}, (), None, NOT_T2, "T1-weighted (Sequence Name '*fl3d1')"),
    "ep2d_diff_b50_800_tra": ({"SequenceName": "*ep_b800t", "ScanningSequence": ["EP"], "EchoTime": 70,
                               "RepetitionTime": 5000}, ("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"),
                              {"DiffusionBValue": 800.0}, NOT_T2, "diffusion-weighted (Image Type DIFFUSION)"),
    "ep2d_diff_b50_800_tra_ADC": ({"SequenceName": "*ep_b0_800", "ScanningSequence": ["EP"], "EchoTime": 70,
                                   "RepetitionTime": 5000}, ("DERIVED", "PRIMARY", "DIFFUSION", "ADC"), None,
                                  NOT_T2, "Image Type ADC/DIFFUSION"),
    "t2_tirm_tra_dark-fluid": ({"SequenceName": "*tir2d1_15", "ScanningSequence": ["SE", "IR"], "EchoTime": 85,
                                "RepetitionTime": 9000, "InversionTime": 2500}, (), None,
                               NOT_T2, "inversion recovery"),
    "t2_tse_tra post": ({"ContrastBolusAgent": "Dotarem"}, (), None, NOT_T2,
                        "post-contrast (Contrast/Bolus Agent 'Dotarem')"),
    "t2_tse_tra pre": ({"ContrastBolusAgent": "NONE"}, (), None, T2, "T2 timing"),
    "t2_tse_dixon_tra_W": ({"EchoTime": 90}, (), None, NOT_T2, "Dixon"),
    "Pelvis": ({"ProtocolName": "", "SequenceName": "", "EchoTime": 5, "RepetitionTime": 200}, (), None,
               NOT_T2, "short echo time (TE 5 ms, TR 200 ms)"),
}
MISSING_TAGS = {"ProtocolName": "", "SequenceName": "", "EchoTime": "", "RepetitionTime": ""}


@pytest.mark.parametrize("description", list(SERIES), ids=[name or "anonymous-vibe" for name in SERIES])
def test_weighting_of_scanner_headers_written_and_read_with_pydicom(tmp_path, description):
    sequence, image_type, edits, verdict, reason = SERIES[description]
    write_mr(tmp_path, description, image_type=image_type, edits=edits, **sequence)
    (info,) = find_series(tmp_path)
    assert info.weighting.verdict == verdict, info.weighting
    assert reason in info.weighting.reason
    assert info.is_t2 is {T2: True, NOT_T2: False}[verdict]
    # The reader carries the header's verdict to the pipeline.
    assert read_dicom_series(tmp_path).meta["mr_weighting"] == {"verdict": verdict, "reason": info.weighting.reason}


def test_missing_tags_or_contradicting_timing_are_unknown_not_refused(tmp_path):
    write_mr(tmp_path / "bare", "", **MISSING_TAGS)
    write_mr(tmp_path / "odd", "", **{**MISSING_TAGS, "EchoTime": 90, "RepetitionTime": 800})
    bare, odd = (find_series(tmp_path / name)[0].weighting for name in ("bare", "odd"))
    assert bare.verdict == UNKNOWN and "no Echo Time, no Repetition Time" in bare.reason
    assert odd.verdict == UNKNOWN and "TE 90 ms, TR 800 ms" in odd.reason


def _enhanced_mr(path: Path, contrast: str, *, b_value: float | None = None, agent: str = "") -> Path:
    """An Enhanced MR Image header: timing only in the functional groups, as such files keep it."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def item(**values):
        element = Dataset()
        for keyword, value in values.items():
            setattr(element, keyword, value)
        return element

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ENHANCED_MR_IMAGE_STORAGE, generate_uid(), "MR"
    ds.SeriesDescription = "Pelvis 3D"
    shared = item(MRTimingAndRelatedParametersSequence=[item(RepetitionTime=4000.0)],
                  MRImageFrameTypeSequence=[item(AcquisitionContrast=contrast)])
    if agent:
        ds.ContrastBolusUsageSequence = [item(ContrastBolusAgentNumber=1, ContrastBolusAgentAdministered="YES")]
    frame = item(MREchoSequence=[item(EffectiveEchoTime=110.0)])
    if b_value is not None:
        frame.MRDiffusionSequence = [item(DiffusionBValue=b_value)]
    ds.SharedFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence = [shared], [frame]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


@pytest.mark.parametrize("contrast, b_value, agent, verdict, reason", [
    ("T2", None, "", T2, "Acquisition Contrast T2 (TE 110 ms, TR 4000 ms)"),
    ("UNKNOWN", None, "", T2, "T2 timing: TE 110 ms, TR 4000 ms"),  # timing from the functional groups
    ("DIFFUSION", None, "", NOT_T2, "Acquisition Contrast DIFFUSION"),
    ("UNKNOWN", 800.0, "", NOT_T2, "b = 800 s/mm²"),
    ("T2", None, "YES", NOT_T2, "post-contrast"),
    ("FLUID_ATTENUATED", None, "", NOT_T2, "Acquisition Contrast FLUID_ATTENUATED"),
])
def test_enhanced_mr_headers_are_read_from_the_functional_groups(tmp_path, contrast, b_value, agent, verdict,
                                                                  reason):
    path = _enhanced_mr(tmp_path / "enhanced.dcm", contrast, b_value=b_value, agent=agent)
    weighting = mr_weighting(pydicom.dcmread(path, stop_before_pixels=True))
    assert weighting.verdict == verdict and reason in weighting.reason, weighting


def test_the_input_check_refuses_warns_or_passes():
    refused = {"verdict": NOT_T2, "reason": "T1-weighted (Series Description 't1_tse_tra')"}
    meta = {"source": "dicom", "series_instance_uid": "1.2.3", "series_description": "t1_tse_tra",
            "mr_weighting": refused}
    with pytest.raises(InputError) as error:
        check_input_weighting(meta, "MR")
    message = str(error.value)
    assert "\n" not in message and "series 1.2.3 ('t1_tse_tra') is not T2-weighted: T1-weighted" in message
    assert "--allow-non-t2" in message
    assert "contoured anyway" in check_input_weighting(meta, "MR", allow_non_t2=True)[0]
    assert check_input_weighting(meta, "CT") == []  # CT series are not MR-checked
    assert check_input_weighting({**meta, "mr_weighting": {"verdict": T2, "reason": "T2 timing"}}, "MR") == []
    unknown = check_input_weighting({**meta, "mr_weighting": {"verdict": UNKNOWN, "reason": "no tags"}}, "MR")
    assert len(unknown) == 1 and "could not be verified (no tags)" in unknown[0]
    (untagged,) = check_input_weighting({"source": "nifti"}, "MR")
    assert "not checked" in untagged and "nifti" in untagged


# ------------------------------------------------------------------ through `cervixautoseg segment`
@pytest.fixture(scope="module")
def mr_models(tmp_path_factory) -> Path:
    from test_mr_family import tiny_mr_model

    root = tmp_path_factory.mktemp("models")
    tiny_mr_model(root)
    return root


def segment(input_path: Path, out: Path, models: Path, *extra: str) -> int:
    return main(["segment", str(input_path), "--out", str(out), "--models", str(models), "--device", "cpu",
                 "--no-flip-tta", *extra])


REFUSED = ["t1_tse_tra", "ep2d_diff_b50_800_tra_ADC", "t2_tirm_tra_dark-fluid", "t2_tse_tra post"]


@pytest.mark.parametrize("model", ["auto", "mr"])
@pytest.mark.parametrize("description", REFUSED)
def test_a_non_t2_series_is_refused_in_one_line_even_when_mr_is_chosen(tmp_path, mr_models, capsys, description,
                                                                      model):
    sequence, image_type, edits, _, reason = SERIES[description]
    folder = write_mr(tmp_path / "dicom", description, image_type=image_type, edits=edits, **sequence)
    code = segment(folder, tmp_path / "out", mr_models, "--model", model)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("cervixautoseg segment: error:")]
    assert code == 2 and len(errors) == 1, captured.err
    assert "is not T2-weighted" in errors[0] and reason in errors[0] and "--allow-non-t2" in errors[0]
    assert "Traceback" not in captured.err and not (tmp_path / "out").exists()


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_auto_picks_mr_for_a_t2_series_and_its_rtstruct_references_mr_images(tmp_path, mr_models, capsys):
    folder = write_mr(tmp_path / "dicom", "t2_tse_tra")
    assert segment(folder, tmp_path / "out", mr_models) == 0  # --model auto (the default)
    report = _report(tmp_path / "out")
    assert report["model"]["family"] == "mr" and report["model"]["id"] == "mr-tiny"
    assert [n["role"] for n in report["model"]["networks"]] == ["organ", "tumor"]
    assert report["input"]["mr_weighting"]["verdict"] == T2 and report["warnings"] == []
    out = capsys.readouterr().out
    assert "T2-weighted" not in out and "T2 weighting" not in out
    rtstruct = pydicom.dcmread(tmp_path / "out" / "rtstruct.dcm")
    referenced = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
        .RTReferencedSeriesSequence[0].ContourImageSequence
    assert {str(image.ReferencedSOPClassUID) for image in referenced} == {MR_IMAGE_STORAGE}
    assert len(referenced) == 4
    types = {str(roi.ROIObservationLabel): str(roi.RTROIInterpretedType) for roi in rtstruct.RTROIObservationsSequence}
    assert types == {ORGAN_NAME: "ORGAN", TUMOUR_NAME: "GTV"}
    assert_dciodvfy_clean(tmp_path / "out" / "rtstruct.dcm")


def test_allow_non_t2_contours_a_t1_series_and_says_so(tmp_path, mr_models, capsys):
    sequence, _, _, _, _ = SERIES["t1_tse_tra"]
    folder = write_mr(tmp_path / "dicom", "t1_tse_tra", **sequence)
    assert segment(folder, tmp_path / "out", mr_models, "--model", "mr", "--allow-non-t2") == 0
    (warning,) = _report(tmp_path / "out")["warnings"]
    assert "not T2-weighted (T1-weighted" in warning and "--allow-non-t2 was given" in warning
    assert f"warning: {warning}" in capsys.readouterr().out
    assert (tmp_path / "out" / "rtstruct.dcm").is_file()


def test_a_series_without_sequence_tags_is_contoured_with_a_warning(tmp_path, mr_models, capsys):
    folder = write_mr(tmp_path / "dicom", "", **MISSING_TAGS)
    assert segment(folder, tmp_path / "out", mr_models) == 0
    report = _report(tmp_path / "out")
    assert report["model"]["family"] == "mr" and report["input"]["mr_weighting"]["verdict"] == UNKNOWN
    (warning,) = report["warnings"]
    assert "could not be verified" in warning and f"warning: {warning}" in capsys.readouterr().out


def test_a_nifti_mr_without_tags_is_contoured_with_a_warning(tmp_path, mr_models, capsys):
    write_image(small_mr(), tmp_path / "t2.nii.gz")
    assert segment(tmp_path / "t2.nii.gz", tmp_path / "out", mr_models) == 0
    report = _report(tmp_path / "out")
    (warning,) = report["warnings"]
    assert report["model"]["family"] == "mr" and "mr_weighting" not in report["input"]
    assert "T2 weighting not checked: the nifti input has no DICOM sequence tags" in warning
    assert f"warning: {warning}" in capsys.readouterr().out
    assert not (tmp_path / "out" / "rtstruct.dcm").exists()


# ------------------------------------------------------------------ RTSTRUCT: the organ contains the tumour
def _assert_organ_contains_tumour(rtstruct_path: Path, series: Path, labels: np.ndarray, reference: Volume) -> None:
    """The RTSTRUCT's ROIs, rasterised independently, are organ = labels > 0 and tumour = labels == 2."""
    masks = oracle_masks(rtstruct_path, series)
    organ = oracle_volume_mask(masks[ORGAN_NAME], reference)
    tumour = oracle_volume_mask(masks[TUMOUR_NAME], reference)
    assert tumour.any() and np.array_equal(tumour, labels == 2)
    assert np.array_equal(organ, labels > 0) and not (tumour & ~organ).any()
    rtstruct = pydicom.dcmread(rtstruct_path)
    images = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
        .RTReferencedSeriesSequence[0].ContourImageSequence
    assert {str(image.ReferencedSOPClassUID) for image in images} == {MR_IMAGE_STORAGE}
    types = {str(roi.ROIObservationLabel): str(roi.RTROIInterpretedType) for roi in rtstruct.RTROIObservationsSequence}
    assert types == {ORGAN_NAME: "ORGAN", TUMOUR_NAME: "GTV"}
    assert semantic_problems(rtstruct_path, series) == []
    assert_dciodvfy_clean(rtstruct_path)


def test_export_rtstruct_of_a_phantom_mr_references_mr_images_and_the_organ_holds_the_tumour(tmp_path, capsys):
    from test_mr_family import SMALL_GRID

    from CervixAutoSegLib.phantom import make_mr_phantom, write_phantom

    write_phantom(make_mr_phantom(7, plane="sagittal", **SMALL_GRID), tmp_path / "case")
    out = tmp_path / "rs.dcm"
    assert main(["export-rtstruct", "--dicom", str(tmp_path / "case" / "dicom"),
                 "--labels", str(tmp_path / "case" / "truth.nii.gz"), "--out", str(out)]) == 0
    reference = read_dicom_series(tmp_path / "case" / "dicom")
    labels = np.asarray(load_image(tmp_path / "case" / "truth.nii.gz", modality="MR").array)
    assert (labels == 1).any() and (labels == 2).any()  # the phantom has both: the test can fail
    _assert_organ_contains_tumour(out, tmp_path / "case" / "dicom", labels, reference)


def test_segment_writes_the_tumour_inside_the_organ_roi(tmp_path, mr_models, monkeypatch):
    """The network is replaced by a planted answer (organ with a tumour painted over it) to test the writing."""
    from CervixAutoSegLib import pipeline
    from CervixAutoSegLib.families import NetworkOutput

    def planted(volume, card, device, options, tracker, cancel, prepared=None):
        labels = np.zeros(volume.shape, np.uint8)
        labels[:, 2:10, 2:10] = 1
        labels[1:3, 4:7, 4:8] = 2
        return NetworkOutput(labels, None, {"device": "cpu"}, {}, {})

    monkeypatch.setattr(pipeline, "_run_network", planted)
    folder = write_mr(tmp_path / "dicom", "t2_tse_tra")
    assert segment(folder, tmp_path / "out", mr_models) == 0
    reference = read_dicom_series(folder)
    labels = np.asarray(load_image(tmp_path / "out" / "labels.nii.gz", modality="MR").array)
    assert (labels == 2).sum() == 2 * 3 * 4 and (labels == 1).sum() == 4 * 8 * 8 - 24
    _assert_organ_contains_tumour(tmp_path / "out" / "rtstruct.dcm", folder, labels, reference)
