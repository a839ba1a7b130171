"""``cervixautoseg batch INPUT --out DIR``: segment (and evaluate) a whole cohort on Dask.

INPUT is a dataset folder (``dataset import``) or a folder of cases; every case is segmented into
``DIR/<case id>/`` exactly as ``segment --out`` writes it, one Dask task per case, on a local
cluster (``--workers`` processes x ``--threads-per-worker`` threads) or an existing one
(``--scheduler``).  Finished cases are skipped, so a rerun resumes; one line per finished case
on stderr, the summary table on stdout and in ``DIR/batch.csv`` / ``DIR/batch.json``; with
``--evaluate`` the DSC of cases with a truth label map and a cohort report in ``DIR/evaluation/``.
Exit code 1 when any case failed (each with its one-line reason); all logic is in
:mod:`CervixAutoSegLib.cohort`.
"""

from __future__ import annotations

import argparse
import sys

HELP = "segment (and evaluate) every case of a dataset or a folder of cases on Dask, resumable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .segment import DEVICE_CHOICES, MODEL_HELP
    from ..inference_options import PRECISIONS

    parser.add_argument("input", help="dataset folder (with dataset.json) or folder of cases (sub-folders with "
                                      "image.*, dicom/ or DICOM files; or image files)")
    parser.add_argument("--out", required=True, help="output folder: one sub-folder per case, batch.csv, batch.json")
    parser.add_argument("--scheduler", metavar="ADDRESS", default=None,
                        help="address of a running Dask scheduler (e.g. tcp://host:8786); default: a local cluster")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="worker processes of the local cluster, each segmenting one case at a time (default 2)")
    parser.add_argument("--threads-per-worker", type=int, default=None, metavar="T",
                        help="torch threads per case (default: 1 on the local cluster; on --scheduler, each "
                             "worker's cores shared among its task threads)")
    parser.add_argument("--evaluate", action="store_true",
                        help="compare with each case's truth label map (dataset labels, or labels.*/truth.* in a "
                             "case folder): DSC in the summary, cohort report in DIR/evaluation/")
    parser.add_argument("--tolerance", type=float, default=2.0, metavar="MM",
                        help="surface DSC tolerance of --evaluate in mm (default 2)")
    parser.add_argument("--redo", action="store_true", help="segment finished cases again instead of skipping them")
    parser.add_argument("--model", default="auto", help=MODEL_HELP + "; on a dataset, auto is the dataset's family")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where the networks run (default: auto)")
    parser.add_argument("--models", default=None, metavar="DIR",
                        help="folder of model directories (default: the bundled Resources/Models)")
    parser.add_argument("--batch-size", type=int, default=0, help="slices per network batch (default: per device)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS, help="network arithmetic (as segment)")
    parser.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=None,
                        help="mirrored test-time augmentation (default: the model family's choice)")
    parser.add_argument("--allow-non-t2", action="store_true", help="contour MR series that are not T2-weighted")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files with output names in a case folder that this tool did not write")


def run(args: argparse.Namespace) -> int:
    from ..cohort import CaseSettings, run_batch
    from ..cohort.runner import options_tuple
    from ..cohort.summary import progress_line, table_text

    options = {"batch_size": args.batch_size or None, "precision": args.precision, "flip_tta": args.flip_tta}
    settings = CaseSettings(model=args.model, device=args.device, models_root=args.models,
                            options=options_tuple(options), allow_non_t2=args.allow_non_t2,
                            overwrite=args.overwrite, redo=args.redo, evaluate=args.evaluate,
                            tolerance_mm=args.tolerance)

    def show(result, done: int, total: int) -> None:
        print(progress_line(result, done, total), file=sys.stderr, flush=True)

    from .segment import cancel_on_sigterm

    with cancel_on_sigterm():  # SIGTERM cancels the cases not finished and closes the local cluster cleanly
        outcome = run_batch(args.input, args.out, settings, scheduler=args.scheduler, workers=args.workers,
                            threads=args.threads_per_worker, on_result=show)
    sys.stdout.write(table_text(outcome.results, outcome.structures, outcome.evaluated))
    written = [str(path) for path in outcome.files]
    if outcome.evaluation_dir is not None:
        written.append(f"{outcome.evaluation_dir}/")
    print(f"{outcome.cluster}; {outcome.wall_s:.1f} s; summary in " + ", ".join(written))
    sys.stdout.flush()
    if outcome.failed:
        print(f"cervixautoseg batch: {len(outcome.failed)} of {len(outcome.results)} case(s) failed "
              f"(reasons above and in {outcome.files[0]})", file=sys.stderr)
    return outcome.exit_code
