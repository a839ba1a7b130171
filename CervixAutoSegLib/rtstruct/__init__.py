"""DICOM RT Structure Set: write label maps as RTSTRUCT, read RTSTRUCT back as label maps.

Typical use (the reference Volume comes from :func:`CervixAutoSegLib.dicom_series.read_dicom_series`,
whose ``meta`` carries the per-image UIDs and positions; labels are on exactly its grid)::

    from CervixAutoSegLib.rtstruct import organ_tumour_containment, read_rtstruct, write_rtstruct
    from CervixAutoSegLib.mr.family import MR_STRUCTURES

    write_rtstruct(out / "rtstruct.dcm", labels, image, MR_STRUCTURES,
                   model_name="PocketNet", model_version="1.0",
                   containment=organ_tumour_containment(MR_STRUCTURES))
    back = read_rtstruct(out / "rtstruct.dcm", image, MR_STRUCTURES)   # uint8 label Volume

Modules: ``contours`` (label slice ↔ polygons in pixel coordinates), ``planes`` (each
image's own plane in LPS mm), ``writer``, ``reader``, ``decimal_strings`` (DS ≤ 16
characters), ``uids`` (UIDs, defined terms, codes).  The heavy dependency (pydicom)
is imported inside the functions, so importing this package is cheap.
"""

from __future__ import annotations

from .reader import find_rtstructs, read_rtstruct, read_rtstruct_masks, referenced_series, roi_names
from .writer import build_rtstruct_dataset, organ_tumour_containment, read_source_header, write_rtstruct

__all__ = [
    "build_rtstruct_dataset",
    "find_rtstructs",
    "organ_tumour_containment",
    "read_rtstruct",
    "read_rtstruct_masks",
    "read_source_header",
    "referenced_series",
    "roi_names",
    "write_rtstruct",
]
