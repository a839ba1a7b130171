"""The synthetic female pelvis in continuous patient coordinates.

The anatomy frame is patient LPS mm (x: right → left, y: anterior → posterior,
z: inferior → superior) with its origin midway between the femoral-head centres; a
per-case pose (small rotation, shift and scale, :attr:`Anatomy.pose`) places it in the
scanner's LPS frame.  Everything is an analytic shape (:mod:`.shapes`), so the same
patient can be rasterised onto any grid (:mod:`.raster`).

Two kinds of things make the patient:

* :class:`Part` — visible tissue, painted in order (later parts cover earlier ones),
  each with layers: ``(depth_mm, tissue)`` paints ``tissue`` where the part's signed
  distance is below ``-depth_mm`` (e.g. bladder wall, then urine 3 mm inside).
* :class:`Region` — what a radiation oncologist contours.  Inside the union of its
  shapes *and* on one of its allowed tissues.  CTV margins are invisible, but they are
  defined from visible anatomy (vessels + 7 mm, trimmed off bone, muscle, bowel), as in
  the consensus guidelines (CTV-N: Small et al. 2008, Lim et al. 2011), so a network can
  learn them.

All random choices are drawn up front into a flat JSON-able ``params`` dict
(:func:`draw_anatomy_params`); :func:`build_anatomy` is a pure function of it.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Mapping, Sequence

import numpy as np

from .shapes import (Capsule, Clipped, Column, Ellipsoid, Intersection, Offset, Shape, rotation_from_axes,
                     rotation_xyz, tube)


class Tissue(enum.IntEnum):
    """Tissue classes of the tissue map (uint8); each modality gives each an intensity."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    CORTEX = 3
    MARROW = 4
    DISC = 5
    CSF = 6
    ARTERY = 7
    VEIN = 8
    LYMPH_NODE = 9
    BLADDER_WALL = 10
    URINE = 11
    RECTAL_WALL = 12
    FAECES = 13
    GAS = 14
    BOWEL_WALL = 15
    BOWEL_FLUID = 16
    MYOMETRIUM = 17
    ENDOMETRIUM = 18
    CERVICAL_STROMA = 19
    VAGINA = 20
    TUMOUR = 21
    TABLE_SHELL = 22
    TABLE_FOAM = 23
    BOWEL_CONTRAST = 24


BONE = (Tissue.CORTEX, Tissue.MARROW, Tissue.DISC)
BOWEL = (Tissue.BOWEL_WALL, Tissue.BOWEL_FLUID, Tissue.BOWEL_CONTRAST, Tissue.GAS, Tissue.FAECES)
GYNAECOLOGICAL = (Tissue.MYOMETRIUM, Tissue.ENDOMETRIUM, Tissue.CERVICAL_STROMA, Tissue.VAGINA, Tissue.TUMOUR)
NOT_PATIENT = (Tissue.AIR, Tissue.TABLE_SHELL, Tissue.TABLE_FOAM)

NODAL_MARGIN_MM = 7.0
"""Loose connective tissue drawn around the pelvic vessels (Small et al. 2008)."""
VESSEL_GAP_MM = 1.0
"""Fat between the iliac vessels and the psoas along whose medial border they run."""
OBTURATOR_RADIUS_MM, OBTURATOR_TUCK_MM = 9.0, 2.0
"""The obturator nodal strip (an 18 mm wide tube) reaches this far into the side-wall
muscle, so that its fat part always lies against the muscle (trimmed off it)."""
FACE_STEP_MM = 0.5
WALL_MM = {"bladder": 3.0, "rectum": 3.0, "bowel": 2.5}
"""Wall thickness of hollow organs; contents start this deep inside the outer surface."""
CORTEX_MM = 2.0
"""Cortical shell thickness of bones; marrow inside."""
ANATOMY_STREAM = 1
"""Spawn key of the anatomy's random stream under a phantom seed (see ``phantom.__init__``)."""
MAX_LIFT_STEPS, LIFT_STEP_MM = 15, 3.0
"""How far (at most 45 mm) a full bladder may displace the uterine corpus."""
SUPINE_POSITIONS = ("HFS", "FFS")
PRONE_POSITIONS = ("HFP", "FFP")


@dataclasses.dataclass(frozen=True)
class Part:
    """Visible tissue: the union of ``shapes`` painted with ``layers`` [(depth mm, tissue)]."""

    name: str
    shapes: tuple[Shape, ...]
    layers: tuple[tuple[float, Tissue], ...]
    modalities: tuple[str, ...] = ("CT", "MR")


