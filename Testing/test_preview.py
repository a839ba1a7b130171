"""preview.png (CervixAutoSegLib.preview): radiological orientation of the three panels, their physical
aspect ratio, contours in each structure's colour, the legend and QA verdict, no matplotlib, atomic writes.

The renderer is checked on the pixels of the PNG it writes.  The CTs here are uniform soft tissue
(40 HU) over the whole grid, so every panel is a rectangle of one exact grey (``TISSUE_GREY``) on the
black background: a panel's extent is where that grey is, and contour pixels have a structure's exact
colour (colours chosen to appear nowhere else: not grey, white, yellow or a verdict colour).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from CervixAutoSegLib.preview import CT_DISPLAY_WINDOW_HU, VERDICT_COLOURS, _legend_entries, write_preview
from CervixAutoSegLib.structures import ANATOMICAL_STRUCTURE, CTV, ORGAN, URINARY_BLADDER, Structure
from CervixAutoSegLib.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
TISSUE_HU = 40
TISSUE_GREY = int((TISSUE_HU - CT_DISPLAY_WINDOW_HU[0]) * 255.0 / (CT_DISPLAY_WINDOW_HU[1] - CT_DISPLAY_WINDOW_HU[0]))
MIN_RUN = 20
"""Pixels of tissue grey a row/column of a panel has at least (anti-aliased text never has that many)."""
ALPHA = Structure(1, "Alpha", "alpha", (0, 200, 255), ORGAN, ANATOMICAL_STRUCTURE, URINARY_BLADDER)
BETA = Structure(2, "Beta", "beta", (200, 0, 255), CTV, ANATOMICAL_STRUCTURE, URINARY_BLADDER)
GAMMA = Structure(3, "Gamma", "gamma", (0, 255, 120), ORGAN, ANATOMICAL_STRUCTURE, URINARY_BLADDER)
DIRECTIONS = {  # columns (i), rows (j), slices (k) as LPS unit vectors
    "HFS": np.eye(3),
    "FFS": np.array([[-1.0, 0, 0], [0, 1, 0], [0, 0, -1]]),
    "HFP": np.array([[-1.0, 0, 0], [0, -1, 0], [0, 0, 1]]),
}
PANELS = ("axial", "coronal", "sagittal")


def uniform_ct(position: str = "HFS", shape: tuple[int, int, int] = (20, 96, 128),
               spacing: tuple[float, float, float] = (1.0, 1.0, 2.5)) -> tuple[Volume, np.ndarray]:
    """A uniform-tissue CT (array (z, y, x)) centred on LPS (0, 0, 0), and every voxel's LPS position."""
    direction = DIRECTIONS[position]
    middle = (np.array(shape[::-1], dtype=float) - 1) / 2 * spacing
    volume = Volume(np.full(shape, TISSUE_HU, np.int16), spacing, -direction @ middle, direction, modality="CT")
    k, j, i = np.indices(shape)
    return volume, volume.index_to_physical(np.stack([i, j, k], axis=-1).astype(float))


