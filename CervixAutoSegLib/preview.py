"""preview.png: axial, coronal and sagittal views through the structures, with contours.

What a headless user opens first to see whether the contours are in the right place.
Display convention (radiological, as in Slicer and every TPS):

* axial: viewed from the feet — patient Right on the image's left, Anterior at the top;
* coronal: viewed from the front — patient Right on the left, Superior at the top;
* sagittal: viewed from the patient's left — Anterior on the left, Superior at the top.

Every panel is labelled with the patient directions at its edges and drawn with the
correct aspect ratio from the voxel spacing.  When the QA verdict (:mod:`.qa`) is given, a coloured
line under the title says it (green plausible, amber check, red implausible) with the first reasons,
each structure's legend entry carries its own verdict, and the axial panel is cut through the
worst flagged slice when the result is not plausible (where a reviewer should look first).
The volume is brought to that layout by axis permutation and flips only (no interpolation in 3-D);
for an oblique or gantry-tilted grid the views are the nearest axis-aligned planes (a preview,
not a measurement).

Rendering uses numpy and Pillow only (no matplotlib: its import and layout cost most of a second
of every ``segment`` run).  Each 2-D plane is resampled nearest-neighbour to a display size where
one pixel is the same number of mm along both axes (fitting :data:`PANEL_BOX_PX`), so voxels show
as they are, not smoothed; contours are the boundary of the label mask at that display resolution,
:data:`CONTOUR_WIDTH_PX` pixels wide, in each structure's exact colour.  Text uses Pillow's built-in
scalable font (``ImageFont.load_default(size=...)``): no font file of the system is needed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .structures import Structure
from .volume import Volume

CT_DISPLAY_WINDOW_HU = (-160.0, 240.0)
"""Soft-tissue window W400/L40 for CT panels."""
MR_DISPLAY_PERCENTILES = (1.0, 99.0)
VERDICT_COLOURS = {"plausible": "#4caf50", "check": "#ffb300", "implausible": "#ff1744"}
PREVIEW_REASONS = 3
"""Reasons written on the image (all of them are in report.json)."""

IMAGE_WIDTH_PX = 1500
MARGIN_PX = 10
HEADER_TOP_PX, HEADER_GAP_PX, LEGEND_TOP_PX = 6, 4, 10
"""Blank rows above the title (and below the legend), under the verdict lines, and above the legend."""
PANEL_BOX_PX = (480, 480)
"""(height, width) each panel is fitted into, keeping its physical aspect ratio."""
CONTOUR_WIDTH_PX = 2
DIRECTION_INSET_PX = 4
WHITE, YELLOW = (255, 255, 255), (255, 255, 0)
FONT_SIZES = {"title": 18, "verdict": 15, "reason": 13, "panel": 15, "direction": 17, "legend": 14}
LINE_HEIGHTS_PX = {"title": 30, "verdict": 20, "panel": 24, "legend": 26}
SWATCH_PX = (24, 13)
"""(width, height) of a legend entry's colour swatch."""
SWATCH_TEXT_GAP_PX = 6
LEGEND_GAP_PX = 30
"""Blank columns between two legend entries."""
PNG_COMPRESS_LEVEL = 1
"""zlib level 1: on a noisy CT about twice as fast as the default 6 and no larger (noise defeats both)."""

View = tuple[str, np.ndarray, np.ndarray, float, tuple[str, ...]]
RGB = tuple[int, int, int]


