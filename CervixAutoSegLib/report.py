"""report.json of ``segment``: what ran, how long, what came out, and what looks suspicious.

Document layout (all lengths mm, volumes ml, times s; slice indices ``k`` are indices of
array axis 0 of the *input* grid, i.e. the acquired image planes)::

    {
      "format_version": 1,
      "tool": {"name": "CervixAutoSeg", "version": "..."},
      "created_utc": "2026-01-01T12:00:00Z",
      "input": {"path", "source", "modality", "series_instance_uid", "shape_zyx", "spacing_xyz_mm", ...,
                "mr_weighting": {"verdict": "t2|not_t2|unknown", "reason"} (MR DICOM only)},
      "model": {"id", "version", "family", "architecture", "weights_sha256", "networks": [{"role",
                "architecture", "weights_sha256"}], "intended_use", "validation"},
      "device": {"requested", "used", "description", "precision", "batch_size", "fell_back_to_cpu", ...},
      "timings_s": {"load", "preprocess", "model_load", "network", "postprocess", "qa", "write", "total",
                    "load_wait" (the command: reading and preprocessing ran in a child while torch was
                    imported; this is what was left to wait for); the label files are written while
                    the QA runs, so "write" is the writing's seconds beyond the QA's},
      "structures": [{"value", "name", "paper_name", "voxels", "volume_ml", "slices": [k_first, k_last],
                      "centroid_lps_mm", "postprocess": {...}}],
      "qa": {
        "verdict": "plausible|check|implausible", "reasons": ["one line each"],
        "plausibility": {"structures": {name: {"verdict", "reasons", "features"}}, "input": {...}, ...},
        "slices": [{"structure", "slice", "z_mm", "score", "flagged", "reasons", "position_lps_mm",
                    "signals"}],          # every slice of every structure's extent (CervixAutoSegLib.qa)
        "flagged_slices": n, "thresholds": {"calibrated", "flag_score"}, "evidence": bool,
        "absent": [names], "flags": [{"structure", "kind", "slices", "message"}], "kinds": {...}
      },
      "warnings": ["one line each, about the input (e.g. T2 weighting not verifiable) or the run"],
      "input_warnings": ["one line each: what the reader and the input checks noticed but accepted
                         (slice positions off a uniform grid, an optional header value left out of
                         the RTSTRUCT); also listed in warnings"]
    }

``qa.verdict`` and ``qa.slices`` come from :mod:`CervixAutoSegLib.qa` (per-case plausibility against
ranges learned from training data; a flag score per slice and structure from the label map and the
network's own uncertainty).  The structure-level ``qa.flags`` (kinds :data:`QA_KINDS`) are the older
shape hints, kept for readers of format 1.  All of them are hints for the reviewing physician, not
errors.  :func:`qa_summary_lines` and :func:`qa_warning` word them for the command line and the
Slicer panel.
"""

from __future__ import annotations

import datetime
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_text_atomic
from .cropping import label_boxes, mean_index, voxel_counts
from .postprocess import voxel_volume_ml
from .structures import Structure
from .volume import Volume

REPORT_FORMAT_VERSION = 1

AREA_JUMP_RATIO = 2.5
"""Neighbouring slices whose structure areas differ by more than this factor are flagged."""
MIN_AREA_FOR_JUMP_MM2 = 100.0
"""Area jumps are only judged when the larger of the two areas is at least this (1 cm²):
the tapering tips of an organ legitimately change area fast."""
ABRUPT_END_FRACTION = 0.5
"""A structure whose first or last slice still has this fraction of its largest area
ends abruptly (real organs taper); flagged, and doubly suspicious at the volume's end."""

QA_KINDS = {
    "absent": "structure not found anywhere",
    "gap": "structure disappears on some slices and reappears",
    "area_jump": "implausible area change between neighbouring slices",
    "abrupt_end": "structure ends abruptly instead of tapering",
    "volume_end": "structure reaches the first or last image slice (may continue outside the scan)",
    "crop_border": "structure touches the border of the network's field of view (may be cut off)",
}


