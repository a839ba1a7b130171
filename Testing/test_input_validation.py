"""Issue 14 item 1: every input is validated before any heavy work, and ``series --check`` runs the same checks.

Each bad input is a real file — DICOM written by the product writer and damaged with pydicom or
at the byte level, NIfTI/NRRD/MetaImage written by SimpleITK and patched in their headers — run
in-process through ``cervixautoseg`` (``cli.main``): one line on stderr naming the file and the
value, a non-zero exit, no output folder.  Images are 32x32x6, so no refusal costs a network run.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import edit_files, make_volume, write

from CervixAutoSegLib import cli, input_checks
from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.image_io import load_image, write_image
from CervixAutoSegLib.pipeline import load_input
from CervixAutoSegLib.volume import Volume

SHAPE = (6, 32, 32)
"""(z, y, x) of every test image."""
SPACING = (0.8, 0.8, 2.5)
NIFTI1_PIXDIM_OFFSET = 80
"""pixdim[1] of a NIfTI-1 header (pixdim[0], the qfac, is at 76)."""
AIR_HU, TISSUE_HU = -1000.0, 40.0


# ------------------------------------------------------------------ helpers
def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code: int, err: str, command: str, *fragments: str) -> str:
    """One line on stderr, from ``command``, holding every fragment; returns the message."""
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    prefix = f"cervixautoseg {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0][len(prefix):]


def segment_refuses(capsys, source: Path, tmp_path: Path, *fragments: str) -> str:
    """``segment`` refuses in the load stage (progress as JSON on stdout, so stderr holds only the error)."""
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", str(source), "--out", str(out), "--device", "cpu", "--progress-json")
    message = assert_refused(code, err, "segment", *fragments)
    assert not out.exists(), "a refused input must leave no output folder"
    return message


def check_refuses(capsys, folder: Path, *fragments: str) -> str:
    code, _, err = run(capsys, "series", str(folder), "--check")
    return assert_refused(code, err, "series", *fragments)


@pytest.fixture
def ct_series(tmp_path) -> list[Path]:
    """Six CT slices (real Part 10 files), in slice order along the normal."""
    paths = write(make_volume(SHAPE, spacing_xyz=SPACING), tmp_path / "ct", shuffle_seed=3)
    return sorted(paths, key=lambda path: float(pydicom.dcmread(path).ImagePositionPatient[2]))


def ct_image(dtype=np.float32, spacing=SPACING, direction=None) -> Volume:
    """A CT in HU: air around an elliptic body, as a float image file would hold it."""
    k, j, i = np.indices(SHAPE)
    body = ((i - 15.5) / 12) ** 2 + ((j - 15.5) / 9) ** 2 <= 1
    array = np.where(body, TISSUE_HU, AIR_HU).astype(dtype)
    direction = np.eye(3) if direction is None else direction
    return Volume(array, spacing, (-12.0, -12.0, 40.0), direction, modality="CT")


def set_raw(keyword: str, text: str):
    """An edit writing ``text`` as the raw value of ``keyword`` (pydicom would refuse "nan" as a DS)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement

    tag = tag_for_keyword(keyword)
    value = text.encode("ascii") + (b" " if len(text) % 2 else b"")

    def edit(ds):
        ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
    return edit


# ------------------------------------------------------------------ 1. every file readable and complete
@pytest.mark.parametrize("keep_bytes", [300, 700, -100], ids=["in-file-meta", "in-header", "in-pixel-data"])
def test_last_file_cut_off_is_named_not_skipped(ct_series, capsys, tmp_path, keep_bytes):
    """Today the last slice vanished (5 slices, exit 0): now the cut file is named."""
    last = ct_series[-1]
    last.write_bytes(last.read_bytes()[:keep_bytes])
    message = check_refuses(capsys, last.parent, "damaged DICOM file", last.name)
    assert "the file ends after" in message or "without pixel data" in message
    segment_refuses(capsys, last.parent, tmp_path, "damaged DICOM file", last.name)


def test_cut_compressed_file_is_named(ct_series, capsys):
    """RLE pixel data without its end: pydicom drops the whole dataset (and warned on stderr)."""
    edit_files(ct_series, lambda ds: ds.compress(pydicom.uid.RLELossless))
    last = ct_series[-1]
    last.write_bytes(last.read_bytes()[:-50])
    check_refuses(capsys, last.parent, "damaged DICOM file", last.name, "its pixel data is cut off")


