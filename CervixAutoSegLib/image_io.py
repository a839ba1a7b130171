"""Load and save images in every format the product accepts, as :class:`Volume`.

* DICOM: a folder (searched recursively) or a single file → :mod:`.dicom_series`.
* NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
  ``.mhd``) → SimpleITK, which converts NIfTI's RAS header to LPS, so the Volume is
  LPS like everything else. Voxels and geometry are kept exactly (no resampling).

NIfTI stores its affine in 32-bit floats: geometry survives a NIfTI round trip to about
1e-5 mm, NRRD/MetaImage to full double precision. NIfTI (qform/sform) cannot hold a
sheared grid, so a gantry-tilted volume must be written as NRRD or MetaImage.

A NIfTI file's header and float voxels are checked before ITK reads it (:func:`check_nifti_file`):
ITK puts 1 mm in place of a zero or NaN pixdim, mirrors an axis for a negative one, and its NIfTI
library turns NaN/Inf voxels into 0, all without a word.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import InputError
from .input_checks import check_spacing_values
from .nifti import DATATYPES, write_nifti
from .volume import Volume

ITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File name endings read through SimpleITK."""
SOURCE_BY_SUFFIX = {
    ".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage", ".mhd": "metaimage",
}
"""``Volume.meta["source"]`` of an image read from each format (DICOM input says ``"dicom"``)."""
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
"""Single-file formats :func:`write_image` produces (atomically)."""

CT_AIR_HU = -900.0
"""Voxels at or below this are air in HU; MR intensities are never this negative."""
CT_AIR_FRACTION = 0.05
"""An image with at least this fraction of air-valued voxels is guessed to be CT."""


def image_suffix(path: str | Path) -> str:
    """Lower-case format suffix of ``path`` (``.nii.gz`` counts as one), '' if none known."""
    name = Path(path).name.lower()
    for suffix in sorted(ITK_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def guess_modality(volume: Volume) -> str:
    """``"CT"`` when a notable fraction of voxels is at air HU (≤ -900), else ``"MR"``.

    For files without a modality tag (NIfTI/NRRD); DICOM input never needs it.
    """
    array = np.asarray(volume.array)
    if array.size == 0:
        return ""
    return "CT" if float(np.mean(array <= CT_AIR_HU)) >= CT_AIR_FRACTION else "MR"


NIFTI_FIELDS = {
    348: {"dim": ("8h", 40), "datatype": ("h", 70), "pixdim": ("8f", 76), "vox_offset": ("f", 108)},
    540: {"dim": ("8q", 16), "datatype": ("h", 12), "pixdim": ("8d", 104), "vox_offset": ("q", 168)},
}
"""Where NIfTI-1 and NIfTI-2 (told apart by ``sizeof_hdr``) keep the fields checked here: struct format, offset."""
NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}
"""NIfTI datatype codes of float32 / float64 voxels, the ones that can hold NaN or Inf."""


@dataclasses.dataclass(frozen=True)
class NiftiHeader:
    """The raw NIfTI header fields ITK would otherwise interpret silently."""

    byte_order: str
    dims: tuple[int, ...]
    """dim[1..dim[0]]: (x, y, z, ...) voxel counts."""
    datatype: int
    pixdim: tuple[float, ...]
    """pixdim[1..dim[0]]: voxel sizes along (x, y, z, ...)."""
    vox_offset: int