def _per_slice_area_pixels(labels: np.ndarray, value: int, box: tuple | None = None) -> np.ndarray:
    """Pixels of ``value`` in each slice k of a (z, y, x) label map, shape (z,).

    ``box``: the value's bounding box (``scipy.ndimage.find_objects``) to scan only that; None = absent.
    """
    areas = np.zeros(labels.shape[0], dtype=np.int64)
    if box is not None:
        areas[box[0]] = np.count_nonzero(labels[box] == value, axis=(1, 2))
    return areas


def structure_statistics(labels: Volume, structures: Sequence[Structure],
                         cleanup: Mapping[int, Any] | None = None, boxes: Sequence[Any] | None = None) -> list[dict]:
    """Voxel count, volume (ml), slice range and LPS centroid of every structure.

    ``boxes``: :func:`label_boxes` of ``labels`` when the caller has them already.
    """
    voxel_ml = voxel_volume_ml(labels.spacing, labels.direction)
    array = np.asarray(labels.array, dtype=np.uint8)
    # Per label value its bounding box: counting and centroids then scan only that box
    # (np.bincount would first widen all voxels to 64-bit integers).
    boxes = label_boxes(array) if boxes is None else boxes
    entries = []
    for structure in structures:
        box = boxes[structure.value - 1] if structure.value <= len(boxes) else None
        counts = voxel_counts(array[box] == structure.value) if box is not None else None
        voxels = int(counts[0].sum()) if counts is not None else 0
        entry: dict[str, Any] = {
            "value": structure.value,
            "name": structure.name,
            "paper_name": structure.paper_name,
            "voxels": voxels,
            "volume_ml": round(voxels * voxel_ml, 3),
            "slices": None,
            "centroid_lps_mm": None,
        }
        if voxels:
            slices = np.flatnonzero(counts[0]) + box[0].start
            entry["slices"] = [int(slices[0]), int(slices[-1])]
            centre_kji = mean_index(counts, [axis.start for axis in box])
            entry["centroid_lps_mm"] = [round(float(v), 2) for v in labels.index_to_physical(centre_kji[::-1])]
        if cleanup is not None and structure.value in cleanup:
            entry["postprocess"] = cleanup[structure.value].to_json()
        entries.append(entry)
    return entries


