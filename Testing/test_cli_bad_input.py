"""Bad DICOM input through the command line: non-zero exit, one clear stderr line, no traceback.

Each broken series is real DICOM written by the product writer and then damaged with
pydicom the way broken exports look in practice.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import edit_files, make_volume, write

from CervixAutoSegLib import cli


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["series", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cervixautoseg series: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---------------------------------------------------------------- not a series
def test_empty_folder(tmp_path, capsys):
    code, _, err = run_cli(capsys, str(tmp_path))
    assert_one_line_error(code, err, "no DICOM image series found in", str(tmp_path))


def test_missing_folder(tmp_path, capsys):
    code, _, err = run_cli(capsys, str(tmp_path / "nowhere"))
    assert_one_line_error(code, err, "does not exist")


def test_text_and_png_files_are_not_dicom(tmp_path, capsys):
    import matplotlib.image

    (tmp_path / "notes.txt").write_text("patient list\n")
    matplotlib.image.imsave(tmp_path / "slice.png", np.eye(8))
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    code, _, err = run_cli(capsys, str(tmp_path))
    assert_one_line_error(code, err, "no DICOM image series found")


def test_only_non_image_dicom_objects(tmp_path, capsys):
    """A folder with only a structure set (no pixels) has no image series."""
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.3", pydicom.uid.generate_uid()
    ds.Modality, ds.SeriesInstanceUID = "RTSTRUCT", pydicom.uid.generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.save_as(tmp_path / "rs.dcm", enforce_file_format=True)
    code, _, err = run_cli(capsys, str(tmp_path))
    assert_one_line_error(code, err, "no DICOM image series found")


# ---------------------------------------------------------------- broken series
@pytest.fixture
def ct_series(tmp_path):
    volume = make_volume((8, 12, 16), spacing_xyz=(0.8, 0.8, 2.5))
    return write(volume, tmp_path / "ct", shuffle_seed=4)


def _by_position(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))


def test_missing_slice(ct_series, capsys):
    _by_position(ct_series)[4].unlink()
    code, _, err = run_cli(capsys, str(ct_series[0].parent), "--check")
    assert_one_line_error(code, err, "missing slices: gap of 5.00 mm between positions")


def test_non_parallel_slice(ct_series, capsys):
    def tilt_row(ds):
        ds.ImageOrientationPatient = [0.8, 0.6, 0, -0.6, 0.8, 0]

    edit_files(ct_series[2:3], tilt_row)
    code, _, err = run_cli(capsys, str(ct_series[0].parent), "--check")
    assert_one_line_error(code, err, "slices are not parallel", ct_series[2].name)


def test_mixed_sizes_in_one_series(ct_series, capsys):
    uid = pydicom.dcmread(ct_series[0]).SeriesInstanceUID
    other = make_volume((1, 10, 16), spacing_xyz=(0.8, 0.8, 2.5), origin=(-101.3, -57.25, 33.5 + 8 * 2.5))
    write(other, ct_series[0].parent, series_instance_uid=uid, file_names=["extra.dcm"])
    code, _, err = run_cli(capsys, str(ct_series[0].parent), "--check")
    assert_one_line_error(code, err, "mixed sizes", "10x16")


def test_duplicate_positions(tmp_path, capsys):
    volume = make_volume((4, 6, 6))
    positions = volume.index_to_physical(np.column_stack([np.zeros(4), np.zeros(4), [0, 1, 1, 2]]))
    write(volume, tmp_path, slice_positions=positions)
    code, _, err = run_cli(capsys, str(tmp_path), "--check")
    assert_one_line_error(code, err, "duplicate slice position")


@pytest.mark.parametrize("modality", ["RTDOSE", "OT", "SEG"])
def test_unsupported_modality(ct_series, capsys, modality):
    edit_files(ct_series, lambda ds: setattr(ds, "Modality", modality))
    folder = str(ct_series[0].parent)
    code, out, err = run_cli(capsys, folder)
    assert_one_line_error(code, err, f"unsupported modality {modality}", "only CT and MR")
    assert modality in out  # the listing still shows what is there
    code, _, err = run_cli(capsys, folder, "--check")
    assert_one_line_error(code, err, f"unsupported modality {modality}")


def test_truncated_pixel_data(ct_series, capsys):
    """A Pixel Data element re-written at half its length: the file is whole, the image is not."""
    def truncate(ds):
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]

    edit_files(ct_series[5:6], truncate)
    code, _, err = run_cli(capsys, str(ct_series[0].parent), "--check")
    assert_one_line_error(code, err, "damaged DICOM file", ct_series[5].name, "pixel data holds 192 bytes", "need 384")


@pytest.mark.parametrize(
    "syntax, name",
    [
        (pydicom.uid.JPEG2000Lossless, "JPEG 2000"),  # a decoder exists (Pillow) but the data is corrupt
        (pydicom.uid.JPEGLSLossless, "JPEG-LS"),  # no decoder installed here
    ],
)
def test_compressed_pixel_data_that_cannot_be_decoded(ct_series, capsys, syntax, name):
    from pydicom.encaps import encapsulate

    def fake_compressed(ds):
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51not really a codestream"])

    edit_files(ct_series[1:2], fake_compressed)
    code, _, err = run_cli(capsys, str(ct_series[0].parent), "--check")
    assert_one_line_error(code, err, "cannot decode pixel data of", ct_series[1].name, name)


def test_several_series_need_series_option(tmp_path, capsys):
    write(make_volume((3, 6, 6)), tmp_path / "a", series_description="CT A")
    write(make_volume((3, 6, 6), seed=1), tmp_path / "b", series_description="CT B")
    code, out, err = run_cli(capsys, str(tmp_path))
    assert code == 0 and "CT A" in out and "CT B" in out
    code, _, err = run_cli(capsys, str(tmp_path), "--check")
    assert_one_line_error(code, err, "2 image series", "CT A", "CT B", "--series")
    uid = pydicom.dcmread(next((tmp_path / "b").iterdir())).SeriesInstanceUID
    code, out, err = run_cli(capsys, str(tmp_path), "--series", uid)
    assert code == 0 and "CT B" in out and err == ""
    code, _, err = run_cli(capsys, str(tmp_path), "--series", "1.2.3.999")
    assert_one_line_error(code, err, "series 1.2.3.999 not found")


def test_listing_describes_each_series(tmp_path, capsys):
    write(make_volume((5, 12, 20), spacing_xyz=(0.7, 1.1, 3.0)), tmp_path / "ct", patient_position="FFS",
          series_description="Pelvis CT")
    write(make_volume((4, 8, 8), modality="MR"), tmp_path / "mr", modality="MR", series_description="T2 TSE ax")
    code, out, err = run_cli(capsys, str(tmp_path))
    assert code == 0 and err == ""
    header, *rows = out.strip().splitlines()
    assert header.split()[:3] == ["UID", "modality", "T2w"]
    ct_row = next(row for row in rows if "Pelvis CT" in row)
    assert "20x12" in ct_row and "0.7x1.1x3" in ct_row and "FFS" in ct_row and "axial" in ct_row
    mr_row = next(row for row in rows if "T2 TSE ax" in row)
    assert " yes " in mr_row
    code, out, err = run_cli(capsys, str(tmp_path), "--json")
    listed = {row["description"]: row for row in json.loads(out)}
    assert code == 0 and listed["T2 TSE ax"]["is_t2"] is True and listed["Pelvis CT"]["slices"] == "5"


def _console(folder: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "CervixAutoSegLib", "series", str(folder), *options],
        capture_output=True, text=True, check=False,
    )


def test_console_empty_folder_has_no_traceback(tmp_path):
    """The real entry point in its own process (pytest's log capture not in the way)."""
    result = _console(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"cervixautoseg series: error: no DICOM image series found in {tmp_path}"]


def test_console_undecodable_pixels_print_one_line(ct_series):
    """pydicom logs decoder failures with a traceback: the user must still see one line."""
    from pydicom.encaps import encapsulate

    def fake_jpeg2000(ds):
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
        ds.PixelData = encapsulate([b"not a codestream"])

    edit_files(ct_series[:1], fake_jpeg2000)
    result = _console(ct_series[0].parent, "--check")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("cervixautoseg series: error: cannot decode pixel data of")


@pytest.mark.parametrize(
    "keyword, value, message",
    [
        ("ImageOrientationPatient", [1, 0, 0, 1, 0, 0], "invalid Image Orientation (Patient)"),
        ("ImagePositionPatient", None, "has no Image Position (Patient)"),
        ("PixelSpacing", None, "has no valid Pixel Spacing"),
    ],
)
def test_broken_geometry_tags(ct_series, capsys, keyword, value, message):
    def damage(ds):
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)

    edit_files(ct_series, damage)
    code, _, err = run_cli(capsys, str(ct_series[0].parent), "--check")
    assert_one_line_error(code, err, message)


def test_check_prints_the_grid_and_flags_gantry_tilt(tmp_path, capsys):
    volume = make_volume((5, 8, 10), spacing_xyz=(0.75, 0.75, 1.0), origin=(10.0, -20.0, 30.0))
    step = np.array([0.0, 1.0, 3.0])  # 3 mm planes, 18.4° tilt
    write(volume, tmp_path, slice_positions=np.asarray(volume.origin) + np.arange(5)[:, None] * step)
    code, out, err = run_cli(capsys, str(tmp_path), "--check")
    assert code == 0 and err == ""
    assert "size x,y,z  10 x 8 x 5" in out
    assert f"spacing mm  0.75, 0.75, {np.linalg.norm(step):.4g}" in out
    assert "origin LPS  10.000, -20.000, 30.000" in out
    assert "gantry tilt kept as a sheared grid" in out
