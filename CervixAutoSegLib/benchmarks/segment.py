"""``cervixautoseg benchmark FAMILY``: end-to-end ``segment`` time and memory of a model family.

For each requested size the family's benchmark case (:class:`~CervixAutoSegLib.families.BenchmarkCase`;
for CT a synthetic 512x512xN pelvis-like CT) is written as a DICOM series to a temporary folder
and segmented from there by a fresh worker process (so its peak RSS,
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, is that case's alone).  Reported:

* seconds per stage — read (DICOM → Volume), preprocess, model_load (read + sha256 +
  BN folding), network (forward passes), postprocess (restore + cleaning), write (all
  outputs), total — and, when the family's runner reports its network stages
  (``report.json`` ``device.stages``, e.g. MR's organ and tumour), each stage's seconds;
* the network's achieved GFLOP/s: FLOPs counted analytically from every convolution and
  linear layer's shapes (:func:`.flops.count_flops`, 2 FLOPs per multiply-add) of one item (a
  slice, or each stage's window) times the items computed (``device.passes``, mirrored ones
  included), divided by the forward time;
* next to it, a plain square matmul's GFLOP/s measured in the same run and the same dtype
  as the network path (bf16 when the network runs bf16 autocast), i.e. what the cores can do;
* targets on the 2-core CPU, shown with whether each is met: :data:`DEFAULT_TARGETS` (network ≥
  50 % of that matmul rate, a 100-slice case ≤ 20 s, peak RSS ≤ 3 GB) unless the case declares
  its own.  Timing is measured, never asserted by the test suite.

A :class:`~CervixAutoSegLib.families.ComparativeBenchmarkCase` (MR) also names several series per
size, the flip-TTA settings to time (targets judged on the first) and baseline networks
(:class:`~.spec.BenchmarkBaseline`): each baseline makes one pass over every series' image in a
fresh process of its own, and its network seconds over the case's whole seconds is the speed-up.

Uses the family's best installed model, else a randomly initialised one (same cost; the
contours are meaningless, which the output says).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .flops import count_flops, matmul_gflops
from .spec import BenchmarkTargets
from .segment_report import print_table, summarise

HELP = ("the segment pipeline of a model family: seconds per stage, network GFLOP/s vs matmul, peak RSS, "
        "targets (and any baseline network the family compares with)")

DEFAULT_TARGETS = BenchmarkTargets(max_total_s=20.0, max_peak_rss_gb=3.0, total_up_to_size=100,
                                   total_name="total_s_100_slices", min_network_fraction_of_matmul=0.5,
                                   max_selective_tta_network_fraction=0.6, max_outside_network_s=3.0)
"""Targets of a case that declares none (CT's, from its issues)."""
RANDOM_MODEL_SUFFIX = "benchmark-random"
_KB_PER_GB = 1024.0 ** 2


def add_arguments(parser: argparse.ArgumentParser, family: Any) -> None:
    from ..families import ComparativeBenchmarkCase
    from ..inference_options import PRECISIONS

    case = family.benchmark
    comparative = isinstance(case, ComparativeBenchmarkCase)
    parser.add_argument("--slices", "--sizes", dest="sizes", type=int, nargs="+",
                        default=list(case.default_sizes),
                        help=f"{case.size_help} (default: %(default)s)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument("--device", default="cpu", help="device for the network (default: cpu)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS, help="default: the family's (auto)")
    parser.add_argument("--batch-size", type=int, default=0, help="items per batch (default: per device)")
    tta_default = ("each of " + ", ".join("on" if f else "off" for f in case.flip_tta_runs)
                   if comparative else "the family's choice, as segment")
    parser.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=None,
                        help=f"mirrored pass too (default: {tta_default})")
    parser.add_argument("--compare-full-tta", action=argparse.BooleanOptionalAction, default=None,
                        help="also segment the first size with every item mirrored, to compare selective with full "
                             "flip TTA (default: yes when the targets judge it and flip TTA is on)")
    parser.add_argument("--models", default=None, metavar="DIR",
                        help="folder of model directories (default: the bundled models, else random weights)")
    parser.add_argument("--check-bf16", type=int, default=0, metavar="N",
                        help="also compare bf16 with fp32 labels on N slices of the first case (accuracy check)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run every measurement N times, the case's runs and its baselines' in turn, and report "
                             "the median run (a shared machine's noise; default: %(default)s)")
    if comparative:
        parser.add_argument("--series", nargs="+", choices=case.series, default=list(case.series),
                            help="series to segment (default: %(default)s)")
        parser.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                            help="also time the baseline network(s) on the same images (default: yes)")
    parser.set_defaults(family=family.name)


