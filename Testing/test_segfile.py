"""segfile: our headless .seg.nrrd writer, checked against Slicer's real segmentation reader.

Every file is read back with ``vtkMRMLSegmentationStorageNode`` from slicer-core into a
fresh scene; names, colours, terminology and every voxel's LPS position are compared.
"""

from __future__ import annotations

import numpy as np
import pytest

from CervixAutoSegLib.errors import InputError
from CervixAutoSegLib.segfile import (
    TERMINOLOGY_CONTEXT,
    assign_layers,
    read_segmentation_nrrd,
    structure_segments,
    write_segmentation_nrrd,
    write_segments_nrrd,
)
from CervixAutoSegLib.ct.family import CT_STRUCTURES
from CervixAutoSegLib.mr.family import MR_STRUCTURES
from CervixAutoSegLib.volume import Volume

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


GEOMETRIES = {
    # (direction, spacing (x,y,z), origin LPS)
    "axial_head_first": (np.eye(3), (0.977, 0.977, 3.0), (-250.0, -180.5, -120.0)),
    "feet_first_prone": (np.diag([1.0, -1.0, -1.0]) @ np.diag([-1.0, 1.0, 1.0]), (0.8, 1.1, 2.5), (120.3, 90.1, 40.0)),
    "oblique": (rotation([1, 2, 3], 23.0), (0.469, 0.531, 5.0), (-101.25, 33.3, -7.7)),
    "gantry_tilt_sheared": (
        np.column_stack([[1, 0, 0], [0, 1, 0], np.array([0, np.sin(np.deg2rad(15)), np.cos(np.deg2rad(15))])]),
        (0.9, 0.9, 2.0), (-200.0, -150.0, 30.0)),
}


def labels_on(name: str, shape=(7, 11, 13), overlap_values=(1, 2, 3, 4)) -> Volume:
    """A non-square, anisotropic label map with every structure present and asymmetric blobs."""
    direction, spacing, origin = GEOMETRIES[name]
    array = np.zeros(shape, dtype=np.uint8)
    array[1:4, 2:6, 1:5] = overlap_values[0]
    array[2:6, 7:10, 3:9] = overlap_values[1]
    if len(overlap_values) > 2:
        array[0:2, 0:3, 9:13] = overlap_values[2]
        array[5:7, 4:6, 10:12] = overlap_values[3]
    return Volume(array=array, spacing=spacing, origin=origin, direction=direction, modality="CT")


def mr_labels(name: str) -> Volume:
    """MR convention: tumour (2) painted inside the organ (1)."""
    volume = labels_on(name, overlap_values=(1, 1))
    array = volume.array.copy()
    array[2:3, 3:5, 2:4] = 2
    return volume.with_array(array)


_SCENES = []  # a node's scene is only weakly referenced: keep scenes alive for the test


def read_with_slicer(path):
    """Fresh scene + the real storage node → the segmentation node."""
    scene = slicer.vtkMRMLScene()
    _SCENES.append(scene)
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


def slicer_segment_lps_points(node, segment_id) -> np.ndarray:
    """LPS positions (n, 3) of the voxels Slicer holds for a segment, sorted."""
    segment = node.GetSegmentation().GetSegment(segment_id)
    image = segment.GetRepresentation("Binary labelmap")
    extent = image.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    from vtk.util import numpy_support

    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    k, j, i = np.nonzero(voxels == segment.GetLabelValue())
    ijk = np.stack([i + extent[0], j + extent[2], k + extent[4], np.ones_like(i)]).astype(float)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]) @ ijk
    lps = (np.diag([-1.0, -1.0, 1.0]) @ ras[:3]).T
    return lps[np.lexsort(lps.T[::-1])]


def expected_lps_points(volume: Volume, mask: np.ndarray) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    lps = volume.index_to_physical(np.stack([i, j, k], axis=1))
    return lps[np.lexsort(lps.T[::-1])]


