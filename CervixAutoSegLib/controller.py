"""What the module panel shows and does, without Qt: the widget only mirrors :class:`ViewState`.

The widget calls the ``set_*`` methods when the user changes a selector, ``run_clicked``
/ ``export_clicked`` for the buttons and :meth:`AutoContourController.poll` from a
``qt.QTimer`` while :attr:`ViewState.polling` is True; after each call it copies
:attr:`AutoContourController.view` into its widgets.  Every decision — which model fits
the image, which device is offered, what the button says, what the status line reads —
is made here and is tested without a GUI.

Scene access is injected: :class:`RunInput` writes the selected volume for the child
process and ``apply_result`` loads a finished output folder into the scene (normally
:meth:`CervixAutoSegLib.mrml.AutoContourLogic.apply_result`), so this module never
imports ``slicer``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .errors import InputError
from .families import families, family_for_modality, get_family
from .mr_weighting import CHECKED_MODALITY, NOT_T2
from .worker import BackgroundJob, JobState, python_executable, segment_command

log = logging.getLogger(__name__)

AUTO = "auto"
CPU, CUDA, MPS = "cpu", "cuda", "mps"
RUN_TEXT, CANCEL_TEXT, CANCELLING_TEXT = "Auto-contour", "Cancel", "Cancelling..."
STAGE_LABELS = {
    "load": "Loading image",
    "preprocess": "Preparing image",
    "network": "Running network",
    "postprocess": "Cleaning contours",
    "write": "Writing outputs",
    "done": "Done",
}
"""Stage names of :data:`CervixAutoSegLib.progress.STAGES` as the panel shows them."""
REPORT_FILE = "report.json"
QA_TABLE_ROWS = 100
"""Flagged slices listed in the panel's table, worst first (all of them are in report.json)."""
QA_COLUMNS = ("Structure", "Slice", "Score", "Why")
DETECTING_NOTE = "Detecting GPUs..."
ALLOW_NON_T2_TEXT = "Allow MR series that are not T2-weighted"
"""The check box's text in the .ui, quoted by the status line that refuses a series."""
PERCENT = 100


# ------------------------------------------------------------------ inputs
class RunInput(Protocol):
    """The image to contour, as the panel knows it.

    An input may also carry ``problem``: one sentence saying why it cannot be contoured at
    all (e.g. an RGB volume); the panel shows it and keeps the button disabled.  An MR input
    loaded from DICOM may carry ``weighting``: the
    :class:`~CervixAutoSegLib.mr_weighting.Weighting` of its series' header, so that a series that
    is not T2-weighted is refused here, as ``segment`` refuses it (the child only sees voxels).
    """

    name: str
    modality: str
    """``"CT"``, ``"MR"`` or ``""`` (unknown: the user must pick a model)."""

    def write(self, folder: Path) -> Path:
        """Write the image for the child process into ``folder``; return the path to pass it."""


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What accelerators this machine has, as described to the user."""

    cpu: str = "CPU"
    cuda: str = ""
    """Description of the CUDA GPU ('' when none)."""
    mps: bool = False
    torch_missing: bool = False


def detect_devices() -> DeviceInfo:
    """Probe torch for CUDA/MPS in this process (imports torch: seconds, and hundreds of MB).

    The panel does not call this in Slicer's process: :func:`device_probe_command` runs it
    in the same kind of child process that will do the inference.
    """
    try:
        import torch
    except ImportError:
        return DeviceInfo(torch_missing=True)
    from .devices import describe_device

    cuda = describe_device(torch.device(CUDA)) if torch.cuda.is_available() else ""
    backend = getattr(torch.backends, "mps", None)
    mps = bool(backend is not None and backend.is_available())
    return DeviceInfo(cpu=describe_device(torch.device(CPU)), cuda=cuda, mps=mps)


def print_devices() -> None:
    """Entry point of the device probe child: one JSON line describing the devices."""
    print(json.dumps(dataclasses.asdict(detect_devices())), flush=True)


def device_probe_command(python: str | None = None) -> list[str]:
    """Command printing :func:`detect_devices` as JSON, run in the background by the panel."""
    return [python or python_executable(), "-c", "from CervixAutoSegLib.controller import print_devices; print_devices()"]


def parse_devices(lines: list[str]) -> DeviceInfo | None:
    """The DeviceInfo a probe printed (its last JSON line), or None."""
    fields = {field.name for field in dataclasses.fields(DeviceInfo)}
    for line in reversed(lines):
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict) and set(document) <= fields:
            return DeviceInfo(**document)
    return None


@dataclasses.dataclass(frozen=True)
class Choice:
    value: str
    label: str


@dataclasses.dataclass(frozen=True)
class FlaggedSlice:
    """One row of the panel's QA table: a slice a reviewer should look at, and where it is.

    ``slice`` is the input array's axis-0 index (report.json / review ``slice_index``);
    ``position_ras`` the structure's centre on that slice in Slicer's RAS mm (None if unknown).
    """

    structure: str
    slice: int
    score: float
    reasons: str
    position_ras: tuple[float, float, float] | None = None

    def cells(self) -> tuple[str, str, str, str]:
        """The row's text in :data:`QA_COLUMNS` order."""
        return self.structure, str(self.slice), f"{self.score:.2f}", self.reasons