@dataclasses.dataclass(frozen=True)
class Region:
    """A contoured structure: inside the union of ``shapes`` and on ``tissues``."""

    name: str
    shapes: tuple[Shape, ...]
    tissues: tuple[Tissue, ...]


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """One synthetic patient.

    Attributes:
        parts: painted in order.
        regions: structure name → Region ("bladder", "rectum", "ctv_n", "ctv_uv",
            "mr_organ", "tumour").
        pose: 4x4 affine anatomy mm → scanner LPS mm (rotation, scale, shift).
        params: the JSON-able random draws the patient was built from.
        landmarks: named anatomy-frame points/levels (mm), e.g. "bifurcation_z".
    """

    parts: tuple[Part, ...]
    regions: Mapping[str, Region]
    pose: np.ndarray
    params: Mapping
    landmarks: Mapping[str, float]

    @property
    def patient_position(self) -> str:
        return str(self.params["patient_position"])

    def to_lps(self, points: np.ndarray) -> np.ndarray:
        """Anatomy-frame points (..., 3) → scanner LPS mm (..., 3)."""
        points = np.asarray(points, float)
        return points @ self.pose[:3, :3].T + self.pose[:3, 3]


# --------------------------------------------------------------------------- draws
def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def draw_anatomy_params(rng: np.random.Generator) -> dict:
    """Every random choice of one patient, as a flat JSON-able dict (mm, degrees, ml)."""
    position = str(rng.choice(["HFS", "FFS", "HFP"], p=[0.75, 0.15, 0.10]))
    version = _uniform(rng, 20, 75) if rng.random() < 0.8 else _uniform(rng, -35, 0)
    n_foci = 2 if rng.random() < 0.2 else 1
    return {
        "patient_position": position,
        "pose_rotation_deg": [_uniform(rng, -4, 4) for _ in range(3)],
        "pose_shift_mm": [_uniform(rng, -12, 12), _uniform(rng, -10, 10), _uniform(rng, -15, 15)],
        "pose_scale": [_uniform(rng, 0.93, 1.07), _uniform(rng, 0.93, 1.07), _uniform(rng, 0.95, 1.05)],
        "fat_mm": _uniform(rng, 8, 45),
        "body_exponent": _uniform(rng, 2.1, 2.9),
        "femoral_head_x_mm": _uniform(rng, 80, 94),
        "femoral_head_radius_mm": _uniform(rng, 20, 25),
        "bifurcation_z_mm": _uniform(rng, 140, 170),
        "common_iliac_end_z_mm": _uniform(rng, 90, 108),
        "aorta_radius_mm": _uniform(rng, 7, 10),
        "bladder_volume_ml": float(np.exp(rng.uniform(np.log(70), np.log(520)))),
        "bladder_aspect": [_uniform(rng, 1.0, 1.3), _uniform(rng, 0.7, 0.9), _uniform(rng, 0.85, 1.15)],
        "bladder_lobes": [[*rng.normal(size=3).tolist(), _uniform(rng, -0.12, 0.12)] for _ in range(3)],
        "cervix_length_mm": _uniform(rng, 25, 38),
        "cervix_radius_mm": _uniform(rng, 11, 16),
        "cervix_x_mm": _uniform(rng, -8, 8),
        "version_deg": version,
        "flexion_deg": _uniform(rng, -15, 35),
        "uterus_lateral_tilt_deg": _uniform(rng, -15, 15),
        "corpus_radii_mm": [_uniform(rng, 22, 32), _uniform(rng, 14, 22), _uniform(rng, 28, 42)],
        "vagina_length_mm": _uniform(rng, 60, 85),
        "tumour_foci": n_foci,
        "tumour_radius_mm": _uniform(rng, 8, 24),
        "tumour_offset": [_uniform(rng, -0.4, 0.4) for _ in range(3)],
        "tumour_into_uterus": bool(rng.random() < 0.3),
        "rectum_radius_mm": _uniform(rng, 9, 16),
        "rectum_gas_bubbles": int(rng.integers(0, 5)),
        "bowel_loops": int(rng.integers(5, 11)),
        "bowel_oral_contrast": bool(rng.random() < 0.25),
        "lymph_nodes_per_side": int(rng.integers(2, 6)),
        "table": bool(rng.random() < 0.8),
        "detail_seed": int(rng.integers(0, 2**31 - 1)),
    }


# --------------------------------------------------------------------------- helpers
def _mirror(point: Sequence[float], side: int) -> tuple[float, float, float]:
    """``point`` given for the left side (+x) moved to ``side`` (+1 left, -1 right)."""
    return (side * point[0], point[1], point[2])


def _bilateral_tube(points: Sequence[Sequence[float]], radii, side: int) -> list[Capsule]:
    return tube([_mirror(p, side) for p in points], radii)


def _sphere(center: Sequence[float], radius: float) -> Ellipsoid:
    return Ellipsoid(tuple(center), (radius, radius, radius))