def oriented_to_lps(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Voxels permuted/flipped so array (z, y, x) runs towards LPS (S, P, L); spacing (x, y, z) mm."""
    from .orientation import orientation_to_lps, reorient

    axes, flips = orientation_to_lps(volume.direction)
    oriented = reorient(np.asarray(volume.array), axes, flips)
    # oriented axis p (z, y, x) is input array axis axes[p], whose spacing is spacing[2 - axes[p]].
    spacing = tuple(float(volume.spacing[2 - axes[2 - c]]) for c in range(3))
    return oriented, spacing  # type: ignore[return-value]


def _oriented_axial_index(labels: Volume, k: int, centre: tuple[int, int, int]) -> int:
    """The LPS-oriented axial index (z) through input slice ``k``: that slice when the input is
    axial, else the preview's own centre (another plane's slice is no single axial slice)."""
    from .orientation import orientation_to_lps

    axes, flips = orientation_to_lps(labels.direction)
    if axes[0] != 0:
        return centre[0]
    return labels.shape[0] - 1 - k if flips[0] else k


def _display_range(image: np.ndarray, modality: str) -> tuple[float, float]:
    """(low, high) intensities shown black and white: the CT window, or MR percentiles of the volume."""
    if modality.upper() == "CT":
        return CT_DISPLAY_WINDOW_HU
    # every other row and third column: grey levels, not measurements (all 26 M voxels took 0.3 s)
    sample = image[..., ::2, ::3] if image.ndim >= 2 and min(image.shape[-2:]) >= 16 else image
    low, high = np.percentile(sample, MR_DISPLAY_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def _label_box(labels: np.ndarray) -> tuple[slice, slice, slice] | None:
    """(z, y, x) bounding box of the non-zero voxels of a 3-D array; None when there are none.

    Structures fill a small part of a CT, so the work on label values is done inside this box.
    """
    from .cropping import bounding_box

    # A flipped view (negative stride, as oriented_to_lps gives for FFS/HFP) is read several
    # times slower than memory order: box the unflipped array, then mirror those axes' ranges.
    flipped = tuple(axis for axis in range(labels.ndim) if labels.strides[axis] < 0)
    found = bounding_box(np.flip(labels, flipped) if flipped else labels)
    if found is None:
        return None
    box = []
    for axis, (start, size) in enumerate(zip(*found)):
        if axis in flipped:
            start = labels.shape[axis] - start - size
        box.append(slice(start, start + size))
    return tuple(box)  # type: ignore[return-value]


def _centre(labels: np.ndarray, values: Sequence[int], box: tuple[slice, ...] | None) -> tuple[int, int, int]:
    """(z, y, x) index of the centroid of all structure voxels (volume centre if none); ``box`` is
    :func:`_label_box` of ``labels``."""
    middle = tuple(int(n // 2) for n in labels.shape)
    if 0 in values:  # the box bounds every non-zero value; background needs the whole volume
        box = tuple(slice(0, n) for n in labels.shape)
    if box is None:
        return middle  # type: ignore[return-value]
    from .cropping import mean_index, voxel_counts
    from .postprocess import any_of

    inside = labels[box]
    centre = mean_index(voxel_counts(any_of(inside, list(values)) if values else inside > 0),
                        [edge.start for edge in box])
    return middle if centre is None else tuple(round(float(v)) for v in centre)  # type: ignore[return-value]


def _views(image: np.ndarray, labels: np.ndarray, centre: tuple[int, int, int],
           spacing: tuple[float, float, float]) -> list[View]:
    """(title, image 2D, labels 2D, aspect, (top, bottom, left, right)) in radiological layout.

    Input arrays are LPS-oriented (z→S, y→P, x→L): rows of the axial slice already run
    A→P and columns R→L; coronal and sagittal need z reversed so that S is on top.
    ``aspect`` is a row's height over a column's width in mm.
    """
    kz, jy, ix = centre
    sx, sy, sz = spacing
    return [
        ("Axial", image[kz], labels[kz], sy / sx, ("A", "P", "R", "L")),
        ("Coronal", image[::-1, jy, :], labels[::-1, jy, :], sz / sx, ("S", "I", "R", "L")),
        ("Sagittal", image[::-1, :, ix], labels[::-1, :, ix], sz / sy, ("S", "I", "A", "P")),
    ]


def verdict_lines(quality: Mapping | None) -> list[tuple[str, str]]:
    """(text, colour) lines saying the QA verdict and its first reasons; [] without a verdict."""
    verdict = (quality or {}).get("verdict")
    if verdict is None:
        return []
    colour = VERDICT_COLOURS.get(verdict, "white")
    reasons = list(quality.get("reasons") or [])
    lines = [(f"QA verdict: {verdict.upper()}", colour)]
    lines += [(f"- {reason}", colour) for reason in reasons[:PREVIEW_REASONS]]
    if len(reasons) > PREVIEW_REASONS:
        lines.append((f"- ... {len(reasons) - PREVIEW_REASONS} more reason(s) in report.json", colour))
    return lines


def _worst_flagged_slice(quality: Mapping | None) -> int | None:
    """Input slice index of the highest-scoring flagged slice, when the case is not plausible."""
    if not quality or quality.get("verdict") in (None, "plausible"):
        return None
    flagged = [entry for entry in quality.get("slices", []) if entry.get("flagged")]
    return int(max(flagged, key=lambda entry: entry["score"])["slice"]) if flagged else None


TYPOGRAPHIC_ASCII = str.maketrans({"\u2014": "-", "\u2013": "-", "\u2212": "-", "\u2265": ">=", "\u2264": "<=",
                                   "\u00d7": "x", "\u2192": "->", "\u00b5": "u", "\u00b2": "2", "\u00b3": "3",
                                   "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2026": "..."})
"""Characters of our own texts that Pillow's bundled font (ASCII plus a few signs) has no glyph for."""


