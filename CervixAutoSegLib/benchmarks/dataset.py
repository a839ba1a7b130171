"""Benchmark of ``dataset import``: wall time to import N phantom patients (CT series + RTSTRUCT each).

``cervixautoseg benchmark dataset [--cases 20] [--matrix 512]``.

The tree is built first (not timed): synthetic CT phantoms (:mod:`CervixAutoSegLib.phantom`) of
``--matrix``² pixels at their own drawn slice thickness, written as DICOM under shuffled file
names, with an RTSTRUCT of the four CT structures written by the product's writer.  Then the
import runs end to end (header scan, pairing, series reading, rasterising, NIfTI writing,
hashing) and its wall time is reported with the stages that dominate it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

HELP = "time `dataset import` of N phantom CT patients (series + RTSTRUCT each)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=int, default=20, help="number of patients (default 20)")
    parser.add_argument("--matrix", type=int, default=512, help="rows and columns of each CT (default 512)")
    parser.add_argument("--seed", type=int, default=7000, help="first phantom seed (default 7000)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")


def build_tree(root: Path, cases: int, matrix: int, first_seed: int) -> dict[str, float]:
    """Write ``cases`` phantom patients under ``root``; returns the tree's size (files, MB, slices)."""
    from ..ct.family import CT_STRUCTURES
    from ..dicom_series import read_dicom_series
    from ..dicom_writer import write_dicom_series
    from ..phantom import make_ct_phantom
    from ..rtstruct import write_rtstruct

    files = slices = 0
    for n in range(cases):
        case = make_ct_phantom(first_seed + n, matrix=matrix)
        folder = root / f"export{n % 3}" / f"p{n:03d}"
        paths = write_dicom_series(case.image, folder / "ct", modality="CT", patient_position=case.patient_position,
                                   patient={"PatientID": f"BENCH{n:03d}", "PatientName": f"Bench^{n}"},
                                   shuffle_seed=n)
        reference = read_dicom_series(paths)
        write_rtstruct(folder / "rs.dcm", reference.with_array(case.labels.array), reference, CT_STRUCTURES,
                       model_name="manual", model_version="1")
        files += len(paths) + 1
        slices += len(paths)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
    return {"files": files, "slices": slices, "megabytes": round(size, 1)}


def run(args: argparse.Namespace) -> int:
    from ..atomic import write_text_atomic
    from ..errors import InputError
    from ..dataset.importer import import_dataset

    if args.cases < 1 or args.matrix < 32:
        raise InputError("--cases must be >= 1 and --matrix >= 32")
    with tempfile.TemporaryDirectory(prefix="cervixautoseg-import-bench-") as folder:
        root = Path(folder)
        start = time.perf_counter()
        tree = build_tree(root / "dicom", args.cases, args.matrix, args.seed)
        built = time.perf_counter()
        result = import_dataset(root / "dicom", root / "dataset", split="3:1:1")
        done = time.perf_counter()
        written = sum(p.stat().st_size for p in (root / "dataset").rglob("*") if p.is_file()) / 1e6
    wall = done - built
    numbers = {"cases": args.cases, "matrix": args.matrix, **tree, "imported": len(result.cases),
               "skipped": len(result.skipped), "build_tree_s": round(built - start, 1),
               "import_wall_s": round(wall, 2), "per_case_s": round(wall / args.cases, 3),
               "slices_per_s": round(tree["slices"] / wall, 1), "dataset_mb": round(written, 1)}
    print(f"dataset import benchmark: {args.cases} phantom CT patients of {args.matrix}x{args.matrix} pixels, "
          f"{tree['slices']} slices, {tree['megabytes']} MB of DICOM")
    print(f"  import wall time   {wall:8.2f} s  ({wall / args.cases:.2f} s per case, "
          f"{tree['slices'] / wall:.0f} slices/s)")
    print(f"  imported {len(result.cases)}, skipped {len(result.skipped)}; dataset {written:.1f} MB")
    if args.json:
        write_text_atomic(args.json, json.dumps(numbers, indent=2) + "\n")
    return 0