def flagged_slices(report: dict, limit: int = QA_TABLE_ROWS) -> list[FlaggedSlice]:
    """The flagged slices of report.json's ``qa.slices``, in the review order (worst first)."""
    from .qa import review_order

    entries = {(e["structure"], int(e["slice"])): e for e in (report.get("qa") or {}).get("slices", [])
               if e.get("flagged")}
    rows = []
    for key in review_order(list(entries.values()))[:limit]:
        entry = entries[key]
        lps = entry.get("position_lps_mm")
        ras = (-float(lps[0]), -float(lps[1]), float(lps[2])) if lps else None
        rows.append(FlaggedSlice(key[0], key[1], float(entry["score"]), "; ".join(entry.get("reasons", [])), ras))
    return rows


@dataclasses.dataclass
class ViewState:
    """Everything the panel shows; the widget copies it into its Qt widgets."""

    models: list[Choice] = dataclasses.field(default_factory=list)
    model: str = AUTO
    devices: list[Choice] = dataclasses.field(default_factory=list)
    device: str = AUTO
    device_note: str = ""
    run_text: str = RUN_TEXT
    run_enabled: bool = False
    run_tooltip: str = ""
    progress: int = 0
    progress_visible: bool = False
    progress_text: str = ""
    status: str = ""
    export_enabled: bool = False
    flip_tta: bool = True
    """Run mirrored too (test-time augmentation): the user's choice, else the chosen family's default."""
    allow_non_t2: bool = False
    """The user's explicit override of the T2-weighting check (``segment --allow-non-t2``)."""
    qa_warning: str = ""
    """One line when the last result is not plausible (:func:`CervixAutoSegLib.report.qa_warning`), else ''."""
    qa_verdict: str = ""
    """``plausible`` / ``check`` / ``implausible`` of the last result ('' before any)."""
    qa_rows: list[FlaggedSlice] = dataclasses.field(default_factory=list)
    """The last result's flagged slices, worst first (the QA table)."""
    qa_summary: str = ""
    """Above the table: how many slices are flagged, or that none is."""
    polling: bool = False