def drawable(text: str) -> str:
    """``text`` in characters the bundled font draws: typographic signs spelled in ASCII, accents
    dropped (a patient or model name may carry them), anything else '?' (not an empty box)."""
    import unicodedata

    spelled = unicodedata.normalize("NFKD", str(text).translate(TYPOGRAPHIC_ASCII))
    # control characters (a newline in a model id) as spaces: Pillow refuses anchored multi-line text
    return "".join(" " if not c.isprintable() else c if c.isascii() or c in "\u00b1\u00b0"
                   else "" if unicodedata.combining(c) else "?" for c in spelled)


def _text(draw: Any, xy: tuple[float, float], text: str, **style: Any) -> None:
    draw.text(xy, drawable(text), **style)


@functools.lru_cache(maxsize=None)
def _font(size: int) -> Any:
    """Pillow's bundled scalable font at ``size`` px (its bitmap font where Pillow lacks FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1 (an older Slicer's): its fixed-size bitmap font
        return ImageFont.load_default()


def _display_shape(shape: tuple[int, int], aspect: float,
                   box: tuple[int, int] = PANEL_BOX_PX) -> tuple[int, int]:
    """(rows, columns) in display pixels of a ``shape`` plane whose row/column mm ratio is ``aspect``:
    the largest size inside ``box`` (height, width) with one display pixel the same mm both ways."""
    height_units, width_units = shape[0] * aspect, float(shape[1])
    scale = min(box[0] / height_units, box[1] / width_units)
    return max(1, round(height_units * scale)), max(1, round(width_units * scale))


def _resample(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a 2-D (rows, columns) plane to ``size`` pixels."""
    # Each display pixel takes the voxel under its centre.
    rows, columns = (np.minimum(((np.arange(pixels) + 0.5) * voxels / pixels).astype(np.intp), voxels - 1)
                     for pixels, voxels in zip(size, plane.shape))
    return plane[rows[:, None], columns[None, :]]


def _erode(mask: np.ndarray) -> np.ndarray:
    """One step of 4-neighbour binary erosion; outside the plane counts as background, so a
    structure cut by the panel's edge is still drawn closed."""
    eroded = mask.copy()
    eroded[1:, :] &= mask[:-1, :]
    eroded[:-1, :] &= mask[1:, :]
    eroded[:, 1:] &= mask[:, :-1]
    eroded[:, :-1] &= mask[:, 1:]
    eroded[0, :] = eroded[-1, :] = False
    eroded[:, 0] = eroded[:, -1] = False
    return eroded


def _outline(mask: np.ndarray, width: int = CONTOUR_WIDTH_PX) -> np.ndarray:
    """The inner ``width``-pixel boundary of a 2-D mask (mask minus its erosion)."""
    eroded = mask
    for _ in range(width):
        eroded = _erode(eroded)
    return mask & ~eroded


def _panel_pixels(plane: np.ndarray, plane_labels: np.ndarray, aspect: float, low: float, high: float,
                  structures: Sequence[Structure]) -> np.ndarray:
    """One view as an RGB uint8 (rows, columns, 3) array at display size: greyscale plus contours."""
    size = _display_shape(plane.shape, aspect)
    grey = _resample(plane, size).astype(np.float32)
    grey = np.clip((grey - low) * (255.0 / (high - low)), 0.0, 255.0).astype(np.uint8)
    pixels = np.repeat(grey[:, :, None], 3, axis=2)
    shown = _resample(plane_labels, size)
    for structure in structures:
        mask = shown == structure.value
        if not mask.any():
            continue
        # Outline within the structure's bounding box: the erosion then costs its size, not the panel's.
        rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        box = slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)
        pixels[box][_outline(mask[box])] = tuple(int(c) for c in structure.color)
    return pixels


