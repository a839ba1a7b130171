"""The model-family registry: the one place that names each family.

A model family is a network kind for one modality — the CT ResAU-Net, the MR PocketNet —
together with everything the rest of the package needs to know about it (as a task is one
row of SlicerTotalSegmentator's task table):

* ``modality`` of the images it contours, and its ``structures`` (label values, TG-263
  names, colours, RT ROI types, codes);
* ``runner``: a :class:`NetworkRunner` turning an image and a model card into raw labels on
  the input grid (preprocess → network(s) → back onto the grid); a :class:`PreparingRunner`
  also lets its torch-free preprocessing run ahead;
* ``architectures``: network builders by the architecture name a model card records;
* ``inference_defaults``, the ``trainer`` behind ``cervixautoseg train NAME`` and the
  ``benchmark`` case behind ``cervixautoseg benchmark NAME``.

The pipeline, the Slicer panel's controller, the commands and :mod:`.models` read this
registry and never name a family themselves.  A family is a package (``ct/``, ``mr/``) plus
one line in :func:`_builtin_families`; a third-party family registers itself with
:func:`register_family` from a module named in ``$CERVIXAUTOSEG_FAMILIES`` (``os.pathsep``
separated) or from an entry point of the ``cervixautoseg.families`` group, so the
background worker process finds it too.

Nothing here imports torch: runners, builders and trainers import it when called.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from .errors import InputError
from .inference_options import InferenceOptions
from .progress import CancelCheck
from .structures import Structure

if TYPE_CHECKING:  # pragma: no cover
    from .benchmarks.spec import BenchmarkBaseline, BenchmarkTargets
    from .models import ModelCard
    from .volume import Volume

PLUGINS_ENV = "CERVIXAUTOSEG_FAMILIES"
ENTRY_POINT_GROUP = "cervixautoseg.families"

FractionProgress = Callable[[float, str], None]
"""Called with (fraction of the network stage done, short message)."""


@dataclasses.dataclass
class NetworkOutput:
    """What a :class:`NetworkRunner` returns.

    Attributes:
        labels: uint8 (z, y, x) on the input grid, before postprocessing; the pipeline cleans this
            array in place, so a runner hands over an array of its own (never a cached one).
        field_of_view_border: boolean (z, y, x) on the input grid, True on the outermost voxels
            the network saw (its crop), for the crop-border QA flag; None when not applicable.  An
            array or a :class:`~CervixAutoSegLib.qa.maps.BoxedMap`: readers take boxes of it.
        inference: device/precision/batch facts for the report (:class:`~.inference_options.InferenceInfo`).
        preprocessing: JSON summary of the preprocessing context.
        timings: seconds per sub-stage ("preprocess", "model_load" (read + verify + prepare the
            weights), "network" (forward passes only), "restore").
        warnings: one line each for the user (report.json ``warnings``, the command summary),
            e.g. "no organ was found" when a family's later stages could not run.
        evidence: the network's own evidence on the input grid for the per-slice QA
            (:class:`~CervixAutoSegLib.qa.maps.EvidenceMaps`: softmax uncertainty, plain-vs-mirrored
            disagreement), one entry per set of structures it speaks for; empty when the runner
            gives none (the QA then judges the label map alone).
    """

    labels: np.ndarray
    field_of_view_border: Any
    inference: dict
    preprocessing: dict
    timings: dict
    warnings: list[str] = dataclasses.field(default_factory=list)
    evidence: list[Any] = dataclasses.field(default_factory=list)


class NetworkRunner(Protocol):
    """Runs a family's network(s) on one image (the ``network`` stage of ``segment``)."""

    def __call__(self, volume: "Volume", card: "ModelCard", device: Any, options: InferenceOptions,
                 progress: FractionProgress, cancel: CancelCheck | None) -> NetworkOutput:
        """``volume`` in its own units (HU, MR signal) → :class:`NetworkOutput` on its grid.

        ``device`` is a ``torch.device``; ``progress`` reports the network stage's fraction;
        ``cancel`` is polled between batches (raises :class:`~.errors.Cancelled`).
        """


