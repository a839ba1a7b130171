"""MRML glue: the one module of the package that talks to Slicer's scene.

Everything here needs only what the ``slicer-core`` wheel provides (MRML nodes,
segmentations, subject hierarchy, VTK), so the same code runs inside Slicer and under
pytest.  ``slicer.util`` is not used: most of it needs a running Slicer application;
voxels move between numpy and VTK through ``vtk.util.numpy_support``.

Frames and orders:

* A Slicer volume node stores voxels in a ``vtkImageData`` with origin 0 and spacing 1;
  its geometry is the 4x4 IJK→RAS matrix.  :class:`~CervixAutoSegLib.volume.Volume`
  keeps LPS; :attr:`Volume.ijk_to_ras` / :meth:`Volume.from_ijk_to_ras` convert exactly.
* VTK point order has i (x) fastest, which is a C-order (z, y, x) numpy array flattened.

Segmentations made here hold one segment per structure (TG-263 name, model-card colour,
terminology tag), each labelmap on the grid the labels were computed on, collapsed into
the fewest shared layers without merging overlapping segments (the MR organ and the
tumour inside it end up in two layers).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .errors import InputError
from .progress import CancelCheck, ProgressCallback
from .segfile import BINARY_LABELMAP, TERMINOLOGY_CONTEXT, TERMINOLOGY_TAG, SegmentSpec, structure_segments
from .structures import Structure, structures_from_json
from .volume import Volume

log = logging.getLogger(__name__)

# Attributes/tags this module writes, namespaced so they never clash with Slicer's own.
SOURCE_VOLUME_REFERENCE = "CervixAutoSeg.SourceVolume"
"""Node reference role: segmentation node → the volume node it was computed from."""
MODEL_ATTRIBUTE = "CervixAutoSeg.Model"
"""Segmentation node attribute: id of the model that drew it."""
LABELS_ATTRIBUTE = "CervixAutoSeg.Labels"
"""Segmentation node attribute: the labels.json document (structures) of that model."""
LABEL_VALUE_TAG = "CervixAutoSeg.LabelValue"
"""Segment tag: the structure's label value; marks the segment as ours (replaced on re-run)."""

DICOM_INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
"""Volume node attribute Slicer's DICOM plugin sets: space-separated SOP Instance UIDs."""
DICOM_MODALITY_ATTRIBUTE = "DICOM.Modality"
"""Subject hierarchy series-item attribute Slicer's DICOM plugin sets."""

GRID_INDEX_TOLERANCE = 1e-3
"""Index-space distance below which a voxel centre counts as lying on the other grid."""

_NUMPY_SAFE_TYPES = {np.dtype(np.float16): np.float32, np.dtype(np.bool_): np.uint8}
"""numpy types VTK has no array for → the type they are stored as."""


# --------------------------------------------------------------- numpy ↔ VTK
def matrix_to_vtk(matrix: np.ndarray) -> vtk.vtkMatrix4x4:
    """4x4 numpy → ``vtkMatrix4x4``."""
    result = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            result.SetElement(row, column, float(matrix[row, column]))
    return result