# ------------------------------------------------------------------ workers (a fresh process each)
def _segment_worker(config: dict) -> dict:
    """One ``segment`` of ``config["dicom"]``: its report's timings and device facts, and the peak RSS (GiB)."""
    import resource

    from ..pipeline import segment

    options = {"batch_size": config["batch_size"] or None, "precision": config["precision"],
               "flip_tta": config["flip_tta"], "selective_tta": config.get("selective_tta")}
    started = time.perf_counter()
    result = segment(config["dicom"], config["out"], model=config["model"], device=config["device"],
                     options=options, models_root=config["models_root"], prefetch_input=True)  # as the command
    wall = time.perf_counter() - started
    device = result.report["device"]
    return {
        "timings_s": result.report["timings_s"],
        "wall_s": wall,
        "network_items": device.get("passes", 0),
        "item_shape": device.get("item_shape", []),
        "stages": device.get("stages", []),
        "flip_tta": device.get("flip_tta"),
        "items": device.get("items", 0),
        "mirrored_items": device.get("mirrored_items", 0),
        "precision": device.get("precision"),
        "batch_size": device.get("batch_size"),
        "device": device.get("description"),
        # the input reader's child counted on top: their peaks may coincide
        "peak_rss_gb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                        + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / _KB_PER_GB,
    }


def _baseline_worker(config: dict) -> dict:
    """One pass of the case's baseline ``config["baseline"]`` over ``config["dicom"]``: its
    :class:`~.spec.BaselineRun` and the peak RSS (GiB)."""
    import resource

    from ..devices import resolve_device
    from ..families import get_family
    from ..models import find_model
    from ..pipeline import inference_options, load_input

    family = get_family(config["family"])
    card = find_model(config["model"], config["models_root"])
    baseline = next(b for b in family.benchmark.baselines(card) if b.name == config["baseline"])
    volume, _ = load_input(config["dicom"], modality=family.modality)
    options = inference_options(family, {"batch_size": config["batch_size"] or None,
                                         "precision": config["precision"], "flip_tta": config["flip_tta"]})
    run = baseline.run(volume, card, resolve_device(config["device"]), options)
    return {**run.to_json(), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KB_PER_GB}


def _run_worker(config: dict, worker: str = "_segment_worker") -> dict:
    """``worker(config)`` of this module in a fresh Python process → its JSON answer."""
    code = (f"import json, sys; from CervixAutoSegLib.benchmarks.segment import {worker}; "
            f"print(json.dumps({worker}(json.loads(sys.argv[1])))); "
            "from CervixAutoSegLib.cli import exit_promptly; exit_promptly(0)")  # ends as the program does
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", code, json.dumps(config)], capture_output=True, text=True,
                               check=False)
    process_s = time.perf_counter() - started  # what a user waits for: start-up and imports included
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark worker failed:\n{completed.stderr[-2000:]}")
    return {**json.loads(completed.stdout.strip().splitlines()[-1]), "process_s": process_s}


# ------------------------------------------------------------------ model and accuracy check
def _model(family: Any, work: Path, models_root: str | None = None) -> tuple[Any, str | None, bool]:
    """(model card, models root or None for the bundled folder, is_random)."""
    from ..errors import ModelError
    from ..models import find_model

    if models_root is not None:
        return find_model(family.name, models_root), str(models_root), False
    try:
        return find_model(family.name), None, False
    except ModelError:
        model_id = f"{family.name}-{RANDOM_MODEL_SUFFIX}"
        card = family.benchmark.random_model(work / "models" / model_id, model_id)
        return card, str(work / "models"), True


