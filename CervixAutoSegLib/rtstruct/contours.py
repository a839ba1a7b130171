"""Label slice ↔ planar polygons, in continuous pixel coordinates of one image.

Coordinates here are ``(row, column)`` = ``(j, i)`` pixel indices of one slice, with
the centre of pixel ``(j, i)`` at integer ``(j, i)`` — the same convention as DICOM,
where Image Position (Patient) is the centre of the first transmitted pixel.

Polygons come from marching squares at level 0.5 on the zero-padded binary slice.
On binary data every vertex is then the midpoint of an edge between a foreground and
a background pixel centre, so a single pixel becomes a small diamond around its
centre and no pixel centre ever lies on a polygon edge: even-odd point-in-polygon on
pixel centres gives back exactly the mask.  Holes and islands are separate polygons
(even-odd); :func:`keyhole` optionally joins each hole to its outer polygon.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.5
"""Iso-level between background (0) and foreground (1) pixels."""

_PAD = 1
"""Background border added around each crop so that every polygon closes."""


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Closed polygons outlining a 2D binary mask.

    Args:
        mask: boolean array of one slice, shape ``(rows, columns)`` = ``(ny, nx)``.

    Returns:
        One float array of shape ``(n, 2)`` per polygon, ``(row, column)`` pixel
        coordinates, first point not repeated, collinear points removed.  Outer
        boundaries and holes are separate polygons; combine them even-odd.
    """
    from skimage.measure import find_contours

    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    columns = np.flatnonzero(mask.any(axis=0))
    # Crop to the bounding box first: marching squares then costs O(structure), not O(slice).
    row0, row1 = rows[0], rows[-1] + 1
    col0, col1 = columns[0], columns[-1] + 1
    crop = np.pad(mask[row0:row1, col0:col1], _PAD).astype(np.float32)
    offset = np.array([row0 - _PAD, col0 - _PAD], dtype=np.float64)
    polygons = []
    # fully_connected="low": diagonal foreground pixels stay separate polygons, so no
    # two polygons ever touch.
    for contour in find_contours(crop, LEVEL, fully_connected="low"):
        polygon = drop_collinear(contour[:-1]) + offset
        if len(polygon) >= 3:
            polygons.append(polygon)
    return polygons


def drop_collinear(polygon: np.ndarray) -> np.ndarray:
    """Remove vertices lying on the straight line through their neighbours (lossless).

    Args:
        polygon: closed polygon, shape ``(n, 2)``, first point not repeated.
    """
    previous = np.roll(polygon, 1, axis=0)
    following = np.roll(polygon, -1, axis=0)
    incoming = polygon - previous
    outgoing = following - polygon
    cross = incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]
    return polygon[np.abs(cross) > 1e-9]


