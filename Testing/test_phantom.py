"""Synthetic pelvis phantoms: determinism, plausible anatomy, consistent labels, T2w contrast, CLI.

The phantoms train the bundled weights, so these tests check what a model would learn
from: organ volumes in the clinical range, labels that sit on the right tissue and only
inside the patient, the nodal CTV split left/right below the bifurcation, and MR
contrast ordered as on a real T2w TSE.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from CervixAutoSegLib import cli
from CervixAutoSegLib.phantom import Tissue, make_anatomy, make_ct_phantom, make_grid, make_mr_phantom, write_phantom
from CervixAutoSegLib.phantom.anatomy import BONE, BOWEL, NOT_PATIENT, _union_distance
from CervixAutoSegLib.ct.family import CT_STRUCTURES
from CervixAutoSegLib.mr.family import MR_STRUCTURES

CT_SEEDS = (11, 12, 13)
BLADDER, RECTUM, CTV_N, CTV_UV = 1, 2, 3, 4
ORGAN, TUMOUR = 1, 2

# Plausible structure volumes (ml) for an adult female pelvis in a planning CT.
CT_VOLUME_RANGES_ML = {BLADDER: (50, 600), RECTUM: (20, 250), CTV_N: (60, 600), CTV_UV: (40, 700)}
FLOATING_REACH_MM, MAX_FLOATING_CTV_N = 2.0, 0.025
"""A CTV-N piece is floating if no vessel, muscle, bone or node lies within 2 mm in its
slice; phantoms of version 1 had 4-7 % of CTV-N floating (lumen-only bits of the
external iliac vessels running through the psoas), version 2 has about 1 %."""


@pytest.fixture(scope="module")
def ct_cases():
    return [make_ct_phantom(seed) for seed in CT_SEEDS]


@pytest.fixture(scope="module")
def mr_cases():
    return [make_mr_phantom(seed, plane=plane) for seed, plane in ((21, "axial"), (22, "sagittal"))]


def volumes_ml(case) -> dict[int, float]:
    voxel_ml = float(np.prod(case.labels.spacing)) / 1000.0
    counts = np.bincount(case.labels.array.ravel(), minlength=5)
    return {value: float(counts[value]) * voxel_ml for value in range(1, len(counts))}


def voxel_lps(volume, mask: np.ndarray) -> np.ndarray:
    """LPS mm (n, 3) of the voxel centres where ``mask`` (z, y, x) is true."""
    k, j, i = np.nonzero(mask)
    return volume.index_to_physical(np.stack([i, j, k], axis=1))


# ------------------------------------------------------------------ determinism
def test_same_seed_same_voxels_different_seed_differs():
    grid = make_grid((0, 20, 10), (300, 260, 60), (2.0, 2.0), 5.0)
    first, again = make_ct_phantom(3, grid=grid), make_ct_phantom(3, grid=grid)
    assert np.array_equal(first.image.array, again.image.array)
    assert np.array_equal(first.labels.array, again.labels.array)
    assert first.params == again.params
    other = make_ct_phantom(4, grid=grid)
    assert not np.array_equal(first.labels.array, other.labels.array)
    assert first.params["anatomy"] != other.params["anatomy"]
    json.dumps(first.params)  # params are JSON-able


def test_default_ct_grid_is_varied_and_plausible(ct_cases):
    for case in ct_cases:
        spacing = case.image.spacing
        assert case.image.array.dtype == np.int16 and case.labels.array.dtype == np.uint8
        assert case.labels.same_grid(case.image)
        assert 0.8 <= spacing[0] == spacing[1] <= 1.25
        assert 2.0 <= spacing[2] <= 5.0
        assert case.patient_position in ("HFS", "FFS", "HFP")
        # Covers from below the ischial tuberosities to above the aortic bifurcation.
        anatomy = case.params["anatomy"]
        z_span = case.image.shape[0] * spacing[2]
        assert z_span > anatomy["bifurcation_z_mm"] + 70
    assert len({case.image.shape for case in ct_cases}) > 1


# ------------------------------------------------------------------ anatomy and labels
def test_ct_labels_present_with_plausible_volumes(ct_cases):
    for case in ct_cases:
        volumes = volumes_ml(case)
        for value, (low, high) in CT_VOLUME_RANGES_ML.items():
            assert low <= volumes[value] <= high, (case.seed, value, volumes)


def test_requested_bladder_filling_is_what_is_drawn():
    grid = make_grid((0, 0, 20), (300, 240, 140), (1.5, 1.5), 2.5)
    for requested in (100.0, 400.0):
        case = make_ct_phantom(5, grid=grid, bladder_volume_ml=requested)
        assert volumes_ml(case)[BLADDER] == pytest.approx(requested, rel=0.2)


def test_labels_sit_on_the_right_tissue_and_inside_the_body(ct_cases):
    for case in ct_cases:
        labels, tissue = case.labels.array, case.tissue
        assert not np.any(np.isin(tissue[labels > 0], [int(t) for t in NOT_PATIENT]))
        # The nodal CTV is trimmed off bone, muscle and bowel (consensus guideline).
        forbidden = [int(t) for t in (*BONE, *BOWEL, Tissue.MUSCLE)]
        assert not np.any(np.isin(tissue[labels == CTV_N], forbidden))
        assert not np.any(np.isin(tissue[labels == CTV_UV], [int(t) for t in (*BONE, Tissue.MUSCLE)]))
        # The bladder holds urine; the image there reads as water.
        urine = (labels == BLADDER) & (tissue == Tissue.URINE)
        assert urine.sum() > 0.5 * (labels == BLADDER).sum()  # the rest is the 3 mm wall
        assert -10 <= np.median(case.image.array[urine]) <= 30


def test_labels_lie_inside_the_body_outline(ct_cases):
    """Checked against the analytic body surface itself, not the rasterised tissue map."""
    from CervixAutoSegLib.phantom import make_anatomy

    for case in ct_cases:
        anatomy = make_anatomy(case.seed)
        body = next(part for part in anatomy.parts if part.name == "body").shapes[0]
        lps = voxel_lps(case.labels, case.labels.array > 0)
        in_anatomy = (np.c_[lps, np.ones(len(lps))] @ np.linalg.inv(anatomy.pose).T)[:, :3]
        assert np.all(body.contains(in_anatomy)), case.seed


def test_hu_of_tissues_are_realistic(ct_cases):
    expected = {Tissue.FAT: (-130, -70), Tissue.MUSCLE: (25, 75), Tissue.URINE: (-10, 30),
                Tissue.CORTEX: (500, 1300), Tissue.AIR: (-1024, -950)}
    for case in ct_cases:
        for kind, (low, high) in expected.items():
            values = case.image.array[case.tissue == kind]
            assert values.size and low <= np.median(values) <= high, (case.seed, kind.name, np.median(values))


def test_ctv_n_is_left_and_right_below_the_common_iliac_bifurcation(ct_cases):
    for case in ct_cases:
        anatomy_params = case.params["anatomy"]
        mask = case.labels.array == CTV_N
        points = voxel_lps(case.labels, mask)
        # Anatomy z of the common iliac division → LPS z (pose is a small rotation + shift).
        level = anatomy_params["common_iliac_end_z_mm"] * anatomy_params["pose_scale"][2] \
            + anatomy_params["pose_shift_mm"][2] - 15.0
        below = np.zeros_like(mask)
        below[mask] = points[:, 2] < level
        components, count = ndimage.label(below)
        assert count >= 2, case.seed
        sizes = np.bincount(components.ravel())[1:]
        biggest = np.argsort(sizes)[-2:] + 1
        sides = [np.mean(voxel_lps(case.labels, components == c)[:, 0]) for c in biggest]
        shift_x = anatomy_params["pose_shift_mm"][0]
        # One left (+x in LPS) and one right of the midline.
        assert min(sides) < shift_x < max(sides), (case.seed, sides)


def test_every_piece_of_ctv_n_touches_visible_anatomy(ct_cases):
    # The nodal CTV is drawn from visible anatomy (vessels + margin, side-wall muscle,
    # sacrum): a slice-by-slice network can only learn pieces that touch something it sees.
    anchors = [Tissue.ARTERY, Tissue.VEIN, Tissue.MUSCLE, Tissue.CORTEX, Tissue.LYMPH_NODE]
    for case in ct_cases:
        ctv_n, anchor = case.labels.array == CTV_N, np.isin(case.tissue, anchors)
        reach = int(np.ceil(FLOATING_REACH_MM / case.labels.spacing[0]))
        floating = 0
        for k in range(ctv_n.shape[0]):
            pieces, count = ndimage.label(ctv_n[k])
            near = ndimage.grey_dilation(pieces, size=2 * reach + 1)  # each piece, grown by ``reach``
            touching = np.unique(near[anchor[k]])
            floating += int(np.isin(pieces, touching, invert=True)[pieces > 0].sum())
        assert floating / ctv_n.sum() < MAX_FLOATING_CTV_N, (case.seed, floating / ctv_n.sum())


@pytest.mark.parametrize("overrides", [{}, {"femoral_head_x_mm": 80.0, "common_iliac_end_z_mm": 108.0},
                                       {"femoral_head_x_mm": 94.0, "aorta_radius_mm": 10.0}])
def test_common_and_external_iliac_vessels_run_beside_the_psoas_not_through_it(overrides):
    anatomy = make_anatomy(11, **overrides)
    parts = {part.name: part for part in anatomy.parts}
    top, bifurcation = anatomy.landmarks["femoral_head_top_z"], anatomy.landmarks["bifurcation_z"]
    for kind in ("arteries", "veins"):
        # Anterior iliac vessels (y < 30 mm) within the nodal CTV's extent.
        capsules = [c for c in parts[kind].shapes if top <= c.start[2] <= bifurcation and c.start[1] < 30]
        centres = np.array([c.start for c in capsules])
        radii = np.array([c.start_radius for c in capsules])
        gaps = _union_distance(parts["muscles"].shapes, centres) - radii
        assert gaps.min() > -1.0, (kind, gaps.min(), centres[np.argmin(gaps)])


# ------------------------------------------------------------------ MR
def test_mr_tumour_inside_organ_and_labels_present(mr_cases):
    for case in mr_cases:
        labels = case.labels.array
        assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, ORGAN, TUMOUR}
        tumour = labels == TUMOUR
        organ_with_tumour = labels > 0
        # Every tumour component lies inside the organ structure (organ includes tumour)
        # and is wrapped by organ tissue: organ voxels touch it.
        grown = ndimage.binary_dilation(tumour, iterations=2)
        assert np.any(labels[grown & ~tumour] == ORGAN)
        assert np.all(organ_with_tumour[tumour])
        voxel_ml = float(np.prod(case.labels.spacing)) / 1000.0
        assert 30 <= organ_with_tumour.sum() * voxel_ml <= 400
        assert 0.5 <= tumour.sum() * voxel_ml <= 120


def test_mr_grids_are_high_resolution_t2w(mr_cases):
    planes = set()
    for case in mr_cases:
        spacing = case.image.spacing
        assert 0.4 <= spacing[0] <= 0.8 and 256 <= case.image.shape[2] <= 512
        assert case.image.array.dtype == np.uint16
        planes.add(case.grid.plane)
    assert planes == {"axial", "sagittal"}
    sagittal = [c for c in mr_cases if c.grid.plane == "sagittal"][0]
    # Sagittal slices stack left-right: the slice normal is the LPS x axis.
    assert abs(sagittal.image.slice_normal[0]) > 0.9


def test_mr_t2w_contrast_order(mr_cases):
    for case in mr_cases:
        image, tissue = case.image.array.astype(float), case.tissue

        def median(*kinds):
            return float(np.median(image[np.isin(tissue, [int(k) for k in kinds])]))

        bright = min(median(Tissue.FAT), median(Tissue.URINE))
        tumour = median(Tissue.TUMOUR)
        dark = max(median(Tissue.CERVICAL_STROMA), median(Tissue.MUSCLE))
        assert bright > tumour > dark, (case.seed, bright, tumour, dark)
        assert median(Tissue.ENDOMETRIUM) > median(Tissue.MYOMETRIUM)


# ------------------------------------------------------------------ CLI
def test_phantom_command_writes_the_three_outputs(tmp_path, capsys):
    from CervixAutoSegLib.image_io import load_image

    out = tmp_path / "case"
    assert cli.main(["phantom", "--modality", "mr", "--out", str(out), "--seed", "8", "--plane", "axial"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["dicom", "labels.json", "truth.nii.gz"]
    image, truth = load_image(out / "dicom"), load_image(out / "truth.nii.gz")
    assert image.modality == "MR"
    assert truth.same_grid(image, tolerance=1e-3)
    expected = make_mr_phantom(8, plane="axial")
    assert np.array_equal(truth.array, expected.labels.array)
    assert np.array_equal(image.array, expected.image.array)
    document = json.loads((out / "labels.json").read_text())
    assert [entry["value"] for entry in document["labels"]] == [s.value for s in MR_STRUCTURES]
    assert [entry["name"] for entry in document["labels"]] == [s.name for s in MR_STRUCTURES]


def test_phantom_command_ct_orientation(tmp_path):
    import pydicom

    out = tmp_path / "ct"
    assert cli.main(["phantom", "--modality", "ct", "--out", str(out), "--seed", "9", "--orientation", "FFS"]) == 0
    first = pydicom.dcmread(next((out / "dicom").iterdir()), stop_before_pixels=True)
    assert first.Modality == "CT" and first.PatientPosition == "FFS"
    document = json.loads((out / "labels.json").read_text())
    assert [entry["name"] for entry in document["labels"]] == [s.name for s in CT_STRUCTURES]


@pytest.mark.parametrize("make_bad", ["file", "nonempty"])
def test_phantom_command_bad_out_is_one_line_error_and_keeps_data(tmp_path, capsys, make_bad):
    if make_bad == "file":
        out = tmp_path / "existing.txt"
        out.write_text("keep me")
        before = {out: out.read_bytes()}
    else:
        out = tmp_path / "case"
        (out / "dicom").mkdir(parents=True)
        kept = out / "dicom" / "old.dcm"
        kept.write_bytes(b"previous series")
        before = {kept: kept.read_bytes()}
    code = cli.main(["phantom", "--modality", "ct", "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cervixautoseg phantom: error: "), err
    assert "Traceback" not in err
    for path, content in before.items():
        assert path.read_bytes() == content
    if make_bad == "nonempty":
        assert sorted(p.name for p in out.iterdir()) == ["dicom"]


def test_unknown_override_is_an_input_error():
    from CervixAutoSegLib.errors import InputError

    with pytest.raises(InputError, match="bladder_volume"):
        make_ct_phantom(1, bladder_volume=300)


def test_write_phantom_round_trip_ct(tmp_path):
    from CervixAutoSegLib.image_io import load_image

    grid = make_grid((0, 20, 10), (300, 260, 60), (1.5, 1.5), 5.0, patient_position="HFP")
    case = make_ct_phantom(6, grid=grid, patient_position="HFP")
    write_phantom(case, tmp_path / "p", shuffle_seed=1)
    image = load_image(tmp_path / "p" / "dicom")
    assert image.same_grid(case.image, tolerance=1e-3)
    assert np.array_equal(image.array, case.image.array)
