"""``cervixautoseg phantom``: write a synthetic pelvis scan with its truth labels.

    cervixautoseg phantom --modality ct --out case007 --seed 7 [--orientation FFS]

Writes ``OUT/dicom/*.dcm`` (one image series), ``OUT/truth.nii.gz`` (uint8 labels on
exactly that grid) and ``OUT/labels.json`` (the label values of the family for that modality).  The same seed gives
the same voxels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a synthetic pelvis CT or T2w MR phantom (DICOM series + truth labels)"

ORIENTATIONS = ("HFS", "FFS", "HFP", "FFP")
"""Patient positions a phantom can be acquired in (axial image axes per DICOM)."""
PLANES = ("axial", "sagittal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modality", required=True, type=str.lower, choices=("ct", "mr"),
                        help="ct: planning CT in HU; mr: T2-weighted MRI")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="output folder (created; must not already hold a dicom/ series)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same phantom (default 0)")
    parser.add_argument("--orientation", type=str.upper, choices=ORIENTATIONS,
                        help="patient position (default: drawn from the seed, mostly HFS)")
    parser.add_argument("--plane", type=str.lower, choices=PLANES,
                        help="MR only: acquisition plane (default: drawn from the seed)")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..phantom import make_ct_phantom, make_mr_phantom, write_phantom

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is an existing file, not a folder")
    if args.seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {args.seed}")
    overrides = {}
    if args.orientation:
        overrides["patient_position"] = args.orientation
    if args.plane:
        if args.modality != "mr":
            raise InputError("--plane applies to --modality mr only")
        overrides["plane"] = args.plane
    make = make_ct_phantom if args.modality == "ct" else make_mr_phantom
    case = make(args.seed, **overrides)
    write_phantom(case, out)
    nz, ny, nx = case.image.shape
    print(f"{case.modality} phantom seed {case.seed}: {nx}x{ny}x{nz} voxels, {case.patient_position}, "
          f"written to {out}")
    return 0