def test_cut_file_in_the_middle_is_named_not_a_gap(ct_series, capsys):
    """Today: "missing slices: gap of 5.00 mm" — the user looked for a missing file that is there."""
    middle = ct_series[3]
    middle.write_bytes(middle.read_bytes()[:400])
    message = check_refuses(capsys, middle.parent, "damaged DICOM file", middle.name)
    assert "missing slices" not in message


def test_unparseable_file_with_dicom_preamble_is_named(ct_series, capsys):
    broken = ct_series[0].parent / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"\x01" * 40)
    check_refuses(capsys, broken.parent, "damaged DICOM file", "broken.dcm")


def test_lone_cut_file_says_damaged_not_unknown_format(ct_series, capsys, tmp_path):
    lone = tmp_path / "single" / "slice.dcm"
    lone.parent.mkdir()
    lone.write_bytes(ct_series[0].read_bytes()[:700])
    with pytest.raises(InputError, match="damaged DICOM file .*slice.dcm"):
        load_image(lone)
    check_refuses(capsys, lone.parent, "no DICOM image series found", "damaged DICOM file", "slice.dcm")


def test_unrelated_binary_file_beside_a_series_is_still_ignored(ct_series, capsys):
    (ct_series[0].parent / "thumbs.db").write_bytes(b"\x08\x00\xff\x7f" + bytes(range(256)) * 4)
    code, out, err = run(capsys, "series", str(ct_series[0].parent), "--check")
    assert code == 0 and err == "" and "verdict: usable by segment" in out


def test_listing_counts_damaged_files(ct_series, capsys):
    ct_series[-1].write_bytes(ct_series[-1].read_bytes()[:700])
    code, out, _ = run(capsys, "series", str(ct_series[0].parent))
    assert code == 0 and "5 (+1 damaged)" in out


# ------------------------------------------------------------------ 2. finite voxels
@pytest.mark.parametrize("name, bad", [("image.nii.gz", np.nan), ("image.nrrd", np.nan), ("image.mha", np.inf)])
def test_non_finite_voxels_are_refused_with_their_count(tmp_path, capsys, name, bad):
    volume = ct_image()
    array = volume.array.copy()
    array.reshape(-1)[np.arange(12) * 97] = bad
    write_image(volume.with_array(array), tmp_path / name)
    segment_refuses(capsys, tmp_path / name, tmp_path, f"{tmp_path / name} has 12 non-finite voxels (NaN/Inf)")


def test_slicer_volume_with_nan_is_refused():
    volume = ct_image()
    array = volume.array.copy()
    array[2, 3, 4:7] = np.nan
    named = volume.with_array(array, meta={"name": "Pelvis CT"})
    with pytest.raises(InputError, match=r"volume 'Pelvis CT' has 3 non-finite voxels"):
        load_input(named)


def test_rescale_slope_nan_is_refused_at_read_time(ct_series, capsys):
    """Today every voxel became NaN without a word."""
    edit_files(ct_series[2:3], set_raw("RescaleSlope", "nan"))
    check_refuses(capsys, ct_series[2].parent, ct_series[2].name, "Rescale Slope (RescaleSlope) 'nan'")


# ------------------------------------------------------------------ 3. spacing
def _patch_nifti_pixdim(path: Path, pixdim: tuple[float, float, float]) -> None:
    header = bytearray(gzip.decompress(path.read_bytes()))
    assert struct.unpack_from("<i", header)[0] == 348
    struct.pack_into("<3f", header, NIFTI1_PIXDIM_OFFSET, *pixdim)
    path.write_bytes(gzip.compress(bytes(header)))


def test_nifti_pixdim_zero_is_refused(tmp_path, capsys):
    """ITK reads pixdim 0 as 1 mm: every structure came out empty."""
    path = tmp_path / "ct.nii.gz"
    write_image(ct_image(np.int16), path)
    _patch_nifti_pixdim(path, (0.0, 0.8, 2.5))
    segment_refuses(capsys, path, tmp_path, str(path), "NIfTI voxel sizes (pixdim) (0, 0.8, 2.5) mm")


@pytest.mark.parametrize("pixdim", [(np.nan, 0.8, 2.5), (0.8, 0.8, -2.5), (0.8, np.inf, 2.5)])
def test_nifti_pixdim_not_positive_is_refused(tmp_path, pixdim):
    """NaN became 1 mm; a negative size mirrored the axis."""
    path = tmp_path / "ct.nii.gz"
    write_image(ct_image(np.int16), path)
    _patch_nifti_pixdim(path, pixdim)
    with pytest.raises(InputError, match="every spacing must be a positive number"):
        load_image(path)


