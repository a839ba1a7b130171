"""The end-to-end ``segment`` flow, shared by the command line and the Slicer module.

::

    from CervixAutoSegLib.pipeline import segment
    result = segment("patient/CT", "out/", model="auto", device="auto",
                     progress=print, cancel=lambda: False)
    result.labels          # Volume, uint8, exactly the input grid
    result.files["rtstruct"]

Steps: load (:mod:`.image_io`) → choose the model for the image's modality (never a CT
model on MR or the reverse) → check that an MR series is T2-weighted (:mod:`.mr_weighting`;
a refused series stops here unless ``allow_non_t2``) → preprocess → network → labels back on the input grid →
postprocess (:mod:`.postprocess`) → outputs.

Outputs in ``out_dir`` (a contract other tools rely on): ``labels.nii.gz`` (``labels.nrrd`` for a
gantry-tilted grid, which NIfTI cannot store), ``labels.json``, ``segmentation.seg.nrrd``,
``rtstruct.dcm`` (DICOM input only), ``report.json``, ``preview.png``.

Atomicity: every output is first written into a marked staging folder next to ``out_dir``
(same file system); only when all of them exist are they renamed into ``out_dir``, and outputs
of an earlier run that this run does not produce (say an old ``rtstruct.dcm``) are removed, so
the folder never mixes two runs.  A failure or a cancel before that point leaves ``out_dir``
exactly as it was.  A staging folder left by a killed run is removed by the next run into the
same folder (:func:`.outputs.remove_stale_staging`).

Whose files: the hidden run manifest ``.cervixautoseg-manifest.json`` in ``out_dir`` lists every
output a run wrote with its sha256 (:mod:`.outputs`).  Only files it lists, unchanged since, are
replaced or removed; a file with an output name that this tool did not write (a user's own
``rtstruct.dcm``), or one the user has edited since, stops the run before any heavy work
(:class:`~.outputs.OutputConflictError`) unless ``overwrite``.  Other files in ``out_dir`` are
never touched.  Output files follow the user's umask.

The network step is the runner of the card's family in the registry (:mod:`.families`):
``runner(volume, card, device, options, report_fraction, cancel)`` → :class:`NetworkOutput`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError
from .families import NetworkOutput
from .heap import retained_heap
from .mr_weighting import check_input_weighting
from .progress import CancelCheck, ProgressCallback, StagedProgress, check_cancelled
from .volume import Volume

log = logging.getLogger(__name__)

LABELS_FILE = "labels.nii.gz"
LABELS_FILE_SHEARED = "labels.nrrd"
LABELS_JSON = "labels.json"
SEGMENTATION_FILE = "segmentation.seg.nrrd"
RTSTRUCT_FILE = "rtstruct.dcm"
REPORT_FILE = "report.json"
PREVIEW_FILE = "preview.png"
OUTPUT_FILES = (LABELS_FILE, LABELS_FILE_SHEARED, LABELS_JSON, SEGMENTATION_FILE, RTSTRUCT_FILE,
                REPORT_FILE, PREVIEW_FILE)
"""Every file name ``segment`` may write; stale ones of an earlier run (listed in its manifest) are removed."""

@dataclasses.dataclass
class SegmentationResult:
    """The outcome of :func:`segment`: labels on the input grid, the report and the written files."""

    labels: Volume
    structures: tuple
    model: Any
    report: dict
    out_dir: Path | None
    files: dict[str, Path]
    evidence: list = dataclasses.field(default_factory=list)
    """The network's evidence maps on the input grid (:class:`~.qa.maps.EvidenceMaps`), only when
    ``segment(..., keep_evidence=True)``: for measuring the QA (``qa-calibrate --corruptions``)."""


@dataclasses.dataclass
class Outcome:
    """Everything the outputs are made from (one run, before writing)."""

    volume: Volume
    input_path: str | None
    card: Any
    device: dict
    labels: Volume
    cleanup: Mapping[int, Any]
    field_of_view_border: Any  # an array or a BoxedMap (read by boxes)
    preprocessing: Mapping[str, Any]
    timings: dict
    warnings: list[str] = dataclasses.field(default_factory=list)
    """Input warnings for the user (e.g. T2 weighting not verifiable), one line each."""
    quality: dict | None = None
    """:func:`.qa.assess` of the result (report.json ``qa``); computed by :meth:`assess_quality`."""
    evidence: list = dataclasses.field(default_factory=list)
    """The network's evidence maps (:class:`~.qa.maps.EvidenceMaps`) for the QA; dropped once it ran."""
    label_boxes: list | None = None
    """:func:`.cropping.label_boxes` of ``labels``: scanned once for the QA, the report and the files."""

    def boxes(self) -> list:
        """:attr:`label_boxes`, scanned on first use."""
        if self.label_boxes is None:
            from .cropping import label_boxes

            self.label_boxes = label_boxes(self.labels.array)
        return self.label_boxes

    def assess_quality(self) -> dict:
        """Per-slice flags and per-case plausibility (:mod:`.qa`), timed as ``timings["qa"]``; the
        evidence maps (a few bytes per voxel) are let go afterwards."""
        from .qa import QAConfig, assess

        started = time.perf_counter()
        self.quality = assess(self.volume, self.labels, self.card.structures, QAConfig.from_card(self.card),
                              evidence=self.evidence, field_of_view_border=self.field_of_view_border,
                              boxes=self.boxes())
        self.evidence = []
        self.timings["qa"] = time.perf_counter() - started
        return self.quality

    def report(self, outputs: tuple[str, ...] = ()) -> dict:
        from .report import build_report

        if self.quality is None:
            self.assess_quality()
        return build_report(volume=self.volume, input_path=self.input_path, card=self.card, device=self.device,
                            timings=self.timings, labels=self.labels, structures=self.card.structures,
                            cleanup=self.cleanup, field_of_view_border=self.field_of_view_border,
                            preprocessing=self.preprocessing, outputs=outputs, warnings=self.warnings,
                            quality=self.quality, boxes=self.label_boxes)


