"""``cervixautoseg benchmark FAMILY``: end-to-end ``segment`` time and memory of a model family.

For each requested size the family's benchmark case (:class:`~CervixAutoSegLib.families.BenchmarkCase`;
for CT a synthetic 512x512xN pelvis-like CT) is written as a DICOM series to a temporary folder
and segmented from there by a fresh worker process (so its peak RSS,
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, is that case's alone).  Reported:

* seconds per stage — read (DICOM → Volume), preprocess, model_load (read + sha256 +
  BN folding), network (forward passes), postprocess (restore + cleaning), write (all
  outputs), total;
* the network's achieved GFLOP/s: FLOPs counted analytically from every convolution and
  linear layer's shapes (forward hooks on one item, a slice or a window; 2 FLOPs per
  multiply-add) times the items the network computed (``report.json``'s ``device.passes``,
  mirrored ones included), divided by the forward time;
* next to it, a plain square matmul's GFLOP/s measured in the same run and the same dtype
  as the network path (bf16 when the network runs bf16 autocast), i.e. what the cores can do;
* targets (2-core CPU): network ≥ 50 % of that matmul rate, a 100-slice case ≤ 20 s,
  peak RSS ≤ 3 GB.  Timing is measured, never asserted by the test suite.

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

from .flops import MATMUL_SIZE, count_flops, matmul_gflops

HELP = "the segment pipeline of a model family: seconds per stage, network GFLOP/s vs matmul, peak RSS"

TARGET_NETWORK_FRACTION_OF_MATMUL = 0.5
TARGET_SECONDS_100_SLICES = 20.0
TARGET_PEAK_RSS_GB = 3.0
RANDOM_MODEL_SUFFIX = "benchmark-random"
_KB_PER_GB = 1024.0 ** 2


def add_arguments(parser: argparse.ArgumentParser, family: Any) -> None:
    from ..inference_options import PRECISIONS

    parser.add_argument("--slices", "--sizes", dest="sizes", type=int, nargs="+",
                        default=list(family.benchmark.default_sizes),
                        help=f"{family.benchmark.size_help} (default: %(default)s)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument("--device", default="cpu", help="device for the network (default: cpu)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS, help="default: the family's (auto)")
    parser.add_argument("--batch-size", type=int, default=0, help="items per batch (default: per device)")
    parser.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=None,
                        help="mirrored pass too (default: the family's choice, as segment)")
    parser.add_argument("--models", default=None, metavar="DIR",
                        help="folder of model directories (default: the bundled models, else random weights)")
    parser.add_argument("--check-bf16", type=int, default=0, metavar="N",
                        help="also compare bf16 with fp32 labels on N slices of the first case (accuracy check)")
    parser.set_defaults(family=family.name)


# ------------------------------------------------------------------ worker (fresh process per case)
def _worker(config: dict) -> dict:
    import resource

    from ..pipeline import segment

    options = {"batch_size": config["batch_size"] or None, "precision": config["precision"],
               "flip_tta": config["flip_tta"]}
    started = time.perf_counter()
    result = segment(config["dicom"], config["out"], model=config["model"], device=config["device"],
                     options=options, models_root=config["models_root"])
    wall = time.perf_counter() - started
    report = result.report
    return {
        "timings_s": report["timings_s"],
        "wall_s": wall,
        "network_items": report["device"].get("passes", 0),
        "item_shape": report["device"].get("item_shape", []),
        "flip_tta": report["device"].get("flip_tta"),
        "precision": report["device"].get("precision"),
        "batch_size": report["device"].get("batch_size"),
        "device": report["device"].get("description"),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KB_PER_GB,
    }


def _run_worker(config: dict) -> dict:
    code = ("import json, sys; from CervixAutoSegLib.benchmarks.segment import _worker; "
            "print(json.dumps(_worker(json.loads(sys.argv[1]))))")
    completed = subprocess.run([sys.executable, "-c", code, json.dumps(config)], capture_output=True, text=True,
                               check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark worker failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ command
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


def _flops_per_item(card: Any, item_shape: list[int]) -> int:
    from ..inferers import fuse_batchnorms
    from ..models import load_network

    total = 0
    for entry in card.networks:  # a multi-stage model: the dearest stage per item (stages differ in inputs only)
        network = load_network(card, entry.role)
        fuse_batchnorms(network)
        channels = int(entry.architecture_kwargs.get("in_channels", item_shape[0]))
        total = max(total, count_flops(network, (1, channels, *item_shape[1:])))
    return total


def run(args: argparse.Namespace) -> int:
    from ..dicom_writer import write_dicom_series
    from ..families import get_family

    family = get_family(args.family)
    cases, agreement, flops_item = [], None, 0
    with tempfile.TemporaryDirectory(prefix="cervixautoseg-bench-") as folder:
        work = Path(folder)
        card, models_root, random_weights = _model(family, work, args.models)
        print(f"model {card.id}{' (random weights: timing only)' if random_weights else ''}", file=sys.stderr)
        for size in args.sizes:
            dicom = work / f"{family.name}{size}"
            volume = family.benchmark.make_image(size)
            write_dicom_series(volume, dicom, modality=family.modality)
            if args.check_bf16 and not cases:
                agreement = precision_agreement(card, volume, args.check_bf16)
            shape = "x".join(str(n) for n in volume.shape[::-1])
            del volume
            print(f"segmenting a {shape} {family.modality} ...", file=sys.stderr)
            measured = _run_worker({"dicom": str(dicom), "out": str(work / f"out{size}"), "model": card.id,
                                    "models_root": models_root, "device": args.device,
                                    "precision": args.precision, "batch_size": args.batch_size,
                                    "flip_tta": args.flip_tta})
            flops_item = flops_item or _flops_per_item(card, measured["item_shape"])
            network_s = measured["timings_s"].get("network", 0.0)
            measured["slices"] = size
            measured["network_gflops_per_s"] = (flops_item * measured["network_items"] / network_s / 1e9
                                                if network_s > 0 else 0.0)
            cases.append(measured)
            shutil.rmtree(dicom)
    matmul = matmul_gflops(cases[0]["precision"] if cases else "fp32")
    summary = _summarise(cases, matmul, flops_item, card.id, random_weights)
    _print_table(summary)
    if agreement is not None:
        summary["bf16_check"] = agreement
        print(f"bf16 vs fp32 on {agreement['slices']} slices: pixel agreement {100 * agreement['pixel_agreement']:.3f}%, "
              "Dice " + ", ".join(f"{k} {v:.4f}" for k, v in agreement["dice_bf16_vs_fp32"].items()) +
              f"; network {agreement['fp32_s']:.2f} s fp32 vs {agreement['bf16_s']:.2f} s bf16")
    if args.json:
        from ..atomic import write_text_atomic

        write_text_atomic(Path(args.json), json.dumps(summary, indent=2) + "\n")
    return 0


def _summarise(cases: list[dict], matmul: float, flops_item: int, model_id: str, random_weights: bool) -> dict:
    for case in cases:
        case["network_fraction_of_matmul"] = case["network_gflops_per_s"] / matmul if matmul else 0.0
    targets = {
        "network_fraction_of_matmul": {"target": f">= {TARGET_NETWORK_FRACTION_OF_MATMUL}",
                                       "met": all(c["network_fraction_of_matmul"] >= TARGET_NETWORK_FRACTION_OF_MATMUL
                                                  for c in cases)},
        "total_s_100_slices": {"target": f"<= {TARGET_SECONDS_100_SLICES}",
                               "met": all(c["timings_s"]["total"] <= TARGET_SECONDS_100_SLICES
                                          for c in cases if c["slices"] <= 100)},
        "peak_rss_gb": {"target": f"<= {TARGET_PEAK_RSS_GB}",
                        "met": all(c["peak_rss_gb"] <= TARGET_PEAK_RSS_GB for c in cases)},
    }
    return {
        "model": model_id, "random_weights": random_weights, "gflop_per_item": flops_item / 1e9,
        "matmul_gflops_per_s": matmul, "matmul_dtype": "bf16" if cases and cases[0]["precision"] == "bf16" else "fp32",
        "cpu_threads": os.cpu_count(), "cases": cases, "targets": targets,
    }


def _print_table(summary: dict) -> None:
    stages = ("load", "preprocess", "model_load", "network", "postprocess", "write", "total")
    print(f"{'slices':>6} " + " ".join(f"{name:>11}" for name in stages) + f" {'net GFLOP/s':>12} {'% matmul':>9}"
          f" {'peak RSS':>9}")
    for case in summary["cases"]:
        times = " ".join(f"{case['timings_s'].get(name, 0.0):10.2f}s" for name in stages)
        print(f"{case['slices']:>6} {times} {case['network_gflops_per_s']:12.1f} "
              f"{100 * case['network_fraction_of_matmul']:8.1f}% {case['peak_rss_gb']:7.2f}GB")
    print(f"matmul ({summary['matmul_dtype']}, {MATMUL_SIZE}x{MATMUL_SIZE}): {summary['matmul_gflops_per_s']:.1f} GFLOP/s; "
          f"network {summary['gflop_per_item']:.2f} GFLOP per slice or window; precision {summary['cases'][0]['precision'] if summary['cases'] else '-'}")
    for name, target in summary["targets"].items():
        print(f"target {name} {target['target']}: {'met' if target['met'] else 'NOT met'}")
