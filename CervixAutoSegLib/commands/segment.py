"""``cervixautoseg segment INPUT --out DIR``: auto-contour one CT or T2w MR image.

Writes labels.nii.gz, labels.json, segmentation.seg.nrrd, rtstruct.dcm (DICOM input),
report.json and preview.png into DIR (see :mod:`CervixAutoSegLib.pipeline`).  Files of an earlier
run into DIR are replaced; a file with one of those names that this tool did not write (or that
was edited since) stops the run with one line unless ``--overwrite`` (:mod:`CervixAutoSegLib.outputs`).
An MR DICOM series that is not T2-weighted is refused (one line on stderr) unless ``--allow-non-t2``.
A plain-text progress bar goes to stderr; ``--progress-json`` prints the machine-readable protocol of
:mod:`CervixAutoSegLib.progress` on stdout instead (what the Slicer module reads).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

HELP = "auto-contour a CT or T2w MR image (DICOM folder, NIfTI or NRRD) and write all outputs"

MODEL_HELP = "auto (the family for the image's modality), a family name (e.g. ct) or a model id (default: auto)"
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..inference_options import PRECISIONS

    parser.add_argument("input", help="DICOM folder or file, or a NIfTI/NRRD/MetaImage file")
    parser.add_argument("--out", required=True,
                        help="output folder (created; outputs an earlier run wrote there are replaced, any other "
                             "file is left alone, and a file with an output name that this tool did not write "
                             "stops the run)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files with the output names in --out even if this tool did not write them "
                             "(or they were edited since); other files in --out are still left alone")
    parser.add_argument("--model", default="auto", help=MODEL_HELP)
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where the network runs (default: auto)")
    parser.add_argument("--series", default=None, metavar="UID",
                        help="Series Instance UID when the DICOM folder holds several series")
    parser.add_argument("--progress-json", action="store_true",
                        help="print one JSON progress object per line on stdout (for the Slicer module)")
    parser.add_argument("--batch-size", type=int, default=0, help="slices per network batch (default: per device)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="network arithmetic: auto = fp16 on GPU, bf16 on CPUs with native bf16, else fp32")
    parser.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=None,
                        help="also run the image mirrored left-right and average (test-time augmentation; "
                             "default: the model family's choice, on for CT); --no-flip-tta halves the network time")
    parser.add_argument("--full-flip-tta", action="store_true",
                        help="mirror every slice (CT) or window (MR), not only those whose first pass was uncertain "
                             "(by default the model card's qa.selective_tta gate picks them; same accuracy, "
                             "about half the network time)")
    parser.add_argument("--allow-non-t2", action="store_true",
                        help="contour an MR series whose DICOM header says it is not T2-weighted (T1, DWI/ADC, "
                             "FLAIR, post-contrast...); without it such a series is refused, whatever --model says")
    parser.add_argument("--models", default=None, metavar="DIR",
                        help="folder of model directories (default: the bundled Resources/Models)")


@contextlib.contextmanager
def cancel_on_sigterm() -> Iterator[None]:
    """SIGTERM (how the Slicer module cancels a background job) becomes :class:`Cancelled` while the
    command runs.

    Python would otherwise die without running ``finally`` blocks and leave the staging
    folder behind; raised as an exception, the pipeline cleans up and the CLI exits 130.
    The previous handler comes back afterwards (an in-process caller keeps its own), and outside
    the main thread, where Python allows no handler, the default stays.
    """
    import signal
    import threading

    from ..errors import Cancelled

    def handler(signum, frame):
        raise Cancelled("terminated")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    from ..pipeline import segment
    from ..progress import JsonLinesReporter, TextProgressBar

    options = {"batch_size": args.batch_size or None, "precision": args.precision, "flip_tta": args.flip_tta,
               "selective_tta": False if args.full_flip_tta else None}
    reporter = JsonLinesReporter(sys.stdout) if args.progress_json else TextProgressBar(sys.stderr)
    try:
        with cancel_on_sigterm():
            result = segment(args.input, args.out, model=args.model, device=args.device,
                             series_uid=args.series, progress=reporter, options=options,
                             models_root=args.models, allow_non_t2=args.allow_non_t2, overwrite=args.overwrite,
                             prefetch_input=True)
    finally:
        if isinstance(reporter, TextProgressBar):
            reporter.close()
    if not args.progress_json:
        _print_summary(result)
    return 0


def _print_summary(result) -> None:
    report = result.report
    print(f"model {report['model']['id']} v{report['model']['version']} on {report['device']['description']}, "
          f"{report['timings_s'].get('total', 0):.1f} s")
    for warning in report.get("warnings", []):
        print(f"  warning: {warning}")
    for entry in report["structures"]:
        print(f"  {entry['name']:<16} {entry['volume_ml']:10.1f} ml")
    flags = [flag for flag in report["qa"]["flags"] if flag["kind"] != "absent"]
    for flag in report["qa"]["flags"]:
        if flag["kind"] == "absent":
            print(f"  warning: {flag['message']}")
    if flags:
        print(f"  {len(flags)} QA flag(s) in report.json")
    print(f"outputs in {result.out_dir}: " + ", ".join(sorted(path.name for path in result.files.values())))
    sys.stdout.flush()