# ---------------------------------------------------------------- model choice
def choose_model(volume: Volume, model: str | Any = "auto", models_root: str | Path | None = None):
    """The model card for ``volume``: :func:`CervixAutoSegLib.models.choose_model` on its modality
    (``model`` may also be a :class:`~CervixAutoSegLib.models.ModelCard`)."""
    from .models import choose_model as choose_card

    return choose_card(volume.modality, model, models_root)


def _requested_modality(model: str | Any, models_root: str | Path | None) -> str | None:
    """The modality ``model`` fixes (a family name, an installed id or a card), else None (``auto``)."""
    from .families import family_names, get_family
    from .models import ModelCard, find_model

    if isinstance(model, ModelCard):
        return get_family(model.family).modality
    choice = (model or "auto").strip().lower()
    if choice == "auto":
        return None
    if choice in family_names():
        return get_family(choice).modality
    return get_family(find_model(model.strip(), models_root).family).modality  # an unknown id fails here, early


# ---------------------------------------------------------------- the flow
def load_input(source: str | Path | Volume, *, series_uid: str | None = None,
               modality: str | None = None, models_root: str | Path | None = None) -> tuple[Volume, str | None]:
    """A path (DICOM folder/file, NIfTI, NRRD) or a Volume → (Volume, path string or None), validated.

    When the model fixes the modality (``--model ct``) a DICOM folder's series choice is limited
    to it; image files keep their own (guessed) modality so a mismatch is caught, not hidden.
    Every image, read here or handed in by Slicer, passes :func:`.input_checks.validate_input`
    (the checks of ``series --check``) before any heavy work: InputError naming what is wrong.
    """
    from .image_io import guess_modality, load_image
    from .input_checks import source_name, validate_input

    if isinstance(source, Volume):
        volume, path = source, None
        if not volume.modality:
            volume = volume.with_array(volume.array, modality=guess_modality(volume))
        name = source_name(volume, fallback="the image volume")
    else:
        path = Path(source)
        volume = load_image(path, series_uid=series_uid, modality=modality if path.is_dir() else None)
        name = source_name(volume) if path.is_dir() else str(path)
    validate_input(volume, name, modality=modality or volume.modality, models_root=models_root)
    for warning in volume.meta.get("input_warnings", ()):  # only now: a refusal is the one line on stderr
        log.warning("%s: %s", name, warning)
    return volume, None if path is None else str(path)