@runtime_checkable
class PreparingRunner(NetworkRunner, Protocol):
    """A runner whose first step, the preprocessing, needs no torch and can run ahead of it.

    ``segment(..., prefetch_input=True)`` calls :meth:`prepare` in the child process that reads
    the input while the command imports torch (:mod:`.prefetch`), and hands its result to the
    runner as ``prepared``; everywhere else the runner prepares the image itself.
    """

    def prepare(self, volume: "Volume", card: "ModelCard") -> Any:
        """The preprocessed image and whatever undoes it; must pickle (it may cross processes)."""

    def __call__(self, volume: "Volume", card: "ModelCard", device: Any, options: InferenceOptions,
                 progress: FractionProgress, cancel: CancelCheck | None, prepared: Any = None) -> NetworkOutput:
        """As :meth:`NetworkRunner.__call__`; ``prepared`` is :meth:`prepare` of this volume and card
        when it ran already (``timings["preprocess"]`` is then the runner's own part, about 0)."""


class FamilyTrainer(Protocol):
    """``cervixautoseg train NAME``: what a family adds to the shared training command and loop.

    The command (:mod:`.commands.train`) owns the shared options, the case discovery and split,
    the loop (:mod:`.training`) and the export; the family gives its own options, its config
    type (a :class:`~.training_config.LoopConfig` subclass), the training task and the networks
    to save.
    """

    help: str
    default_model_id: str
    architecture_note: str
    """How the networks relate to the paper they implement, and why (the model card's
    ``training.architecture``)."""

    def config_type(self) -> type: ...

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The family's own options (the shared ones are already there)."""

    def config(self, args: argparse.Namespace, loop: dict) -> Any:
        """The family's config from ``args``; ``loop`` holds the shared loop's fields."""

    def task(self, config: Any, train_sources: Any, val_sources: Any, work: Path) -> Any:
        """A :class:`~.training.TrainingTask` on these cases (``work``: room for caches)."""

    def preprocessing(self, config: Any) -> dict:
        """The preprocessing parameters a model card records for a run with ``config``."""

    def export(self, best: dict, config: Any, preprocessing: dict, earlier: "ModelCard | None"
               ) -> tuple[Mapping[str, Any], str]:
        """(role → :class:`~.models.NetworkSpec` from ``best.pt``'s state, what the validation split measured).

        ``earlier`` is this family's model already in the directory about to be (re)written
        (None if there is none): a multi-stage family keeps the networks of its other stages from it.
        """


class BenchmarkCase(Protocol):
    """The synthetic input of ``cervixautoseg benchmark NAME``."""

    size_help: str
    """What the size numbers mean, e.g. "slice counts of 512x512 CTs"."""
    default_sizes: tuple[int, ...]

    def make_image(self, size: int, seed: int = 0) -> "Volume":
        """A synthetic image of the family's modality and the given size."""

    def random_model(self, out_dir: Path, model_id: str) -> "ModelCard":
        """A randomly initialised model directory (same cost as a trained one)."""


@runtime_checkable
class ComparativeBenchmarkCase(BenchmarkCase, Protocol):
    """A :class:`BenchmarkCase` with more to say (``benchmark mr``): named acquisitions per size, its
    own targets, the flip-TTA settings to time, and heavier networks to time on the same image.

    ``benchmark NAME`` checks for it with ``isinstance``; a plain :class:`BenchmarkCase` gets one
    image per size, the family's flip TTA, the shared default targets and no baselines.
    """

    series: tuple[str, ...]
    """Names of the images made per size (e.g. ``("axial", "sagittal")``); the first is :meth:`make_image`'s."""
    flip_tta_runs: tuple[bool, ...]
    """Flip-TTA settings each series is segmented with; the targets are judged on the first."""
    targets: "BenchmarkTargets"

    def make_series(self, name: str, size: int, seed: int = 0) -> "Volume":
        """The image of series ``name`` (one of :attr:`series`) at ``size``."""

    def baselines(self, card: "ModelCard") -> Sequence["BenchmarkBaseline"]:
        """Networks a user would otherwise run, each timed for one pass over every series' image
        with the same inferer options as ``card``'s networks (empty: none)."""