def _nifti_bytes(path: Path, size: int = -1) -> bytes:
    """The first ``size`` bytes of a NIfTI file (all for -1), decompressed for .nii.gz; b"" when unreadable."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            return stream.read(size)
    except (OSError, EOFError):
        return b""  # not gzip or cut short: ITK's own message says so


def read_nifti_header(path: str | Path) -> NiftiHeader | None:
    """The raw header of a NIfTI-1/2 file (byte order from ``sizeof_hdr``), None when it is not one."""
    import struct

    raw = _nifti_bytes(Path(path), max(NIFTI_FIELDS))
    for order in "<>":
        size = struct.unpack_from(f"{order}i", raw)[0] if len(raw) >= 4 else 0
        if size in NIFTI_FIELDS and len(raw) >= size:
            fields = {name: struct.unpack_from(order + form, raw, offset)
                      for name, (form, offset) in NIFTI_FIELDS[size].items()}
            ndim = min(max(int(fields["dim"][0]), 1), 7)
            return NiftiHeader(order, tuple(int(v) for v in fields["dim"][1:ndim + 1]), int(fields["datatype"][0]),
                               tuple(float(v) for v in fields["pixdim"][1:ndim + 1]), int(fields["vox_offset"][0]))
    return None


def check_nifti_file(path: str | Path) -> None:
    """Refuse what ITK would hide in a NIfTI file: voxel sizes (pixdim) that are not positive
    numbers (ITK puts 1 mm in place of 0 or NaN, mirrors an axis for a negative one) and NaN/Inf
    voxels (NIfTI's reader turns them into 0)."""
    from .input_checks import check_finite_voxels

    path = Path(path)
    header = read_nifti_header(path)
    if header is None:
        return  # not NIfTI-1/2: ITK's message says what it is
    check_spacing_values(header.pixdim[:3], str(path), "NIfTI voxel sizes (pixdim)")
    kind = NIFTI_FLOAT_TYPES.get(header.datatype)
    if kind is None:
        return
    count = int(np.prod(header.dims, dtype=np.int64))
    try:
        voxels = np.frombuffer(_nifti_bytes(path), np.dtype(header.byte_order + kind), count, header.vox_offset)
    except ValueError:
        return  # shorter than its header says: ITK reports the truncated file
    check_finite_voxels(voxels, str(path))


def _read_itk(path: Path, modality: str | None) -> Volume:
    import SimpleITK as sitk

    if image_suffix(path).startswith(".nii"):
        check_nifti_file(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = " ".join(str(error).split())[-200:]
        raise InputError(f"cannot read image {path}: {reason}") from error
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise InputError(f"{path} is a {image.GetDimension()}D image; a 3D image is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar image is needed")
    meta = {"source": SOURCE_BY_SUFFIX[image_suffix(path)], "files": [str(path)]}
    volume = Volume.from_sitk(image, meta=meta)
    if modality:
        chosen, how = modality.upper(), "given"
    else:
        chosen, how = guess_modality(volume), "guessed"
    volume.meta.update(modality=chosen, modality_source=how)
    return volume.with_array(volume.array, modality=chosen)


def load_image(
    path: str | Path,
    *,
    series_uid: str | None = None,
    modality: str | None = None,
    t2: bool | None = None,
    preferred: str | None = None,
) -> Volume:
    """Load a DICOM folder/file, NIfTI, NRRD or MetaImage as a Volume (array (z, y, x), LPS).

    Args:
        path: folder of DICOM files, one DICOM file, or an image file.
        series_uid: DICOM Series Instance UID when a folder holds several series.
        modality: ``"CT"``/``"MR"``: restricts the DICOM series choice; for other formats,
            sets the modality (otherwise guessed, ``meta["modality_source"] = "guessed"``).
        t2: override of the T2w detection for MR (DICOM).
        preferred: tie-break between one CT and one T2w MR series in a DICOM folder.
    """
    from . import dicom_series

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir():
        return dicom_series.read_dicom_series(path, series_uid=series_uid, modality=modality, t2=t2, preferred=preferred)
    if image_suffix(path):
        volume = _read_itk(path, modality)
        # No sequence information in these formats: T2w is only known when the user says so.
        volume.meta["is_t2"] = t2 if volume.modality == "MR" else None
        return volume
    scan = dicom_series.scan_series([path])
    if scan.series:
        return dicom_series.read_dicom_series([path], series_uid=series_uid, modality=modality, t2=t2, preferred=preferred)
    damaged = [file for file in scan.unattached if not isinstance(file, dicom_series.UnreadableFile)]
    if damaged:  # a lone file that is not DICOM at all gets the message below
        raise InputError(damaged[0].message())
    raise InputError(
        f"{path} is neither DICOM nor a known image format ({', '.join(ITK_SUFFIXES)}); "
        "give a DICOM folder or an image file"
    )


def write_image(volume: Volume, path: str | Path) -> None:
    """Write ``volume`` with its exact grid to NIfTI/NRRD/MetaImage, atomically.

    The format comes from the suffix (:data:`WRITE_SUFFIXES`). SimpleITK converts LPS to
    NIfTI's RAS on disk (NIfTI itself is written by :mod:`.nifti`, without importing SimpleITK).
    A sheared (gantry-tilt) grid cannot be stored in NIfTI: InputError asking for ``.nrrd``.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise InputError(f"cannot write {path.name}: use one of {', '.join(WRITE_SUFFIXES)}")
    if suffix.startswith(".nii") and not volume.is_orthogonal:
        raise InputError(
            f"cannot write {path.name}: NIfTI cannot store a sheared (gantry-tilted) grid; write .nrrd instead"
        )
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    volume = volume.with_array(array)
    compress = suffix in (".nii.gz", ".nrrd", ".mha")
    with atomic_path(path, suffix=suffix) as temporary:
        if suffix.startswith(".nii") and array.dtype.newbyteorder("=") in DATATYPES:
            write_nifti(volume, temporary, compress)
        else:
            import SimpleITK as sitk

            sitk.WriteImage(volume.to_sitk(), str(temporary), useCompression=compress)