def matrix_from_vtk(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """``vtkMatrix4x4`` → 4x4 float64 numpy."""
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def image_data_from_array(array: np.ndarray, image: vtk.vtkImageData | None = None) -> vtk.vtkImageData:
    """A deep copy of a (z, y, x) array as single-component ``vtkImageData`` (origin 0, spacing 1).

    ``image`` may be given to fill a subclass (``vtkOrientedImageData``).
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"a 3D array is needed, got shape {array.shape}")
    target_type = _NUMPY_SAFE_TYPES.get(array.dtype, array.dtype)
    flat = np.ascontiguousarray(array, dtype=target_type).reshape(-1)
    image = image if image is not None else vtk.vtkImageData()
    nz, ny, nx = array.shape
    image.SetDimensions(nx, ny, nz)
    image.SetOrigin(0.0, 0.0, 0.0)
    image.SetSpacing(1.0, 1.0, 1.0)
    scalars = numpy_support.numpy_to_vtk(flat, deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def array_from_image_data(image: vtk.vtkImageData) -> np.ndarray:
    """Copy of a single-component ``vtkImageData``'s voxels as a (z, y, x) array."""
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None:
        raise InputError("the volume has no voxel data")
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(f"a scalar volume is needed, this one has {scalars.GetNumberOfComponents()} components")
    extent = image.GetExtent()
    nx, ny, nz = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    return numpy_support.vtk_to_numpy(scalars).reshape(nz, ny, nx).copy()


# --------------------------------------------------------------- volume nodes
def _series_item_attribute(node, name: str) -> str:
    scene = node.GetScene()
    if scene is None:
        return ""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(node) if hierarchy else 0
    return hierarchy.GetItemAttribute(item, name) if item else ""


def node_modality(node) -> str:
    """``"CT"``/``"MR"`` from the DICOM attributes Slicer's DICOM import sets, else ``""``."""
    modality = _series_item_attribute(node, DICOM_MODALITY_ATTRIBUTE) or (node.GetAttribute(DICOM_MODALITY_ATTRIBUTE) or "")
    return modality.upper() if modality.upper() in ("CT", "MR") else ""


PLAIN_SCALAR_VOLUME = "vtkMRMLScalarVolumeNode"
"""The one volume class that holds a CT or MR image; its subclasses hold something else."""
VOLUME_KINDS = {
    "vtkMRMLLabelMapVolumeNode": "label map",
    "vtkMRMLVectorVolumeNode": "vector (e.g. RGB colour) volume",
    "vtkMRMLDiffusionWeightedVolumeNode": "diffusion-weighted volume",
    "vtkMRMLDiffusionTensorVolumeNode": "diffusion tensor volume",
    "vtkMRMLTensorVolumeNode": "tensor volume",
}
"""What the user is told a non-image volume is (subclasses of vtkMRMLScalarVolumeNode)."""


def is_plain_scalar_volume(node) -> bool:
    """True for a plain ``vtkMRMLScalarVolumeNode``, the class a CT or MR image loads as.

    ``IsA`` / ``GetFirstNodeByClass`` also match its subclasses (label maps, vector/RGB, DWI and
    tensor volumes), which are not images to contour; the panel's selector shows exactly this
    class too (``showChildNodeTypes`` false in the .ui).
    """
    return node is not None and node.GetClassName() == PLAIN_SCALAR_VOLUME


def first_input_volume(scene):
    """The first plain scalar volume of ``scene`` (the panel's default input), or None."""
    for index in range(scene.GetNumberOfNodesByClass(PLAIN_SCALAR_VOLUME)):
        node = scene.GetNthNodeByClass(index, PLAIN_SCALAR_VOLUME)
        if is_plain_scalar_volume(node):
            return node
    return None


def input_problem(node) -> str:
    """Why ``node`` cannot be contoured, as one sentence for the status line ('' when it can)."""
    name = node.GetName() or node.GetID()
    if not is_plain_scalar_volume(node):
        kind = VOLUME_KINDS.get(node.GetClassName(), node.GetClassName())
        return f"{name} is a {kind}, not a CT or MR image: select a scalar volume."
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        return f"{name} has no voxel data."
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        return f"{name} has {components} values per voxel (a colour or vector image), not a CT or MR image."
    return ""


def volume_from_node(node) -> Volume:
    """The voxels and geometry of a scalar volume node as a :class:`Volume` (copy, LPS).

    The geometry is the node's own IJK→RAS, i.e. in the frame of its parent transform;
    results built from it are placed under the same transform.  ``meta`` carries the
    node ID, name, modality source and, for DICOM-loaded volumes, the SOP Instance UIDs.
    """
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError("select a scalar volume (CT or MR image) as input")
    array = array_from_image_data(node.GetImageData())
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    modality = node_modality(node)
    meta = {"node_id": node.GetID(), "name": node.GetName() or "", "modality_source": "dicom" if modality else ""}
    uids = node.GetAttribute(DICOM_INSTANCE_UIDS_ATTRIBUTE)
    if uids:
        meta["sop_instance_uids"] = uids.split()
    return Volume.from_ijk_to_ras(array, matrix_from_vtk(ijk_to_ras), modality=modality, meta=meta)


def node_from_volume(scene, volume: Volume, name: str, *, labelmap: bool = False):
    """Add a ``vtkMRMLScalarVolumeNode`` (or labelmap node) holding ``volume`` exactly.

    IJK→RAS comes from :attr:`Volume.ijk_to_ras` (works for sheared grids too); the
    voxels are deep-copied.  Display nodes are created when the scene can (slicer-core
    without colour tables simply leaves them out).
    """
    node = slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
    node.SetName(scene.GenerateUniqueName(name) if scene.GetFirstNodeByName(name) else name)
    node.SetIJKToRASMatrix(matrix_to_vtk(volume.ijk_to_ras))
    node.SetAndObserveImageData(image_data_from_array(volume.array))
    scene.AddNode(node)
    try:
        node.CreateDefaultDisplayNodes()
    except Exception as error:  # noqa: BLE001 - display needs colour logic a bare scene may lack
        log.debug("no display node for %s: %s", node.GetName(), error)
    return node


# --------------------------------------------------------------- segmentations
def oriented_image(mask: np.ndarray, grid: Volume) -> slicer.vtkOrientedImageData:
    """uint8 ``vtkOrientedImageData`` of a (z, y, x) mask placed on ``grid`` (RAS)."""
    image = image_data_from_array(np.asarray(mask, dtype=np.uint8), slicer.vtkOrientedImageData())
    image.SetImageToWorldMatrix(matrix_to_vtk(grid.ijk_to_ras))
    return image


def _segment(spec: SegmentSpec, grid: Volume) -> slicer.vtkSegment:
    segment = slicer.vtkSegment()
    segment.SetName(spec.name)
    segment.SetNameAutoGenerated(False)
    segment.SetColor(*spec.color)
    segment.SetColorAutoGenerated(False)
    segment.SetLabelValue(1)
    if spec.terminology:
        segment.SetTag(TERMINOLOGY_TAG, spec.terminology)
    segment.SetTag(LABEL_VALUE_TAG, str(spec.label_value))
    segment.AddRepresentation(BINARY_LABELMAP, oriented_image(spec.mask, grid))
    return segment


def our_segment_ids(segmentation_node) -> list[str]:
    """IDs of the segments a previous run of ours made (they carry :data:`LABEL_VALUE_TAG`)."""
    segmentation = segmentation_node.GetSegmentation()
    ids = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = vtk.reference("")
        if segment.GetTag(LABEL_VALUE_TAG, value):
            ids.append(segmentation.GetNthSegmentID(index))
    return ids


def find_result_node(scene, volume_node):
    """The segmentation node a previous run made for ``volume_node``, or None."""
    # GetNthNodeByClass, unlike GetNodesByClass, returns no new collection to release.
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        if node.GetNodeReferenceID(SOURCE_VOLUME_REFERENCE) == volume_node.GetID():
            return node
    return None


def place_in_study(scene, node, reference_node) -> None:
    """Put ``node`` in the subject hierarchy next to ``reference_node`` (same study folder)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    if not reference_item:
        return
    parent = hierarchy.GetItemParent(reference_item)
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:
        hierarchy.CreateItem(parent, node)


def place_reference_geometry(segmentation_node, volume_node) -> None:
    """Put a segmentation (in the scene) under the volume's parent transform, on the volume's grid.

    The segments hold labelmaps on the volume's own grid (its 4x4 IJK→RAS, RAS in mm), i.e. in
    the frame of the volume's parent transform, so the segmentation goes under that same transform.  The
    reference image geometry is set *after* that: Slicer's
    ``SetReferenceImageGeometryParameterFromVolumeNode`` maps the volume's grid through the
    transform *between* the two nodes, which is then none.  Set before (while the
    segmentation is untransformed) it bakes the volume's transform into the geometry, and
    Slicer applies the same transform a second time when showing or editing the segments.
    """
    if volume_node.GetTransformNodeID():
        segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)


def _fill(segmentation_node, segments: Sequence[slicer.vtkSegment], names: Sequence[str]) -> list[str]:
    """Add ready-made segments (IDs from their names, made unique); return the IDs."""
    segmentation = segmentation_node.GetSegmentation()
    ids = []
    for segment, name in zip(segments, names):
        segment_id = name if segmentation.GetSegment(name) is None else segmentation.GenerateUniqueSegmentID(name)
        segmentation.AddSegment(segment, segment_id)
        ids.append(segment_id)
    # Shared layers save memory; overlapping segments still get layers of their own.
    segmentation.CollapseBinaryLabelmaps(False)
    return ids


def add_segmentation(
    scene,
    volume_node,
    labels: Volume,
    structures: Sequence[Structure],
    *,
    containment: Mapping[int, Sequence[int]] | None = None,
    model_id: str = "",
    name: str | None = None,
):
    """Put a run's label map into the scene as segments; return the segmentation node.

    The new segments are built completely before the scene is touched.  If a previous
    run made a segmentation for ``volume_node``, its segments from that run (and only
    those: ones the user added stay) are then replaced in one modification; otherwise a
    new node is added, with the input's reference geometry and parent transform, in the
    input's study of the subject hierarchy.

    Args:
        labels: integer label map; any grid in the volume node's frame (normally the
            node's own grid).  Each segment keeps exactly this grid.
        structures: names, colours, codes of the label values.
        containment: structure value → label values its segment covers (MR organ ⊃ tumour).
    """
    specs = structure_segments(labels, structures, containment)
    segments = [_segment(spec, labels) for spec in specs]  # may raise: the scene is still untouched
    labels_json = json.dumps({"model": model_id, "labels": [s.to_json() for s in structures]})

    node = find_result_node(scene, volume_node)
    if node is not None:
        was_modifying = node.StartModify()
        try:
            for segment_id in our_segment_ids(node):
                node.GetSegmentation().RemoveSegment(segment_id)
            _fill(node, segments, [spec.name for spec in specs])
            node.SetAttribute(MODEL_ATTRIBUTE, model_id)
            node.SetAttribute(LABELS_ATTRIBUTE, labels_json)
        finally:
            node.EndModify(was_modifying)
        return node

    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(name or f"{volume_node.GetName()} auto-contours")
    _fill(node, segments, [spec.name for spec in specs])
    node.SetAttribute(MODEL_ATTRIBUTE, model_id)
    node.SetAttribute(LABELS_ATTRIBUTE, labels_json)
    scene.AddNode(node)
    node.SetNodeReferenceID(SOURCE_VOLUME_REFERENCE, volume_node.GetID())
    place_reference_geometry(node, volume_node)
    node.CreateDefaultDisplayNodes()
    place_in_study(scene, node, volume_node)
    return node


# ------------------------------------------------------ segments → label maps
def _index_map(source_ijk_to_ras: np.ndarray, grid: Volume) -> np.ndarray:
    """4x4 affine: (i, j, k) of ``grid`` → continuous (i, j, k) of the source image."""
    return np.linalg.inv(source_ijk_to_ras) @ grid.ijk_to_ras


def _gather_axis_aligned(source: np.ndarray, mapping: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray | None:
    """Fast exact path of :func:`resample_nearest` when the grids differ only by axis order,
    flips and a whole-voxel shift (the usual case: same series, other stacking); else None.
    """
    linear, offset = mapping[:3, :3], mapping[:3, 3]
    permutation = np.rint(linear)
    if not (np.allclose(linear, permutation, atol=GRID_INDEX_TOLERANCE)
            and np.allclose(offset, np.rint(offset), atol=GRID_INDEX_TOLERANCE)
            and np.array_equal(np.abs(permutation).sum(axis=0), np.ones(3))
            and np.array_equal(np.abs(permutation).sum(axis=1), np.ones(3))):
        return None
    target_size = shape[::-1]  # (i, j, k) lengths
    source_size = source.shape[::-1]
    indices: list = [None, None, None]  # per source array axis (k, j, i) = (2, 1, 0) of ijk
    valid = np.ones(shape, dtype=bool)
    for target_axis in range(3):
        source_axis = int(np.argmax(np.abs(permutation[:, target_axis])))
        coordinates = permutation[source_axis, target_axis] * np.arange(target_size[target_axis]) \
            + int(np.rint(offset[source_axis]))
        inside = (coordinates >= 0) & (coordinates < source_size[source_axis])
        broadcast = [1, 1, 1]
        broadcast[2 - target_axis] = -1  # target array axis of ijk axis a is 2 - a
        indices[2 - source_axis] = np.clip(coordinates, 0, source_size[source_axis] - 1).astype(np.int64).reshape(
            broadcast)
        valid &= inside.reshape(broadcast)
    return np.where(valid, source[tuple(indices)], np.zeros((), dtype=source.dtype))


def resample_nearest(source: np.ndarray, source_ijk_to_ras: np.ndarray, grid: Volume) -> np.ndarray:
    """Nearest-neighbour copy of a (z, y, x) ``source`` array onto ``grid`` (0 outside).

    Exact (no interpolation) when the grids' voxel centres coincide, whatever the axis
    order or flips; computed slice by slice to bound memory.
    """
    mapping = _index_map(source_ijk_to_ras, grid)
    gathered = _gather_axis_aligned(source, mapping, grid.shape)
    if gathered is not None:
        return gathered
    nz, ny, nx = grid.shape
    sz, sy, sx = source.shape
    result = np.zeros(grid.shape, dtype=source.dtype)
    j, i = np.mgrid[0:ny, 0:nx]
    plane = np.stack([i.ravel(), j.ravel(), np.zeros(i.size), np.ones(i.size)])
    for k in range(nz):
        plane[2] = k
        si, sj, sk = np.rint(mapping[:3] @ plane).astype(np.int64)
        inside = (si >= 0) & (si < sx) & (sj >= 0) & (sj < sy) & (sk >= 0) & (sk < sz)
        values = np.zeros(i.size, dtype=source.dtype)
        values[inside] = source[sk[inside], sj[inside], si[inside]]
        result[k] = values.reshape(ny, nx)
    return result


def segment_mask(segmentation_node, segment_id: str, grid: Volume) -> np.ndarray:
    """Boolean (z, y, x) mask of one segment on ``grid`` (in the node's frame)."""
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        raise InputError(f"segment {segment_id!r} does not exist")
    image = segment.GetRepresentation(BINARY_LABELMAP)
    if image is None or image.GetPointData().GetScalars() is None:
        return np.zeros(grid.shape, dtype=bool)
    extent = image.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return np.zeros(grid.shape, dtype=bool)
    voxels = array_from_image_data(image) == segment.GetLabelValue()
    image_to_world = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(image_to_world)
    # The stored array starts at the extent's lower corner, not at index 0.
    shift = np.eye(4)
    shift[:3, 3] = (extent[0], extent[2], extent[4])
    return resample_nearest(voxels, matrix_from_vtk(image_to_world) @ shift, grid)


def node_structures(segmentation_node) -> tuple[Structure, ...]:
    """The structures recorded on a segmentation we made (empty for others)."""
    document = segmentation_node.GetAttribute(LABELS_ATTRIBUTE)
    return structures_from_json(json.loads(document)) if document else ()


def labels_from_segmentation(segmentation_node, grid: Volume) -> tuple[Volume, tuple[Structure, ...], list[str]]:
    """Our segments as a uint8 label map on ``grid``, painted in structure order.

    Returns ``(labels, structures, skipped)``: ``skipped`` names segments that are not a
    structure of the model (user-added), which a label map cannot name.  Painting in
    structure order restores the MR convention: the tumour is painted over the organ.
    """
    structures = node_structures(segmentation_node)
    if not structures:
        raise InputError(f"{segmentation_node.GetName()} was not made by CervixAutoSeg (no structure list)")
    by_value = {s.value: s for s in structures}
    segmentation = segmentation_node.GetSegmentation()
    found: dict[int, str] = {}
    skipped = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = vtk.reference("")
        if segment.GetTag(LABEL_VALUE_TAG, value) and int(str(value)) in by_value:
            found[int(str(value))] = segmentation.GetNthSegmentID(index)
        else:
            skipped.append(segment.GetName())
    array = np.zeros(grid.shape, dtype=np.uint8)
    for structure in structures:
        if structure.value in found:
            array[segment_mask(segmentation_node, found[structure.value], grid)] = structure.value
    return grid.with_array(array), structures, skipped


# ------------------------------------------------------------------ terminology
def register_terminology(terminology_logic, path, structures: Sequence[Structure] | None = None) -> str:
    """Make a ``vtkSlicerTerminologiesModuleLogic`` know every code our segments' tags use.

    Loads our ``.term.json`` (the category/type context the tags name), then adds the anatomic
    regions the region context lacks (:func:`register_regions`).  ``structures``: those of
    every registered model family when None.  Returns the category/type context name.
    """
    name = terminology_logic.LoadTerminologyFromFile(str(path))
    if not name:
        raise InputError(f"cannot load terminology {path}")
    if name != TERMINOLOGY_CONTEXT:
        # Our segments' tags name TERMINOLOGY_CONTEXT; another name would leave them unresolved.
        raise InputError(f"{path} defines context {name!r}, segments use {TERMINOLOGY_CONTEXT!r}")
    if structures is None:
        from .families import families

        structures = [structure for family in families() for structure in family.structures]
    register_regions(terminology_logic, structures)
    return name


def loaded_regions(terminology_logic, context: str) -> set[tuple[str, str]]:
    """(coding scheme, code value) of every region in a loaded region context."""
    regions = set()
    region = slicer.vtkSlicerTerminologyType()
    for index in range(terminology_logic.GetNumberOfRegionsInRegionContext(context)):
        if terminology_logic.GetNthRegionInRegionContext(context, index, region):
            regions.add((region.GetCodingSchemeDesignator(), region.GetCodeValue()))
    return regions


def register_regions(terminology_logic, structures: Sequence[Structure]) -> list[str]:
    """Add our structures' anatomic regions to the loaded region context their tags name, where missing.

    Why: the tags name Slicer's "Anatomic codes - DICOM master list", and CTVn's region
    (SCT 8128005 "Pelvic lymph node") is not in that list (Slicer v5.10.0), so the terminology
    selector could not show it.  Slicer's own merge for segment descriptors
    (``LoadRegionContextFromSegmentDescriptorFile``, as used for DICOM SEG metadata) adds the
    missing regions to the context in memory; Slicer's files are not touched and regions
    already listed are left as they are (a merge replaces an existing entry with a bare code,
    so those are never passed).  A context that is not loaded is left alone.  Returns the
    added regions as ``scheme^value``.
    """
    from .segfile import terminology_tag

    loaded = vtk.vtkStringArray()
    terminology_logic.GetLoadedRegionContextNames(loaded)
    loaded_names = {loaded.GetValue(i) for i in range(loaded.GetNumberOfValues())}
    wanted: dict[str, dict[tuple[str, str], object]] = {}
    for structure in structures:
        if structure.region is None:
            continue
        entry = slicer.vtkSlicerTerminologyEntry()
        if not terminology_logic.DeserializeTerminologyEntry(terminology_tag(structure), entry):
            raise InputError(f"{structure.name}: its terminology tag cannot be read")
        code = structure.region
        wanted.setdefault(entry.GetRegionContextName(), {})[(code.scheme, code.value)] = code
    added = []
    for context, codes in wanted.items():
        if context not in loaded_names:
            log.debug("region context %r is not loaded; regions not added", context)
            continue
        present = loaded_regions(terminology_logic, context)
        missing = [code for key, code in codes.items() if key not in present]
        if missing:
            _merge_regions(terminology_logic, context, missing)
            added += [f"{code.scheme}^{code.value}" for code in missing]
    return added


def _merge_regions(terminology_logic, context: str, codes: Sequence) -> None:
    """Merge ``codes`` into a loaded region context through a dcmqi segment-descriptor file.

    Only with at least one code: Slicer's merge moves the context's region list out and puts
    it back only when it added something.
    """
    import tempfile

    attributes = [[{"labelID": index + 1,
                    "AnatomicRegionSequence": {"CodingSchemeDesignator": code.scheme, "CodeValue": code.value,
                                               "CodeMeaning": code.meaning}}]
                  for index, code in enumerate(codes)]
    with tempfile.TemporaryDirectory(prefix="CervixAutoSeg-terminology-") as folder:
        descriptor = Path(folder) / "regions.json"
        descriptor.write_text(json.dumps({"segmentAttributes": attributes}), encoding="utf-8")
        if not terminology_logic.LoadRegionContextFromSegmentDescriptorFile(context, str(descriptor)):
            raise InputError(f"cannot add anatomic regions to {context!r}")


# ----------------------------------------------------------------- the logic
class AutoContourLogic:
    """Auto-contouring over MRML, usable from Slicer's Python console without the GUI.

    >>> logic = AutoContourLogic(slicer.mrmlScene)
    >>> segmentation = logic.run(slicer.util.getNode("CT"), model="auto", device="cpu")

    ``segment`` is the pipeline function (:func:`CervixAutoSegLib.pipeline.segment` by
    default, injectable for tests); it runs in this process.  The module widget uses the
    same :meth:`apply_result` after running the pipeline in a background process.
    """

    def __init__(self, scene, segment: Callable | None = None):
        self.scene = scene
        self._segment = segment

    def _pipeline(self) -> Callable:
        if self._segment is None:
            from .pipeline import segment

            self._segment = segment
        return self._segment

    def run(self, volume_node, out_dir, *, model: str = "auto", device: str = "auto",
            progress: ProgressCallback | None = None, cancel: CancelCheck | None = None,
            dicom_files: Sequence | None = None, allow_non_t2: bool = False):
        """Segment ``volume_node``; outputs go to ``out_dir``; return the segmentation node.

        With ``dicom_files`` (see :func:`dicom_files_of`) the pipeline reads the node's DICOM
        origin instead of its voxels, so its outputs include an RTSTRUCT referencing that
        series, and an MR series that is not T2-weighted is refused unless ``allow_non_t2``.
        Any exception (including :class:`~CervixAutoSegLib.errors.Cancelled`)
        propagates before the scene is touched.
        """
        import tempfile
        with tempfile.TemporaryDirectory(prefix="CervixAutoSeg-dicom-") as staging:
            if dicom_files:
                source = stage_files(dicom_files, Path(staging))
            else:
                source = volume_from_node(volume_node)
            result = self._pipeline()(source, out_dir, model=model, device=device, progress=progress, cancel=cancel,
                                      allow_non_t2=allow_non_t2)
        labels, structures, model_id, containment = result_parts(result)
        return add_segmentation(self.scene, volume_node, labels, structures,
                                containment=containment, model_id=model_id)

    def apply_result(self, volume_node, out_dir):
        """Load a finished run's ``segmentation.seg.nrrd`` + ``labels.json`` into the scene."""
        labels, structures, model_id, containment = read_result_dir(out_dir)
        return add_segmentation(self.scene, volume_node, labels, structures,
                                containment=containment, model_id=model_id)


def stage_files(files: Sequence, folder) -> Path:
    """A folder holding exactly ``files`` (symbolic links, copies where links are not allowed)."""
    import shutil
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, file in enumerate(files):
        target = folder / f"{index:06d}_{Path(file).name}"
        try:
            target.symlink_to(Path(file).resolve())
        except OSError:  # e.g. Windows without the symlink privilege
            shutil.copy2(file, target)
    return folder


def result_parts(result) -> tuple[Volume, tuple[Structure, ...], str, dict]:
    """(labels, structures, model id, containment) from a pipeline result.

    Accepts the pipeline's result object (attributes ``labels``, ``structures``,
    ``model``/``card``) or an output folder path.
    """
    if isinstance(result, (str, Path)):
        return read_result_dir(result)
    labels = result.labels
    card = getattr(result, "card", None) or getattr(result, "model", None)
    structures = tuple(getattr(result, "structures", None) or card.structures)
    model_id = getattr(card, "id", str(card or ""))
    return labels, structures, model_id, containment_for(structures)


def containment_for(structures: Sequence[Structure]) -> dict:
    """Organ segments cover the tumour painted over them (MR); nothing for CT."""
    from .rtstruct.writer import organ_tumour_containment

    return organ_tumour_containment(structures)


def read_result_dir(out_dir) -> tuple[Volume, tuple[Structure, ...], str, dict]:
    """(labels, structures, model id, containment) from a ``segment`` output folder.

    Labels come from ``segmentation.seg.nrrd`` (exact geometry, sheared grids included),
    falling back to ``labels.nii.gz``.
    """
    from .segfile import read_segmentation_nrrd

    out_dir = Path(out_dir)
    labels_json = out_dir / "labels.json"
    if not labels_json.is_file():
        raise InputError(f"{out_dir} holds no labels.json: the run did not finish")
    document = json.loads(labels_json.read_text(encoding="utf-8"))
    structures = structures_from_json(document)
    seg_file = out_dir / "segmentation.seg.nrrd"
    if seg_file.is_file():
        labels = read_segmentation_nrrd(seg_file).label_map()
    else:
        from .image_io import load_image

        labels = load_image(out_dir / "labels.nii.gz")
    return labels, structures, str(document.get("model", "")), containment_for(structures)


def summary(segmentation_node) -> str:
    """One line for the status bar: how many segments, in which node."""
    count = segmentation_node.GetSegmentation().GetNumberOfSegments()
    return f"{count} segments in '{segmentation_node.GetName()}'"


# ------------------------------------------------------------------ RTSTRUCT
RTSTRUCT_FILE_PREFIX = "RS_CervixAutoSeg_"


def dicom_files_of(volume_node, file_for_instance: Callable[[str], str]) -> list:
    """The DICOM files a volume node was loaded from (via Slicer's DICOM database lookup).

    ``file_for_instance`` is ``slicer.dicomDatabase.fileForInstance`` inside Slicer.
    """
    uids = (volume_node.GetAttribute(DICOM_INSTANCE_UIDS_ATTRIBUTE) or "").split()
    files = [Path(name) for name in (file_for_instance(uid) for uid in uids) if name]
    if not files:
        raise InputError(
            f"{volume_node.GetName()} was not loaded from DICOM, so there is no series to reference; "
            "save the segmentation as .seg.nrrd, or load the images through the DICOM module"
        )
    missing = [path for path in files if not path.is_file()]
    if missing:
        raise InputError(f"{len(missing)} DICOM file(s) of {volume_node.GetName()} are gone, e.g. {missing[0]}")
    return files


def export_rtstruct(segmentation_node, dicom_files: Sequence, out_path=None, *, model_version: str = ""):
    """Write our segments as an RTSTRUCT referencing the DICOM series they were drawn on.

    The segments are copied voxel by voxel onto the grid our DICOM reader builds from
    ``dicom_files`` (any order of files, flips, tilt), then contoured by
    :func:`CervixAutoSegLib.rtstruct.write_rtstruct`.  Default target: next to the series
    (``RS_CervixAutoSeg_<series UID>.dcm``), for series in a folder of the user's own; the panel
    never uses it (a series folder may be inside Slicer's DICOM database: see
    :func:`export_to_dicom_database`).  Returns ``(path, structures, skipped names)``.
    """
    from . import __version__
    from .dicom_series import read_dicom_series
    from .rtstruct import write_rtstruct

    reference = read_dicom_series([Path(p) for p in dicom_files])
    labels, structures, skipped = labels_from_segmentation(segmentation_node, reference)
    if out_path is None:
        series_uid = reference.meta.get("series_instance_uid", "series")
        out_path = Path(dicom_files[0]).parent / f"{RTSTRUCT_FILE_PREFIX}{series_uid}.dcm"
    model_id = segmentation_node.GetAttribute(MODEL_ATTRIBUTE) or "CervixAutoSeg"
    path = write_rtstruct(out_path, labels, reference, structures, model_name=model_id,
                          model_version=model_version or __version__,
                          containment=containment_for(structures) or None)
    return Path(path), structures, skipped


def export_to_dicom_database(segmentation_node, file_for_instance: Callable[[str], str],
                             add_to_database: Callable[[Path], None], work_dir=None) -> str:
    """Export RTSTRUCT button: put the RTSTRUCT into the DICOM database; return the status line.

    The source series' folder is never written to: for imported DICOM it may be inside
    Slicer's DICOM database, whose files only the database should add.  As Slicer's own DICOM
    export does, the object is written into a temporary folder (under ``work_dir``), handed to
    ``add_to_database`` (in Slicer a ``ctkDICOMIndexer`` copying it into the database), and the
    temporary copy is removed.  ``file_for_instance`` (``slicer.dicomDatabase.fileForInstance``)
    finds the source series and then confirms the database holds the new object.
    """
    import tempfile

    import pydicom

    volume_node = segmentation_node.GetNodeReference(SOURCE_VOLUME_REFERENCE) if segmentation_node else None
    if volume_node is None:
        raise InputError("select a segmentation made by CervixAutoSeg (its source volume is unknown)")
    files = dicom_files_of(volume_node, file_for_instance)
    with tempfile.TemporaryDirectory(prefix="CervixAutoSeg-rtstruct-", dir=work_dir) as folder:
        path, structures, skipped = export_rtstruct(segmentation_node, files, Path(folder) / "RS_CervixAutoSeg.dcm")
        instance_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        add_to_database(path)
    stored = file_for_instance(instance_uid)
    if not stored:
        raise InputError("the DICOM database did not take the RTSTRUCT (see the error log)")
    text = (f"RTSTRUCT with {len(structures)} ROIs added to the DICOM database, in the study of "
            f"{volume_node.GetName()} (export or send it from the DICOM browser)")
    if skipped:
        text += f"; not exported (not model structures): {', '.join(skipped)}"
    return text + "."


# ------------------------------------------------------------------ panel input
class VolumeNodeInput:
    """The selected volume node as the controller's :class:`~CervixAutoSegLib.controller.RunInput`.

    The child process gets the node's voxels exactly as shown (NRRD keeps any grid,
    sheared included), whatever file or DICOM series the node came from.
    """

    INPUT_FILE = "input.nrrd"

    def __init__(self, node):
        from .image_io import guess_modality

        self.node = node
        self.name = node.GetName() or node.GetID()
        # Never raises: an RGB or label map volume selected (or found in the scene) must not break
        # the panel; the controller shows this sentence and keeps the button disabled.
        self.problem = input_problem(node)
        self.modality = "" if self.problem else node_modality(node)
        if not self.modality and not self.problem:
            # Files without DICOM tags: the same air-fraction guess the command line makes.
            self.modality = guess_modality(volume_from_node(node))

    def write(self, folder) -> Path:
        from .image_io import write_image

        path = Path(folder) / self.INPUT_FILE
        write_image(volume_from_node(self.node), path)
        return path