def signed_area(polygon: np.ndarray) -> float:
    """Shoelace area of a closed polygon, shape ``(n, 2)``; the sign gives orientation."""
    x, y = polygon[:, 1], polygon[:, 0]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def point_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd (crossing number) test, vectorised over points.

    Args:
        points: shape ``(m, 2)``; polygon: shape ``(n, 2)``; same coordinate order.

    Returns:
        Boolean array, shape ``(m,)``.  Points exactly on an edge may go either way.
    """
    points = np.asarray(points, dtype=np.float64)
    ax, ay = polygon[:, 1], polygon[:, 0]
    bx, by = np.roll(ax, -1), np.roll(ay, -1)
    px, py = points[:, 1:2], points[:, 0:1]
    straddles = (ay > py) != (by > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing_x = ax + (py - ay) * (bx - ax) / (by - ay)
    crossings = straddles & (px < crossing_x)
    return (np.count_nonzero(crossings, axis=1) % 2) == 1


def nesting_depths(polygons: list[np.ndarray]) -> list[int]:
    """How many other polygons enclose each polygon (even = outer boundary, odd = hole).

    Marching-squares polygons never cross or touch, so testing one vertex suffices.
    """
    depths = []
    for index, polygon in enumerate(polygons):
        probe = polygon[:1]
        depths.append(
            sum(bool(point_in_polygon(probe, other)[0]) for j, other in enumerate(polygons) if j != index)
        )
    return depths


def keyhole(polygons: list[np.ndarray]) -> list[np.ndarray]:
    """Join every hole to the outer polygon around it by a zero-width cut.

    Some planning systems want one polygon per connected region.  Each hole is spliced
    into its enclosing outer polygon at the closest pair of vertices; the cut runs
    there and back along the same segment, so it encloses no area and even-odd
    rasterisation is unchanged.  Islands inside holes stay separate polygons.

    Args:
        polygons: output of :func:`mask_polygons`.

    Returns:
        Polygons, shape ``(n, 2)`` each, with no separate holes left.
    """
    if len(polygons) < 2:
        return list(polygons)
    depths = nesting_depths(polygons)
    outers = {index: polygons[index] for index, depth in enumerate(depths) if depth % 2 == 0}
    for index, depth in enumerate(depths):
        if depth % 2 == 0:
            continue
        hole = polygons[index]
        parent = _enclosing(index, depth - 1, polygons, depths)
        outers[parent] = _splice(outers[parent], hole)
    return [outers[index] for index in sorted(outers)]


def _enclosing(index: int, depth: int, polygons: list[np.ndarray], depths: list[int]) -> int:
    """Index of the polygon at ``depth`` that encloses polygon ``index``."""
    probe = polygons[index][:1]
    for candidate, candidate_depth in enumerate(depths):
        if candidate_depth == depth and point_in_polygon(probe, polygons[candidate])[0]:
            return candidate
    raise AssertionError("a hole without an enclosing outer polygon")  # marching squares guarantees one


def _splice(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``outer`` with ``hole`` inserted via a there-and-back cut between two close vertices.

    The cut is the shortest one that passes through no pixel centre: a point-in-polygon
    test on a centre lying exactly on the zero-width cut is undefined, and planning
    systems rasterise exactly that way.
    """
    distances = ((outer[:, np.newaxis, :] - hole[np.newaxis, :, :]) ** 2).sum(axis=2).ravel()
    candidates = min(_MAX_CUT_CANDIDATES, distances.size)
    nearest = np.argpartition(distances, candidates - 1)[:candidates]
    order = nearest[np.argsort(distances[nearest], kind="stable")]
    shape = (len(outer), len(hole))
    outer_index, hole_index = np.unravel_index(int(order[0]), shape)
    for flat in order.tolist():
        i, j = np.unravel_index(flat, shape)
        if not _crosses_pixel_centre(outer[i], hole[j]):
            outer_index, hole_index = i, j
            break
    hole_loop = np.roll(hole, -hole_index, axis=0)
    return np.concatenate(
        [outer[: outer_index + 1], hole_loop, hole_loop[:1], outer[outer_index:]],
        axis=0,
    )


_MAX_CUT_CANDIDATES = 4096
"""Closest vertex pairs tried for a keyhole cut before settling for the closest one."""


def _crosses_pixel_centre(start: np.ndarray, end: np.ndarray) -> bool:
    """Whether the open segment start→end passes through an integer (row, column) point.

    Marching-squares vertices lie on half-integers, so in doubled coordinates both ends
    are integers and the lattice points of the segment are ``a + m·d/g`` (g = gcd of
    the step); a pixel centre is one whose doubled coordinates are both even.
    """
    a = np.rint(2 * np.asarray(start)).astype(np.int64)
    b = np.rint(2 * np.asarray(end)).astype(np.int64)
    step = b - a
    count = int(np.gcd(abs(int(step[0])), abs(int(step[1]))))
    if count < 2:
        return False
    points = a + np.outer(np.arange(1, count), step // count)
    return bool(np.any(np.all(points % 2 == 0, axis=1)))