def labels_volume(volume: Volume, labels: np.ndarray, model_id: str) -> Volume:
    """uint8 label map on exactly the grid of ``volume`` (geometry copied, not recomputed)."""
    meta = {"source": "segment", "model": model_id}
    for key in ("series_instance_uid", "frame_of_reference_uid", "study_instance_uid"):
        if key in volume.meta:
            meta[key] = volume.meta[key]
    return Volume(array=np.ascontiguousarray(labels, dtype=np.uint8), spacing=volume.spacing.copy(),
                  origin=volume.origin.copy(), direction=volume.direction.copy(), modality="", meta=meta)


def segment(
    source: str | Path | Volume,
    out_dir: str | Path | None,
    *,
    model: str = "auto",
    device: str = "auto",
    series_uid: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    options: Any = None,
    models_root: str | Path | None = None,
    allow_non_t2: bool = False,
    overwrite: bool = False,
    keep_evidence: bool = False,
    prefetch_input: bool = False,
) -> SegmentationResult:
    """Segment one image and write every output into ``out_dir`` (None: compute only).

    Args:
        source: DICOM folder or file, NIfTI/NRRD file, or a :class:`Volume` (Slicer).
        out_dir: output folder (created); see the module docstring for its contents.
        model: ``"auto"`` (the family registered for the image's modality), a family name,
            a model id, or a :class:`~CervixAutoSegLib.models.ModelCard`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        series_uid: Series Instance UID when a DICOM folder holds several series.
        progress: receives :class:`~CervixAutoSegLib.progress.ProgressEvent` objects.
        cancel: polled between batches and stages; True → :class:`~CervixAutoSegLib.errors.Cancelled`,
            nothing written.
        options: :class:`~CervixAutoSegLib.inference_options.InferenceOptions` (batch size, precision,
            flip TTA), or a mapping of the fields to change in the family's defaults (None: the defaults).
        models_root: folder of model directories (default: the bundled ``Resources/Models``).
        allow_non_t2: contour an MR DICOM series whose header says it is not T2-weighted
            (recorded as a warning); without it such a series is refused. Choosing an MR
            model does not imply it.
        overwrite: also replace files with our output names that this tool did not write (module docstring).
        keep_evidence: also return the network's evidence maps (a few bytes per voxel) in the result.
        prefetch_input: read a DICOM folder or image file in a forked child while this process imports
            torch, where that is safe (:mod:`.prefetch`: Linux, a single thread, torch not imported yet);
            for a fresh command-line process.  Same result, same errors.

    Raises:
        InputError: unreadable input, modality without a model, a non-T2w MR series, bad device, ...
        OutputError: ``out_dir`` unusable, or holding a user's file under an output name (checked first).
        Cancelled: the user cancelled.
    """
    tracker = StagedProgress(progress, cancel)
    timings: dict[str, float] = {}
    job_started = time.perf_counter()
    out_dir = _prepare_out_dir(out_dir, overwrite)

    tracker.start("load", "reading image")
    torch_device, (volume, input_path, card, warnings), prepared, reader = _device_and_input(
        device, (source, series_uid, model, models_root, allow_non_t2), prefetch_input, timings)
    # One retained heap for the case (heap.py): what the network freed serves the cleaning, the QA and the writers.
    with contextlib.closing(reader) if reader is not None else contextlib.nullcontext(), retained_heap():
        outcome = _network_outcome(volume, input_path, card, warnings, prepared, (device, torch_device), options,
                                   tracker, cancel, timings)
        evidence = list(outcome.evidence) if keep_evidence else []  # the QA lets go of the outcome's
        if out_dir is None:
            outcome.assess_quality()
            timings["total"] = time.perf_counter() - job_started
            tracker.finish()
            return SegmentationResult(outcome.labels, card.structures, card, outcome.report(), None, {}, evidence)

        tracker.start("write", "checking the result, writing outputs")
        files, report = write_outputs(out_dir, outcome, job_started=job_started, cancel=cancel,
                                      step=tracker.update, overwrite=overwrite, reader=reader)
    tracker.finish(f"done: {out_dir}")
    return SegmentationResult(outcome.labels, card.structures, card, report, out_dir, files, evidence)


