"""Clean a network label map: connected components, hole filling, containment.

Driven by a per-structure rule table (:class:`StructureRule`) so CT and MR models share it:

* ``components="largest"`` keeps the largest 3D connected component (bladder, rectum,
  CTV-UV, MR organ, MR tumour), and any other at least :data:`PART_OF_LARGEST` of its
  size (the structure split in two by a missed bridge, not a stray island);
* ``components="min_volume"`` keeps every component of at least ``min_component_ml``
  (CTV-N: the left and right pelvic nodal regions are separate components below the
  aortic bifurcation and both must survive; small islands go);
* ``fill_holes`` fills enclosed holes **slice by slice along array axis 0** (the acquired
  image planes, which are the planes RTSTRUCT contours live in);
* ``includes``: label values this structure's region covers (MR organ covers the tumour
  painted over it), ``within``: the structure must lie inside another one (tumour ⊂ organ).

Label precedence (how the cleaned masks become one label map again):

1. the network's arg-max labels are disjoint, and a voxel removed from a structure becomes
   background (0) — it is never handed to a neighbour;
2. hole filling only claims voxels that were background in the input (or labels the
   structure ``includes``): a structure never grows over another one;
3. containers are painted first, then structures that lie ``within`` them are painted
   over them (tumour over organ, as the label-map contract of labels.nii.gz says).

Every operation runs on the structure's bounding box (plus a one-voxel margin), so the
cost scales with the structure, not with a 512x512x200 volume.

Arrays are ``(z, y, x)``; volumes in ml use the voxel volume of the grid
(``|det(direction)| * prod(spacing)`` mm³, right for a sheared gantry-tilt grid too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from .structures import CLINICAL_TARGET_VOLUME, GTV, ORGAN, PELVIC_LYMPH_NODE, Structure

KEEP_LARGEST = "largest"
KEEP_ABOVE_VOLUME = "min_volume"
KEEP_ALL = "all"
COMPONENT_MODES = (KEEP_LARGEST, KEEP_ABOVE_VOLUME, KEEP_ALL)

NODAL_MIN_COMPONENT_ML = 2.0
"""CTV-N components smaller than this are dropped: a nodal region (vessels + 7 mm margin)
over even two 3 mm slices is well above it, while stray false-positive islands are below."""

PART_OF_LARGEST = 0.2
"""A component at least this fraction of the largest one is kept with it.  Stray islands
are a few percent of the structure; a piece this big is the structure itself, cut in two
where the network missed a bridge (on held-out phantom 5009 the uterine corpus, 14 ml, was
cut off the cervix: keeping only the largest part took CTV-UV DSC from 0.87 to 0.72)."""

MM3_PER_ML = 1000.0
_BOX_MARGIN = 1
"""Voxels added around a bounding box so hole filling and labelling see the border."""


@dataclasses.dataclass(frozen=True)
class StructureRule:
    """How to clean one label value.

    Attributes:
        value: label value in the map.
        components: one of :data:`COMPONENT_MODES`.
        min_component_ml: component size threshold for ``"min_volume"``.
        fill_holes: fill enclosed holes slice by slice (array axis 0).
        includes: other label values this structure's region covers (containment).
        within: label value of the structure this one must lie inside, or None.
    """

    value: int
    components: str = KEEP_LARGEST
    min_component_ml: float = 0.0
    fill_holes: bool = True
    includes: tuple[int, ...] = ()
    within: int | None = None

    def __post_init__(self) -> None:
        if self.components not in COMPONENT_MODES:
            raise ValueError(f"components must be one of {COMPONENT_MODES}, got {self.components!r}")


@dataclasses.dataclass
class StructureCleanup:
    """What postprocessing did to one structure (for report.json)."""

    components_found: int = 0
    components_kept: int = 0
    removed_ml: float = 0.0
    filled_ml: float = 0.0

    def to_json(self) -> dict:
        return {
            "components_found": self.components_found,
            "components_kept": self.components_kept,
            "removed_ml": round(self.removed_ml, 3),
            "filled_ml": round(self.filled_ml, 3),
        }


def rules_for(structures: Sequence[Structure]) -> tuple[StructureRule, ...]:
    """Default rules from the structures' RT types and codes (works for CT and MR sets).

    * a CTV coded as pelvic lymph node → keep components ≥ :data:`NODAL_MIN_COMPONENT_ML`;
    * a GTV → largest component, inside the (first) ORGAN when the set has one;
    * an ORGAN in a set with GTVs → covers the GTV labels (organ includes tumour);
    * anything else → largest component.  All fill holes.
    """
    tumours = tuple(s.value for s in structures if s.interpreted_type == GTV)
    organs = [s.value for s in structures if s.interpreted_type == ORGAN]
    rules = []
    for structure in structures:
        if structure.type == CLINICAL_TARGET_VOLUME and structure.region == PELVIC_LYMPH_NODE:
            rules.append(StructureRule(structure.value, KEEP_ABOVE_VOLUME, NODAL_MIN_COMPONENT_ML))
        elif structure.interpreted_type == GTV:
            rules.append(StructureRule(structure.value, within=organs[0] if organs else None))
        elif structure.interpreted_type == ORGAN and tumours:
            rules.append(StructureRule(structure.value, includes=tumours))
        else:
            rules.append(StructureRule(structure.value))
    return tuple(rules)


def voxel_volume_ml(spacing: Sequence[float], direction: np.ndarray | None = None) -> float:
    """Volume of one voxel in ml; ``spacing`` in mm (x, y, z), ``direction`` 3x3 (may be sheared)."""
    determinant = 1.0 if direction is None else abs(float(np.linalg.det(np.asarray(direction, dtype=float))))
    return float(np.prod(np.asarray(spacing, dtype=float))) * determinant / MM3_PER_ML


def _box(slices: Sequence[tuple | None], shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """Union of ``scipy.ndimage.find_objects`` boxes (None entries skipped), plus a margin."""
    boxes = [box for box in slices if box is not None]
    if not boxes:
        return None
    return tuple(
        slice(max(min(box[axis].start for box in boxes) - _BOX_MARGIN, 0),
              min(max(box[axis].stop for box in boxes) + _BOX_MARGIN, shape[axis]))
        for axis in range(len(shape))
    )


IN_PLANE = np.array([[[0, 0, 0], [0, 0, 0], [0, 0, 0]],
                     [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                     [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], dtype=bool)
"""4-connectivity within a slice, none across slices: pieces, bands and outlines are per slice."""


def any_of(array: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """``np.isin(array, values)`` for a few label values: one comparison each is ten times faster
    than ``isin`` on a 512x512x100 label map."""
    mask = array == values[0]
    for value in values[1:]:
        mask |= array == value
    return mask


def label_pieces(mask: np.ndarray, structure: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label(mask, structure)`` with uint16 labels while the pieces fit (else int32).

    The labels of a body or a structure are as large as its box and brand-new memory, whose
    first touch is what slows a busy virtual machine most; half of int32's bytes is half of that.
    Same labels, same count; only the dtype differs.
    """
    from scipy import ndimage

    try:
        return ndimage.label(mask, structure=structure, output=np.uint16)
    except RuntimeError:  # more than 65535 pieces ("insufficient bit-depth")
        return ndimage.label(mask, structure=structure)