def test_big_endian_nifti_header_is_checked_too(tmp_path):
    """pixdim is read in the byte order sizeof_hdr says: a big-endian header with pixdim 0."""
    path = tmp_path / "ct.nii"
    write_image(ct_image(np.int16), path)
    header = bytearray(path.read_bytes())
    swapped = bytearray(header)
    struct.pack_into(">i", swapped, 0, 348)
    struct.pack_into(">8h", swapped, 40, *struct.unpack_from("<8h", header, 40))
    struct.pack_into(">8f", swapped, 76, 1.0, 0.0, 0.8, 2.5, 0, 0, 0, 0)
    path.write_bytes(bytes(swapped))
    with pytest.raises(InputError, match=r"pixdim\) \(0, 0.8, 2.5\)"):
        load_image(path)


@pytest.mark.parametrize("text", ["nan", "inf\\0.8", "0\\0.8"])
def test_dicom_pixel_spacing_not_positive_is_refused_naming_file_and_tag(ct_series, capsys, text):
    edit_files(ct_series[4:5], set_raw("PixelSpacing", text))
    check_refuses(capsys, ct_series[4].parent, ct_series[4].name, "Pixel Spacing (PixelSpacing)")


def test_single_slice_thickness_nan_is_refused(ct_series, capsys):
    edit_files(ct_series[:1], set_raw("SliceThickness", "nan"))
    with pytest.raises(InputError, match=rf"{ct_series[0].name} has an invalid Slice Thickness"):
        load_image(ct_series[0])


# ------------------------------------------------------------------ 4. direction
def test_nrrd_with_45_degree_in_plane_shear_is_refused(tmp_path, capsys):
    """Accepted today as a "sheared grid": volumes came out 30 % wrong."""
    shear = np.deg2rad(45.0)
    direction = np.column_stack([(1, 0, 0), (np.cos(shear), np.sin(shear), 0), (0, 0, 1)])
    image = ct_image(np.int16).to_sitk()
    image.SetDirection(tuple(direction.reshape(-1)))
    sitk.WriteImage(image, str(tmp_path / "sheared.nrrd"))
    segment_refuses(capsys, tmp_path / "sheared.nrrd", tmp_path, "sheared.nrrd",
                    "image rows and columns at 45.0° to each other")


def test_nrrd_with_slice_axis_sheared_along_the_rows_is_refused(tmp_path, capsys):
    lean = np.deg2rad(20.0)
    direction = np.column_stack([(1, 0, 0), (0, 1, 0), (np.sin(lean), 0, np.cos(lean))])
    write_image(ct_image(np.int16, direction=direction), tmp_path / "leaning.nrrd")
    segment_refuses(capsys, tmp_path / "leaning.nrrd", tmp_path, "slice axis sheared 20.0° along the image rows")


def test_dicom_slices_stepping_sideways_are_refused_by_check_and_segment_alike(tmp_path, capsys):
    """IPPs drifting along the rows: no gantry does that.  ``series --check`` and ``segment``
    run one validation, so they answer with the same line."""
    volume = make_volume(SHAPE, spacing_xyz=SPACING)
    step = np.array([1.0, 0.0, 2.5])  # 1 mm to the patient's left per slice
    write(volume, tmp_path / "ct", slice_positions=np.asarray(volume.origin) + np.arange(6)[:, None] * step)
    checked = check_refuses(capsys, tmp_path / "ct", "along the image rows")
    segmented = segment_refuses(capsys, tmp_path / "ct", tmp_path, "along the image rows")
    assert checked == segmented


def test_gantry_tilt_keeps_passing_with_its_angle_in_the_verdict(tmp_path, capsys):
    volume = make_volume(SHAPE, spacing_xyz=SPACING)
    step = np.array([0.0, np.tan(np.deg2rad(15.0)) * 2.5, 2.5])  # along the columns, as a gantry tilts
    write(volume, tmp_path / "ct", slice_positions=np.asarray(volume.origin) + np.arange(6)[:, None] * step)
    code, out, err = run(capsys, "series", str(tmp_path / "ct"), "--check")
    assert code == 0 and err == ""
    assert "gantry tilt kept as a sheared grid" in out and "gantry tilt 15.0°" in out.splitlines()[-1]


