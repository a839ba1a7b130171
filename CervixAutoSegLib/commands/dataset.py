"""``cervixautoseg dataset import DICOM_ROOT --out DATASET``: a clinic's DICOM-RT cohort → a dataset folder.

See :mod:`CervixAutoSegLib.dataset.importer` for what is written and the rules (pairing, ROI
names, splits, privacy); prints one line per case (structures matched / ambiguous / missing)
and per skipped item, then where the dataset and its key file are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "import a DICOM-RT export (images + RTSTRUCTs) into a dataset folder for train, evaluate and batch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    importing = sub.add_parser("import", help="walk a DICOM tree, pair RTSTRUCTs with their series, write a dataset",
                               description="Walk a DICOM tree, pair each RTSTRUCT with the image series it "
                                           "references, map ROI names to the family's structures and write "
                                           "DATASET/dataset.json with one image + label map per case.")
    importing.add_argument("dicom_root", type=Path, metavar="DICOM_ROOT", help="folder tree of the DICOM export")
    importing.add_argument("--out", type=Path, required=True, help="dataset folder to write (new or empty)")
    importing.add_argument("--names", type=Path, metavar="MAP",
                           help='JSON mapping of ROI names: {"map": {"Blase": "Bladder", "CTV_LK*": "CTVn"}, '
                                '"exclude": ["*_old"], "default_exclusions": true}')
    importing.add_argument("--family", type=str.lower, metavar="FAMILY",
                           help="model family (ct or mr; default: the modality the RTSTRUCTs are drawn on)")
    importing.add_argument("--split", metavar="A:B:C",
                           help="assign train:validation:test at this ratio, per patient (default: no split)")
    importing.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    importing.add_argument("--key", type=Path, metavar="FILE",
                           help="key file linking case ids to patient ids and UIDs (default DATASET.key.json "
                                "beside the dataset; never inside it)")
    importing.add_argument("--overwrite", action="store_true",
                           help="replace an earlier dataset in --out and an existing key file")


def run(args: argparse.Namespace) -> int:
    from ..dataset.importer import import_dataset, status_line

    result = import_dataset(args.dicom_root, args.out, names=args.names, family=args.family, split=args.split,
                            seed=args.seed, key=args.key, overwrite=args.overwrite)
    tree = result.tree
    print(f"{tree.files} files: {len(tree.series)} image series, {len(tree.rtstructs)} RTSTRUCTs, "
          f"{len(tree.non_dicom)} not DICOM (skipped), {len(tree.damaged)} damaged")
    for imported in result.cases:
        case = imported.case
        split = f" [{case.split}]" if case.split else ""
        print(f"{case.id}{split}: {status_line(imported.report['structures'])}")
        for note in imported.report["notes"]:
            print(f"  note: {note}")
    for skip_id, item in result.skipped:
        print(f"{skip_id}: skipped, {item.reason}: {item.detail}")
    complete = sum(all(v == "matched" for v in c.case.structures.values()) for c in result.cases)
    print(f"{len(result.cases)} case(s) imported ({complete} with every structure), {len(result.skipped)} skipped; "
          f"dataset {args.out}, key {result.key} (keep the key private: it links case ids to patients)")
    return 0
