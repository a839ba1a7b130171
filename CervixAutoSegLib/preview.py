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
worst flagged slice when the result is not plausible (where a reviewer should look first).  The volume is brought to that layout by
axis permutation and flips only (no interpolation); for an oblique or gantry-tilted
grid the views are the nearest axis-aligned planes (a preview, not a measurement).
matplotlib is used with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .structures import Structure
from .volume import Volume

CT_DISPLAY_WINDOW_HU = (-160.0, 240.0)
"""Soft-tissue window W400/L40 for CT panels."""
MR_DISPLAY_PERCENTILES = (1.0, 99.0)
FIGURE_SIZE_IN = (15.0, 6.0)
FIGURE_DPI = 100
CONTOUR_WIDTH = 1.4
VERDICT_COLOURS = {"plausible": "#4caf50", "check": "#ffb300", "implausible": "#ff1744"}
PREVIEW_REASONS = 3
"""Reasons written on the image (all of them are in report.json)."""


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
    if modality.upper() == "CT":
        return CT_DISPLAY_WINDOW_HU
    low, high = np.percentile(image, MR_DISPLAY_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def _centre(labels: np.ndarray, values: Sequence[int]) -> tuple[int, int, int]:
    """(z, y, x) index of the centroid of all structure voxels (volume centre if none)."""
    mask = np.isin(labels, list(values)) if values else labels > 0
    if not mask.any():
        return tuple(int(n // 2) for n in labels.shape)  # type: ignore[return-value]
    return tuple(round(float(np.mean(axis))) for axis in np.nonzero(mask))  # type: ignore[return-value]


def _views(image: np.ndarray, labels: np.ndarray, centre: tuple[int, int, int],
           spacing: tuple[float, float, float]) -> list[tuple[str, np.ndarray, np.ndarray, float, tuple[str, ...]]]:
    """(title, image 2D, labels 2D, aspect, (top, bottom, left, right)) in radiological layout.

    Input arrays are LPS-oriented (z→S, y→P, x→L): rows of the axial slice already run
    A→P and columns R→L; coronal and sagittal need z reversed so that S is on top.
    """
    kz, jy, ix = centre
    sx, sy, sz = spacing
    return [
        ("Axial", image[kz], labels[kz], sy / sx, ("A", "P", "R", "L")),
        ("Coronal", image[::-1, jy, :], labels[::-1, jy, :], sz / sx, ("S", "I", "R", "L")),
        ("Sagittal", image[::-1, :, ix], labels[::-1, :, ix], sz / sy, ("S", "I", "A", "P")),
    ]


def _label_edges(axes, shape: tuple[int, int], directions: tuple[str, ...]) -> None:
    """Patient-direction letters just inside the image edges (data coordinates, so they hug the image)."""
    top, bottom, left, right = directions
    rows, columns = shape
    style = {"color": "yellow", "fontsize": 12, "fontweight": "bold"}
    middle_x, middle_y = (columns - 1) / 2.0, (rows - 1) / 2.0
    axes.text(middle_x, -0.5, top, ha="center", va="top", **style)
    axes.text(middle_x, rows - 0.5, bottom, ha="center", va="bottom", **style)
    axes.text(-0.5, middle_y, left, ha="left", va="center", **style)
    axes.text(columns - 0.5, middle_y, right, ha="right", va="center", **style)


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


def write_preview(path: str | Path, image: Volume, labels: Volume, structures: Sequence[Structure],
                  volumes_ml: Mapping[int, float] | None = None, title: str = "",
                  quality: Mapping | None = None) -> Path:
    """Render the three views of ``image`` with ``labels`` contours to a PNG, atomically.

    Args:
        path: output .png.
        image: the input image (HU or MR intensities), any orientation.
        labels: label map on the same grid.
        structures: structures to draw (colour, TG-263 name).
        volumes_ml: volume per label value for the legend.
        title: figure title (model id, ...).
        quality: report.json's ``qa`` section (verdict, reasons, per-structure verdicts, slices).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    voxels, spacing = oriented_to_lps(image)
    label_array, _ = oriented_to_lps(labels)
    present = [s.value for s in structures if np.any(label_array == s.value)]
    centre = _centre(label_array, present)
    worst_slice = _worst_flagged_slice(quality)
    if worst_slice is not None:
        centre = (_oriented_axial_index(labels, worst_slice, centre), centre[1], centre[2])
    low, high = _display_range(voxels, image.modality)

    figure = Figure(figsize=FIGURE_SIZE_IN, dpi=FIGURE_DPI, facecolor="black")
    panels = figure.subplots(1, 3)
    for axes, (name, plane, plane_labels, aspect, directions) in zip(panels, _views(voxels, label_array, centre, spacing)):
        axes.imshow(plane, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        for structure in structures:
            mask = plane_labels == structure.value
            if mask.any() and mask.shape[0] > 1 and mask.shape[1] > 1:
                axes.contour(mask.astype(np.float32), levels=[0.5], colors=[structure.color_float],
                             linewidths=CONTOUR_WIDTH)
        axes.set_title(name, color="white")
        axes.set_axis_off()
        _label_edges(axes, plane.shape, directions)
    verdicts = {name: entry.get("verdict") for name, entry in
                (((quality or {}).get("plausibility") or {}).get("structures") or {}).items()}
    handles = []
    for structure in structures:
        volume = (volumes_ml or {}).get(structure.value)
        found = structure.value in present
        text = f"{structure.name}: {volume:.1f} ml" if (found and volume is not None) else (
            structure.name if found else f"{structure.name}: not found")
        if verdicts.get(structure.name) not in (None, "plausible"):
            text += f" ({verdicts[structure.name].upper()})"
        handles.append(Patch(facecolor=structure.color_float, edgecolor="white", label=text))
    figure.legend(handles=handles, loc="lower center", ncol=max(len(handles), 1), frameon=False,
                  labelcolor="white", fontsize=11)
    if title:
        figure.suptitle(title, color="white", fontsize=12)
    lines = verdict_lines(quality)
    for row, (text, colour) in enumerate(lines):
        figure.text(0.01, 0.925 - row * 0.035, text, color=colour, fontsize=10 if row else 11,
                    fontweight="normal" if row else "bold", ha="left", va="top")
    top = 0.9 - 0.035 * len(lines) if lines else 0.9
    figure.subplots_adjust(left=0.01, right=0.99, top=top, bottom=0.1, wspace=0.03)
    path = Path(path)
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, format="png", facecolor=figure.get_facecolor())
    return path