def _legend_entries(structures: Sequence[Structure], present: Sequence[int],
                    volumes_ml: Mapping[int, float] | None, quality: Mapping | None) -> list[tuple[str, RGB]]:
    """(text, colour) per structure: its volume, "not found", and its QA verdict when not plausible."""
    verdicts = {name: entry.get("verdict") for name, entry in
                (((quality or {}).get("plausibility") or {}).get("structures") or {}).items()}
    entries = []
    for structure in structures:
        volume = (volumes_ml or {}).get(structure.value)
        found = structure.value in present
        text = f"{structure.name}: {volume:.1f} ml" if (found and volume is not None) else (
            structure.name if found else f"{structure.name}: not found")
        if verdicts.get(structure.name) not in (None, "plausible"):
            text += f" ({verdicts[structure.name].upper()})"
        entries.append((text, tuple(int(c) for c in structure.color)))
    return entries  # type: ignore[return-value]


def _legend_rows(entries: Sequence[tuple[str, RGB]], width: int) -> list[list[tuple[str, RGB, int]]]:
    """Legend entries with their pixel widths, packed into centred rows no wider than ``width``."""
    font = _font(FONT_SIZES["legend"])
    rows: list[list[tuple[str, RGB, int]]] = [[]]
    used = 0
    for text, colour in entries:
        entry_width = SWATCH_PX[0] + SWATCH_TEXT_GAP_PX + int(np.ceil(font.getlength(text)))
        if rows[-1] and used + LEGEND_GAP_PX + entry_width > width:
            rows.append([])
            used = 0
        used += (LEGEND_GAP_PX if rows[-1] else 0) + entry_width
        rows[-1].append((text, colour, entry_width))
    return [row for row in rows if row]


def _draw_legend(draw: Any, rows: Sequence[Sequence[tuple[str, RGB, int]]], top: int) -> None:
    """Colour swatch (white edge) and white text per structure, each row centred under the panels."""
    font = _font(FONT_SIZES["legend"])
    swatch_width, swatch_height = SWATCH_PX
    for number, row in enumerate(rows):
        middle = top + number * LINE_HEIGHTS_PX["legend"] + LINE_HEIGHTS_PX["legend"] // 2
        x = (IMAGE_WIDTH_PX - sum(entry[2] for entry in row) - LEGEND_GAP_PX * (len(row) - 1)) // 2
        for text, colour, entry_width in row:
            swatch_top = middle - swatch_height // 2
            draw.rectangle((x, swatch_top, x + swatch_width - 1, swatch_top + swatch_height - 1),
                           fill=colour, outline=WHITE)
            text_left = x + swatch_width + SWATCH_TEXT_GAP_PX
            _text(draw, (text_left, middle), text, fill=WHITE, font=font, anchor="lm")
            x += entry_width + LEGEND_GAP_PX


def _bold_text(draw: Any, xy: tuple[int, int], text: str, fill: RGB | str, font: Any, anchor: str) -> None:
    """``text`` drawn twice one pixel apart: Pillow's bundled font has no bold face, and a stroke
    smudges glyphs this small."""
    for offset in (0, 1):
        _text(draw, (xy[0] + offset, xy[1]), text, fill=fill, font=font, anchor=anchor)


def _draw_directions(draw: Any, box: tuple[int, int, int, int], directions: tuple[str, ...]) -> None:
    """Yellow, emboldened patient-direction letters just inside the edges of ``box``
    (left, top, right, bottom pixels, inclusive)."""
    left, top, right, bottom = box
    top_letter, bottom_letter, left_letter, right_letter = directions
    middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
    font = _font(FONT_SIZES["direction"])
    _bold_text(draw, (middle_x, top + DIRECTION_INSET_PX), top_letter, YELLOW, font, "mt")
    _bold_text(draw, (middle_x, bottom - DIRECTION_INSET_PX), bottom_letter, YELLOW, font, "md")
    _bold_text(draw, (left + DIRECTION_INSET_PX, middle_y), left_letter, YELLOW, font, "lm")
    _bold_text(draw, (right - DIRECTION_INSET_PX - 1, middle_y), right_letter, YELLOW, font, "rm")


def _header_height(title: str, lines: Sequence[tuple[str, str]]) -> int:
    """Pixel rows the title and the verdict lines take at the top of the image."""
    return (HEADER_TOP_PX + (LINE_HEIGHTS_PX["title"] if title else 0)
            + len(lines) * LINE_HEIGHTS_PX["verdict"] + (HEADER_GAP_PX if lines else 0))