# -------------------------------------------------------------- controller
class AutoContourController:
    """State machine of the panel: idle → running → (succeeded | failed | cancelled) → idle.

    Args:
        devices: returns a :class:`DeviceInfo` synchronously; None (the panel's choice)
            probes in a background process (:func:`device_probe_command`) so that
            importing torch never freezes Slicer; :meth:`poll` picks the answer up.
        apply_result: loads a finished output folder into the scene; returns a short summary.
        job_factory: builds the background job from a command (:class:`BackgroundJob`).
        models_root: folder of model directories, read here and passed to the child
            (None: the bundled ``Resources/Models``).
        python: interpreter for the child (None: :func:`worker.python_executable`).
    """

    def __init__(
        self,
        *,
        devices: Callable[[], DeviceInfo] | None = None,
        apply_result: Callable[[Path], str] | None = None,
        job_factory: Callable[[list[str]], BackgroundJob] = BackgroundJob,
        models_root: Path | None = None,
        python: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._detect_devices = devices
        self._apply_result = apply_result
        self._job_factory = job_factory
        self._models_root = models_root
        self._python = python
        self._clock = clock
        self._cards: list = []
        self._device_info = DeviceInfo()
        self._probe: BackgroundJob | None = None
        self._wanted_device = AUTO
        self._input: RunInput | None = None
        self._job: BackgroundJob | None = None
        self._work_dir: Path | None = None
        self._stage_started: dict[str, float] = {}
        self._has_segmentation = False
        self._flip_tta: bool | None = None
        self.view = ViewState()
        self.refresh()

    # ---------------------------------------------------------- selections
    def refresh(self) -> ViewState:
        """Re-read installed models and devices (e.g. after installing a model)."""
        from .models import list_models

        self._cards = list_models(self._models_root)
        if self._detect_devices is not None:
            self._device_info = self._detect_devices()
        elif self._probe is None:
            self._probe = self._job_factory(device_probe_command(self._python))
            self._probe.start()
        self.view.models = [Choice(AUTO, "Auto (by image modality)")] + [
            Choice(card.id, f"{get_family(card.family).modality}: {card.id} v{card.version}") for card in self._cards
        ]
        if self.view.model not in {choice.value for choice in self.view.models}:
            self.view.model = AUTO
        self.view.devices = self._device_choices()
        self.set_device(self._wanted_device)
        return self._update_idle()

    def set_input(self, run_input: RunInput | None) -> ViewState:
        self._input = run_input
        return self._update_idle()

    def set_model(self, value: str) -> ViewState:
        self.view.model = value or AUTO
        return self._update_idle()

    def set_device(self, value: str) -> ViewState:
        """Select a device; one that is not available here falls back to CPU with a note."""
        info = self._device_info
        available = {choice.value for choice in self.view.devices}
        value = self._wanted_device = value or AUTO
        if self._probe is not None:  # not known yet: keep the choice, judge it when the probe answers
            if value not in available:
                self.view.devices = [*self.view.devices, Choice(value, value.upper())]
            self.view.device, self.view.device_note = value, DETECTING_NOTE
        elif value in available:
            self.view.device = value
            self.view.device_note = self._device_note(value)
        else:
            self.view.device = CPU
            self.view.device_note = f"{value.upper()} is not available on this computer; using {info.cpu}."
        return self.view

    def set_flip_tta(self, enabled: bool) -> ViewState:
        """The user's test-time-augmentation choice (kept across model changes)."""
        self._flip_tta = bool(enabled)
        return self._update_idle(keep_status=True)

    def set_allow_non_t2(self, enabled: bool) -> ViewState:
        """The user's override of the T2-weighting check (off until ticked; choosing a model never sets it)."""
        self.view.allow_non_t2 = bool(enabled)
        return self._update_idle()

    def set_segmentation(self, available: bool) -> ViewState:
        """Whether a segmentation to export is selected."""
        self._has_segmentation = bool(available)
        self.view.export_enabled = self._has_segmentation and not self.running
        return self.view

    # ------------------------------------------------------------ decisions
    def _device_choices(self) -> list[Choice]:
        info = self._device_info
        if self._probe is not None:
            return [Choice(AUTO, "Auto"), Choice(CPU, "CPU")]
        best = info.cuda and f"GPU - {info.cuda}" or ("Apple MPS" if info.mps else info.cpu)
        choices = [Choice(AUTO, f"Auto ({best})")]
        if info.cuda:
            choices.append(Choice(CUDA, f"GPU (CUDA) - {info.cuda}"))
        if info.mps:
            choices.append(Choice(MPS, "GPU (Apple MPS)"))
        choices.append(Choice(CPU, info.cpu))
        return choices

    def _device_note(self, value: str) -> str:
        info = self._device_info
        if info.torch_missing:
            return "PyTorch is not installed: install it with the PyTorch extension (it is offered on first run)."
        if value == AUTO and not (info.cuda or info.mps):
            return f"No GPU detected; running on {info.cpu}."
        if value == AUTO:
            return f"Detected {info.cuda or 'Apple MPS'}."
        return ""

    def choose_model(self, run_input: RunInput | None = None):
        """The model card for the input and the model choice; InputError says why there is none.

        The panel words its reasons for the user; the pick itself is the command line's rule
        (:func:`CervixAutoSegLib.models.choose_model`), so the panel and the child agree.
        """
        from .models import choose_model

        run_input = run_input or self._input
        if run_input is None:
            raise InputError("Select an input volume (a CT or T2-weighted MR image).")
        problem = getattr(run_input, "problem", "")
        if problem:
            raise InputError(problem)
        modality = (run_input.modality or "").upper()
        if self.view.model != AUTO:
            card = next((c for c in self._cards if c.id == self.view.model), None)
            if card is None:
                raise InputError(f"Model {self.view.model} is not installed.")
            expected = get_family(card.family).modality
            if modality and modality != expected:
                raise InputError(f"{card.id} contours {expected} images but {run_input.name} is {modality}.")
            return card
        family = family_for_modality(modality)
        if family is None:
            kinds = " or ".join(f.modality for f in families())
            raise InputError(f"Cannot tell whether {run_input.name} is {kinds}: choose a model.")
        if not any(card.family == family.name for card in self._cards):
            installed = ", ".join(card.id for card in self._cards) or "none"
            raise InputError(
                f"No {modality} model is installed, so {modality} images cannot be auto-contoured "
                f"(installed: {installed}). A model of another modality is never used instead."
            )
        return choose_model(modality, AUTO, self._models_root)

    def runnable_card(self, run_input: RunInput | None = None):
        """:meth:`choose_model`, then the T2-weighting check of an MR series; InputError says why not."""
        card = self.choose_model(run_input)
        run_input = run_input or self._input
        weighting = getattr(run_input, "weighting", None)
        checked = get_family(card.family).modality.upper() == CHECKED_MODALITY
        if checked and weighting is not None and weighting.verdict == NOT_T2 and not self.view.allow_non_t2:
            raise InputError(f"{run_input.name} is not T2-weighted: {weighting.reason}. "  # type: ignore[union-attr]
                             f"Tick '{ALLOW_NON_T2_TEXT}' to contour it anyway.")
        return card

    # ------------------------------------------------------------- running
    @property
    def running(self) -> bool:
        return self._job is not None and not self._job.state.finished

    def run_clicked(self) -> ViewState:
        """The one button: starts a run when idle, cancels when running."""
        if self.running:
            return self.cancel()
        return self.start()

    def start(self) -> ViewState:
        try:
            card = self.runnable_card()
        except InputError as error:
            self.view.status = str(error)
            return self._update_idle()
        work_dir = Path(tempfile.mkdtemp(prefix="CervixAutoSeg-"))
        try:
            input_path = self._input.write(work_dir)  # type: ignore[union-attr]
        except Exception as error:  # noqa: BLE001 - any failure to write the input becomes the status line
            shutil.rmtree(work_dir, ignore_errors=True)
            self.view.status = f"Could not prepare {self._input.name}: {error}"  # type: ignore[union-attr]
            return self._update_idle(keep_status=True)
        model_argument = card.family if self.view.model == AUTO else card.id
        command = segment_command(input_path, work_dir / "out", model=model_argument, device=self.view.device,
                                  python=self._python, options={"flip_tta": self.view.flip_tta},
                                  allow_non_t2=self.view.allow_non_t2)
        if self._models_root is not None:
            command += ["--models", str(self._models_root)]
        self._work_dir = work_dir
        self._stage_started = {}
        self._job = self._job_factory(command)
        self._job.start()
        self.view.run_text, self.view.run_enabled, self.view.run_tooltip = CANCEL_TEXT, True, "Stop the running job"
        self.view.progress, self.view.progress_visible = 0, True
        self.view.progress_text = "Starting..."
        self.view.status = f"Contouring {self._input.name} with {card.id} ({self._device_label()})..."  # type: ignore[union-attr]
        self._show_quality({})
        self.view.export_enabled = False
        self.view.polling = True
        return self.view

    def cancel(self) -> ViewState:
        if self._job is not None and self._job.state is JobState.RUNNING:
            self._job.cancel()
            self.view.run_text, self.view.run_enabled = CANCELLING_TEXT, False
            self.view.status = "Cancelling; the scene will not be changed."
        return self.view

    def poll(self) -> ViewState:
        """Advance the device probe and the background job (call from a timer while ``view.polling``)."""
        self._poll_probe()
        job = self._job
        if job is None:
            self.view.polling = self._probe is not None
            return self.view
        for event in job.poll():
            self._stage_started.setdefault(event.stage, self._clock())
            self.view.progress = round(max(0.0, min(1.0, event.fraction)) * PERCENT)
            label = STAGE_LABELS.get(event.stage, event.stage)
            self.view.progress_text = f"{label}: {event.message}" if event.message else label
        if not job.state.finished:
            return self.view
        self._finish(job)
        return self.view

    def _poll_probe(self) -> None:
        probe = self._probe
        if probe is None:
            return
        probe.poll()
        if not probe.state.finished:
            return
        self._probe = None
        found = parse_devices(probe.output_lines) if probe.state is JobState.SUCCEEDED else None
        if found is None:
            log.warning("device probe failed (%s); offering the CPU only", probe.error_message)
        self._device_info = found or DeviceInfo()
        self.view.devices = self._device_choices()
        self.set_device(self._wanted_device)

    def _finish(self, job: BackgroundJob) -> None:
        out_dir = self._work_dir / "out" if self._work_dir else None
        try:
            if job.state is JobState.SUCCEEDED:
                summary = self._apply(out_dir)
                self.view.status = self._done_status(out_dir, job, summary)
                self._show_quality(_read_report(out_dir))
                self.view.progress, self.view.progress_text = PERCENT, STAGE_LABELS["done"]
            elif job.state is JobState.CANCELLED:
                self.view.status = "Cancelled; the scene was not changed."
            else:
                self.view.status = f"Failed: {job.error_message or 'the segmentation process stopped'}"
        except _ResultNotLoaded as error:
            self.view.status = f"Finished, but the result could not be loaded (scene unchanged): {error}"
        finally:
            if self._work_dir is not None:
                shutil.rmtree(self._work_dir, ignore_errors=True)
            self._job, self._work_dir = None, None
            self.view.progress_visible = job.state is JobState.SUCCEEDED
            self._update_idle(keep_status=True)

    def _apply(self, out_dir: Path | None) -> str:
        if self._apply_result is None or out_dir is None:
            return ""
        try:
            return self._apply_result(out_dir) or ""
        except Exception as error:  # the scene is unchanged (mrml builds before touching it)
            log.exception("loading the result failed")
            raise _ResultNotLoaded(str(error)) from error

    def _done_status(self, out_dir: Path | None, job: BackgroundJob, summary: str) -> str:
        report = _read_report(out_dir)
        timings = report.get("timings_s", {}) if report else {}
        total = timings.get("total", job.elapsed)
        parts = [f"{name} {seconds:.1f} s" for name, seconds in timings.items() if name != "total"]
        device = (report.get("device") or {}).get("description", "") if report else ""
        text = f"Done in {total:.1f} s"
        if parts:
            text += " (" + ", ".join(parts) + ")"
        if device:
            text += f" on {device}"
        text = f"{text}. {summary}." if summary else f"{text}."
        for warning in (report.get("warnings") or []) if report else []:
            text += f" Warning: {warning}."
        return text

    def _show_quality(self, report: dict) -> None:
        """The QA warning line and table of ``report`` ({} clears them)."""
        from .report import qa_warning

        qa = report.get("qa") or {}
        self.view.qa_verdict = qa.get("verdict", "")
        self.view.qa_warning = qa_warning(report) if report else ""
        self.view.qa_rows = flagged_slices(report) if report else []
        count = int(qa.get("flagged_slices", len(self.view.qa_rows)))
        if not report or "slices" not in qa:
            self.view.qa_summary = ""
        elif count:
            shown = len(self.view.qa_rows)
            self.view.qa_summary = (f"{count} slice(s) flagged for review, worst first"
                                    + (f" (first {shown} shown)" if shown < count else "")
                                    + ". Click a row to go to the slice.")
        else:
            self.view.qa_summary = "No slice flagged."

    def qa_row_position(self, row: int) -> tuple[float, float, float] | None:
        """RAS position to jump the slice views to for table row ``row`` (None: nothing to jump to)."""
        rows = self.view.qa_rows
        return rows[row].position_ras if 0 <= row < len(rows) else None

    def _device_label(self) -> str:
        return next((choice.label for choice in self.view.devices if choice.value == self.view.device), self.view.device)

    def _update_idle(self, keep_status: bool = False) -> ViewState:
        """Button/status of the idle panel (no-op while a job runs)."""
        if self.running:
            return self.view
        self.view.run_text = RUN_TEXT
        self.view.polling = self._probe is not None
        try:
            card = self.runnable_card()
        except InputError as error:
            self.view.run_enabled, self.view.run_tooltip = False, str(error)
            if not keep_status:
                self.view.status = str(error)
        else:
            self.view.run_enabled = True
            self.view.run_tooltip = f"Contour {self._input.name} with {card.id}"  # type: ignore[union-attr]
            default = get_family(card.family).inference_defaults.flip_tta
            self.view.flip_tta = default if self._flip_tta is None else self._flip_tta
            if not keep_status:
                self.view.status = ""
        self.view.export_enabled = self._has_segmentation
        return self.view

    # -------------------------------------------------------------- export
    def export_clicked(self, exporter: Callable[[], str]) -> ViewState:
        """Run the RTSTRUCT export (``exporter`` returns a summary); show its outcome."""
        try:
            self.view.status = exporter()
        except InputError as error:
            self.view.status = f"RTSTRUCT not exported: {error}"
        return self.view


class _ResultNotLoaded(Exception):
    pass


def _read_report(out_dir: Path | None) -> dict:
    from .report import read_report

    return (read_report(out_dir / REPORT_FILE) if out_dir is not None else None) or {}
