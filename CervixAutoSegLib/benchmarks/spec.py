"""What a family's benchmark case may declare beyond sizes and images: targets and baseline networks.

Plain data and protocols, importable without torch.  A case that declares them is an
:class:`~CervixAutoSegLib.families.ComparativeBenchmarkCase` (the MR family's is): the shared
``benchmark FAMILY`` command (:mod:`.segment`) then times each of its named series, once per
flip-TTA setting it asks for, judges its own :class:`BenchmarkTargets`, and runs every
:class:`BenchmarkBaseline` it names over the same image in a fresh process of its own.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from ..inference_options import InferenceOptions
    from ..models import ModelCard
    from ..volume import Volume


@dataclasses.dataclass(frozen=True)
class BenchmarkTargets:
    """Pass marks of one family's benchmark on the project's 2-core CPU (judged on the runs with
    the case's first flip-TTA setting; ``None``: no such target).

    Attributes:
        max_total_s: seconds of a whole ``segment`` run (read ... write), at most.
        max_peak_rss_gb: peak resident memory of the segmenting process, GiB, at most.
        total_up_to_size: the time target applies to cases of at most this size (``None``: all).
        total_name: the time target's name in the output and the JSON.
        min_network_fraction_of_matmul: the network's GFLOP/s over a plain matmul's, at least.
        min_speedup_vs_baseline: a baseline's whole process (start-up, imports, read, preprocess, its
            one pass) over the whole case's process, at least; where a run has no process times, the
            baseline's passes alone over the case's ``segment`` seconds (see :class:`BenchmarkBaseline`).
        max_selective_tta_network_fraction: network seconds with selective flip TTA over those with
            full flip TTA on the same image in the same run, at most (the benchmark then also
            segments its first size with every item mirrored).
        max_outside_network_s: seconds of a whole ``segment`` process outside the network (Python
            start-up and imports, read, preprocess, model load, postprocess, QA, write), at most.
    """

    max_total_s: float
    max_peak_rss_gb: float
    total_up_to_size: int | None = None
    total_name: str = "total_s"
    min_network_fraction_of_matmul: float | None = None
    min_speedup_vs_baseline: float | None = None
    max_selective_tta_network_fraction: float | None = None
    max_outside_network_s: float | None = None


@dataclasses.dataclass
class BaselineRun:
    """What one pass of a baseline network over an image measured.

    Attributes:
        network_s: seconds of the forward passes (the sliding window), nothing else.
        passes: forward-pass items computed (windows; mirrored ones included).
        item_shape: one item's input shape ``(C, z, y, x)`` (or ``(C, y, x)``), for FLOP counts.
        precision: the precision the network ran in ("bf16", "fp32", ...).
    """

    network_s: float
    passes: int
    item_shape: list[int]
    precision: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class BenchmarkBaseline(Protocol):
    """A heavier network a user would otherwise run, timed by ``benchmark FAMILY`` on the case's image
    with the same inferer and options as the family's own network.

    Attributes:
        name: short identifier used in the JSON (e.g. ``"doubling_dynunet"``).
        description: one line for the printed table.
    """

    name: str
    description: str

    def build(self) -> Any:
        """The network (``torch.nn.Module``, randomly initialised, eval mode): for the parameter and
        FLOP counts, and what :meth:`run` runs."""

    def run(self, volume: "Volume", card: "ModelCard", device: Any, options: "InferenceOptions") -> BaselineRun:
        """One pass over ``volume`` (preprocessed as ``card`` says) on ``device`` (a ``torch.device``)."""
