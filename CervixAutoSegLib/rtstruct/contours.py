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
    return stack_polygons(np.asarray(mask, dtype=bool)[np.newaxis])[0]


_SIDE_ROW = np.array([0, 1, 2, 1])
_SIDE_COLUMN = np.array([1, 2, 1, 0])
"""Midpoint of each side of a marching-squares cell in doubled coordinates, from the cell's top-left
pixel (2 r, 2 c): sides in clockwise order top, right, bottom, left; side i joins corner i and
corner i + 1 of (top-left, top-right, bottom-right, bottom-left)."""


def stack_polygons(masks: np.ndarray) -> list[list[np.ndarray]]:
    """:func:`mask_polygons` of every slice of a ``(z, rows, columns)`` boolean stack, traced at once.

    Marching squares on binary data, vectorised: in each 2x2 cell of pixel centres, every run of
    foreground corners (clockwise) gives one segment between the sides where the run begins and
    ends.  Diagonal foreground corners are separate runs, so they never join (the
    "low" connectivity of ``skimage.measure.find_contours``) and no two polygons touch.  A
    midpoint starts exactly one segment (in the cell where it begins a run) and ends exactly one
    (in its neighbour), so the segments form a permutation of the midpoints whose cycles are the
    polygons; those are found by pointer doubling instead of walking point by point.

    Returns:
        For each z, its polygons as :func:`mask_polygons` gives them, each starting at its
        top-most (then left-most) kept vertex, ordered by that vertex.
    """
    masks = np.asarray(masks, dtype=bool)
    polygons: list[list[np.ndarray]] = [[] for _ in range(masks.shape[0])]
    rows, columns = np.flatnonzero(masks.any(axis=(0, 2))), np.flatnonzero(masks.any(axis=(0, 1)))
    if rows.size == 0:
        return polygons
    # Crop to the bounding box first: the work is then O(structure), not O(slice).
    crop = np.pad(masks[:, rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1], ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    source, target = _segments(crop)
    vertices, starts = _cycles(source, target)
    keys = source[vertices]
    width, height = 2 * crop.shape[2], 2 * crop.shape[1]
    doubled = np.stack([keys // width % height, keys % width], axis=1)
    kept = _turns(doubled, starts)
    offset = np.array([rows[0] - _PAD, columns[0] - _PAD], dtype=np.float64)
    z = keys[starts] // (width * height)
    for k, first, last in zip(z.tolist(), starts.tolist(), [*starts[1:].tolist(), len(keys)]):
        polygon = doubled[first:last][kept[first:last]] * 0.5 + offset
        if len(polygon) >= 3:
            polygons[k].append(polygon)
    return polygons


def _segments(crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) midpoint keys of every marching-squares segment of a padded ``(z, rows, columns)``
    stack; a key is ``(z * 2 rows + Y) * 2 columns + X`` of the doubled coordinates (Y, X)."""
    corners = (crop[:, :-1, :-1], crop[:, :-1, 1:], crop[:, 1:, 1:], crop[:, 1:, :-1])
    mixed = (corners[0] != corners[1]) | (corners[1] != corners[2]) | (corners[2] != corners[3])
    z, r, c = np.nonzero(mixed)
    corner = np.stack([part[z, r, c] for part in corners])  # (4, cells): only cells a contour crosses
    following = np.roll(corner, -1, axis=0)
    begins, ends = ~corner & following, corner & ~following  # side i: a run begins / ends there
    height, width = 2 * crop.shape[1], 2 * crop.shape[2]
    base = (z * height + 2 * r) * width + 2 * c
    sources, targets = [], []
    for side in range(4):
        cells = np.flatnonzero(begins[side])
        # the run that begins at this side ends at the next side (clockwise) where a run ends
        end = np.full(cells.size, (side + 3) % 4)
        for step in (2, 1):
            candidate = (side + step) % 4
            end = np.where(ends[candidate, cells], candidate, end)
        # from the run's end to its beginning: clockwise on screen around the foreground, as skimage
        sources.append(base[cells] + _SIDE_ROW[end] * width + _SIDE_COLUMN[end])
        targets.append(base[cells] + _SIDE_ROW[side] * width + _SIDE_COLUMN[side])
    return np.concatenate(sources), np.concatenate(targets)


def _cycles(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The segments' cycles: (segment indices in cycle order, each cycle's first position).

    Each cycle starts at its smallest key and cycles follow each other by that key.  Pointer
    doubling: after k rounds every segment knows the smallest key among the next 2**k, and its
    distance to the cycle's last segment, so log2(n) rounds of array operations suffice.
    """
    order = np.argsort(source, kind="stable")
    source_sorted = source[order]
    following = np.searchsorted(source_sorted, target[order])  # a permutation of 0..n-1
    count = following.size
    head = np.arange(count)
    jump = following.copy()
    for _ in range(max(count, 1).bit_length()):
        np.minimum(head, head[jump], out=head)
        jump = jump[jump]
    last = following == head  # the cycle's last segment leads back to its first
    to_last = (~last).astype(np.int64)
    jump = np.where(last, np.arange(count), following)
    for _ in range(max(count, 1).bit_length()):
        to_last = to_last + to_last[jump]
        jump = jump[jump]
    position = to_last[head] - to_last
    sequence = np.lexsort((position, head))
    starts = np.flatnonzero(position[sequence] == 0)
    return order[sequence], starts


def _turns(points: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Which vertices of the polygons ``points[starts[i]:starts[i + 1]]`` are corners: the step
    into a vertex differs from the step out of it (steps between midpoints are exact in doubled
    coordinates, so no tolerance is needed to drop the collinear ones)."""
    count = len(points)
    ends = np.append(starts[1:], count)
    following = np.arange(1, count + 1)
    following[ends - 1] = starts  # the last vertex of each polygon leads back to its first
    step_out = points[following] - points
    previous = np.empty(count, dtype=np.int64)
    previous[following] = np.arange(count)
    return np.any(step_out != step_out[previous], axis=1)


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