def _network_outcome(volume: Volume, input_path: str | None, card: Any, warnings: list[str], prepared: Any,
                     device: tuple[str, Any], options: Any, tracker: StagedProgress, cancel: CancelCheck | None,
                     timings: dict[str, float]) -> Outcome:
    """The network and the postprocessing of the image read: the :class:`Outcome` the outputs are
    made from (``device``: as asked, as resolved; ``prepared``: the runner's preprocessing done ahead)."""
    from .devices import describe_device

    device, torch_device = device
    tracker.start("preprocess", f"model {card.id} on {describe_device(torch_device)}")
    output = _run_network(volume, card, torch_device, options, tracker, cancel, prepared)
    warnings += output.warnings
    for stage in ("preprocess", "model_load", "network"):
        timings[stage] = timings.get(stage, 0.0) + output.timings.get(stage, 0.0)

    tracker.start("postprocess", "cleaning contours")
    labels, cleanup = _postprocess(output, volume, card, timings)
    return Outcome(volume, input_path, card, _device_entry(device, torch_device, output), labels, cleanup,
                   output.field_of_view_border, output.preprocessing, timings, warnings, evidence=output.evidence)


_SHARED_IMPORTS = ("scipy.ndimage",)
"""Modules the prefetch child needs to prepare the image and this process needs after the network
(labelling, in postprocess and the QA): imported once before the fork.  pydicom is the child's alone
(it also writes the RTSTRUCT), so it is imported there, beside torch's import here."""


def _device_and_input(device: str, load_args: tuple, prefetch_input: bool, timings: dict[str, float]) -> tuple:
    """(torch device, :func:`_load` of ``load_args``, the runner's prepared image or None, the reader
    child or None); the device first, so a bad ``--device`` fails before any reading.

    With ``prefetch_input`` an image path is read, and prepared by a :class:`~.families.PreparingRunner`,
    in a forked child meanwhile (resolving the device imports torch: a second of a fresh process);
    ``timings["load"]`` and ``timings["preprocess"]`` are then the child's, and ``timings["load_wait"]``
    what was left to wait for after the import.  The child stays, keeping the image, to write the
    label files later (:func:`write_outputs`); the caller closes it.
    """
    from . import prefetch
    from .devices import resolve_device

    source = load_args[0]
    pending = None
    if prefetch_input and not isinstance(source, Volume):
        pending = prefetch.start(_read_ahead, *load_args, shared_imports=_SHARED_IMPORTS,
                                 keep=_image_read)
    try:
        torch_device = resolve_device(device)
    except BaseException:
        if pending is not None:
            pending.cancel()
        raise
    started = time.perf_counter()
    if pending is None:
        loaded, prepared = _load(*load_args), None
        timings["load"] = time.perf_counter() - started
    else:
        loaded, prepared, timings["load"], timings["preprocess"] = pending.result()
        timings["load_wait"] = time.perf_counter() - started
    return torch_device, loaded, prepared, pending if pending is not None and pending.serving else None