def largest_piece(mask: np.ndarray) -> np.ndarray:
    """The largest connected piece of a boolean ``mask`` (scipy's default connectivity: faces);
    ``mask`` itself when it has at most one piece."""
    pieces, count = label_pieces(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(pieces.reshape(-1), minlength=count + 1)
    sizes[0] = 0
    return pieces == int(np.argmax(sizes))


_FEW_PIECES = 4
"""Up to this many kept pieces, :func:`select_components` selects them by comparisons, not a gather."""


def select_components(mask: np.ndarray, mode: str, min_voxels: float = 0.0) -> tuple[np.ndarray, int, int]:
    """3D components (26-connected) of a boolean ``mask`` to keep.

    Returns:
        (kept mask, number of components found, number kept).
    """
    if mode == KEEP_ALL:
        return mask, -1, -1
    components, count = label_pieces(mask, np.ones((3, 3, 3), dtype=bool))
    if count <= 1 and mode == KEEP_LARGEST:
        return mask, count, count
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    if mode == KEEP_LARGEST:
        keep = sizes >= PART_OF_LARGEST * sizes.max()
    else:
        keep = sizes >= min_voxels
        keep[0] = False
    kept = np.flatnonzero(keep)
    if kept.size == count:
        return mask, count, count
    if kept.size == 0:
        return np.zeros_like(mask), count, 0
    # a comparison per kept piece streams the map once each; a gather (keep[components]) costs
    # several times one on a structure's box, so it is used only for many kept pieces
    selected = any_of(components, kept) if kept.size <= _FEW_PIECES else keep[components]
    return selected, count, int(kept.size)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed 2D holes of a (z, y, x) boolean mask in every z slice (4-connected background).

    The same as ``ndimage.binary_fill_holes`` on each slice (a hole is background not connected to
    the slice's border), done as one labelling of the background with in-plane connectivity only:
    ``binary_fill_holes`` erodes from the border over and over, 0.5 ms per slice for 381 slices of a CT.
    """
    background, count = label_pieces(~mask, IN_PLANE)
    reaches_border = np.zeros(count + 1, dtype=bool)
    for edge in (background[:, 0, :], background[:, -1, :], background[:, :, 0], background[:, :, -1]):
        reaches_border[edge] = True
    reaches_border[0] = True  # label 0: the mask itself
    return mask | ~reaches_border[background]


def postprocess_labels(
    labels: np.ndarray,
    rules: Sequence[StructureRule],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    direction: np.ndarray | None = None,
    *,
    in_place: bool = False,
) -> tuple[np.ndarray, dict[int, StructureCleanup]]:
    """Apply ``rules`` to a (z, y, x) integer label map.

    Args:
        labels: network labels, shape (z, y, x); values not named by a rule are kept as they are.
        rules: one rule per structure (see :func:`rules_for`).
        spacing: voxel size (x, y, z) in mm, for the ml thresholds and the summary.
        direction: 3x3 direction matrix (only its determinant matters: sheared grids).
        in_place: a uint8 ``labels`` may be cleaned where it is (and returned): only the structures'
            boxes are touched, no second full-size map is made.

    Returns:
        (cleaned uint8 labels of the same shape, cleanup summary per label value).
    """
    from .cropping import label_boxes

    labels = np.asarray(labels)
    voxel_ml = voxel_volume_ml(spacing, direction)
    boxes = label_boxes(labels)
    by_value = {rule.value: rule for rule in rules}
    ordered = sorted(rules, key=lambda rule: (rule.within is not None, rule.value))
    masks: dict[int, tuple[tuple[slice, ...], np.ndarray]] = {}
    summary: dict[int, StructureCleanup] = {}
    for rule in ordered:
        values = (rule.value, *rule.includes)
        box = _box([boxes[v - 1] if 0 < v <= len(boxes) else None for v in values], labels.shape)
        summary[rule.value] = StructureCleanup()
        if box is None:
            continue
        region = labels[box]
        mask = any_of(region, values)
        if rule.within is not None and rule.within in masks:
            mask &= _mask_in_box(masks[rule.within], box, labels.shape)
        elif rule.within is not None and rule.within in by_value:
            mask[:] = False  # its container is empty: a tumour without an organ is not kept
        before = int(np.count_nonzero(mask))
        kept, found, kept_count = select_components(mask, rule.components, rule.min_component_ml / voxel_ml)
        after_components = int(np.count_nonzero(kept))
        if rule.fill_holes and after_components:
            claimable = any_of(region, (0, *values))
            kept = kept | (fill_holes_per_slice(kept) & claimable)
        summary[rule.value] = StructureCleanup(
            components_found=found,
            components_kept=kept_count,
            removed_ml=(before - after_components) * voxel_ml,
            filled_ml=(int(np.count_nonzero(kept)) - after_components) * voxel_ml,
        )
        masks[rule.value] = (box, kept)
    return _paint(labels, ordered, masks, in_place), summary


def _mask_in_box(entry: tuple[tuple[slice, ...], np.ndarray], box: tuple[slice, ...],
                 shape: tuple[int, ...]) -> np.ndarray:
    """A mask stored on its own box, cut/padded onto ``box``."""
    own_box, own_mask = entry
    out = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
    overlap = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(own_box, box))
    if any(s.start >= s.stop for s in overlap):
        return out
    source = tuple(slice(s.start - a.start, s.stop - a.start) for s, a in zip(overlap, own_box))
    target = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(overlap, box))
    out[target] = own_mask[source]
    return out


def _paint(labels: np.ndarray, ordered: Sequence[StructureRule],
           masks: Mapping[int, tuple[tuple[slice, ...], np.ndarray]], in_place: bool = False) -> np.ndarray:
    """Cleaned masks → one uint8 label map (precedence in the module docstring)."""
    handled = [rule.value for rule in ordered]
    if in_place and labels.dtype == np.uint8 and labels.flags.writeable:
        # every voxel of a handled value lies in its rule's box: clearing the boxes clears them all
        out, is_handled = labels, np.zeros(256, dtype=bool)
        is_handled[handled] = True
        for box, _ in masks.values():
            view = out[box]
            view[is_handled[view]] = 0
    elif labels.dtype == np.uint8:  # a lookup table: half the time of np.where(np.isin(...)) on 26 M voxels
        table = np.arange(256, dtype=np.uint8)
        table[handled] = 0
        out = table[labels]
    else:
        out = np.where(np.isin(labels, handled), 0, labels).astype(np.uint8)
    for rule in ordered:
        if rule.value not in masks:
            continue
        box, mask = masks[rule.value]
        view = out[box]
        if rule.within is not None:
            view[mask] = rule.value
        else:
            view[mask & (view == 0)] = rule.value
    return out