def _rotate(vector: np.ndarray, axis: Sequence[float], degrees: float) -> np.ndarray:
    """Rodrigues rotation of ``vector`` about unit ``axis``."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    return (vector * np.cos(angle) + np.cross(axis, vector) * np.sin(angle)
            + axis * np.dot(axis, vector) * (1 - np.cos(angle)))


def _union_distance(shapes: Sequence[Shape], points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float32)
    distances = [s.distance(points[..., 0], points[..., 1], points[..., 2]) for s in shapes]
    return np.min(distances, axis=0)


def _medial_face_x(shapes: Sequence[Shape], y: float, z: float, stop: float = 140.0) -> float | None:
    """x (mm, left side) where the union of ``shapes`` begins, walking out from the
    midline along the line (y, z) (past any shape the midline itself is in, such as a
    vertebra); None if it never does before ``stop``."""
    xs = np.arange(0.0, stop, FACE_STEP_MM)
    points = np.stack([xs, np.full_like(xs, y), np.full_like(xs, z)], axis=1)
    inside = _union_distance(shapes, points) < 0
    clear = int(np.argmin(inside))  # first point outside
    entries = np.flatnonzero(inside[clear:])
    return float(xs[clear + entries[0]]) if entries.size else None


Point = tuple[float, float, float]


def _against_wall(walls: Sequence[Shape], point: Sequence[float], radius: float,
                  gap: float = VESSEL_GAP_MM) -> Point:
    """``point`` (left side) moved along x so that a tube of ``radius`` lies ``gap`` mm
    medial to the first of ``walls`` met walking out from the midline; unchanged if
    there is no wall on that line."""
    face = _medial_face_x(walls, point[1], point[2])
    return (face - radius - gap if face is not None else point[0], point[1], point[2])


def _clear_of_wall(walls: Sequence[Shape], points: Sequence[Sequence[float]], radius: float) -> list[Point]:
    """``points`` of a tube of ``radius``; those that would put it into a wall moved medially."""
    moved = [_against_wall(walls, p, radius) for p in points]
    return [q if q[0] < p[0] else tuple(p) for p, q in zip(points, moved)]


def _path_clear_of_wall(walls: Sequence[Shape], start: Point, points: Sequence[Sequence[float]],
                        radius: float) -> list[Point]:
    """A tube's control points from ``start`` through ``points``, midpoints added so that
    the curve between them stays clear of the walls too."""
    nodes = [np.asarray(start, float)] + [np.asarray(p, float) for p in points]
    dense = [point for a, b in zip(nodes, nodes[1:]) for point in ((a + b) / 2, b)]
    return [start] + _clear_of_wall(walls, dense, radius)


def _pose(params: Mapping) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation_xyz(params["pose_rotation_deg"]) @ np.diag(params["pose_scale"])
    affine[:3, 3] = params["pose_shift_mm"]
    return affine


# --------------------------------------------------------------------------- builder
class _Builder:
    """Assembles one patient from ``params``; methods add parts and regions in paint order."""

    def __init__(self, params: Mapping):
        self.p = params
        self.rng = np.random.default_rng(int(params["detail_seed"]))
        self.parts: list[Part] = []
        self.regions: dict[str, Region] = {}
        self.landmarks: dict[str, float] = {}
        self.fh_x = float(params["femoral_head_x_mm"])
        self.fh_r = float(params["femoral_head_radius_mm"])
        self.bif_z = float(params["bifurcation_z_mm"])
        self.ci_z = float(params["common_iliac_end_z_mm"])
        supine = params["patient_position"] in SUPINE_POSITIONS
        # Gas rises away from the table: anterior (-y) when supine, posterior when prone.
        self.up = np.array([0.0, -1.0, 0.0]) if supine else np.array([0.0, 1.0, 0.0])

    def add(self, name: str, shapes: Sequence[Shape], *layers: tuple[float, Tissue],
            modalities: tuple[str, ...] = ("CT", "MR")) -> tuple[Shape, ...]:
        shapes = tuple(shapes)
        self.parts.append(Part(name, shapes, tuple(layers), modalities))
        return shapes

    # ------------------------------------------------------------------ body
    def body(self) -> None:
        fat, fh = float(self.p["fat_mm"]), self.fh_x
        knots = (-400.0, -120.0, -20.0, 60.0, 130.0, 400.0)
        half_width = [fh + 50 + 1.3 * fat, fh + 62 + 1.3 * fat, fh + 68 + 1.3 * fat, fh + 55 + 1.3 * fat,
                      125 + 1.3 * fat, 122 + 1.3 * fat]
        anterior = [-70 - fat, -72 - fat, -78 - fat, -92 - 1.2 * fat, -100 - 1.3 * fat, -100 - 1.3 * fat]
        posterior = [100 + fat, 112 + fat, 118 + fat, 112 + fat, 108 + fat, 105 + fat]
        self.body_shape = Column(knots, (0.0,) * len(knots),
                                 tuple((a + b) / 2 for a, b in zip(anterior, posterior)), tuple(half_width),
                                 tuple((b - a) / 2 for a, b in zip(anterior, posterior)),
                                 float(self.p["body_exponent"]))
        self.landmarks["posterior_skin_y"] = max(posterior)
        self.landmarks["anterior_skin_y"] = min(anterior)
        self.add("body", [self.body_shape], (0.0, Tissue.FAT))

    def table(self) -> None:
        if not self.p["table"]:
            return
        supine = self.p["patient_position"] in SUPINE_POSITIONS
        gap, thickness = 4.0, 45.0
        if supine:
            near = self.landmarks["posterior_skin_y"] + gap
            centre_y = near + thickness / 2
        else:
            near = self.landmarks["anterior_skin_y"] - gap
            centre_y = near - thickness / 2
        knots = (-600.0, 600.0)
        slab = Column(knots, (0.0, 0.0), (centre_y, centre_y), (230.0, 230.0), (thickness / 2,) * 2, 6.0)
        self.add("table", [slab], (0.0, Tissue.TABLE_SHELL), (2.5, Tissue.TABLE_FOAM), modalities=("CT",))

    # ------------------------------------------------------------------ muscles
    def muscles(self) -> None:
        fh, fat = self.fh_x, float(self.p["fat_mm"])
        shapes: list[Shape] = []
        for side in (1, -1):
            shapes += _bilateral_tube([(24, 45, 230), (30, 48, 170), (45, 42, 120), (60, 20, 65),
                                       (fh - 12, -22, 15), (fh - 5, -28, -40), (fh, -25, -120)],
                                      [11, 14, 19, 21, 19, 16, 15], side)  # psoas → iliopsoas
            wing = rotation_from_axes(_mirror((0.55, -0.83, 0.0), side), _mirror((0.0, 0.25, 1.0), side))
            shapes.append(Ellipsoid(_mirror((fh - 8, 20, 85), side), (55, 10, 38), wing))  # iliacus
            shapes.append(Ellipsoid(_mirror((fh - 5, 98, 10), side), (55, 24, 85),
                                    rotation_xyz((0, 0, side * 25))))  # gluteus maximus
            shapes.append(Ellipsoid(_mirror((fh + 32, 50, 75), side), (24, 42, 50)))  # gluteus medius
            # Obturator internus lines the side wall of the lesser pelvis up to near the brim.
            shapes.append(Ellipsoid(_mirror((fh - 30, 14, 15), side), (7, 26, 55)))
            shapes.append(Ellipsoid(_mirror((36, 100, 160), side), (22, 22, 110)))  # erector spinae
            shapes.append(Ellipsoid(_mirror((40, -93 - 1.1 * fat, 110), side), (38, 8, 95)))  # rectus abdominis
            shapes.append(Ellipsoid(_mirror((fh + 10, 0, -150), side), (62, 68, 95)))  # thigh muscles
            shapes.append(Ellipsoid(_mirror((30, 30, -75), side), (22, 40, 30)))  # adductors / perineum
        shapes.append(Ellipsoid((0, 48, -52), (42, 34, 6), rotation_xyz((-25, 0, 0))))  # levator ani
        self.muscle_shapes = self.add("muscles", shapes, (0.0, Tissue.MUSCLE))

    # ------------------------------------------------------------------ bones
    def bones(self) -> None:
        fh, r = self.fh_x, self.fh_r
        shapes: list[Shape] = []
        discs: list[Shape] = []
        canal: list[Shape] = []
        # Lumbar vertebrae L3-L5 (body, posterior arch) with discs between them.
        for level, (centre_z, centre_y) in enumerate([(205, 38), (172, 40), (139, 44)]):
            shapes.append(Ellipsoid((0, centre_y, centre_z), (25, 18, 13)))
            shapes.append(Ellipsoid((0, centre_y + 40, centre_z + 2), (22, 14, 12)))
            canal.append(Ellipsoid((0, centre_y + 27, centre_z), (9, 7, 20)))
            discs.append(Ellipsoid((0, centre_y + 1, centre_z - 16.5), (24, 17, 4.5)))
        self.landmarks["l5_z"] = 139.0
        # Sacrum S1-S5 and coccyx, curving posteriorly as it descends.
        sacrum_levels = [((0, 62, 110), (50, 20, 14)), ((0, 74, 86), (44, 16, 12)), ((0, 84, 64), (34, 13, 11)),
                         ((0, 90, 44), (24, 10, 10)), ((0, 92, 26), (15, 8, 9)), ((0, 88, 8), (9, 7, 9)),
                         ((0, 80, -10), (6, 6, 8))]
        for centre, radii in sacrum_levels:
            shapes.append(Ellipsoid(centre, radii, rotation_xyz((-20, 0, 0))))
        self.landmarks["s3_z"] = 64.0
        self.landmarks["coccyx_z"] = -10.0
        for side in (1, -1):
            shapes.append(_sphere(_mirror((fh, 0, 0), side), r))  # femoral head
            shapes += _bilateral_tube([(fh, 0, 0), (fh + 38, 8, -22), (fh + 42, 10, -70), (fh + 45, 12, -250)],
                                      [r * 0.7, 17, 14, 13], side)  # neck, trochanter, shaft
            shapes += _bilateral_tube([(fh - 5, 12, 8), (fh - 22, 22, -28), (58, 28, -58)], [18, 15, 16], side)  # ischium
            shapes += _bilateral_tube([(fh - 12, -10, 10), (fh - 40, -40, 0), (8, -56, -14)], [13, 10, 10], side)  # pubis
            shapes += _bilateral_tube([(8, -52, -30), (32, -25, -45), (52, 12, -58)], [9, 7, 9], side)  # inferior ramus
            shapes += _bilateral_tube([(fh - 2, 10, 10), (fh - 4, 35, 50), (fh - 18, 55, 80)], [24, 20, 16], side)  # ilium body
            wing = rotation_from_axes(_mirror((0.55, -0.83, 0.0), side), _mirror((0.0, 0.25, 1.0), side))
            shapes.append(Ellipsoid(_mirror((fh + 8, 30, 95), side), (62, 7, 42), wing))  # iliac wing
            shapes += _bilateral_tube([(46, 74, 100), (fh - 15, 60, 90)], [16, 16], side)  # sacroiliac joint
        self.landmarks["ischial_tuberosity_z"] = -58.0 - 16.0
        self.landmarks["femoral_head_top_z"] = r
        self.bone_shapes = self.add("bones", shapes, (0.0, Tissue.CORTEX), (CORTEX_MM, Tissue.MARROW))
        self.add("discs", discs, (0.0, Tissue.DISC))
        self.add("spinal canal", canal, (0.0, Tissue.CSF))

    # ------------------------------------------------------------------ vessels
    def vessels(self) -> None:
        """Aorta, IVC and iliac vessels, and the nodal CTV around them.

        The iliac vessels follow nominal courses, moved medially wherever these would
        enter the psoas or the side wall, so that the common and external iliac vessels
        run along the medial border of the psoas, as in the consensus atlas; the
        obturator nodal strip lies against the side-wall muscle.  Every part of the nodal
        CTV thus touches something visible (a vessel, a muscle or the sacrum).
        """
        bif, ci, fh = self.bif_z, self.ci_z, self.fh_x
        aorta_r = float(self.p["aorta_radius_mm"])
        self.nodal_shapes: list[Shape] = []
        arteries = tube([(9, 12, 260), (8, 14, bif + 40), (5, 16, bif)], aorta_r)
        veins = tube([(-22, 20, 260), (-18, 22, bif + 20), (-4, 26, bif - 12)], aorta_r * 1.15)
        top_of_heads = self.landmarks["femoral_head_top_z"]
        a_r, v_r = aorta_r * 0.6, aorta_r * 0.75
        external_a_r, external_v_r = a_r * 0.85, v_r * 0.9
        internal_a_r, internal_v_r = a_r * 0.65, v_r * 0.75
        walls = self.muscle_shapes + self.bone_shapes
        split_a, split_v = _clear_of_wall(walls, [(44, 28, ci), (42, 36, ci - 6)], max(a_r, v_r))
        common_a = [(5, 16, bif)] + _clear_of_wall(walls, [(25, 20, (bif + ci) / 2)], a_r) + [split_a]
        external_a = _path_clear_of_wall(walls, split_a, [(58, 18, 65), (fh - 12, -18, 18), (fh - 8, -32, -10)],
                                         external_a_r)
        internal_a = _path_clear_of_wall(walls, split_a, [(36, 48, 84), (50, 56, 62), (56, 58, 40)], internal_a_r)
        common_v = _clear_of_wall(walls, [(24, 32, (bif + ci) / 2 - 8)], v_r) + [split_v]
        external_v = _path_clear_of_wall(walls, split_v, [(56, 28, 60), (fh - 22, -10, 18), (fh - 20, -26, -10)],
                                         external_v_r)
        internal_v = _path_clear_of_wall(walls, split_v, [(34, 56, 80), (48, 64, 60), (54, 66, 40)], internal_v_r)
        obturator = [_against_wall(walls, p, OBTURATOR_RADIUS_MM, -OBTURATOR_TUCK_MM)
                     for p in ((fh - 46, 34, 70), (fh - 47, 20, 45), (fh - 46, 6, top_of_heads - 5))]
        for side in (1, -1):
            # The IVC is right of the midline: the left common vein crosses from it.
            common_vein = [(-4 * side, 26, bif - 12)] + common_v
            for points, radius, into in ((common_a, a_r, arteries), (external_a, external_a_r, arteries),
                                         (internal_a, internal_a_r, arteries), (common_vein, v_r, veins),
                                         (external_v, external_v_r, veins), (internal_v, internal_v_r, veins)):
                capsules = _bilateral_tube(points, radius, side)
                into.extend(capsules)
                self.nodal_shapes.extend(Offset(c, NODAL_MARGIN_MM) for c in capsules)
            # Obturator region: down the pelvic side wall, against its muscle, towards the obturator canal.
            self.nodal_shapes += _bilateral_tube(obturator, OBTURATOR_RADIUS_MM, side)
            # Lateral sacral (presacral) nodes in front of the sacral foramina, to S3.
            self.nodal_shapes += _bilateral_tube([(26, 40, ci), (26, 56, 85), (24, 66, self.landmarks["s3_z"])],
                                                 9.0, side)
        # The nodal CTV runs from the aortic bifurcation down to the top of the femoral heads.
        self.nodal_shapes = [Clipped(Clipped(s, (0, 0, bif), (0, 0, 1)), (0, 0, top_of_heads), (0, 0, -1))
                             for s in self.nodal_shapes]
        self.artery_shapes = self.add("arteries", arteries, (0.0, Tissue.ARTERY))
        self.vein_shapes = self.add("veins", veins, (0.0, Tissue.VEIN))
        self.landmarks["bifurcation_z"] = bif
        self.landmarks["common_iliac_end_z"] = ci

    def lymph_nodes(self) -> None:
        """A few small visible nodes inside the nodal regions (a visual cue for CTV-N)."""
        nodes: list[Shape] = []
        candidates = [c for c in self.nodal_shapes]
        for _ in range(2 * int(self.p["lymph_nodes_per_side"])):
            region = candidates[int(self.rng.integers(len(candidates)))]
            low, high = region.bounds()
            for _attempt in range(20):
                point = self.rng.uniform(low, high)
                if _union_distance([region], point[None])[0] < -4 and \
                        _union_distance(self.artery_shapes + self.vein_shapes + self.bone_shapes, point[None])[0] > 6:
                    nodes.append(Ellipsoid(tuple(point), tuple(self.rng.uniform(3, 6, size=3)),
                                           rotation_xyz(self.rng.uniform(-40, 40, size=3))))
                    break
        if nodes:
            self.add("lymph nodes", nodes, (0.0, Tissue.LYMPH_NODE))

    # ------------------------------------------------------------------ pelvic organs
    def bladder(self) -> None:
        volume_mm3 = float(self.p["bladder_volume_ml"]) * 1000.0
        aspect = np.asarray(self.p["bladder_aspect"], float)
        base = (3 * volume_mm3 / (4 * np.pi * np.prod(aspect))) ** (1 / 3)
        radii = base * aspect
        centre = np.array([self.p["cervix_x_mm"] * 0.3, -44 + radii[1], -22 + radii[2]])
        lobes = np.asarray(self.p["bladder_lobes"], float)
        lobes[:, :3] /= np.linalg.norm(lobes[:, :3], axis=1, keepdims=True) + 1e-9
        self.bladder_shape = Ellipsoid(tuple(centre), tuple(radii), np.eye(3), lobes)
        self.landmarks["bladder_posterior_y"] = float(centre[1] + radii[1])

    def uterus(self) -> None:
        p = self.p
        cervix_r, cervix_len = float(p["cervix_radius_mm"]), float(p["cervix_length_mm"])
        # External os behind the bladder base, in front of the rectum.
        external_os = np.array([p["cervix_x_mm"], 36.0, -14.0])
        # Rotating +z about +x by a positive angle tips it anteriorly (towards -y): anteversion.
        axis_c = _rotate(np.array([0.0, 0.0, 1.0]), (1, 0, 0), float(p["version_deg"]) * 0.5)
        axis_c = _rotate(axis_c, (0, 1, 0), float(p["uterus_lateral_tilt_deg"]))
        internal_os = external_os + axis_c * cervix_len
        axis_u = _rotate(axis_c, (1, 0, 0), float(p["version_deg"]) * 0.5 + float(p["flexion_deg"]))
        radii = np.asarray(p["corpus_radii_mm"], float)
        centre = internal_os + axis_u * (radii[2] - 6)
        # A full bladder lifts the uterus and tips it back: push the corpus up and posteriorly
        # (bounded: a small residual overlap is covered by the bladder, painted later).
        lift = np.array([0.0, 0.45, 1.0]) / np.linalg.norm([0.0, 0.45, 1.0])
        for _ in range(MAX_LIFT_STEPS):
            if _union_distance([self.bladder_shape], centre[None])[0] > radii[1] + 2:
                break
            centre = centre + lift * LIFT_STEP_MM
        axis_u = (centre - internal_os) / np.linalg.norm(centre - internal_os)
        frame = rotation_from_axes(axis_u, (1.0, 0.0, 0.0))  # local 0 = long axis, 1 = lateral
        self.corpus = Ellipsoid(tuple(centre), (radii[2], radii[0], radii[1]), frame)
        # The isthmus joins the cervix to the corpus however far the bladder lifted it.
        self.isthmus = Capsule(tuple(internal_os), tuple(centre), cervix_r, float(min(radii[:2])) * 0.8)
        self.endometrium = Ellipsoid(tuple(centre + axis_u * 3), (radii[2] * 0.65, radii[0] * 0.3, radii[1] * 0.2),
                                     frame)
        self.cervix = tube([external_os - axis_c * 4, internal_os + axis_c * 2], [cervix_r, cervix_r * 0.9])
        introitus = external_os + np.array([0.0, -18.0, -float(p["vagina_length_mm"])])
        mid = (external_os + introitus) / 2 + np.array([0.0, 6.0, 0.0])
        self.vagina = tube([external_os + axis_c * 3, mid, introitus], [cervix_r * 0.85, 9.0, 7.0])
        self.landmarks.update(external_os_z=float(external_os[2]), internal_os_z=float(internal_os[2]))
        self.external_os, self.axis_c, self.cervix_len = external_os, axis_c, cervix_len

    def tumour(self) -> None:
        p = self.p
        radius = float(p["tumour_radius_mm"])
        offset = np.asarray(p["tumour_offset"], float)
        centre = self.external_os + self.axis_c * self.cervix_len * (0.45 + 0.3 * offset[2])
        centre = centre + np.array([offset[0], offset[1], 0.0]) * radius * 0.5
        shapes: list[Shape] = [Ellipsoid(tuple(centre), (radius, radius * 0.85, radius * 1.1),
                                         rotation_xyz(offset * 40), lobes=np.array([[*offset, 0.15]]))]
        if p["tumour_into_uterus"]:
            upper = self.external_os + self.axis_c * (self.cervix_len + radius * 0.6)
            shapes.append(Ellipsoid(tuple(upper), (radius * 0.8, radius * 0.7, radius * 0.9)))
        if int(p["tumour_foci"]) > 1:
            second = self.external_os + self.axis_c * self.cervix_len * 0.2 + np.array([-offset[0] * 10, 4.0, -4.0])
            shapes.append(_sphere(second, max(radius * 0.45, 5.0)))
        self.tumour_shapes = tuple(shapes)
        bottoms = [s.bounds()[0][2] for s in shapes]
        self.landmarks["tumour_bottom_z"] = float(min(bottoms))

    def rectum(self) -> None:
        r = float(self.p["rectum_radius_mm"])
        self.landmarks["anorectal_z"] = self.landmarks["ischial_tuberosity_z"] + 12
        points = [(0, 42, self.landmarks["anorectal_z"]), (0, 60, -30), (0, 66, 0), (2, 64, 35), (6, 56, 66),
                  (12, 46, 85)]
        self.rectum_points = points
        self.rectum_shapes = tuple(tube(points, [r * 0.7, r, r, r, r * 0.9, r * 0.85]))
        lumen = tuple(Offset(s, -WALL_MM["rectum"]) for s in self.rectum_shapes)
        bubbles: list[Shape] = []
        curve = np.asarray(points, float)
        for _ in range(int(self.p["rectum_gas_bubbles"])):
            index = int(self.rng.integers(1, len(curve) - 1))
            bubble_r = float(self.rng.uniform(3, r * 0.6))
            centre = curve[index] + self.up * (r - WALL_MM["rectum"] - bubble_r * 0.6)
            bubbles.append(Intersection(_sphere(centre, bubble_r), lumen[min(index * 3, len(lumen) - 1)]))
        self.rectal_gas = tuple(bubbles)

    def bowel(self) -> None:
        """Sigmoid, colon and small-bowel loops above the pelvic organs, away from vessels."""
        fh = self.fh_x
        sigmoid = [(12, 46, 85), (40, 20, 100), (55, -10, 112), (30, -30, 122), (55, 5, 140), (82, 40, 175),
                   (88, 45, 300)]
        colon = [(-70, 5, 85), (-82, 15, 140), (-84, 25, 200), (-84, 25, 300)]
        loops: list[tuple[list, float, Tissue]] = [
            (sigmoid, float(self.rng.uniform(13, 19)), Tissue.FAECES),
            (colon, float(self.rng.uniform(20, 26)), Tissue.FAECES),
        ]
        avoid = ([self.bladder_shape, self.corpus, self.isthmus] + list(self.cervix) + list(self.bone_shapes)
                 + list(self.nodal_shapes) + list(self.muscle_shapes) + list(self.rectum_shapes))
        low = np.array([-fh + 25, -85.0, max(self.landmarks["internal_os_z"], 40.0)])
        high = np.array([fh - 25, 25.0, 250.0])
        content = Tissue.BOWEL_CONTRAST if self.p["bowel_oral_contrast"] else Tissue.BOWEL_FLUID
        for _ in range(int(self.p["bowel_loops"])):
            radius = float(self.rng.uniform(9, 14))
            for _attempt in range(30):
                points = [self.rng.uniform(low, high)]
                for _step in range(int(self.rng.integers(3, 7))):
                    points.append(np.clip(points[-1] + self.rng.normal(0, 22, size=3), low, high))
                points_arr = np.asarray(points)
                if np.all(_union_distance(avoid, points_arr) > radius + 2):
                    loops.append((points_arr.tolist(), radius, content))
                    break
        self.bowel_parts = []
        for number, (points, radius, fill) in enumerate(loops):
            capsules = tube(points, radius)
            gas: list[Shape] = []
            if fill != Tissue.FAECES and self.rng.random() < 0.35:
                start = np.asarray(points[0], float)
                gas.append(Intersection(_sphere(start + self.up * radius * 0.5, radius * 0.8),
                                        Offset(capsules[0], -WALL_MM["bowel"])))
            elif fill == Tissue.FAECES:
                for index in self.rng.integers(0, len(capsules), size=int(self.rng.integers(1, 4))):
                    centre = np.asarray(capsules[int(index)].start) + self.up * radius * 0.4
                    gas.append(Intersection(_sphere(centre, radius * 0.55), Offset(capsules[int(index)], -WALL_MM["bowel"])))
            self.bowel_parts.append((f"bowel {number}", capsules, fill, gas))

    # ------------------------------------------------------------------ assemble
    def paint_organs(self) -> None:
        for name, capsules, fill, gas in self.bowel_parts:
            self.add(name, capsules, (0.0, Tissue.BOWEL_WALL), (WALL_MM["bowel"], fill))
            if gas:
                self.add(f"{name} gas", gas, (0.0, Tissue.GAS))
        self.add("vagina", self.vagina, (0.0, Tissue.VAGINA))
        self.add("corpus", [self.isthmus, self.corpus], (0.0, Tissue.MYOMETRIUM))
        self.add("endometrium", [self.endometrium], (0.0, Tissue.ENDOMETRIUM))
        self.add("cervix", self.cervix, (0.0, Tissue.CERVICAL_STROMA))
        self.add("tumour", self.tumour_shapes, (0.0, Tissue.TUMOUR))
        self.add("rectum", self.rectum_shapes, (0.0, Tissue.RECTAL_WALL), (WALL_MM["rectum"], Tissue.FAECES))
        if self.rectal_gas:
            self.add("rectal gas", self.rectal_gas, (0.0, Tissue.GAS))
        self.add("bladder", [self.bladder_shape], (0.0, Tissue.BLADDER_WALL), (WALL_MM["bladder"], Tissue.URINE))

    def define_regions(self) -> None:
        patient = tuple(t for t in Tissue if t not in NOT_PATIENT)
        self.regions["bladder"] = Region("bladder", (self.bladder_shape,), patient)
        self.regions["rectum"] = Region("rectum", self.rectum_shapes, patient)
        soft = (Tissue.FAT, Tissue.ARTERY, Tissue.VEIN, Tissue.LYMPH_NODE)
        self.regions["ctv_n"] = Region("ctv_n", tuple(self.nodal_shapes), soft)
        # Upper vagina: the upper third, and at least 2 cm below the tumour.
        cut_z = min(self.landmarks["external_os_z"] - float(self.p["vagina_length_mm"]) / 3,
                    self.landmarks["tumour_bottom_z"] - 20.0)
        upper_vagina = tuple(Clipped(c, (0, 0, cut_z), (0, 0, -1)) for c in self.vagina)
        os_ = self.external_os + self.axis_c * self.cervix_len * 0.5
        side_wall = self.fh_x - 38
        parametria = Ellipsoid(tuple(os_), (side_wall - abs(os_[0]) * 0.5, 20.0, 18.0))
        uterosacral = []
        for side in (1, -1):
            uterosacral += tube([os_ + np.array([side * 8, 10, -5]), (side * 22, 66, 52)], [6.0, 4.0])
        ctv_uv = ((self.corpus, self.isthmus) + tuple(self.cervix) + upper_vagina + self.tumour_shapes + (parametria,)
                  + tuple(uterosacral))
        self.regions["ctv_uv"] = Region("ctv_uv", ctv_uv, soft + GYNAECOLOGICAL)
        organ = (self.corpus, self.isthmus) + tuple(self.cervix) + tuple(self.vagina) + self.tumour_shapes
        self.regions["mr_organ"] = Region("mr_organ", organ, GYNAECOLOGICAL)
        self.regions["tumour"] = Region("tumour", self.tumour_shapes, (Tissue.TUMOUR,))


def build_anatomy(params: Mapping) -> Anatomy:
    """The patient described by ``params`` (see :func:`draw_anatomy_params`)."""
    b = _Builder(params)
    b.body()
    b.table()
    b.muscles()
    b.bones()
    b.vessels()
    b.lymph_nodes()
    b.bladder()
    b.uterus()
    b.tumour()
    b.rectum()
    b.bowel()
    b.paint_organs()
    b.define_regions()
    return Anatomy(tuple(b.parts), dict(b.regions), _pose(params), dict(params), dict(b.landmarks))


def make_anatomy(seed: int, **overrides) -> Anatomy:
    """Draw and build the patient of ``seed``; ``overrides`` replace named draws."""
    from ..errors import InputError

    params = draw_anatomy_params(np.random.default_rng(np.random.SeedSequence([int(seed), ANATOMY_STREAM])))
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise InputError(f"unknown anatomy parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(params))}")
    params.update(overrides)
    return build_anatomy(params)
