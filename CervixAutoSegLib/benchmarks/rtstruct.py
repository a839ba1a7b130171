"""``cervixautoseg benchmark rtstruct``: time to write an RTSTRUCT of a full planning CT.

A synthetic 512x512xN CT series identity (no pixel files needed) with four pelvic-sized
structures — bladder, rectum, two nodal tubes, a large primary CTV with a hole — is
contoured and written; the stages are timed separately.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

HELP = "time writing (and reading back) a 4-structure RTSTRUCT on a 512x512x150 CT"

PIXEL_SPACING_MM = 0.9765625
SLICE_THICKNESS_MM = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=512, help="rows and columns (default 512)")
    parser.add_argument("--slices", type=int, default=150, help="number of slices (default 150)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the best is reported")
    parser.add_argument("--keyhole", action="store_true", help="join holes to their outer contour")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")


def synthetic_ct_reference(size: int, slices: int):
    """An empty CT Volume with the DICOM identity the RTSTRUCT writer needs, and its image header."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    from ..volume import Volume

    origin = np.array([-size * PIXEL_SPACING_MM / 2, -size * PIXEL_SPACING_MM / 2, -slices * SLICE_THICKNESS_MM / 2])
    header = Dataset()
    header.PatientName, header.PatientID = "Benchmark^Phantom", "BENCH"
    header.StudyInstanceUID, header.FrameOfReferenceUID = generate_uid(), generate_uid()
    header.SeriesInstanceUID = generate_uid()
    meta = {
        "source": "dicom",
        "modality": "CT",
        "study_instance_uid": header.StudyInstanceUID,
        "series_instance_uid": header.SeriesInstanceUID,
        "frame_of_reference_uid": header.FrameOfReferenceUID,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "sop_instance_uids": [generate_uid() for _ in range(slices)],
        "slice_positions": [(origin + [0, 0, k * SLICE_THICKNESS_MM]).tolist() for k in range(slices)],
    }
    volume = Volume(np.zeros((slices, size, size), dtype=np.uint8), (PIXEL_SPACING_MM,) * 2 + (SLICE_THICKNESS_MM,),
                    origin, np.eye(3), modality="CT", meta=meta)
    return volume, header


def pelvic_labels(shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 (z, y, x) label map with CT labels 1-4 at roughly pelvic sizes (voxels of ~1x1x3 mm)."""
    nz, ny, nx = shape
    z, y, x = np.ogrid[:nz, :ny, :nx]
    cz, cy, cx = nz / 2, ny / 2, nx / 2
    labels = np.zeros(shape, dtype=np.uint8)
    bladder = ((z - cz * 0.8) / 15) ** 2 + ((y - cy + 40) / 45) ** 2 + ((x - cx) / 55) ** 2 <= 1
    rectum = ((y - cy - 60) / 18) ** 2 + ((x - cx) / 20) ** 2 <= 1
    rectum = rectum & (z > nz * 0.2) & (z < nz * 0.7)
    wobble = 10 * np.sin(z / 8.0)
    nodes = ((((x - cx + 90 + wobble) / 14) ** 2 + ((y - cy) / 14) ** 2 <= 1)
             | (((x - cx - 90 - wobble) / 14) ** 2 + ((y - cy) / 14) ** 2 <= 1)) & (z > nz * 0.3)
    primary = ((z - cz) / 25) ** 2 + ((y - cy - 10) / 60) ** 2 + ((x - cx) / 70) ** 2 <= 1
    hole = ((z - cz) / 10) ** 2 + ((y - cy - 10) / 15) ** 2 + ((x - cx) / 15) ** 2 <= 1
    labels[np.broadcast_to(primary & ~hole, shape)] = 4
    labels[np.broadcast_to(nodes, shape)] = 3
    labels[np.broadcast_to(rectum, shape)] = 2
    labels[np.broadcast_to(bladder, shape)] = 1
    return labels


def run(args: argparse.Namespace) -> int:
    from ..atomic import write_text_atomic
    from ..rtstruct.reader import read_rtstruct
    from ..rtstruct.writer import build_rtstruct_dataset, save_implicit_little_endian
    from ..ct.family import CT_STRUCTURES  # the four pelvic labels this benchmark draws

    reference, header = synthetic_ct_reference(args.size, args.slices)
    labels = reference.with_array(pelvic_labels(reference.shape))
    best_build = best_write = best_read = float("inf")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rtstruct.dcm"
        for _ in range(max(1, args.repeats)):
            start = time.perf_counter()
            dataset = build_rtstruct_dataset(labels, reference, CT_STRUCTURES, model_name="benchmark",
                                             model_version="0", keyhole=args.keyhole, image_header=header)
            built = time.perf_counter()
            save_implicit_little_endian(dataset, path)
            written = time.perf_counter()
            read_back = read_rtstruct(path, reference, CT_STRUCTURES)
            read = time.perf_counter()
            best_build, best_write = min(best_build, built - start), min(best_write, written - built)
            best_read = min(best_read, read - written)
        size_mb = path.stat().st_size / 1e6
    if not np.array_equal(read_back.array, labels.array):
        raise AssertionError("the RTSTRUCT read back differs from the labels written")  # a bug, not user input
    contours = sum(len(roi.get("ContourSequence", [])) for roi in dataset.ROIContourSequence)
    points = sum(int(c.NumberOfContourPoints) for roi in dataset.ROIContourSequence
                 for c in roi.get("ContourSequence", []))
    results = {
        "grid_zyx": list(reference.shape), "structures": len(CT_STRUCTURES), "contours": contours,
        "points": points, "file_mb": round(size_mb, 2), "contour_and_build_s": round(best_build, 3),
        "write_s": round(best_write, 3), "total_s": round(best_build + best_write, 3),
        "read_s": round(best_read, 3), "keyhole": args.keyhole,
    }
    print(f"RTSTRUCT benchmark on {args.size}x{args.size}x{args.slices} CT, {len(CT_STRUCTURES)} structures "
          f"(best of {args.repeats}):")
    print(f"  contours {contours}, points {points}, file {size_mb:.2f} MB")
    print(f"  contouring + dataset  {best_build:7.3f} s")
    print(f"  writing file          {best_write:7.3f} s")
    print(f"  total to write        {best_build + best_write:7.3f} s")
    print(f"  reading back (exact)  {best_read:7.3f} s")
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return 0