def _positions_with(volume: Volume, slice_index: int, shift_lps: tuple[float, float, float]) -> np.ndarray:
    k = np.arange(volume.shape[0])
    positions = volume.index_to_physical(np.column_stack([np.zeros_like(k), np.zeros_like(k), k]))
    positions[slice_index] += shift_lps
    return positions


@pytest.mark.parametrize("slice_index", [0, 3])
def test_a_slice_far_off_the_grid_is_refused_naming_its_file(tmp_path, capsys, slice_index):
    """1.5 mm off a 2.5 mm grid: the volume would put it between two slices (it used to be a warning)."""
    volume = make_volume(SHAPE, spacing_xyz=SPACING)
    paths = write(volume, tmp_path / "ct", slice_positions=_positions_with(volume, slice_index, (0, 0, 1.5)))
    check_refuses(capsys, tmp_path / "ct", "slices are not evenly spaced", paths[slice_index].name,
                  "lies 1.00 mm off the 2.50 mm grid")  # 1.5 mm past its place, 1 mm short of the next


def test_a_small_deviation_is_a_warning_after_validation_never_beside_a_refusal(tmp_path, capsys, caplog):
    volume = make_volume(SHAPE, spacing_xyz=SPACING)
    paths = write(volume, tmp_path / "ct", slice_positions=_positions_with(volume, 3, (0, 0, 0.3)))
    with caplog.at_level("WARNING"):
        load_input(tmp_path / "ct")
    assert [record.getMessage() for record in caplog.records if record.levelname == "WARNING"] == [
        f"the DICOM series in {tmp_path / 'ct'}: slice positions deviate up to 0.300 mm from a uniform grid"]
    edit_files(paths, lambda ds: delattr(ds, "FrameOfReferenceUID"))
    segment_refuses(capsys, tmp_path / "ct", tmp_path, "has no Frame of Reference UID")  # and no WARNING line


# ------------------------------------------------------------------ 5. size and memory
def test_pixel_spacing_500_mm_is_refused_before_any_allocation(ct_series, capsys, tmp_path):
    """Today: a 40 GiB allocation and a MemoryError traceback (CT in-plane resampling)."""
    edit_files(ct_series, set_raw("PixelSpacing", "500\\500"))
    folder = ct_series[0].parent
    check_refuses(capsys, folder, f"the DICOM series in {folder} spans 1.6e+04 x 1.6e+04 x 15 mm",
                  "more than any patient or scanner (2000 mm)")
    segment_refuses(capsys, folder, tmp_path, "more than any patient or scanner")