def ball(lps: np.ndarray, centre_mm: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    return np.linalg.norm(lps - np.asarray(centre_mm), axis=-1) <= radius_mm


def render(tmp_path: Path, image: Volume, labels: np.ndarray, structures=(ALPHA, BETA, GAMMA), **kwargs) -> np.ndarray:
    """write_preview's PNG as an (rows, columns, 3) uint8 array."""
    label_volume = image.with_array(labels.astype(np.uint8))
    path = write_preview(tmp_path / "preview.png", image, label_volume, structures, **kwargs)
    with Image.open(path) as png:
        assert png.format == "PNG"
        return np.asarray(png.convert("RGB"))


def panel_boxes(pixels: np.ndarray) -> dict[str, tuple[int, int, int, int]]:
    """(top, bottom, left, right) inclusive of the tissue-grey rectangle in each third of the image."""
    grey = np.all(pixels == TISSUE_GREY, axis=-1)
    third = pixels.shape[1] // 3
    boxes = {}
    for number, name in enumerate(PANELS):
        part = grey[:, number * third:(number + 1) * third]
        rows = np.flatnonzero(part.sum(axis=1) >= MIN_RUN)
        columns = np.flatnonzero(part.sum(axis=0) >= MIN_RUN)
        assert rows.size and columns.size, f"no {name} panel found"
        boxes[name] = (rows[0], rows[-1], number * third + columns[0], number * third + columns[-1])
    return boxes


def colour_pixels(pixels: np.ndarray, colour, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) relative to ``box`` of the pixels of exactly ``colour`` inside it."""
    top, bottom, left, right = box
    return np.nonzero(np.all(pixels[top:bottom + 1, left:right + 1] == colour, axis=-1))


def hex_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


# ------------------------------------------------------------------ orientation and aspect
@pytest.mark.parametrize("position", DIRECTIONS)
def test_a_left_posterior_superior_structure_is_shown_in_radiological_layout(tmp_path, position):
    image, lps = uniform_ct(position)
    labels = ball(lps, (30.0, 20.0, 12.0), 8.0)  # patient left, posterior, superior of the centre
    pixels = render(tmp_path, image, labels, structures=(ALPHA,))
    boxes = panel_boxes(pixels)
    placement = {}
    for name, box in boxes.items():
        rows, columns = colour_pixels(pixels, ALPHA.color, box)
        assert rows.size > 10, f"no contour in the {name} panel"
        height, width = box[1] - box[0] + 1, box[3] - box[2] + 1
        placement[name] = (rows.mean() / height, columns.mean() / width)
    # Axial from the feet: patient left on the image's right, posterior at the bottom.
    assert placement["axial"][1] > 0.6 and placement["axial"][0] > 0.6
    # Coronal from the front: left on the right, superior on top.
    assert placement["coronal"][1] > 0.6 and placement["coronal"][0] < 0.4
    # Sagittal from the patient's left: anterior on the left (so posterior right), superior on top.
    assert placement["sagittal"][1] > 0.6 and placement["sagittal"][0] < 0.4


def test_an_anisotropic_grid_is_drawn_with_its_physical_aspect_ratio(tmp_path):
    spacing = (0.5, 0.5, 5.0)
    shape = (20, 64, 80)  # 100 mm superior-inferior, 32 mm anterior-posterior, 40 mm right-left
    image, lps = uniform_ct(shape=shape, spacing=spacing)
    pixels = render(tmp_path, image, ball(lps, (0.0, 0.0, 0.0), 5.0), structures=(ALPHA,))
    extent_mm = {"axial": (32.0, 40.0), "coronal": (100.0, 40.0), "sagittal": (100.0, 32.0)}
    for name, (top, bottom, left, right) in panel_boxes(pixels).items():
        height, width = bottom - top + 1, right - left + 1
        expected = extent_mm[name][0] / extent_mm[name][1]
        assert height / width == pytest.approx(expected, rel=0.03), name
        assert max(height, width) >= 400, f"the {name} panel is not fitted to its box"


# ------------------------------------------------------------------ contours, legend, verdict
def test_every_present_structure_is_contoured_and_an_absent_one_only_in_the_legend(tmp_path):
    image, lps = uniform_ct()
    # Overlapping, so that the cuts through their common centroid meet both.
    labels = np.where(ball(lps, (-8.0, 0.0, 0.0), 10.0), ALPHA.value, 0)
    labels = np.where(ball(lps, (5.0, 5.0, 0.0), 9.0), BETA.value, labels)
    pixels = render(tmp_path, image, labels, volumes_ml={1: 4.2, 2: 3.1}, title="model v1")
    boxes = panel_boxes(pixels)
    for structure in (ALPHA, BETA):
        for name, box in boxes.items():
            assert colour_pixels(pixels, structure.color, box)[0].size > 10, (structure.name, name)
    assert all(colour_pixels(pixels, GAMMA.color, box)[0].size == 0 for box in boxes.values())
    panels_bottom = max(box[1] for box in boxes.values())
    legend = pixels[panels_bottom + 1:]
    for structure in (ALPHA, BETA, GAMMA):  # each legend entry has its swatch, the absent one too
        assert np.count_nonzero(np.all(legend == structure.color, axis=-1)) >= 50, structure.name
    texts = [text for text, _ in _legend_entries((ALPHA, BETA, GAMMA), [1, 2], {1: 4.2, 2: 3.1}, None)]
    assert texts == ["Alpha: 4.2 ml", "Beta: 3.1 ml", "Gamma: not found"]


def test_the_legend_carries_each_structures_qa_verdict():
    quality = {"verdict": "implausible", "plausibility": {"structures": {
        "Alpha": {"verdict": "implausible"}, "Beta": {"verdict": "check"}, "Gamma": {"verdict": "plausible"}}}}
    entries = _legend_entries((ALPHA, BETA, GAMMA), [1, 2, 3], {1: 4.2, 2: 3.1, 3: 1.0}, quality)
    assert entries == [("Alpha: 4.2 ml (IMPLAUSIBLE)", ALPHA.color), ("Beta: 3.1 ml (CHECK)", BETA.color),
                       ("Gamma: 1.0 ml", GAMMA.color)]
    assert _legend_entries((ALPHA,), [1], None, None) == [("Alpha", ALPHA.color)]


def test_an_implausible_verdict_is_written_in_red_above_the_panels(tmp_path):
    image, lps = uniform_ct()
    labels = ball(lps, (0.0, 0.0, 0.0), 10.0)
    red = hex_rgb(VERDICT_COLOURS["implausible"])
    plain = render(tmp_path, image, labels, title="model v1")
    assert not np.any(np.all(plain == red, axis=-1))
    quality = {"verdict": "implausible", "reasons": ["Alpha volume 900 ml above its range", "b", "c", "d"],
               "plausibility": {"structures": {"Alpha": {"verdict": "implausible"}}}}
    pixels = render(tmp_path, image, labels, title="model v1", quality=quality)
    rows, _ = np.nonzero(np.all(pixels == red, axis=-1))
    assert rows.size >= 50
    assert rows.max() < min(box[0] for box in panel_boxes(pixels).values())
    assert pixels.shape[0] > plain.shape[0]  # the verdict lines take room of their own


def test_a_not_plausible_result_is_cut_through_its_worst_flagged_slice(tmp_path):
    image, lps = uniform_ct()
    labels = np.where(ball(lps, (0.0, 0.0, -15.0), 6.0), ALPHA.value, 0)  # inferior: not at the centroid
    labels = np.where(ball(lps, (0.0, 0.0, 5.0), 12.0), BETA.value, labels)
    inferior_slice = int(np.argmin(np.abs(lps[:, 0, 0, 2] + 15.0)))
    axial_colours = {}
    for verdict in ("plausible", "check"):
        quality = {"verdict": verdict, "slices": [
            {"slice": inferior_slice, "score": 0.9, "flagged": True}, {"slice": 0, "score": 0.1, "flagged": True}]}
        pixels = render(tmp_path, image, labels, quality=quality)
        box = panel_boxes(pixels)["axial"]
        axial_colours[verdict] = {s.name for s in (ALPHA, BETA) if colour_pixels(pixels, s.color, box)[0].size}
    assert axial_colours == {"plausible": {"Beta"}, "check": {"Alpha"}}


# ------------------------------------------------------------------ no matplotlib, atomic output
def test_rendering_does_not_import_matplotlib(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import CervixAutoSegLib.preview as preview
        from CervixAutoSegLib.structures import ANATOMICAL_STRUCTURE, ORGAN, URINARY_BLADDER, Structure
        from CervixAutoSegLib.volume import Volume

        image = Volume(np.zeros((8, 32, 32), np.int16), (1.0, 1.0, 3.0), (0, 0, 0), np.eye(3), modality="CT")
        labels = np.zeros((8, 32, 32), np.uint8)
        labels[2:6, 8:20, 10:24] = 1
        structures = [Structure(1, "Alpha", "alpha", (0, 200, 255), ORGAN, ANATOMICAL_STRUCTURE, URINARY_BLADDER)]
        preview.write_preview({str(tmp_path / "preview.png")!r}, image, image.with_array(labels), structures,
                              {{1: 2.0}}, title="t", quality={{"verdict": "check", "reasons": ["r"]}})
        print("matplotlib" in sys.modules)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert (tmp_path / "preview.png").stat().st_size > 0


def test_writing_over_an_existing_preview_is_atomic(tmp_path, monkeypatch):
    image, lps = uniform_ct()
    labels = ball(lps, (0.0, 0.0, 0.0), 10.0)
    render(tmp_path, image, labels, title="first")
    first = (tmp_path / "preview.png").read_bytes()
    render(tmp_path, image, labels, title="second, longer title")
    second = (tmp_path / "preview.png").read_bytes()
    assert second != first and sorted(p.name for p in tmp_path.iterdir()) == ["preview.png"]

    def failing_save(self, *args, **kwargs):
        with open(args[0], "wb") as stream:  # half a file in the temporary, then the failure
            stream.write(b"\x89PNG")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        render(tmp_path, image, labels, title="third")
    assert (tmp_path / "preview.png").read_bytes() == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview.png"]


def test_texts_are_spelled_in_glyphs_the_bundled_font_has():
    """The bundled font has ASCII and a few signs: anything else would print as an empty box."""
    from PIL import ImageFont

    from CervixAutoSegLib.preview import drawable

    assert drawable("ct-resaunet-phantom v1 — NOT FOR CLINICAL USE") == "ct-resaunet-phantom v1 - NOT FOR CLINICAL USE"
    assert drawable("Müller: GTVp ≥ 5 ml × 2 → check, ± 2°") == "Muller: GTVp >= 5 ml x 2 -> check, ± 2°"
    assert drawable("患者") == "??"
    assert drawable("model\nv1\t0.2") == "model v1 0.2"  # Pillow refuses anchored multi-line text
    font = ImageFont.load_default(size=14)
    missing = font.getbbox("\u2014")  # what the font draws for a character it lacks
    for character in set(drawable("—–≥≤×→µ²³ ± ° é ü ß")):
        assert character == " " or font.getbbox(character) != missing, repr(character)