def _image_read(read_ahead: tuple) -> Volume:
    """What the prefetch child keeps of its :func:`_read_ahead` result: the image (the same as this
    process received), for writing the label files."""
    return read_ahead[0][0]


def _read_ahead(*load_args: Any) -> tuple:
    """(:func:`_load` of ``load_args``, the family runner's :meth:`~.families.PreparingRunner.prepare` of
    the image or None, seconds loading, seconds preparing): the prefetch child's work."""
    from .families import PreparingRunner, get_family

    started = time.perf_counter()
    loaded = _load(*load_args)
    load_s = time.perf_counter() - started
    volume, card = loaded[0], loaded[2]
    runner = get_family(card.family).runner
    if not isinstance(runner, PreparingRunner):
        return loaded, None, load_s, 0.0
    started = time.perf_counter()
    return loaded, runner.prepare(volume, card), load_s, time.perf_counter() - started


def _load(source: str | Path | Volume, series_uid: str | None, model: str | Any, models_root: str | Path | None,
          allow_non_t2: bool) -> tuple[Volume, str | None, Any, list[str]]:
    """(validated Volume, its path, the model card, input warnings): everything decided before the network."""
    volume, input_path = load_input(source, series_uid=series_uid, modality=_requested_modality(model, models_root),
                                    models_root=models_root)  # the memory estimate uses these models' grids
    card = choose_model(volume, model, models_root)
    warnings = list(check_input_weighting(volume.meta, volume.modality, allow_non_t2=allow_non_t2))
    for warning in warnings:  # info, not warning: the command's summary prints them already
        log.info("%s", warning)
    # The reader's and the input checks' warnings (logged by load_input) also reach report.json
    # ("warnings" and "input_warnings") and the command's summary, which prints "warnings".
    return volume, input_path, card, [*volume.meta.get("input_warnings", ()), *warnings]


def _run_network(volume: Volume, card: Any, device: Any, options: Any, tracker: StagedProgress,
                 cancel: CancelCheck | None, prepared: Any = None) -> NetworkOutput:
    """The family's runner, its batch progress shown as the ``network`` stage (``prepared``: what its
    :meth:`~.families.PreparingRunner.prepare` gave already, or None)."""
    from .families import get_family

    family = get_family(card.family)
    if family.runner is None:
        raise ModelError(f"model {card.id}: the {family.title} family has no network in this version")

    def network_fraction(fraction: float, message: str) -> None:
        if tracker.stage != "network":
            tracker.start("network", "running the network")
        tracker.update(fraction, message)

    run = functools.partial(family.runner, volume, card, device, inference_options(family, options),
                            network_fraction, cancel)
    return run() if prepared is None else run(prepared=prepared)  # within segment's retained heap


def inference_options(family: Any, options: Any = None) -> Any:
    """``options`` as given (an InferenceOptions), or the family's defaults with ``options``
    (a mapping of field → value, None values ignored) applied over them."""
    from .inference_options import InferenceOptions

    if isinstance(options, InferenceOptions):
        return options
    changes = {name: value for name, value in dict(options or {}).items() if value is not None}
    return family.inference_defaults.replace(**changes)


def _postprocess(output: NetworkOutput, volume: Volume, card: Any, timings: dict[str, float]) -> tuple[Volume, dict]:
    """Rule-table cleaning (:mod:`.postprocess`) of the runner's labels → label Volume on the input grid
    + cleanup summary; ``timings["postprocess"]`` counts the runner's way back onto the grid too."""
    from .postprocess import postprocess_labels, rules_for

    started = time.perf_counter()
    cleaned, cleanup = postprocess_labels(output.labels, rules_for(card.structures), volume.spacing, volume.direction,
                                          in_place=True)  # the runner's labels are this run's own
    timings["postprocess"] = time.perf_counter() - started + output.timings.get("restore", 0.0)
    return labels_volume(volume, cleaned, card.id), cleanup