def test_memory_estimate_refuses_what_does_not_fit(tmp_path, capsys, monkeypatch):
    """An MR at 1.5 mm goes to the MR model's 0.469 mm grid; with 512 KiB available it cannot run."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1048576 kB\nMemAvailable:        512 kB\n")
    monkeypatch.setattr(input_checks, "MEMINFO", meminfo)
    monkeypatch.setattr(input_checks, "CGROUP_MEMORY", tmp_path / "no-cgroup")
    write_image(make_volume(SHAPE, spacing_xyz=(1.5, 1.5, 5.0), modality="MR"), tmp_path / "t2.nrrd")
    segment_refuses(capsys, tmp_path / "t2.nrrd", tmp_path, "t2.nrrd would need ~",
                    "103 x 103 x 6 voxels on the model's grid), 0.5 MiB available")


def test_available_memory_reads_meminfo_and_a_cgroup_limit(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable:    8388608 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{3 * 1024 ** 3}\n")
    (cgroup / "memory.current").write_text(f"{1024 ** 3}\n")
    monkeypatch.setattr(input_checks, "MEMINFO", meminfo)
    monkeypatch.setattr(input_checks, "CGROUP_MEMORY", cgroup)
    assert input_checks.available_memory_bytes() == 2 * 1024 ** 3
    (cgroup / "memory.max").write_text("max\n")
    assert input_checks.available_memory_bytes() == 8 * 1024 ** 3


# ------------------------------------------------------------------ 6. header values the writers need
@pytest.mark.parametrize(
    "keyword, text, what",
    [
        ("ImagePositionPatient", "nan\\0\\40", "Image Position (Patient)"),
        ("ImagePositionPatient", "0\\inf\\40", "Image Position (Patient)"),
        ("ImageOrientationPatient", "nan\\0\\0\\0\\1\\0", "Image Orientation (Patient)"),
        ("RescaleIntercept", "inf", "Rescale Intercept"),  # today an OverflowError traceback
    ],
)
def test_non_finite_geometry_and_rescale_tags_are_refused_naming_file_and_tag(ct_series, capsys, keyword, text,
                                                                               what):
    """Today ``series --check`` called an IPP of "nan" fine and the RTSTRUCT writer failed after the network."""
    edit_files(ct_series[3:4], set_raw(keyword, text))
    check_refuses(capsys, ct_series[3].parent, f"{ct_series[3].name} has an invalid {what} ({keyword})", "finite")


@pytest.mark.parametrize("keyword, text, problem", [
    ("PatientWeight", "heavy", "PatientWeight (0010,1030) holds 'heavy', not a number"),
    ("PatientSize", "1e309", "PatientSize (0010,1020) holds '1e309', not a finite number"),
    ("PatientAge", "forty", "PatientAge (0010,1010) holds 'forty', not a valid AS value"),
])
def test_invalid_optional_value_is_left_out_of_the_rtstruct_with_a_warning(ct_series, capsys, keyword, text,
                                                                           problem):
    """Today a Patient's Weight of 'heavy' refused the whole run (and before that the writer died on it):
    Type 3, so the RTSTRUCT leaves it out and ``series --check`` / ``segment`` say so."""
    from CervixAutoSegLib.families import get_family
    from CervixAutoSegLib.rtstruct import build_rtstruct_dataset

    edit_files(ct_series, set_raw(keyword, text))
    code, out, err = run(capsys, "series", str(ct_series[0].parent), "--check")
    expected = f"warning: {ct_series[0].name}: {problem}"
    assert code == 0 and err == "", err
    assert any(line.startswith(expected) and line.endswith("; left out of the RTSTRUCT")
               for line in out.splitlines()), out
    image, _ = load_input(ct_series[0].parent)
    dataset = build_rtstruct_dataset(Volume(np.zeros(SHAPE, np.uint8), image.spacing, image.origin,
                                            image.direction), image, get_family("ct").structures,
                                     model_name="m", model_version="1")
    assert keyword not in dataset and dataset.PatientID == pydicom.dcmread(ct_series[0]).PatientID


def test_series_without_frame_of_reference_is_refused_before_the_network(ct_series, capsys, tmp_path):
    edit_files(ct_series, lambda ds: delattr(ds, "FrameOfReferenceUID"))
    check_refuses(capsys, ct_series[0].parent, "has no Frame of Reference UID (0020,0052)")
    segment_refuses(capsys, ct_series[0].parent, tmp_path, "has no Frame of Reference UID")


# ------------------------------------------------------------------ 7. a label map as the image
@pytest.mark.parametrize("values, dtype", [((0, 1, 2, 3, 4), np.uint8), ((0, 1, 2), np.float32)])
def test_label_map_given_as_the_image_is_refused(tmp_path, capsys, values, dtype):
    """Today: "no MR model is installed" (or the MR network ran on the labels)."""
    rng = np.random.default_rng(0)
    labels = ct_image().with_array(rng.choice(values, size=SHAPE).astype(dtype), modality="")
    write_image(labels, tmp_path / "labels.nii.gz")
    shown = ", ".join(str(v) for v in values)
    segment_refuses(capsys, tmp_path / "labels.nii.gz", tmp_path, "labels.nii.gz looks like a label map",
                    f"only the values {shown}")


def test_eight_bit_mr_is_not_mistaken_for_a_label_map():
    image = make_volume(SHAPE, modality="MR")
    eight_bit = image.with_array((image.array // 16).astype(np.uint8))
    input_checks.check_not_label_map(eight_bit.array, "t2.nii.gz")


# ------------------------------------------------------------------ 8. one-line grids
def test_volume_repr_is_one_plain_line():
    volume = Volume(np.zeros(SHAPE, np.int16), (0.7, 1.1, 2.5), (-101.3, -57.25, 33.5), np.eye(3), modality="CT")
    assert repr(volume) == ("Volume(32x32x6 int16 CT, spacing 0.7x1.1x2.5 mm, "
                            "origin LPS (-101.3, -57.25, 33.5) mm, axes (1, 0, 0) (0, 1, 0) (0, 0, 1))")


def test_grid_mismatch_message_is_one_plain_line(tmp_path):
    from CervixAutoSegLib.families import get_family
    from CervixAutoSegLib.rtstruct import build_rtstruct_dataset

    write(make_volume(SHAPE, spacing_xyz=SPACING), tmp_path / "ct")
    image = load_image(tmp_path / "ct")
    shifted = Volume(np.zeros(SHAPE, np.uint8), image.spacing, image.origin + 3.0, image.direction)
    with pytest.raises(InputError) as raised:
        build_rtstruct_dataset(shifted, image, get_family("ct").structures, model_name="m", model_version="1")
    message = str(raised.value)
    assert "\n" not in message and "np.float64" not in message and "array(" not in message


def test_invalid_direction_message_is_one_plain_line():
    with pytest.raises(InputError) as raised:
        Volume(np.zeros(SHAPE), SPACING, (0, 0, 0), np.full((3, 3), np.nan))
    nan_row = "(nan, nan, nan)"
    assert str(raised.value) == f"direction must be a finite 3x3 matrix, got ({nan_row}, {nan_row}, {nan_row})"


# ------------------------------------------------------------------ 9. series --check verdict
def test_check_prints_a_clear_verdict_for_a_good_series(ct_series, capsys):
    code, out, err = run(capsys, "series", str(ct_series[0].parent), "--check")
    assert code == 0 and err == ""
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("verdict: usable by segment (field of view 26 x 26 x 15 mm, "
                              "orthonormal image axes, voxel values finite, needs ~")


# ------------------------------------------------------------------ 10. what the fuzz test found (test_fuzz_dicom)
def refused_as_bad_input(capsys, folder: Path, tmp_path: Path, *fragments: str) -> str:
    """``series --check`` and ``segment`` both end with exit code 2 (bad input) and one line holding
    every fragment; ``segment`` leaves no output folder.  Returns segment's message."""
    code, _, err = run(capsys, "series", str(folder), "--check")
    assert code == 2, err
    assert_refused(code, err, "series", *fragments)
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", str(folder), "--out", str(out), "--device", "cpu", "--progress-json")
    assert code == 2, err
    assert not out.exists(), "a refused input must leave no output folder"
    return assert_refused(code, err, "segment", *fragments)


