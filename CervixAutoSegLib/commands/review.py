"""``cervixautoseg review``: grade contours slice by slice and summarise the grades as the paper does.

Actions (contract in ../shared/DESIGN.md)::

    review start --image IMAGE --segmentation SEG [--segmentation SEG2] [--blinded --key FILE]
                 [--case-id ID] --reviewer NAME --out REVIEW
    review grade REVIEW --structure NAME --slice K --grade G [--comment TEXT] [--reviewer NAME]
    review export REVIEW --out grades.csv [--key FILE]
    review summary FILES... [--out DIR] [--key FILE]
    review agreement FILES... [--out DIR] [--key FILE]
    review benchmark

FILES are review folders, grades CSVs or folders of review folders.  ``--reviewer`` of ``grade``
is needed only when several reviewers grade the same folder; ``--key`` only when a blinded
review's key was moved from where ``start`` wrote it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "grade contours slice by slice (start, grade, export); Table 2 and reviewer agreement (summary, agreement)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="review_action", metavar="ACTION", required=True)
    _start_arguments(actions.add_parser("start", help="make a review folder from an image and its contours"))
    _grade_arguments(actions.add_parser("grade", help="grade one slice of one structure (scripted grading)"))
    export = actions.add_parser("export", help="write a review's grades as the exchange CSV")
    export.add_argument("review", type=Path, metavar="REVIEW", help="review folder")
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="grades CSV to write")
    _key_argument(export)
    export.set_defaults(review_handler=_export)
    for name, handler, what in (("summary", _summary, "the paper's Table 2 per structure, case and cohort"),
                                ("agreement", _agreement, "agreement between reviewers: kappas, alpha, 95%% CIs")):
        action = actions.add_parser(name, help=what)
        action.add_argument("inputs", type=Path, nargs="+", metavar="FILES",
                            help="review folders, grades CSVs, or folders of review folders")
        action.add_argument("--out", type=Path, metavar="DIR", help="write CSV, markdown (and the plot) here")
        _key_argument(action)
        action.set_defaults(review_handler=handler)
    benchmark = actions.add_parser("benchmark", help="time 100 grades through the panel's controller and the "
                                                    "summary and agreement of 20,000 grades")
    benchmark.set_defaults(review_handler=_benchmark)


def _key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", type=Path, metavar="FILE",
                        help="key of blinded reviews (default: where 'review start' wrote it)")


def _start_arguments(start: argparse.ArgumentParser) -> None:
    start.add_argument("--image", type=Path, required=True, help="DICOM folder or image file (NIfTI, NRRD)")
    start.add_argument("--segmentation", action="append", required=True, metavar="SEG",
                       help="segment output folder, .seg.nrrd, label map or RTSTRUCT .dcm; twice for AI and "
                            "manual (prefix ai= or manual= to say which)")
    start.add_argument("--blinded", action="store_true",
                       help="hide the source: same colour, random order, the key written to --key only")
    start.add_argument("--key", type=Path, metavar="FILE", help="where the blinding key goes (outside --out)")
    start.add_argument("--case-id", metavar="ID", help="case id (never a patient identifier; default: a hash "
                                                       "of the series UID)")
    start.add_argument("--series", metavar="UID", help="Series Instance UID when the DICOM folder holds several")
    start.add_argument("--reviewer", required=True, metavar="NAME", help="who grades (one log per reviewer)")
    start.add_argument("--out", type=Path, required=True, metavar="REVIEW", help="review folder to make")
    start.add_argument("--seed", type=int, help=argparse.SUPPRESS)  # reproducible blinding, for tests
    start.set_defaults(review_handler=_start)


def _grade_arguments(grade: argparse.ArgumentParser) -> None:
    grade.add_argument("review", type=Path, metavar="REVIEW", help="review folder")
    grade.add_argument("--structure", required=True, metavar="NAME", help="structure (as 'review start' listed)")
    grade.add_argument("--slice", type=int, required=True, metavar="K", help="slice index (0-based, as report.json)")
    grade.add_argument("--grade", required=True, metavar="G",
                       help="acceptable, minor, major, unacceptable or not_assessable")
    grade.add_argument("--comment", default="", metavar="TEXT")
    grade.add_argument("--reviewer", metavar="NAME", help="needed when several reviewers grade this folder")
    grade.set_defaults(review_handler=_grade)


def run(args: argparse.Namespace) -> int:
    return args.review_handler(args)


# ------------------------------------------------------------------ actions
def _start(args: argparse.Namespace) -> int:
    from ..outputs import check_output_folder
    from ..review.navigation import review_slices
    from ..review.session import StartRequest, start_review

    check_output_folder(args.out, "--out")
    manifest = start_review(StartRequest(image=args.image, segmentations=tuple(args.segmentation), out=args.out,
                                         reviewer=args.reviewer, case_id=args.case_id, blinded=args.blinded,
                                         key=args.key, series_uid=args.series, seed=args.seed))
    n_slices = manifest.geometry.n_slices
    print(f"review of case {manifest.case_id} in {args.out} ({'blinded' if manifest.blinded else 'open'}), "
          f"reviewer {args.reviewer}")
    for item in manifest.items:
        stops = review_slices(item.slices, n_slices)
        print(f"  {item.id}: slices {item.slices[0]}-{item.slices[-1]} ({len(stops)} to grade)")
    if manifest.flags:
        print(f"  {len(manifest.flags)} slice(s) flagged by QA (report.json)")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from ..review.session import ReviewSession

    reviewer = args.reviewer or _only_reviewer(args.review)
    with ReviewSession(args.review, reviewer) as session:
        record = session.grade(session.manifest.item_for_structure(args.structure).id, args.slice, args.grade,
                               args.comment)
        graded = len(session.state.grades)
    z = f", z {record.z_mm:.1f} mm" if record.z_mm is not None else ""
    print(f"{record.reviewer}: {record.structure} slice {record.slice_index}{z}: {record.grade.value} "
          f"({graded} graded)")
    return 0


def _only_reviewer(folder: Path) -> str:
    from ..errors import InputError
    from ..review.session import read_manifest, replay_state
    from ..review.storage import reviewer_logs

    read_manifest(folder)  # a clear error for a folder that is not a review
    names = [str((replay_state(path)[1] or {}).get("reviewer", "")) for path in reviewer_logs(folder)]
    names = sorted(name for name in names if name)
    if len(names) == 1:
        return names[0]
    if not names:
        raise InputError(f"{folder} has no reviewer yet: pass --reviewer NAME (or run 'review start' for them)")
    raise InputError(f"several reviewers grade {folder} ({', '.join(names)}): pass --reviewer NAME")


def _export(args: argparse.Namespace) -> int:
    from ..outputs import check_output_file
    from ..review.grades_csv import write_grades_csv
    from ..review.session import folder_records

    check_output_file(args.out, "--out", example="grades.csv")
    records = folder_records(args.review, args.key)
    write_grades_csv(args.out, records)
    print(f"wrote {len(records)} grade(s) of {len({r.reviewer for r in records})} reviewer(s) to {args.out}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from ..outputs import check_output_folder
    from ..review.report_files import load_records, summary_text, write_summary
    from ..review.summary import summarise

    if args.out is not None:
        check_output_folder(args.out, "--out")
    summary = summarise(load_records(args.inputs, args.key), _catalogue_order())
    print(summary_text(summary))
    if args.out is not None:
        for path in write_summary(args.out, summary):
            print(f"wrote {path}")
    return 0


def _agreement(args: argparse.Namespace) -> int:
    from ..outputs import check_output_folder
    from ..review.agreement import agreement
    from ..review.report_files import agreement_text, load_records, write_agreement

    if args.out is not None:
        check_output_folder(args.out, "--out")
    result = agreement(load_records(args.inputs, args.key), _catalogue_order())
    print(agreement_text(result))
    if args.out is not None:
        for path in write_agreement(args.out, result):
            print(f"wrote {path}")
    return 0


def _catalogue_order() -> list[str]:
    """Structure order of the tables: the registered families' (CT: the paper's order)."""
    from ..families import families

    return [structure.name for family in families() for structure in family.structures]


def _benchmark(args: argparse.Namespace) -> int:
    from ..review.benchmark import run_benchmark

    return 0 if run_benchmark(print) else 1