NetworkBuilder = Callable[..., Any]
"""``builder(**architecture_kwargs) -> torch.nn.Module``."""


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """One registered family (see the module docstring)."""

    name: str
    modality: str
    title: str
    structures: tuple[Structure, ...]
    runner: NetworkRunner | None
    """None while the family has structures but no network yet (its models cannot run)."""
    architectures: Mapping[str, NetworkBuilder] = dataclasses.field(default_factory=dict)
    inference_defaults: InferenceOptions = InferenceOptions()
    trainer: FamilyTrainer | None = None
    benchmark: BenchmarkCase | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower() or self.name in ("auto",):
            raise ValueError(f"a family name is a lower-case word other than 'auto', got {self.name!r}")
        values = [s.value for s in self.structures]
        if len(set(values)) != len(values) or 0 in values:
            raise ValueError(f"family {self.name}: label values must be distinct and non-zero, got {values}")

    def structure(self, name: str) -> Structure:
        for structure in self.structures:
            if structure.name.lower() == name.lower():
                return structure
        raise InputError(f"{self.name.upper()} has no structure {name!r} "
                         f"(structures: {', '.join(s.name for s in self.structures)})")


_REGISTRY: dict[str, ModelFamily] = {}
_loaded = False


def register_family(family: ModelFamily, *, replace: bool = False) -> ModelFamily:
    """Add ``family``; a second family of the same name is refused unless ``replace``.

    Several families may contour one modality; ``auto`` picks the first registered (the
    built-in one), the others are chosen by name or model id.
    """
    _ensure_loaded()
    if family.name in _REGISTRY and not replace:
        raise ValueError(f"a family named {family.name!r} is already registered")
    _REGISTRY[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family (tests and plug-in reloads)."""
    _REGISTRY.pop(name, None)


def families() -> tuple[ModelFamily, ...]:
    """Every registered family, built-in ones first."""
    _ensure_loaded()
    return tuple(_REGISTRY.values())


def family_names() -> tuple[str, ...]:
    return tuple(family.name for family in families())


def get_family(name: str) -> ModelFamily:
    """The family called ``name`` (case-insensitive); InputError naming the known ones."""
    _ensure_loaded()
    family = _REGISTRY.get((name or "").strip().lower())
    if family is None:
        raise InputError(f"unknown model family {name!r} (known: {', '.join(family_names())})")
    return family


def family_for_modality(modality: str) -> ModelFamily | None:
    """The family ``auto`` uses for ``modality`` ("CT", "MR", ...): the first registered; or None."""
    wanted = (modality or "").upper()
    return next((family for family in families() if family.modality.upper() == wanted), None)


def structures_of(name: str) -> tuple[Structure, ...]:
    """Structures of the family called ``name``."""
    return get_family(name).structures


# ------------------------------------------------------------------ loading
def _builtin_families() -> tuple[ModelFamily, ...]:
    """The families shipped with the package: one line each."""
    from .ct.family import CT_FAMILY
    from .mr.family import MR_FAMILY

    return (CT_FAMILY, MR_FAMILY)


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # before the imports: plug-ins call register_family while loading
    for family in _builtin_families():
        _REGISTRY.setdefault(family.name, family)
    _load_plugins()


def _load_plugins() -> None:
    """Import the modules of ``$CERVIXAUTOSEG_FAMILIES`` and the ``cervixautoseg.families`` entry points.

    Import errors are not swallowed: a broken plug-in is a bug to see, not a missing feature.
    """
    for module_name in filter(None, os.environ.get(PLUGINS_ENV, "").split(os.pathsep)):
        importlib.import_module(module_name.strip())
    from importlib.metadata import entry_points

    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        family = entry_point.load()
        if isinstance(family, ModelFamily) and family.name not in _REGISTRY:
            register_family(family)