def segment_tag(segment, name: str) -> str:
    value = vtk.reference("")
    assert segment.GetTag(name, value), f"segment {segment.GetName()} lacks tag {name}"
    return str(value)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_ct_segmentation_loads_in_slicer_with_names_colours_codes_and_exact_voxels(tmp_path, geometry):
    labels = labels_on(geometry)
    path = write_segmentation_nrrd(tmp_path / "ct.seg.nrrd", labels, CT_STRUCTURES)

    node = read_with_slicer(path)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(CT_STRUCTURES)
    assert segmentation.GetNumberOfLayers() == 1  # CT structures never overlap
    for structure in CT_STRUCTURES:
        segment = segmentation.GetSegment(structure.name)
        assert segment is not None
        assert segment.GetName() == structure.name
        assert np.allclose(segment.GetColor(), structure.color_float, atol=1e-6)
        terminology = segment_tag(segment, "TerminologyEntry")
        assert terminology.startswith(TERMINOLOGY_CONTEXT + "~")
        assert structure.type.slicer() in terminology and structure.category.slicer() in terminology
        got = slicer_segment_lps_points(node, structure.name)
        want = expected_lps_points(labels, labels.array == structure.value)
        assert got.shape == want.shape and len(want) > 0
        assert np.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("geometry", ["oblique", "feet_first_prone"])
def test_mr_organ_and_tumour_overlap_as_two_layers(tmp_path, geometry):
    from CervixAutoSegLib.rtstruct import organ_tumour_containment

    labels = mr_labels(geometry)
    containment = organ_tumour_containment(MR_STRUCTURES)
    path = write_segmentation_nrrd(tmp_path / "mr.seg.nrrd", labels, MR_STRUCTURES, containment)

    node = read_with_slicer(path)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfLayers() == 2
    organ, tumour = MR_STRUCTURES
    organ_points = slicer_segment_lps_points(node, organ.name)
    assert np.allclose(organ_points, expected_lps_points(labels, labels.array > 0), atol=1e-6)
    assert np.allclose(slicer_segment_lps_points(node, tumour.name),
                       expected_lps_points(labels, labels.array == 2), atol=1e-6)


def test_our_reader_round_trips_our_file_and_restores_the_label_map(tmp_path):
    from CervixAutoSegLib.rtstruct import organ_tumour_containment

    labels = mr_labels("gantry_tilt_sheared")
    path = write_segmentation_nrrd(tmp_path / "mr.seg.nrrd", labels, MR_STRUCTURES,
                                   organ_tumour_containment(MR_STRUCTURES))
    back = read_segmentation_nrrd(path)
    assert back.grid.same_grid(labels, tolerance=1e-9)
    assert np.array_equal(back.label_map().array, labels.array)
    assert [s.name for s in back.segments] == [s.name for s in MR_STRUCTURES]
    assert back.layers == (0, 1)
    assert back.segment("GTVp").terminology.endswith("Anatomic codes - DICOM master list~SCT^71252005^Cervix uteri~^^")


def test_our_reader_reads_a_file_slicer_wrote(tmp_path):
    """Slicer crops to the segments' extent; our reader must still place the voxels exactly."""
    labels = labels_on("oblique")
    node = read_with_slicer(write_segmentation_nrrd(tmp_path / "a.seg.nrrd", labels, CT_STRUCTURES))
    storage = slicer.vtkMRMLSegmentationStorageNode()
    node.GetScene().AddNode(storage)
    storage.SetFileName(str(tmp_path / "by_slicer.seg.nrrd"))
    assert storage.WriteData(node) == 1

    back = read_segmentation_nrrd(tmp_path / "by_slicer.seg.nrrd")
    for structure in CT_STRUCTURES:
        segment = back.segment(structure.name)
        got = expected_lps_points(back.grid, segment.mask)
        assert np.allclose(got, expected_lps_points(labels, labels.array == structure.value), atol=1e-6)


def test_absent_structure_is_an_empty_segment_slicer_accepts(tmp_path):
    labels = labels_on("axial_head_first")
    labels = labels.with_array(np.where(labels.array == 3, 0, labels.array).astype(np.uint8))
    node = read_with_slicer(write_segmentation_nrrd(tmp_path / "e.seg.nrrd", labels, CT_STRUCTURES))
    assert node.GetSegmentation().GetNumberOfSegments() == 4
    assert len(slicer_segment_lps_points(node, "CTVn")) == 0


