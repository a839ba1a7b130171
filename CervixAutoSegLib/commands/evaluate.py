"""``cervixautoseg evaluate``: compare predicted label maps with reference contours.

One case (``--truth FILE --pred FILE``; ``--truth RTSTRUCT --pred SEGMENT_OUTPUT_DIR``) or a
cohort (``--truth DIR --pred DIR``: cases paired by file stem or sub-folder name, a dataset's
cases by case id, a DICOM tree's RTSTRUCTs by the series UID in each prediction's report.json;
see :mod:`CervixAutoSegLib.evaluation`).
Prints the per-structure summary; with ``--out DIR`` also writes metrics.csv,
metrics.json, summary.csv, summary.md and boxplots.png there.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..evaluation import CasePair, StructureResult
    from ..structures import Structure
    from ..volume import Volume

HELP = "DSC, HD95 (both definitions), MSD, surface DSC and added path length against reference contours"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", type=Path, required=True,
                        help="reference label map (NIfTI/NRRD) or RTSTRUCT .dcm, or a folder of cases, a "
                             "dataset folder (dataset import) or a DICOM tree of images + RTSTRUCTs")
    parser.add_argument("--pred", type=Path, required=True,
                        help="predicted label map, or a folder of cases (e.g. segment output folders)")
    parser.add_argument("--dicom", type=Path, metavar="DIR",
                        help="DICOM image series an RTSTRUCT truth refers to (default: the dicom/ "
                             "folder next to it, else its own folder)")
    parser.add_argument("--names", type=Path, metavar="MAP",
                        help="JSON mapping of RTSTRUCT ROI names to structures (as for dataset import)")
    parser.add_argument("--out", type=Path, help="write CSV, JSON, Markdown table and box plots here")
    parser.add_argument("--tolerance", type=float, default=2.0, metavar="MM",
                        help="surface-DSC and added-path-length tolerance in mm (default 2)")
    parser.add_argument("--model", type=str.lower, default="ct", metavar="FAMILY",
                        help="model family whose structure list applies when no labels.json is next to the "
                             "prediction (default ct)")
    parser.add_argument("--resample-pred", action="store_true",
                        help="resample a prediction on another grid onto the truth grid (nearest "
                             "neighbour) instead of refusing it")


def run(args: argparse.Namespace) -> int:
    import math

    from ..errors import InputError
    from ..evaluation import format_mean_sd, overall_means, summarise, write_report
    from ..outputs import check_output_folder

    if args.out is not None:  # before the metrics, which take minutes on a cohort
        check_output_folder(args.out, "--out")
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise InputError(f"--tolerance must be a non-negative number of mm, got {args.tolerance}")
    if args.names is not None and not args.names.is_file():
        raise InputError(f"--names {args.names} does not exist")
    if args.dicom is not None and args.truth.is_dir():
        raise InputError("--dicom is for a single RTSTRUCT truth file; a cohort uses each case's dicom/ folder")
    results, pairs, unmatched, structures = compare_cases(args)
    rows = summarise(results)
    print(f"{len(pairs)} case(s); tolerance {args.tolerance:g} mm")
    print(f"{'structure':<18}{'n':>3}  {'DSC':<15}{'HD95 pooled mm':<16}{'HD95 dir-max mm':<17}"
          f"{'MSD mm':<14}{'surface DSC':<14}")
    for row in rows:
        cells = [format_mean_sd(row.mean[m], row.sd[m], digits) for m, digits in
                 (("dsc", 3), ("hd95_pooled_mm", 2), ("hd95_directed_max_mm", 2), ("msd_mm", 2), ("surface_dsc", 3))]
        print(f"{row.structure:<18}{row.n['dsc']:>3}  {cells[0]:<15}{cells[1]:<16}{cells[2]:<17}"
              f"{cells[3]:<14}{cells[4]:<14}")
    overall = overall_means(rows)
    print(f"mDSC {overall['mDSC']:.3f}   mHD (pooled HD95) {overall['mHD_pooled_mm']:.2f} mm")
    empties = [r for r in results if r.comparison.status != "both_present"]
    for result in empties:
        print(f"note: {result.case_id} {result.structure.name}: {result.comparison.status}")
    evaluated = {(r.case_id, r.structure.name) for r in results}
    for pair in pairs:
        left_out = [s.name for s in structures if (pair.case_id, s.name) not in evaluated]
        if left_out:
            print(f"note: {pair.case_id}: {', '.join(left_out)} not evaluated (missing or ambiguous in the truth)")
    if args.out:
        for path in write_report(args.out, results, pairs, structures, args.tolerance, unmatched):
            print(f"wrote {path}")
    return 0


def compare_cases(
    args: argparse.Namespace,
) -> tuple[list[StructureResult], list[CasePair], dict[str, list[str]], tuple[Structure, ...]]:
    """:func:`CervixAutoSegLib.evaluation.evaluate`, case by case, with the grid check made here:
    a prediction off the truth grid (and no ``--resample-pred``) stops with one line summarising
    both grids and naming both files.

    Returns (per case × structure results, pairs, unmatched case ids, structures of the first case).
    """
    from ..evaluation import (LOG, compared_results, evaluate_volumes, load_label_volume, load_truth, pair_cases,
                              structures_near)

    pairs, unmatched = pair_cases(args.truth, args.pred)
    rules = _name_rules(args, pairs)
    for side, ids in unmatched.items():
        if ids:
            LOG.warning("%d case(s) only on the %s side, not evaluated: %s", len(ids), side.split("_")[0],
                        ", ".join(ids))
    results: list[StructureResult] = []
    catalogue: tuple[Structure, ...] = ()
    for pair in pairs:
        LOG.info("evaluating %s", pair.case_id)
        structures = structures_near(pair.pred, args.model)
        pred = load_label_volume(pair.pred)
        truth = load_truth(pair.truth, pred, structures, args.dicom, pair=pair, rules=rules)
        if not args.resample_pred:
            _check_same_grid(pair, truth, pred)
        results.extend(compared_results(evaluate_volumes(pair.case_id, truth, pred, structures, args.tolerance,
                                                         args.resample_pred), truth))
        catalogue = catalogue or structures
    return results, pairs, unmatched, catalogue


def _name_rules(args: argparse.Namespace, pairs: list) -> object | None:
    """The ``--names`` rules for RTSTRUCT truths (checked against the first case's structures), or None."""
    from ..dataset.names import load_name_rules
    from ..evaluation import structures_near

    if getattr(args, "names", None) is None or not pairs:
        return None
    return load_name_rules(args.names, structures_near(pairs[0].pred, args.model))


def _check_same_grid(pair: CasePair, truth: Volume, pred: Volume) -> None:
    """GridMismatchError unless ``pred`` lies on ``truth``'s grid (the metrics' own tolerance)."""
    from ..errors import GridMismatchError, InputError
    from ..metrics import check_same_grid

    try:
        check_same_grid(truth, pred)
    except InputError:
        raise GridMismatchError.between(
            f"case {pair.case_id}: the prediction {pair.pred} and the truth {pair.truth} are not on the same "
            "voxel grid",
            {"prediction": pred, "truth": truth},
            "pass --resample-pred to resample the prediction onto the truth grid (nearest neighbour)",
        ) from None
