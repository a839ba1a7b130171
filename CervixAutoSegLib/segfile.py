"""Slicer segmentation files (``.seg.nrrd``) written and read without Slicer.

The format is the one ``vtkMRMLSegmentationStorageNode`` writes: a NRRD whose voxels are
the binary-labelmap *layers* of the segmentation and whose key/value fields
(``Segment{N}_ID``, ``_Name``, ``_Color``, ``_LabelValue``, ``_Layer``, ``_Extent``,
``_Tags``) describe the segments.

* One layer: a 3D array, ``sizes: nx ny nz``.
* Several layers (segments overlap, e.g. the MR organ containing the tumour): a 4D array
  whose first (fastest) axis is the layer (``kinds: list domain domain domain``).

Geometry is written in LPS (``space: left-posterior-superior``) straight from the
:class:`~CervixAutoSegLib.volume.Volume` (``space directions`` = direction x spacing,
``space origin`` = centre of voxel (0, 0, 0)), so a sheared (gantry-tilt) grid survives.

Segment names, colours and terminology come from :mod:`CervixAutoSegLib.structures`;
the terminology tag uses the context of ``Resources/CervixAutoSeg.term.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import InputError
from .postprocess import any_of
from .structures import Structure
from .volume import LPS_TO_RAS, Volume

LPS_SPACE = "left-posterior-superior"
RAS_SPACE = "right-anterior-superior"
BINARY_LABELMAP = "Binary labelmap"
REFERENCE_GEOMETRY_PARAMETER = "Reference image geometry"
TERMINOLOGY_TAG = "TerminologyEntry"
GZIP_LEVEL = 1
"""zlib's fastest: on a 512x512x100 CT's labels 0.05 s and 218 kB, against 0.13 s and 69 kB at
zlib's default 6 (pynrrd's 9 takes 4x as long again); Slicer reads every level."""

TERMINOLOGY_CONTEXT = "CervixAutoSeg - category and type"
"""``SegmentationCategoryTypeContextName`` of ``Resources/CervixAutoSeg.term.json``.