def _runs(indices: Iterable[int]) -> list[list[int]]:
    """Sorted integers → [[first, last], ...] of consecutive runs."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return runs


def slice_qa_flags(labels: Volume, structures: Sequence[Structure],
                   field_of_view_border: Any = None, boxes: Sequence[Any] | None = None) -> list[dict]:
    """Per-slice plausibility flags of every structure (see :data:`QA_KINDS`).

    Args:
        labels: final label map on the input grid, array (z, y, x).
        structures: the model's structures.
        field_of_view_border: boolean (z, y, x) on the input grid (an array or a
            :class:`~CervixAutoSegLib.qa.maps.BoxedMap`, read by boxes), True on the outermost
            pixels of the network's field of view (the crop) — for ``crop_border``.
        boxes: :func:`label_boxes` of ``labels`` when the caller has them already.
    """
    pixel_mm2 = float(labels.spacing[0] * labels.spacing[1])
    array = np.asarray(labels.array)
    boxes = label_boxes(array) if boxes is None else boxes
    flags: list[dict] = []
    nz = labels.shape[0]
    for structure in structures:
        box = boxes[structure.value - 1] if structure.value <= len(boxes) else None
        areas = _per_slice_area_pixels(array, structure.value, box) * pixel_mm2
        present = np.flatnonzero(areas > 0)
        if present.size == 0:
            flags.append({"structure": structure.name, "kind": "absent", "slices": [],
                          "message": f"{structure.name} was not found"})
            continue
        runs = _runs(present.tolist())
        if len(runs) > 1:
            missing = [[a[1] + 1, b[0] - 1] for a, b in itertools.pairwise(runs)]
            flags.append({"structure": structure.name, "kind": "gap", "slices": missing,
                          "message": f"{structure.name} missing on slices " +
                                     ", ".join(f"{m[0]}-{m[1]}" if m[0] != m[1] else str(m[0]) for m in missing)})
        first, last = int(present[0]), int(present[-1])
        jumps = []
        for k in range(first, last):
            small, large = sorted((areas[k], areas[k + 1]))
            if large >= MIN_AREA_FOR_JUMP_MM2 and small > 0 and large / small > AREA_JUMP_RATIO:
                jumps.append([k, k + 1])
        if jumps:
            flags.append({"structure": structure.name, "kind": "area_jump", "slices": jumps,
                          "message": f"{structure.name} area changes more than {AREA_JUMP_RATIO:g}x between "
                                     f"slices {', '.join(f'{a}/{b}' for a, b in jumps[:5])}"})
        peak = float(areas.max())
        abrupt = [k for k in sorted({first, last}) if areas[k] >= ABRUPT_END_FRACTION * peak and last > first]
        at_end = [k for k in sorted({first, last}) if k in (0, nz - 1)]
        if at_end:
            flags.append({"structure": structure.name, "kind": "volume_end", "slices": at_end,
                          "message": f"{structure.name} reaches image slice {', '.join(map(str, at_end))}: "
                                     "it may continue outside the scan"})
        elif abrupt:
            flags.append({"structure": structure.name, "kind": "abrupt_end", "slices": abrupt,
                          "message": f"{structure.name} ends abruptly on slice {', '.join(map(str, abrupt))}"})
        if field_of_view_border is not None:  # the structure's box only: no scan of the whole border
            on_border = (array[box] == structure.value) & field_of_view_border[box]
            touching = np.flatnonzero(on_border.any(axis=(1, 2))) + box[0].start
            if touching.size:
                flags.append({"structure": structure.name, "kind": "crop_border", "slices": touching.tolist(),
                              "message": f"{structure.name} touches the network's field-of-view border on "
                                         f"{touching.size} slice(s): it may be cut off"})
    return flags


def input_summary(volume: Volume, path: str | None) -> dict:
    """The ``input`` entry: where the image came from and its grid."""
    meta = volume.meta
    return {
        "path": path,
        "source": meta.get("source", "volume"),
        "modality": volume.modality,
        "series_instance_uid": meta.get("series_instance_uid") or meta.get("series_uid"),
        "frame_of_reference_uid": meta.get("frame_of_reference_uid"),
        "shape_zyx": list(volume.shape),
        "spacing_xyz_mm": [round(float(v), 6) for v in volume.spacing],
        "origin_lps_mm": [round(float(v), 4) for v in volume.origin],
        "direction": [[round(float(v), 6) for v in row] for row in volume.direction],
        **({"mr_weighting": dict(meta["mr_weighting"])} if meta.get("mr_weighting") else {}),
    }


def model_summary(card: Any) -> dict:
    """The ``model`` entry from a :class:`~CervixAutoSegLib.models.ModelCard`."""
    return {
        "id": card.id,
        "version": card.version,
        "family": card.family,
        "architecture": ", ".join(entry.architecture for entry in card.networks),
        "weights_sha256": card.networks[0].sha256 if len(card.networks) == 1 else
        {entry.role: entry.sha256 for entry in card.networks},
        "networks": [{"role": entry.role, "architecture": entry.architecture, "weights_sha256": entry.sha256}
                     for entry in card.networks],
        "intended_use": card.intended_use,
        "validation": card.validation,
    }


def build_report(*, volume: Volume, input_path: str | None, card: Any, device: Mapping[str, Any],
                 timings: Mapping[str, float], labels: Volume, structures: Sequence[Structure],
                 cleanup: Mapping[int, Any] | None = None, field_of_view_border: Any = None,
                 preprocessing: Mapping[str, Any] | None = None, outputs: Sequence[str] = (),
                 warnings: Sequence[str] = (), quality: Mapping[str, Any] | None = None,
                 boxes: Sequence[Any] | None = None) -> dict:
    """Assemble the whole report document (layout in the module docstring).

    ``quality``: :func:`CervixAutoSegLib.qa.assess` of this result (computed here when None).
    ``boxes``: :func:`label_boxes` of ``labels`` when the caller has them already.
    """
    from . import __version__

    boxes = label_boxes(np.asarray(labels.array)) if boxes is None else boxes
    if quality is None:
        from .qa import QAConfig, assess

        quality = assess(volume, labels, structures, QAConfig.from_card(card),
                         field_of_view_border=field_of_view_border, boxes=boxes)
    flags = slice_qa_flags(labels, structures, field_of_view_border, boxes)
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "tool": {"name": "CervixAutoSeg", "version": __version__},
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "input": input_summary(volume, input_path),
        "model": model_summary(card),
        "device": dict(device),
        "preprocessing": dict(preprocessing or {}),
        "timings_s": {name: round(float(seconds), 3) for name, seconds in timings.items()},
        "structures": structure_statistics(labels, structures, cleanup, boxes),
        "qa": {
            **quality,
            "absent": [flag["structure"] for flag in flags if flag["kind"] == "absent"],
            "flags": flags,
            "kinds": QA_KINDS,
        },
        "outputs": list(outputs),
        "warnings": list(warnings),
        "input_warnings": list(volume.meta.get("input_warnings") or ()),
    }


VERDICT_HEADLINES = {
    "plausible": "plausible (within what the model was trained on)",
    "check": "CHECK: parts of the result lie outside what the model was trained on",
    "implausible": "IMPLAUSIBLE: do not use this result without a thorough review",
}
SUMMARY_REASONS = 8
"""Reasons printed on the command line (all of them are in report.json)."""
SUMMARY_SLICES = 6


def qa_summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The QA verdict, its reasons and the worst flagged slices, one line each (for ``segment``'s summary)."""
    qa = report.get("qa") or {}
    verdict = qa.get("verdict")
    if verdict is None:
        return []
    lines = [f"QA: {VERDICT_HEADLINES.get(verdict, verdict)}"]
    structures = (qa.get("plausibility") or {}).get("structures", {})
    for name, entry in structures.items():
        if entry.get("verdict") != "plausible":
            lines.append(f"  {name}: {entry['verdict']}")
    reasons = qa.get("reasons") or []
    lines += [f"    - {reason}" for reason in reasons[:SUMMARY_REASONS]]
    if len(reasons) > SUMMARY_REASONS:
        lines.append(f"    - ... {len(reasons) - SUMMARY_REASONS} more in report.json")
    if (qa.get("thresholds") or {}).get("stale"):
        lines.append("  note: the model's slice-flag thresholds were calibrated for other weights "
                     "(run cervixautoseg qa-calibrate)")
    flagged = sorted((e for e in qa.get("slices", []) if e.get("flagged")), key=lambda e: -e["score"])
    if flagged:
        worst_first = ", ".join(f"{e['structure']} slice {e['slice']}" for e in flagged[:SUMMARY_SLICES])
        lines.append(f"  {len(flagged)} slice(s) flagged for review, worst first: {worst_first}"
                     + (" ..." if len(flagged) > SUMMARY_SLICES else ""))
    return lines


def qa_warning(report: Mapping[str, Any]) -> str:
    """One line for the Slicer panel: '' when plausible, else the verdict per structure and the first reason."""
    qa = report.get("qa") or {}
    verdict = qa.get("verdict")
    if verdict in (None, "plausible"):
        return ""
    structures = (qa.get("plausibility") or {}).get("structures", {})
    named = [f"{name} {entry['verdict']}" for name, entry in structures.items() if entry.get("verdict") != "plausible"]
    input_verdict = ((qa.get("plausibility") or {}).get("input") or {}).get("verdict", "plausible")
    if input_verdict != "plausible":
        named.append(f"image {input_verdict}")
    first = (qa.get("reasons") or [""])[0]
    head = "Result implausible" if verdict == "implausible" else "Check the result"
    return f"{head}: {', '.join(named)}" + (f" ({first})" if first else "") + "."


def write_report(path: str | Path, report: Mapping[str, Any]) -> None:
    """Write ``report`` as indented JSON, atomically."""
    write_text_atomic(Path(path), json.dumps(report, indent=2, default=_json_default) + "\n")


def read_report(path: str | Path) -> dict | None:
    """A report written by :func:`write_report`, or None when it is missing, unreadable or not a JSON object."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