def precision_agreement(card: Any, volume: Any, slices: int) -> dict:
    """bf16-autocast vs fp32 labels of the family's runner on ``slices`` slices from the middle of
    ``volume``: voxel agreement and Dice per structure."""
    import torch

    from ..families import get_family
    from ..pipeline import inference_options

    family = get_family(card.family)
    start = max((volume.shape[0] - slices) // 2, 0)
    part = volume.with_array(volume.array[start:start + slices])
    labels, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        started = time.perf_counter()
        output = family.runner(part, card, torch.device("cpu"), inference_options(family, {"precision": precision}),
                               lambda fraction, message: None, None)
        labels[precision], seconds[precision] = output.labels, time.perf_counter() - started
    from ..metrics import dice as dice_of

    reference, fast = labels["fp32"], labels["bf16"]
    # Both empty: the two precisions agree perfectly on that structure.
    dice = {s.name: float(np.nan_to_num(dice_of(reference == s.value, fast == s.value), nan=1.0))
            for s in card.structures}
    return {"slices": int(part.shape[0]), "pixel_agreement": float(np.mean(reference == fast)),
            "dice_bf16_vs_fp32": dice, "fp32_s": seconds["fp32"], "bf16_s": seconds["bf16"]}


# ------------------------------------------------------------------ FLOPs
class _FlopCounter:
    """FLOPs per item of the card's networks (BN folded, as they run), cached by (role, item shape)."""

    def __init__(self, card: Any) -> None:
        self.card = card
        self._cache: dict[tuple, int] = {}

    def item(self, role: str | None, item_shape: list[int]) -> int:
        """FLOPs of one item ``item_shape`` ``(C, *spatial)``; ``role`` None: the dearest network,
        its own input channels (a multi-stage model whose runner does not report stages)."""
        key = (role, tuple(item_shape))
        if key not in self._cache:
            from ..inferers import fuse_batchnorms
            from ..models import load_network

            entries = self.card.networks if role is None else [self.card.network(role)]
            total = 0
            for entry in entries:
                network = load_network(self.card, entry.role)
                fuse_batchnorms(network)
                channels = item_shape[0] if role is not None else int(
                    entry.architecture_kwargs.get("in_channels", item_shape[0]))
                total = max(total, count_flops(network, (1, channels, *item_shape[1:])))
            self._cache[key] = total
        return self._cache[key]

    def parameters(self) -> dict[str, int]:
        """Role → parameter count of each of the card's networks."""
        from ..models import load_network

        return {entry.role: int(sum(p.numel() for p in load_network(self.card, entry.role).parameters()))
                for entry in self.card.networks}

    def of_case(self, case: dict) -> tuple[int, int]:
        """(FLOPs of the whole case, FLOPs of its dearest item)."""
        if case.get("stages"):
            per_item = [self.item(s["role"], s["item_shape"]) for s in case["stages"]]
            return sum(f * s["passes"] for f, s in zip(per_item, case["stages"])), max(per_item)
        per_item = self.item(None, case["item_shape"]) if case["item_shape"] else 0
        return per_item * case["network_items"], per_item


# ------------------------------------------------------------------ command
def _plan(case: Any, args: argparse.Namespace) -> dict:
    """Series names, flip-TTA runs, targets and whether baselines run, for ``case`` and ``args``."""
    from ..families import ComparativeBenchmarkCase

    if not isinstance(case, ComparativeBenchmarkCase):
        plan = {"series": [None], "flip_tta_runs": [args.flip_tta], "targets": DEFAULT_TARGETS, "baselines": False,
                "comparative": False}
    else:
        runs = [args.flip_tta] if args.flip_tta is not None else list(case.flip_tta_runs)
        plan = {"series": list(args.series), "flip_tta_runs": runs, "targets": case.targets,
                "baselines": bool(args.baselines), "comparative": True}
    compare = getattr(args, "compare_full_tta", None)
    if compare is None:  # judged by the targets, and only meaningful when the judged run mirrors anything
        compare = plan["targets"].max_selective_tta_network_fraction is not None and plan["flip_tta_runs"][0] is not False
    plan["full_tta_comparison"] = bool(compare)
    return plan


def _image(case: Any, series: str | None, size: int) -> Any:
    return case.make_image(size) if series is None else case.make_series(series, size)


def run(args: argparse.Namespace) -> int:
    from ..families import get_family

    family = get_family(args.family)
    plan = _plan(family.benchmark, args)
    with tempfile.TemporaryDirectory(prefix="cervixautoseg-bench-") as folder:
        work = Path(folder)
        card, models_root, random_weights = _model(family, work, args.models)
        print(f"model {card.id}{' (random weights: timing only)' if random_weights else ''}", file=sys.stderr)
        baselines = list(family.benchmark.baselines(card)) if plan["baselines"] else []
        config = {"model": card.id, "models_root": models_root, "device": args.device, "precision": args.precision,
                  "batch_size": args.batch_size, "family": family.name}
        cases, baseline_runs, agreement = _measure(family, card, plan, baselines, args, work, config)
        # Inside the folder: a random model's weights live there.
        counter = _FlopCounter(card)
        for measured in cases:
            flops, per_item = counter.of_case(measured)
            network_s = measured["timings_s"].get("network", 0.0)
            measured["network_gflop"], measured["gflop_per_item"] = flops / 1e9, per_item / 1e9
            measured["network_gflops_per_s"] = flops / network_s / 1e9 if network_s > 0 else 0.0
        parameters = counter.parameters() if baselines else None
    matmul = matmul_gflops(cases[0]["precision"] if cases else "fp32")
    summary = summarise(cases, matmul, card, random_weights, plan, _describe_baselines(baselines, baseline_runs),
                        parameters)
    print_table(summary)
    if agreement is not None:
        summary["bf16_check"] = agreement
        print(f"bf16 vs fp32 on {agreement['slices']} slices: pixel agreement {100 * agreement['pixel_agreement']:.3f}%, "
              "Dice " + ", ".join(f"{k} {v:.4f}" for k, v in agreement["dice_bf16_vs_fp32"].items()) +
              f"; network {agreement['fp32_s']:.2f} s fp32 vs {agreement['bf16_s']:.2f} s bf16")
    if args.json:
        from ..atomic import write_text_atomic

        write_text_atomic(Path(args.json), json.dumps(summary, indent=2) + "\n")
    return 0


def _measure(family: Any, card: Any, plan: dict, baselines: list, args: argparse.Namespace, work: Path,
             config: dict) -> tuple[list[dict], list[dict], dict | None]:
    """Every (size, series): written as DICOM, segmented once per flip-TTA run, then each baseline's
    pass → (segment runs, baseline runs, bf16 check or None)."""
    from ..dicom_writer import write_dicom_series

    cases: list[dict] = []
    baseline_runs: list[dict] = []
    agreement = None
    for size in args.sizes:
        for series in plan["series"]:
            dicom = work / f"{family.name}{size}{series or ''}"
            volume = _image(family.benchmark, series, size)
            write_dicom_series(volume, dicom, modality=family.modality)
            if args.check_bf16 and agreement is None:
                agreement = precision_agreement(card, volume, args.check_bf16)
            shape = "x".join(str(n) for n in volume.shape[::-1])
            del volume
            where = {"slices": size, "series": series, "shape_xyz": shape}
            jobs = _jobs(family, plan, baselines, shape, series, size == args.sizes[0])
            runs = _repeated(jobs, {**config, "dicom": str(dicom)}, work, max(1, args.repeat))
            for (kind, extra), measured in zip(jobs, runs):
                if kind == "segment":
                    cases.append({**measured, **where, "tta_mode": extra["tta_mode"] or _tta_mode(measured)})
                else:
                    baseline_runs.append({**measured, **where})
            shutil.rmtree(dicom)
    return cases, baseline_runs, agreement


def _jobs(family: Any, plan: dict, baselines: list, shape: str, series: str | None, first_size: bool
          ) -> list[tuple[str, dict]]:
    """The measurements of one image, in order: (``"segment"`` or ``"baseline"``, what the row records
    plus, under ``"config"``, what its worker is told and, under ``"label"``, its progress line)."""
    name = f"{shape} {family.modality}{' ' + series if series else ''}"
    jobs = []
    for index, flip in enumerate(plan["flip_tta_runs"]):
        tta = "" if flip is None else f", flip TTA {'on' if flip else 'off'}"
        jobs.append(("segment", {"target_run": index == 0, "tta_mode": None, "config": {"flip_tta": flip},
                                 "label": f"segmenting a {name}{tta}"}))
    if plan["full_tta_comparison"] and first_size:
        jobs.append(("segment", {"target_run": False, "tta_mode": "full",
                                 "config": {"flip_tta": True, "selective_tta": False},
                                 "label": f"segmenting a {name} with full flip TTA (every item mirrored)"}))
    for baseline in baselines:
        jobs.append(("baseline", {"name": baseline.name, "label": f"{baseline.name}: one pass over the {name}",
                                  "config": {"baseline": baseline.name, "flip_tta": plan["flip_tta_runs"][0]}}))
    return jobs


def _repeated(jobs: list[tuple[str, dict]], config: dict, work: Path, repeat: int) -> list[dict]:
    """Each job's worker run ``repeat`` times, the jobs taking turns (so a slow spell of a shared machine
    falls on all of them alike) → per job its median run by wall time (segment: the whole process;
    baseline: its network seconds), with every repetition's seconds under ``repeats_s`` (and a
    segment's network seconds, round by round, under ``repeats_network_s``: what pairs two jobs' rounds)."""
    runs: list[list[dict]] = [[] for _ in jobs]
    for round_ in range(repeat):
        for index, (kind, extra) in enumerate(jobs):
            print(f"{extra['label']}{f' (run {round_ + 1} of {repeat})' if repeat > 1 else ''} ...", file=sys.stderr)
            if kind == "segment":
                runs[index].append(_run_worker({**config, **extra["config"], "out": str(work / f"out{index}-{round_}")}))
            else:
                runs[index].append(_run_worker({**config, **extra["config"]}, "_baseline_worker"))
    chosen = []
    for (kind, extra), measured in zip(jobs, runs):
        seconds = [run.get("process_s", run["timings_s"]["total"]) if kind == "segment" else run["network_s"]
                   for run in measured]
        median = measured[sorted(range(repeat), key=seconds.__getitem__)[(repeat - 1) // 2]]
        row = {k: v for k, v in extra.items() if k not in ("config", "label", "tta_mode")}
        if kind == "segment":
            row["repeats_network_s"] = [round(run["timings_s"].get("network", 0.0), 3) for run in measured]
        chosen.append({**median, **row, "repeats_s": [round(value, 3) for value in seconds]})
    return chosen


def _tta_mode(measured: dict) -> str:
    """``off``, ``full`` (every item mirrored) or ``selective`` (some) — what the run did, from its report."""
    if not measured.get("flip_tta"):
        return "off"
    return "full" if measured.get("mirrored_items", 0) >= measured.get("items", 0) else "selective"


def _describe_baselines(baselines: list, runs: list[dict]) -> list[dict]:
    """Each baseline run with its network's description, parameter count and GFLOP per item."""
    networks = {baseline.name: (baseline, baseline.build()) for baseline in baselines}
    gflop: dict[tuple, float] = {}
    described = []
    for run in runs:
        baseline, network = networks[run["name"]]
        key = (run["name"], tuple(run["item_shape"]))
        if key not in gflop:
            gflop[key] = count_flops(network, (1, *run["item_shape"])) / 1e9
        described.append({**run, "description": baseline.description, "gflop_per_item": gflop[key],
                          "parameters": int(sum(p.numel() for p in network.parameters()))})
    return described