def _device_entry(requested: str, torch_device: Any, output: NetworkOutput) -> dict:
    """The report's ``device`` entry: what was asked, what ran, and the runner's inference facts."""
    from .devices import describe_device

    return {"requested": requested, "used": output.inference.get("device", str(torch_device)),
            "description": describe_device(output.inference.get("device", torch_device)), **output.inference}


def _prepare_out_dir(out_dir: str | Path | None, overwrite: bool) -> Path | None:
    """Settle everything about ``out_dir`` (None: nothing to write) before any heavy work: writable
    (here and beside it, where the staging folder goes), staging folders of killed runs removed,
    no file of the user's under one of our names (unless ``overwrite``)."""
    from .outputs import check_output_folder, check_replaceable, remove_stale_staging

    if out_dir is None:
        return None
    out_dir = Path(out_dir)
    check_output_folder(out_dir, "--out", staged_beside=True)
    remove_stale_staging(out_dir)
    check_replaceable(out_dir, OUTPUT_FILES, overwrite=overwrite)
    return out_dir


# ---------------------------------------------------------------- outputs
def write_outputs(out_dir: Path, outcome: Outcome, *, job_started: float, cancel: CancelCheck | None = None,
                  step: Callable[[float, str], None] | None = None, overwrite: bool = False,
                  reader: Any = None) -> tuple[dict[str, Path], dict]:
    """Write all outputs into a staging folder, then move them into ``out_dir`` (see module docstring).

    The label files (label map, ``.seg.nrrd``, RTSTRUCT) do not depend on the QA, so they are
    written while this thread runs the outcome's QA (if it has not run yet), builds the report and
    draws the preview: by ``reader``, the prefetch child that read the image (a
    :class:`~.prefetch.Prefetch` serving jobs: another process, so no GIL between the two), else by
    a second thread; should the child die, here.  ``timings["write"]`` is the writing's wall
    time beyond the QA's.  ``step(fraction, message)`` is told before each part (fraction of the
    writing done).  ``overwrite``: files with our names that are not ours may be replaced too.
    Returns ({output key: path in out_dir}, the report document).
    """
    from concurrent.futures import ThreadPoolExecutor

    from .outputs import make_staging

    step = step or (lambda fraction, message: None)
    out_dir = Path(out_dir).absolute()
    staging = make_staging(out_dir)
    started, qa_before = time.perf_counter(), outcome.timings.get("qa", 0.0)
    try:
        names = _output_names(outcome)
        step(0.0, "label map, Slicer segmentation, RTSTRUCT")
        stop = threading.Event()  # this thread failed or was cancelled: the writer stops at its next file
        with ThreadPoolExecutor(1, thread_name_prefix="cervixautoseg-write") as pool:
            label_files = _start_label_files(staging, outcome, names, reader, pool,
                                             lambda: stop.is_set() or bool(cancel and cancel()))
            try:
                report = _summary(staging, outcome, names, step)
                _wait_for(label_files, cancel)
            except BaseException:
                stop.set()
                if reader is not None:
                    reader.cancel()  # the child stops at once; the staging folder goes below
                raise
        step(0.95, "report")
        overlapped = outcome.timings.get("qa", 0.0) - qa_before
        _write_report(staging / REPORT_FILE, report, outcome.timings, time.perf_counter() - started - overlapped,
                      job_started)
        check_cancelled(cancel)
        files = _publish(staging, out_dir, names, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files, report


def _output_names(outcome: Outcome) -> dict[str, str]:
    """{output key: file name} of every file this outcome gets (the module docstring's list)."""
    names = {"labels": LABELS_FILE if outcome.labels.is_orthogonal else LABELS_FILE_SHEARED,
             "labels_json": LABELS_JSON}
    if _segmentation_writer() is not None:
        names["segmentation"] = SEGMENTATION_FILE
    if outcome.volume.meta.get("source") == "dicom":
        names["rtstruct"] = RTSTRUCT_FILE
    return {**names, "preview": PREVIEW_FILE, "report": REPORT_FILE}


def _start_label_files(staging: Path, outcome: Outcome, names: Mapping[str, str], reader: Any, pool: Any,
                       cancel: CancelCheck) -> Any:
    """The label files being written (a future): by ``reader`` when it serves, else in ``pool``'s
    thread; a reader that died meanwhile is replaced by writing here (:class:`_LabelFiles`)."""
    from .prefetch import ReaderLost

    boxes = outcome.boxes()  # scanned before another thread or process reads them
    if reader is not None and reader.serving:
        try:
            job = reader.submit(_write_label_files_in_reader, staging, outcome.labels, outcome.card, names, boxes)
            return _LabelFiles(job, lambda: _label_files_here(staging, outcome, names, cancel)())
        except ReaderLost as error:
            log.info("%s; writing the label files in this process", error)
    return pool.submit(_label_files_here(staging, outcome, names, cancel))


def _label_files_here(staging: Path, outcome: Outcome, names: Mapping[str, str],
                      cancel: CancelCheck) -> Callable[[], None]:
    """:func:`_write_label_files` of ``outcome``, ready to call in this process (in any thread): the
    RTSTRUCT's source header is read, and its values converted, now, in this thread (see
    :func:`~.rtstruct.read_source_header`)."""
    from .rtstruct import read_source_header

    header = read_source_header(outcome.volume) if "rtstruct" in names else None
    return functools.partial(_write_label_files, staging, outcome.volume, outcome.labels, outcome.card, names,
                             outcome.boxes(), header, cancel)


class _LabelFiles:
    """The reader child's label-file job, as a future whose result calls ``write_here`` instead when
    the child died (out of memory, killed) before finishing them."""

    def __init__(self, job: Any, write_here: Callable[[], None]) -> None:
        self._job, self._write_here = job, write_here

    def result(self, timeout: float | None = None) -> None:
        from .prefetch import ReaderLost

        try:
            return self._job.result(timeout)
        except ReaderLost as error:
            log.info("%s; writing the label files in this process", error)
        self._write_here()


def _wait_for(future: Any, cancel: CancelCheck | None, poll_s: float = 0.2) -> None:
    """``future.result()``, raising :class:`~.errors.Cancelled` meanwhile when the user cancels (the
    writer stops at its next file)."""
    from concurrent.futures import TimeoutError as Pending

    while True:
        try:
            return future.result(timeout=poll_s)
        except Pending:
            check_cancelled(cancel)


def _write_label_files_in_reader(image: Volume, staging: Path, labels: Volume, card: Any, names: Mapping[str, str],
                                 boxes: list) -> None:
    """:func:`_write_label_files` as the prefetch child's job, on the ``image`` it read and kept (the
    one this process received from it); the RTSTRUCT's source header is read there too."""
    from .rtstruct import read_source_header

    header = read_source_header(image) if "rtstruct" in names else None
    _write_label_files(staging, image, labels, card, names, boxes, header)


def _write_label_files(staging: Path, image: Volume, labels: Volume, card: Any, names: Mapping[str, str],
                       boxes: list, header: Any = None, cancel: CancelCheck | None = None) -> None:
    """The label map, labels.json, the Slicer segmentation and the RTSTRUCT named in ``names`` into
    ``staging`` (``boxes``: :func:`.cropping.label_boxes` of ``labels``; the RTSTRUCT's patient and
    study from ``header``); stops between files on a cancel."""
    from .image_io import write_image
    from .rtstruct import organ_tumour_containment
    from .structures import write_labels_json

    structures = card.structures
    containment = organ_tumour_containment(structures)
    write_image(labels, staging / names["labels"])
    write_labels_json(staging / names["labels_json"], card.id, structures)
    check_cancelled(cancel)
    if "segmentation" in names:
        _segmentation_writer()(staging / names["segmentation"], labels, structures, containment, boxes)
    check_cancelled(cancel)
    if "rtstruct" in names:
        from .rtstruct import write_rtstruct

        write_rtstruct(staging / names["rtstruct"], labels, image, structures, model_name=card.id,
                       model_version=card.version, containment=containment, image_header=header, boxes=boxes)


def _summary(staging: Path, outcome: Outcome, names: Mapping[str, str], step: Callable[[float, str], None]) -> dict:
    """The QA (unless it ran), the report document and preview.png (into ``staging``)."""
    from .preview import write_preview

    if outcome.quality is None:
        step(0.0, "checking the result")
        outcome.assess_quality()
    step(0.75, "preview")
    report = outcome.report(outputs=tuple(names.values()))
    volumes = {entry["value"]: entry["volume_ml"] for entry in report["structures"]}
    write_preview(staging / names["preview"], outcome.volume, outcome.labels, outcome.card.structures, volumes,
                  title=_preview_title(outcome.card), quality=report["qa"])
    return report


def _write_report(path: Path, report: dict, timings: dict[str, float], write_s: float, job_started: float) -> None:
    """report.json with the run's timings, ``write`` = ``write_s`` and ``total`` up to now."""
    from .report import write_report

    timings["write"] = write_s
    timings["total"] = time.perf_counter() - job_started
    report["timings_s"] = {name: round(float(seconds), 3) for name, seconds in timings.items()}
    write_report(path, report)


def _preview_title(card: Any) -> str:
    research_only = "NOT FOR CLINICAL USE" in card.intended_use.upper()
    return f"{card.id} v{card.version}" + (" — NOT FOR CLINICAL USE" if research_only else "")


def _segmentation_writer() -> Callable[..., Any] | None:
    """:func:`.segfile.write_segmentation_nrrd`, or None (with a warning) when it is not installed."""
    try:
        from .segfile import write_segmentation_nrrd
    except ImportError:  # pragma: no cover - only while the writer is not installed
        log.warning("segmentation.seg.nrrd not written: the .seg.nrrd writer is not available")
        return None
    return write_segmentation_nrrd


@contextlib.contextmanager
def _termination_deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT back for a few renames, so a cancel cannot leave a half-published folder."""
    import signal

    held = {signal.SIGTERM, signal.SIGINT}
    if not hasattr(signal, "pthread_sigmask"):  # Windows: renames are not interruptible by these anyway
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _publish(staging: Path, out_dir: Path, names: Mapping[str, str], overwrite: bool = False) -> dict[str, Path]:
    """Rename the staged files into ``out_dir``; remove our stale outputs of an earlier run."""
    with _termination_deferred():
        return _rename_all(staging, out_dir, names, overwrite)


def _rename_all(staging: Path, out_dir: Path, names: Mapping[str, str], overwrite: bool) -> dict[str, Path]:
    """The renames, bracketed by manifests: while they run the manifest accepts the earlier and the
    new version of each file, so a SIGKILL between two renames leaves only files that count as ours."""
    from .outputs import check_replaceable, file_hashes, write_manifest

    out_dir.mkdir(parents=True, exist_ok=True)
    # Again, right before touching anything: a file may have appeared while the network ran.
    check_replaceable(out_dir, OUTPUT_FILES, overwrite=overwrite)
    produced = file_hashes(staging, names.values())
    write_manifest(out_dir, staging, file_hashes(out_dir, OUTPUT_FILES), pending=produced)
    files = {}
    for key, name in names.items():
        os.replace(staging / name, out_dir / name)
        files[key] = out_dir / name
    for name in OUTPUT_FILES:
        if name not in produced and os.path.lexists(out_dir / name):
            (out_dir / name).unlink()
    write_manifest(out_dir, staging, produced)
    return files