def _draw_header(draw: Any, title: str, lines: Sequence[tuple[str, str]]) -> None:
    """Title (white, centred) then the verdict lines (first one emboldened) in their colours,
    within :func:`_header_height`."""
    y = HEADER_TOP_PX
    if title:
        font = _font(FONT_SIZES["title"])
        _text(draw, (IMAGE_WIDTH_PX // 2, y + 2), title, fill=WHITE, font=font, anchor="mt")
        y += LINE_HEIGHTS_PX["title"]
    for number, (text, colour) in enumerate(lines):
        if number == 0:
            _bold_text(draw, (MARGIN_PX, y), text, colour, _font(FONT_SIZES["verdict"]), "la")
        else:
            _text(draw, (MARGIN_PX, y), text, fill=colour, font=_font(FONT_SIZES["reason"]), anchor="la")
        y += LINE_HEIGHTS_PX["verdict"]


def _compose(panels: Sequence[tuple[str, np.ndarray, tuple[str, ...]]], title: str,
             lines: Sequence[tuple[str, str]], entries: Sequence[tuple[str, RGB]]) -> Any:
    """The whole preview as a PIL RGB image on black: header, the three panels side by side
    (each centred in its :data:`PANEL_BOX_PX` box, titled above), legend at the bottom."""
    from PIL import Image, ImageDraw

    box_height, box_width = PANEL_BOX_PX
    legend = _legend_rows(entries, IMAGE_WIDTH_PX - 2 * MARGIN_PX)
    box_top = _header_height(title, lines) + LINE_HEIGHTS_PX["panel"]
    legend_top = box_top + box_height + LEGEND_TOP_PX
    height = legend_top + len(legend) * LINE_HEIGHTS_PX["legend"] + HEADER_TOP_PX
    canvas = np.zeros((height, IMAGE_WIDTH_PX, 3), np.uint8)
    gap = (IMAGE_WIDTH_PX - 2 * MARGIN_PX - len(panels) * box_width) // max(len(panels) - 1, 1)
    placed = []
    for number, (name, pixels, directions) in enumerate(panels):
        rows, columns = pixels.shape[:2]
        left = MARGIN_PX + number * (box_width + gap) + (box_width - columns) // 2
        top = box_top + (box_height - rows) // 2
        canvas[top:top + rows, left:left + columns] = pixels
        placed.append((name, (left, top, left + columns - 1, top + rows - 1), directions))
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    _draw_header(draw, title, lines)
    for name, box, directions in placed:
        _text(draw, ((box[0] + box[2]) // 2, box[1] - 3), name, fill=WHITE, font=_font(FONT_SIZES["panel"]),
                  anchor="md")
        _draw_directions(draw, box, directions)
    _draw_legend(draw, legend, legend_top)
    return picture


def write_preview(path: str | Path, image: Volume, labels: Volume, structures: Sequence[Structure],
                  volumes_ml: Mapping[int, float] | None = None, title: str = "",
                  quality: Mapping | None = None) -> Path:
    """Render the three views of ``image`` with ``labels`` contours to a PNG, atomically.

    Args:
        path: output .png.
        image: the input image (HU or MR intensities), any orientation; array (z, y, x).
        labels: label map on the same grid.
        structures: structures to draw (colour, TG-263 name).
        volumes_ml: volume per label value for the legend.
        title: image title (model id, ...).
        quality: report.json's ``qa`` section (verdict, reasons, per-structure verdicts, slices).
    """
    voxels, spacing = oriented_to_lps(image)
    label_array, _ = oriented_to_lps(labels)
    # Every structure lies in the box of non-zero labels, a small part of the volume.
    box = _label_box(label_array)
    inside = label_array[box] if box is not None else label_array[:0]
    present = [s.value for s in structures if np.any(inside == s.value)]
    centre = _centre(label_array, present, box)
    worst_slice = _worst_flagged_slice(quality)
    if worst_slice is not None:
        centre = (_oriented_axial_index(labels, worst_slice, centre), centre[1], centre[2])
    low, high = _display_range(voxels, image.modality)
    views = _views(voxels, label_array, centre, spacing)
    panels = [(name, _panel_pixels(plane, plane_labels, aspect, low, high, structures), directions)
              for name, plane, plane_labels, aspect, directions in views]
    entries = _legend_entries(structures, present, volumes_ml, quality)
    picture = _compose(panels, title, verdict_lines(quality), entries)
    path = Path(path)
    with atomic_path(path, suffix=".png") as temporary:
        picture.save(temporary, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return path