@pytest.mark.parametrize("keep_bytes", [0, 64, 131], ids=["emptied", "in-preamble", "before-DICM"])
@pytest.mark.parametrize("which", [0, -1], ids=["first", "last"])
def test_slice_emptied_or_cut_below_the_preamble_is_named_not_skipped(ct_series, capsys, tmp_path, keep_bytes,
                                                                      which):
    """Today the file was "not DICOM", skipped: the first or last slice vanished with exit 0."""
    cut = ct_series[which]
    cut.write_bytes(cut.read_bytes()[:keep_bytes])
    message = refused_as_bad_input(capsys, cut.parent, tmp_path, "unreadable file", str(cut))
    assert ("empty (0 bytes)" if keep_bytes == 0 else f"its {keep_bytes} bytes hold no DICOM") in message


def test_stray_file_without_a_known_suffix_beside_the_series_is_named(ct_series, capsys, tmp_path):
    stray = ct_series[0].parent / "IM_0099"
    stray.write_bytes(b"exported by a broken tool" * 20)
    refused_as_bad_input(capsys, stray.parent, tmp_path, "unreadable file", str(stray), "move it out of the folder")


def test_files_known_not_to_be_dicom_beside_the_series_are_ignored(ct_series, capsys):
    folder = ct_series[0].parent
    for name in ("README", "notes.txt", "report.json", "index.xml", "Thumbs.db", "preview.JPG", "DICOMDIR",
                 ".DS_Store", "empty.txt"):
        (folder / name).write_bytes(b"" if name.startswith("empty") else b"\x00\x01 not an image")
    (folder / "docs").mkdir()
    (folder / "docs" / "manual").write_bytes(b"a folder without images: nothing there belongs to the series")
    code, out, err = run(capsys, "series", str(folder), "--check")
    assert code == 0 and err == "" and "verdict: usable by segment" in out


def test_a_folder_of_unreadable_files_only_says_so(tmp_path, capsys):
    (tmp_path / "IM1").write_bytes(b"")
    code, _, err = run(capsys, "series", str(tmp_path))
    message = assert_refused(code, err, "series", "no DICOM image series found", str(tmp_path / "IM1"))
    assert "is not DICOM, it is empty" in message and code == 2


