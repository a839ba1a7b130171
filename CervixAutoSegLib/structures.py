"""What a structure is: label value, TG-263 name, colour, RT ROI type and codes.

Each model family declares its own structures (``ct/family.py``: 1 bladder, 2 rectum,
3 CTV-N, 4 CTV-UV; ``mr/family.py``: 1 organ = uterus + cervix + vagina with the tumour
included, 2 tumour) in the family registry (:mod:`.families`), using the
:class:`Structure` type and the standard codes defined here.  Everything that names,
colours or codes a structure (labels.json, Slicer segments, RTSTRUCT ROIs, reports)
reads them from a family or a model card, never from a table of its own.

Codes are (coding scheme designator, code value, code meaning) triplets as DICOM
writes them.  Anatomy uses SNOMED CT ("SCT"); radiotherapy targets use the SNOMED CT
concepts of DICOM CID 9534 "Radiotherapy Targets".
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple


class Code(NamedTuple):
    """A coded concept: (coding scheme designator, code value, code meaning)."""

    scheme: str
    value: str
    meaning: str

    def slicer(self) -> str:
        """Slicer terminology-string form ``scheme^value^meaning``."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


# Segmented property categories (DICOM CID 7150).
ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED = Code("SCT", "49755003", "Morphologically Altered Structure")

# Anatomy (SNOMED CT body structures).
URINARY_BLADDER = Code("SCT", "89837001", "Urinary bladder")
RECTUM = Code("SCT", "34402009", "Rectum")
UTERUS = Code("SCT", "35039007", "Uterus")
CERVIX_UTERI = Code("SCT", "71252005", "Cervix uteri")
VAGINA = Code("SCT", "76784001", "Vagina")
PELVIC_LYMPH_NODE = Code("SCT", "8128005", "Pelvic lymph node")
PELVIS = Code("SCT", "12921003", "Pelvis")

# Radiotherapy targets (DICOM CID 9534).
CLINICAL_TARGET_VOLUME = Code("SCT", "228792002", "Clinical Target Volume")
GROSS_TUMOR_VOLUME = Code("SCT", "228791009", "Gross Tumor Volume")

# RT ROI Interpreted Type (C.8.8.8.1.1 defined terms).
ORGAN, CTV, GTV = "ORGAN", "CTV", "GTV"

TG263_MAX_LENGTH = 16


@dataclasses.dataclass(frozen=True)
class Structure:
    """One label of a model's output.

    Attributes:
        value: label value in the label map (1..N; 0 is background).
        name: AAPM TG-263 name (<= 16 characters) used for segments and ROIs.
        paper_name: the name the method paper uses.
        color: display colour, RGB 0-255.
        interpreted_type: RT ROI Interpreted Type (ORGAN, CTV or GTV).
        category: segmented property category code.
        type: segmented property type code.
        region: anatomic region the property type refers to, when it is a target.
    """

    value: int
    name: str
    paper_name: str
    color: tuple[int, int, int]
    interpreted_type: str
    category: Code
    type: Code
    region: Code | None = None

    def __post_init__(self) -> None:
        if not 0 < len(self.name) <= TG263_MAX_LENGTH:
            raise ValueError(f"TG-263 names have 1-16 characters: {self.name!r}")
        if self.interpreted_type not in (ORGAN, CTV, GTV):
            raise ValueError(f"unknown RT ROI Interpreted Type {self.interpreted_type!r}")

    @property
    def color_float(self) -> tuple[float, float, float]:
        """Colour as 0-1 floats, as Slicer segments store it."""
        return tuple(c / 255.0 for c in self.color)  # type: ignore[return-value]

    def terminology(self) -> dict:
        """Coded concepts as plain JSON (the ``terminology`` entry of labels.json)."""
        entry = {
            "category": self.category._asdict(),
            "type": self.type._asdict(),
        }
        if self.region is not None:
            entry["region"] = self.region._asdict()
        return entry

    def slicer_terminology(self, context: str = "Segmentation category and type - DICOM master list") -> str:
        """Slicer's ``Segmentation.Terminology`` tag value for this structure."""
        region = self.region.slicer() if self.region else "^^"
        return "~".join(
            [context, self.category.slicer(), self.type.slicer(), "^^",
             "Anatomic codes - DICOM master list", region, "^^"]
        )

    def to_json(self) -> dict:
        """One entry of the ``labels`` list of labels.json: value, name, paper_name, color, RT type, terminology."""
        return {
            "value": self.value,
            "name": self.name,
            "paper_name": self.paper_name,
            "color": list(self.color),
            "rt_roi_interpreted_type": self.interpreted_type,
            "terminology": self.terminology(),
        }


def labels_document(model: str, structures: tuple[Structure, ...]) -> dict:
    """The labels.json document of ``model`` (a model id) drawing ``structures``."""
    return {"model": model, "labels": [s.to_json() for s in structures]}


def structures_from_json(document: dict) -> tuple[Structure, ...]:
    """Inverse of :func:`labels_document` (reads a labels.json or a model card's labels)."""
    result = []
    for entry in document["labels"]:
        terms = entry.get("terminology", {})
        region = terms.get("region")
        result.append(
            Structure(
                value=int(entry["value"]),
                name=entry["name"],
                paper_name=entry.get("paper_name", entry["name"]),
                color=tuple(int(c) for c in entry["color"]),  # type: ignore[arg-type]
                interpreted_type=entry["rt_roi_interpreted_type"],
                category=Code(**terms["category"]),
                type=Code(**terms["type"]),
                region=Code(**region) if region else None,
            )
        )
    return tuple(result)


def write_labels_json(path: str | Path, model: str, structures: tuple[Structure, ...]) -> None:
    """Write labels.json atomically."""
    from .atomic import write_text_atomic

    write_text_atomic(Path(path), json.dumps(labels_document(model, structures), indent=2) + "\n")
