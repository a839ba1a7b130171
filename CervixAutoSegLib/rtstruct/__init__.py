"""DICOM RT Structure Set: write label maps as RTSTRUCT, read RTSTRUCT back as label maps.

Heavy dependencies (pydicom, scikit-image) are imported inside the functions, so
importing this package costs nothing.
"""

from __future__ import annotations

from .reader import find_rtstructs, read_rtstruct, read_rtstruct_masks, referenced_series, roi_names
from .writer import build_rtstruct_dataset, organ_tumour_containment, write_rtstruct

__all__ = [
    "build_rtstruct_dataset",
    "find_rtstructs",
    "organ_tumour_containment",
    "read_rtstruct",
    "read_rtstruct_masks",
    "referenced_series",
    "roi_names",
    "write_rtstruct",
]