@pytest.mark.parametrize("keyword, label", [("Rows", "Rows (0028,0010)"), ("Columns", "Columns (0028,0011)")])
def test_slice_without_rows_or_columns_is_named_not_skipped(ct_series, capsys, tmp_path, keyword, label):
    """Today the file was "not an image", skipped: the last slice vanished with exit 0."""
    edit_files(ct_series[-1:], lambda ds: delattr(ds, keyword))
    refused_as_bad_input(capsys, ct_series[0].parent, tmp_path, "damaged DICOM file", str(ct_series[-1]),
                         f"an image without {label}")


@pytest.mark.parametrize("extra", [2, 32 * 32 * 2], ids=["two-bytes", "a-whole-slice"])
def test_excess_native_pixel_bytes_are_refused_naming_the_file(ct_series, capsys, tmp_path, extra):
    """Today accepted: pydicom silently re-wraps the bytes when Rows or Columns are too small."""
    edit_files(ct_series[2:3], lambda ds: setattr(ds, "PixelData", bytes(ds.PixelData) + bytes(extra)))
    refused_as_bad_input(capsys, ct_series[0].parent, tmp_path, "damaged DICOM file", str(ct_series[2]),
                         f"its pixel data holds {32 * 32 * 2 + extra} bytes", "need 2048")


def test_too_small_rows_are_refused_not_re_wrapped(ct_series, capsys, tmp_path):
    edit_files(ct_series[1:2], lambda ds: setattr(ds, "Rows", 16))
    refused_as_bad_input(capsys, ct_series[0].parent, tmp_path, str(ct_series[1]), "holds 2048 bytes",
                         "16x32 pixels of 16 bits (1 frame(s)) need 1024")


def test_compressed_pixels_relabelled_native_are_refused(ct_series, capsys, tmp_path):
    """RLE frames under Explicit VR Little Endian: the codestream's bytes are not an image."""
    def relabel(ds):
        ds.compress(pydicom.uid.RLELossless)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian

    edit_files(ct_series[4:5], relabel)
    refused_as_bad_input(capsys, ct_series[0].parent, tmp_path, "damaged DICOM file", str(ct_series[4]),
                         "its pixel data holds", "need 2048")


def test_encapsulated_pixels_without_file_meta_are_refused(ct_series, capsys, tmp_path):
    """A bare dataset (no file meta, so no transfer syntax) holding RLE frames of undefined length:
    read as native, pydicom decoded the codestream as pixels."""
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(ct_series[4])
    ds.compress(pydicom.uid.RLELossless)
    del ds.file_meta
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    ct_series[4].write_bytes(buffer.getvalue())
    refused_as_bad_input(capsys, ct_series[0].parent, tmp_path, "damaged DICOM file", str(ct_series[4]),
                         "encapsulated (compressed)", "says native")


@pytest.mark.parametrize("keyword, label", [("RescaleIntercept", "Rescale Intercept (0028,1052)"),
                                            ("RescaleSlope", "Rescale Slope (0028,1053)")])
@pytest.mark.parametrize("how_many", ["one", "all"])
def test_ct_slice_without_rescale_is_refused_not_read_as_identity(ct_series, capsys, tmp_path, keyword, label,
                                                                  how_many):
    """Type 1 in the CT Image module; read as 0/1, the slice came out 1024 HU too bright.  Refused even
    when every slice lacks it: stored values need not be HU (the product writes them offset)."""
    edit_files(ct_series[3:4] if how_many == "one" else ct_series, lambda ds: delattr(ds, keyword))
    named = ct_series[3] if how_many == "one" else ct_series[0]
    refused_as_bad_input(capsys, ct_series[0].parent, tmp_path, f"{named.name} is a CT image without {label}")


def test_mr_without_rescale_is_still_read_as_stored(tmp_path):
    """Rescale is optional for MR: its stored values are the intensities."""
    paths = write(make_volume(SHAPE, modality="MR"), tmp_path / "mr")
    edit_files(paths, lambda ds: [delattr(ds, k) for k in ("RescaleIntercept", "RescaleSlope") if k in ds])
    assert load_image(tmp_path / "mr").shape == SHAPE