Every category/type code our structures use is in that context, so Slicer resolves all
of them even where its default DICOM list lacks a radiotherapy target concept.
"""

Containment = Mapping[int, Sequence[int]]
"""Structure value → label values its segment covers (``{1: (1, 2)}``: organ holds tumour)."""


@dataclasses.dataclass(frozen=True)
class SegmentSpec:
    """One segment: what Slicer shows and the voxels it covers.

    Attributes:
        id: segment ID (unique within a segmentation).
        name: display name (TG-263 for our structures).
        color: RGB in 0-1 floats.
        terminology: Slicer ``TerminologyEntry`` tag value ('' for none).
        mask: boolean, shape (z, y, x) on the segmentation's grid.
        label_value: the value the structure has in our label maps.
    """

    id: str
    name: str
    color: tuple[float, float, float]
    terminology: str
    mask: np.ndarray
    label_value: int


def terminology_tag(structure: Structure) -> str:
    """The ``TerminologyEntry`` tag of a structure, in our terminology context."""
    return structure.slicer_terminology(context=TERMINOLOGY_CONTEXT)


def structure_segments(
    labels: Volume, structures: Sequence[Structure], containment: Containment | None = None
) -> list[SegmentSpec]:
    """One :class:`SegmentSpec` per structure (empty ones included, in structure order).

    Args:
        labels: integer label map, array (z, y, x).
        structures: what each label value means.
        containment: label values a structure's segment covers beyond its own (e.g. the
            MR organ segment covers the tumour painted over it); see
            :func:`CervixAutoSegLib.rtstruct.organ_tumour_containment`.
    """
    containment = containment or {}
    array = np.asarray(labels.array)
    segments = []
    for structure in structures:
        values = tuple(containment.get(structure.value, (structure.value,)))
        segments.append(
            SegmentSpec(
                id=structure.name,
                name=structure.name,
                color=structure.color_float,
                terminology=terminology_tag(structure),
                mask=any_of(array, values),
                label_value=structure.value,
            )
        )
    return segments


def assign_layers(masks: Sequence[np.ndarray]) -> list[int]:
    """Layer index per mask: first-fit, so that masks sharing a layer never overlap.

    Disjoint structures (all CT ones) share layer 0; an overlapping one (MR tumour inside
    the organ) goes to the next layer where it is disjoint from everything already there.
    """
    return _first_fit(masks, lambda used, mask: not np.any(used & mask), lambda mask: np.array(mask, bool, copy=True))


def first_fit(value_sets: Sequence[set[int]]) -> list[int]:
    """Layer index per segment, as :func:`assign_layers` on the masks of these label-value sets:
    masks of a label map overlap exactly when their sets share a value present in the map."""
    return _first_fit(value_sets, lambda used, values: not used & values, set)


def _first_fit(items: Sequence[Any], disjoint: Callable[[Any, Any], bool], copy: Callable[[Any], Any]) -> list[int]:
    """Layer index per item: the first layer whose union so far is ``disjoint`` from it, else a new one
    (each layer's union starts as a ``copy`` of its first item and grows with ``|=``)."""
    occupied: list[Any] = []
    layers = []
    for item in items:
        for index, used in enumerate(occupied):
            if disjoint(used, item):
                used |= item
                layers.append(index)
                break
        else:
            occupied.append(copy(item))
            layers.append(len(occupied) - 1)
    return layers


def _extent(mask: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """Index bounding box (i_min, i_max, j_min, j_max, k_min, k_max); (0,-1)*3 when empty."""
    if not mask.any():
        return (0, -1, 0, -1, 0, -1)
    bounds = []
    for axis in (2, 1, 0):  # (i, j, k) = array axes (x, y, z) = (2, 1, 0)
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        bounds += [int(present[0]), int(present[-1])]
    return tuple(bounds)  # type: ignore[return-value]


def _format_numbers(values: Sequence[float]) -> str:
    return " ".join(repr(float(v)) if not float(v).is_integer() else str(int(v)) for v in values)


def _reference_geometry(grid: Volume) -> str:
    """Slicer's serialised reference image geometry: IJK→RAS (row-major) then extent."""
    matrix = grid.ijk_to_ras.reshape(-1)
    nx, ny, nz = grid.size_ijk
    extent = (0, nx - 1, 0, ny - 1, 0, nz - 1)
    return "".join(f"{float(v)!r};" for v in matrix) + "".join(f"{v};" for v in extent)


def segmentation_header(grid: Volume, segments: Sequence[SegmentSpec | LabelSegment], layers: Sequence[int],
                        extents: Sequence[Sequence[int]] | None = None) -> dict:
    """NRRD header fields (pynrrd form) of a segmentation on ``grid``.

    ``extents``: each segment's (i_min, i_max, j_min, j_max, k_min, k_max) (None: from its mask).
    """
    if extents is None:
        extents = [_extent(segment.mask) for segment in segments]
    number_of_layers = max(layers) + 1 if layers else 1
    directions = (grid.direction * grid.spacing[np.newaxis, :]).T  # row c = LPS step along axis c
    header: dict = {
        "space": LPS_SPACE,
        "space origin": np.asarray(grid.origin, dtype=np.float64),
        "encoding": "gzip",
    }
    if number_of_layers > 1:
        header["space directions"] = np.vstack([np.full(3, np.nan), directions])
        header["kinds"] = ["list", "domain", "domain", "domain"]
    else:
        header["space directions"] = directions
        header["kinds"] = ["domain", "domain", "domain"]
    for index, (segment, layer, extent) in enumerate(zip(segments, layers, extents)):
        prefix = f"Segment{index}_"
        header[prefix + "ID"] = segment.id
        header[prefix + "Name"] = segment.name
        header[prefix + "NameAutoGenerated"] = "0"
        header[prefix + "Color"] = _format_numbers(segment.color)
        header[prefix + "ColorAutoGenerated"] = "0"
        header[prefix + "LabelValue"] = str(segment.label_value)
        header[prefix + "Layer"] = str(layer)
        header[prefix + "Extent"] = " ".join(str(v) for v in extent)
        header[prefix + "Tags"] = f"{TERMINOLOGY_TAG}:{segment.terminology}|" if segment.terminology else ""
    header["Segmentation_MasterRepresentation"] = BINARY_LABELMAP
    header["Segmentation_ContainedRepresentationNames"] = f"{BINARY_LABELMAP}|"
    header["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    header["Segmentation_ConversionParameters"] = f"{REFERENCE_GEOMETRY_PARAMETER}|{_reference_geometry(grid)}|&"
    return header


def layer_arrays(shape: tuple[int, int, int], segments: Sequence[SegmentSpec], layers: Sequence[int]) -> np.ndarray:
    """uint8 layers, shape (n_layers, z, y, x): each segment painted with its label value."""
    stack = np.zeros((max(layers) + 1 if layers else 1, *shape), dtype=np.uint8)
    for segment, layer in zip(segments, layers):
        stack[layer][segment.mask] = segment.label_value
    return stack


def _check_label_values(segments: Sequence[SegmentSpec | LabelSegment], layers: Sequence[int]) -> None:
    seen: set[tuple[int, int]] = set()
    for segment, layer in zip(segments, layers):
        if not 0 < segment.label_value <= np.iinfo(np.uint8).max:
            raise InputError(f"segment {segment.name!r}: label value {segment.label_value} is not in 1-255")
        if (layer, segment.label_value) in seen:
            raise InputError(f"two segments share label value {segment.label_value} in one layer")
        seen.add((layer, segment.label_value))


def write_segments_nrrd(path: str | Path, grid: Volume, segments: Sequence[SegmentSpec]) -> Path:
    """Write ``segments`` (masks on ``grid``) as a Slicer ``.seg.nrrd``, atomically."""
    for segment in segments:
        if segment.mask.shape != grid.shape:
            raise InputError(f"segment {segment.name!r} has shape {segment.mask.shape}, grid is {grid.shape}")
    layers = assign_layers([segment.mask for segment in segments])
    _check_label_values(segments, layers)
    stack = layer_arrays(grid.shape, segments, layers)
    # pynrrd's C order puts the first file axis last: (z, y, x) or (z, y, x, layer).
    data = stack[0] if stack.shape[0] == 1 else np.moveaxis(stack, 0, -1)
    header = segmentation_header(grid, segments, layers)
    return _write_nrrd(path, data, header)


def _write_nrrd(path: str | Path, data: np.ndarray, header: dict) -> Path:
    """``data`` (z, y, x) or (z, y, x, layer) with ``header``, atomically."""
    import nrrd

    path = Path(path)
    with atomic_path(path, suffix=".seg.nrrd") as temporary:
        # pynrrd's C order puts the first file axis last
        nrrd.write(str(temporary), np.ascontiguousarray(data), header, index_order="C",
                   compression_level=GZIP_LEVEL)
    return path


def write_segmentation_nrrd(
    path: str | Path,
    labels: Volume,
    structures: Sequence[Structure],
    containment: Containment | None = None,
    boxes: Sequence[tuple | None] | None = None,
) -> Path:
    """Write a label map as a Slicer segmentation: one named, coloured, coded segment per structure.

    The layers come straight from the label map, through a lookup table per layer (none at all
    when the label map already is the only layer, as for every CT), never through one full-size
    mask per segment: the same file as :func:`write_segments_nrrd` of :func:`structure_segments`.

    Args:
        path: target ``.seg.nrrd`` (written atomically).
        labels: integer label map (array (z, y, x), LPS geometry); the file has exactly its grid.
        structures: the structures of the model (all get a segment, empty or not).
        containment: structure value → label values its segment covers; overlapping
            segments are stored in separate layers.
        boxes: :func:`~CervixAutoSegLib.cropping.label_boxes` of ``labels`` when the caller has them.
    """
    from .cropping import integer_labels, label_boxes, region_box

    array = integer_labels(labels.array)
    boxes = label_boxes(array) if boxes is None else boxes
    present = {value for value, box in enumerate(boxes, 1) if box is not None}
    segments = [LabelSegment.of(structure, containment, present) for structure in structures]
    layers = first_fit([set(segment.values) for segment in segments])
    _check_label_values(segments, layers)
    stack = [_layer(array, [s for s, layer in zip(segments, layers) if layer == index], present)
             for index in range(max(layers, default=0) + 1)]
    data = stack[0] if len(stack) == 1 else np.stack(stack, axis=-1)
    extents = [_box_extent(region_box(boxes, segment.values, array.shape, margin=0)) for segment in segments]
    return _write_nrrd(path, data, segmentation_header(labels, segments, layers, extents))


@dataclasses.dataclass(frozen=True)
class LabelSegment:
    """A structure's segment as label values of a label map (:class:`SegmentSpec` without a mask).

    ``values``: the label values present in the map that the segment covers (its own and those
    it contains).
    """

    id: str
    name: str
    color: tuple[float, float, float]
    terminology: str
    label_value: int
    values: tuple[int, ...]

    @classmethod
    def of(cls, structure: Structure, containment: Containment | None, present: set[int]) -> "LabelSegment":
        covered = tuple((containment or {}).get(structure.value, (structure.value,)))
        return cls(structure.name, structure.name, structure.color_float, terminology_tag(structure), structure.value,
                   tuple(value for value in covered if value in present))


def _layer(array: np.ndarray, segments: Sequence[LabelSegment], present: set[int]) -> np.ndarray:
    """uint8 (z, y, x): each segment's label value where ``array`` holds one of its values, else 0;
    ``array`` itself when that changes no voxel."""
    table = np.zeros(max(max(present, default=0), 255) + 1, dtype=np.uint8)
    for segment in segments:
        table[list(segment.values)] = segment.label_value
    if array.dtype == np.uint8 and all(table[value] == value for value in present):
        return array
    return table[np.maximum(array, 0) if array.dtype.kind == "i" else array]  # find_objects ignores values < 1


def _box_extent(box: tuple[slice, ...] | None) -> tuple[int, ...]:
    """(i_min, i_max, j_min, j_max, k_min, k_max) of a (z, y, x) box; (0, -1) * 3 for None."""
    if box is None:
        return (0, -1, 0, -1, 0, -1)
    return tuple(bound for axis in (2, 1, 0) for bound in (box[axis].start, box[axis].stop - 1))


# --------------------------------------------------------------------- reading
@dataclasses.dataclass(frozen=True)
class SegmentationFile:
    """A ``.seg.nrrd`` as read: the grid and its segments (masks on that grid).

    ``grid`` is the grid of the stored voxels (its ``array`` is layer 0): for a file Slicer
    cropped to the segments' extent it is that crop, positioned exactly in LPS.
    """

    grid: Volume
    segments: tuple[SegmentSpec, ...]
    layers: tuple[int, ...]

    def segment(self, name: str) -> SegmentSpec:
        for segment in self.segments:
            if segment.name == name or segment.id == name:
                return segment
        raise KeyError(name)

    def label_map(self) -> Volume:
        """uint8 label map on the grid, each segment painted with its label value, in file order.

        Later segments overwrite earlier ones, which restores our MR label convention
        (tumour painted over organ) when the organ comes first.
        """
        array = np.zeros(self.grid.shape, dtype=np.uint8)
        for segment in self.segments:
            array[segment.mask] = segment.label_value
        return self.grid.with_array(array)


def _segment_fields(header: Mapping[str, str]) -> list[dict[str, str]]:
    fields: dict[int, dict[str, str]] = {}
    for key, value in header.items():
        if key.startswith("Segment") and "_" in key and key[len("Segment"):key.index("_")].isdigit():
            index = int(key[len("Segment"):key.index("_")])
            fields.setdefault(index, {})[key[key.index("_") + 1:]] = str(value)
    return [fields[index] for index in sorted(fields)]


def _tags(text: str) -> dict[str, str]:
    tags = {}
    for item in text.split("|"):
        if ":" in item:
            key, value = item.split(":", 1)
            tags[key] = value
    return tags


def read_segmentation_nrrd(path: str | Path) -> SegmentationFile:
    """Read a ``.seg.nrrd`` (ours or Slicer's) with its LPS geometry and segment masks."""
    import nrrd

    path = Path(path)
    try:
        data, header = nrrd.read(str(path), index_order="C")
    except (OSError, nrrd.NRRDError) as error:
        raise InputError(f"cannot read segmentation {path}: {error}") from None
    space = header.get("space", LPS_SPACE)
    if space not in (LPS_SPACE, RAS_SPACE):
        raise InputError(f"{path}: unsupported NRRD space {space!r}")
    directions = np.asarray(header["space directions"], dtype=np.float64)
    if data.ndim == 4:
        stack = np.moveaxis(data, -1, 0)
        directions = directions[1:]
    elif data.ndim == 3:
        stack = data[np.newaxis]
    else:
        raise InputError(f"{path}: a segmentation has 3 or 4 dimensions, this one has {data.ndim}")
    columns = directions.T  # column c = physical step along axis (i, j, k)[c]
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    if space == RAS_SPACE:
        columns, origin = LPS_TO_RAS @ columns, LPS_TO_RAS @ origin
    spacing = np.linalg.norm(columns, axis=0)
    grid = Volume(array=stack[0], spacing=spacing, origin=origin, direction=columns / spacing)
    segments, layers = [], []
    for fields in _segment_fields(header):
        layer = int(fields.get("Layer", "0"))
        value = int(fields.get("LabelValue", "1"))
        color = tuple(float(v) for v in fields.get("Color", "0.5 0.5 0.5").split())
        segments.append(
            SegmentSpec(
                id=fields.get("ID", fields.get("Name", "")),
                name=fields.get("Name", fields.get("ID", "")),
                color=color,  # type: ignore[arg-type]
                terminology=_tags(fields.get("Tags", "")).get(TERMINOLOGY_TAG, ""),
                mask=stack[layer] == value,
                label_value=value,
            )
        )
        layers.append(layer)
    return SegmentationFile(grid=grid, segments=tuple(segments), layers=tuple(layers))
