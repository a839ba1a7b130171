"""DICOM UIDs, defined terms and codes the RT Structure Set writer and reader use."""

from __future__ import annotations

from ..structures import Code

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
IMAGE_STORAGE_BY_MODALITY = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
"""Retired SOP Class naming the study in the RT Referenced Study Sequence; still what the
standard's examples and every planning system use there."""

RTSTRUCT_MODALITY = "RTSTRUCT"
CLOSED_PLANAR = "CLOSED_PLANAR"
"""Contour Geometric Type of a polygon whose last point joins its first."""
POINT = "POINT"
ROI_GENERATION_AUTOMATIC = "AUTOMATIC"
APPROVAL_UNAPPROVED = "UNAPPROVED"

SEGMENTATION_ALGORITHM_FAMILY = Code("DCM", "113076", "Segmentation")
"""Algorithm Family (CID 7162) of the ROI Derivation Algorithm Identification."""

SH_MAX_LENGTH = 16
LO_MAX_LENGTH = 64