def test_write_is_atomic_existing_file_survives_a_failing_write(tmp_path, monkeypatch):
    import nrrd

    labels = labels_on("axial_head_first")
    target = write_segmentation_nrrd(tmp_path / "keep.seg.nrrd", labels, CT_STRUCTURES)
    before = target.read_bytes()

    def half_written(path, *args, **kwargs):
        with open(path, "wb") as stream:
            stream.write(b"NRRD0004\ntype: uint8\n")  # a crash mid-file
        raise OSError("disk full")

    monkeypatch.setattr(nrrd, "write", half_written)
    with pytest.raises(OSError):
        write_segmentation_nrrd(target, labels, CT_STRUCTURES)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.seg.nrrd"]


def test_label_values_outside_uint8_are_refused(tmp_path):
    from CervixAutoSegLib.structures import Structure

    labels = labels_on("axial_head_first")
    odd = Structure(300, "Odd", "Odd", (1, 2, 3), "ORGAN", CT_STRUCTURES[0].category, CT_STRUCTURES[0].type)
    with pytest.raises(InputError, match="1-255"):
        write_segmentation_nrrd(tmp_path / "odd.seg.nrrd", labels, (odd,))
    assert not list(tmp_path.iterdir())


def test_assign_layers_first_fit():
    a = np.zeros((2, 2, 2), bool); a[0] = True
    b = np.zeros((2, 2, 2), bool); b[1] = True
    c = a | b
    assert assign_layers([a, b, c, a]) == [0, 0, 1, 2]


def test_structure_segments_cover_contained_values():
    labels = mr_labels("axial_head_first")
    segments = structure_segments(labels, MR_STRUCTURES, {1: (1, 2)})
    assert segments[0].mask.sum() == np.count_nonzero(labels.array)
    assert segments[1].mask.sum() == np.count_nonzero(labels.array == 2)


def _mr_without_tumour(name: str) -> Volume:
    volume = mr_labels(name)
    return volume.with_array(np.where(volume.array == 2, 1, volume.array).astype(np.uint8))


def _mr_tumour_without_organ(name: str) -> Volume:
    volume = mr_labels(name)
    return volume.with_array(np.where(volume.array == 1, 0, volume.array).astype(np.uint8))


def _with_stray_value(name: str) -> Volume:
    """A CT label map holding a value no structure names (7) and stored as int16."""
    volume = labels_on(name)
    array = volume.array.astype(np.int16)
    array[6, 10, 0:3] = 7
    return volume.with_array(array)


@pytest.mark.parametrize("case", ["ct", "ct_stray_int16", "ct_float32", "mr", "mr_without_tumour",
                                  "mr_tumour_without_organ", "mr_empty"])
def test_label_map_writer_gives_the_file_of_one_mask_per_segment(tmp_path, case):
    """write_segmentation_nrrd paints layers from the label map by lookup; the reference is the
    mask-per-segment writer on structure_segments' masks: same voxels, layers, extents and fields."""
    import nrrd

    from CervixAutoSegLib.rtstruct import organ_tumour_containment

    if case.startswith("ct"):
        labels = _with_stray_value("oblique") if case == "ct_stray_int16" else labels_on("feet_first_prone")
        if case == "ct_float32":  # a label map some tool saved as floats
            labels = labels.with_array(labels.array.astype(np.float32))
        structures, containment = CT_STRUCTURES, None
    else:
        labels = {"mr": mr_labels, "mr_without_tumour": _mr_without_tumour,
                  "mr_tumour_without_organ": _mr_tumour_without_organ}.get(
            case, lambda name: labels_on(name).with_array(np.zeros((7, 11, 13), np.uint8)))("oblique")
        structures, containment = MR_STRUCTURES, organ_tumour_containment(MR_STRUCTURES)
    fast = write_segmentation_nrrd(tmp_path / "fast.seg.nrrd", labels, structures, containment)
    reference = write_segments_nrrd(tmp_path / "reference.seg.nrrd", labels,
                                    structure_segments(labels, structures, containment))
    (data, header), (want_data, want_header) = nrrd.read(str(fast)), nrrd.read(str(reference))
    assert data.dtype == want_data.dtype == np.uint8
    assert np.array_equal(data, want_data)
    assert header.keys() == want_header.keys()
    for key, value in want_header.items():
        assert np.array_equal(header[key], value, equal_nan=True) if isinstance(value, np.ndarray) \
            else header[key] == value, key
    # the organ segment covers the tumour: two layers whenever the tumour is there
    assert (data.ndim == 4) == (case in ("mr", "mr_tumour_without_organ"))