@pytest.mark.parametrize("bits_stored", [8, 10])
def test_values_beyond_bits_stored_are_refused_not_masked(ct_series, capsys, tmp_path, bits_stored):
    """pydicom keeps only the low Bits Stored bits: the slice's HU changed without a word."""
    edit_files(ct_series[0:1], lambda ds: (setattr(ds, "BitsStored", bits_stored),
                                           setattr(ds, "HighBit", bits_stored - 1)))
    stored = pydicom.dcmread(ct_series[0]).pixel_array  # masked: what the reader would have used
    raw = np.frombuffer(pydicom.dcmread(ct_series[0]).PixelData, "<u2")
    assert raw.max() > 2 ** bits_stored - 1 and stored.max() <= 2 ** bits_stored - 1
    refused_as_bad_input(capsys, ct_series[0].parent, tmp_path, ct_series[0].name,
                         f"do not fit in its Bits Stored (0028,0101) {bits_stored}")


def test_values_within_bits_stored_still_read(tmp_path):
    """12-bit CT (stored 0..4095 with intercept -1024) is what most scanners write."""
    volume = make_volume(SHAPE)
    paths = write(volume, tmp_path / "ct")
    edit_files(paths, lambda ds: (setattr(ds, "BitsStored", 12), setattr(ds, "HighBit", 11)))
    loaded = load_image(tmp_path / "ct")
    np.testing.assert_array_equal(np.sort(loaded.array, axis=None), np.sort(volume.array, axis=None))


@pytest.mark.parametrize("which", ["one", "all"])
def test_image_without_series_instance_uid_is_refused(ct_series, capsys, tmp_path, which):
    """Today grouped by folder as '(no series UID: ...)', which the RTSTRUCT then referenced."""
    edit_files(ct_series[2:3] if which == "one" else ct_series, lambda ds: delattr(ds, "SeriesInstanceUID"))
    named = ct_series[2] if which == "one" else ct_series[0]
    refused_as_bad_input(capsys, ct_series[0].parent, tmp_path, "damaged DICOM file", str(named),
                         "an image without Series Instance UID (0020,000E)")


@pytest.mark.parametrize("text", ["1e308\\0\\40", "0\\-2e5\\40"])
def test_image_position_beyond_any_scanner_is_refused(ct_series, capsys, tmp_path, text):
    """Today accepted, and labels.nii.gz got origin 0 (float32 overflow in ITK)."""
    edit_files(ct_series[:1], set_raw("ImagePositionPatient", text))
    refused_as_bad_input(capsys, ct_series[0].parent, tmp_path,
                         f"{ct_series[0].name} has Image Position (Patient) (ImagePositionPatient)",
                         "beyond any scanner's reach")


def test_image_file_origin_beyond_any_scanner_is_refused(tmp_path, capsys):
    volume = ct_image()
    far = Volume(volume.array, volume.spacing, (0.0, 3e6, 0.0), volume.direction, modality="CT")
    write_image(far, tmp_path / "far.nrrd")
    segment_refuses(capsys, tmp_path / "far.nrrd", tmp_path, "far.nrrd has origin (0, 3e+06, 0) mm")


# ------------------------------------------------------------------ 11. input warnings reach the user
@pytest.fixture
def stand_in_ct():
    """The CT family with a network that labels nothing (the flow around it is what is tested)."""
    import dataclasses

    from CervixAutoSegLib import families
    from CervixAutoSegLib.families import NetworkOutput

    def runner(volume, card, device, options, progress, cancel):
        progress(1.0, "stand-in")
        return NetworkOutput(labels=np.zeros(volume.shape, np.uint8), field_of_view_border=None,
                             inference={"device": "cpu"}, preprocessing={}, timings={"network": 0.0})

    ct = families.get_family("ct")
    families.register_family(dataclasses.replace(ct, runner=runner), replace=True)
    try:
        yield
    finally:
        families.register_family(ct, replace=True)


def test_input_warnings_reach_report_json_and_the_summary(ct_series, capsys, tmp_path, stand_in_ct):
    """Today the reader's warnings were only logged: report.json and the printed summary lacked them."""
    import json

    edit_files(ct_series, set_raw("PatientWeight", "heavy"))
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "segment", str(ct_series[0].parent), "--out", str(out), "--device", "cpu",
                          "--model", "ct")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    (warning,) = report["input_warnings"]
    assert warning.startswith(f"{ct_series[0].name}: PatientWeight (0010,1030) holds 'heavy'")
    assert warning in report["warnings"] and f"warning: {warning}" in stdout
    assert "PatientWeight" not in pydicom.dcmread(out / "rtstruct.dcm")
