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


def test_patient_weight_the_rtstruct_copies_must_be_a_number(ct_series, capsys):
    """The RTSTRUCT writer copies Patient's Weight and died on it with a traceback."""
    edit_files(ct_series, set_raw("PatientWeight", "heavy"))
    check_refuses(capsys, ct_series[0].parent, ct_series[0].name, "PatientWeight (0010,1030) holds 'heavy'")


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
