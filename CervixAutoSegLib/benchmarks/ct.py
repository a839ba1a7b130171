"""``cervixautoseg benchmark ct``: end-to-end ``segment`` time and memory on 512x512 CTs.

For each requested slice count a synthetic 512x512xN pelvis-like CT is written as a DICOM
series to a temporary folder and segmented from there by a fresh worker process (so its
peak RSS, ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, is that case's alone).  Reported:

* seconds per stage — read (DICOM → Volume), preprocess, model_load (read + sha256 +
  BN folding), network (forward passes), postprocess (restore + cleaning), write (all
  outputs), total;
* the network's achieved GFLOP/s: FLOPs counted analytically from every convolution and
  linear layer's shapes (forward hooks on one slice; 2 FLOPs per multiply-add) times the
  slices sent to the network, divided by the forward time;
* next to it, a plain square matmul's GFLOP/s measured in the same run and the same dtype
  as the network path (bf16 when the network runs bf16 autocast), i.e. what the cores can do;
* targets (2-core CPU): network ≥ 50 % of that matmul rate, a 100-slice case ≤ 20 s,
  peak RSS ≤ 3 GB.  Timing is measured, never asserted by the test suite.

Uses the bundled CT model when one is installed, else a randomly initialised ResAU-Net
(same cost; the contours are meaningless, which the output says).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HELP = "CT segment pipeline: seconds per stage, network GFLOP/s vs matmul, peak RSS (512x512 slices)"

DEFAULT_SLICES = (100, 200)
MATRIX = 512
PIXEL_SPACING_MM = 0.9765625
SLICE_THICKNESS_MM = 2.5
MATMUL_SIZE = 2048
MATMUL_SECONDS = 1.0
TARGET_NETWORK_FRACTION_OF_MATMUL = 0.5
TARGET_SECONDS_100_SLICES = 20.0
TARGET_PEAK_RSS_GB = 3.0
RANDOM_MODEL_ID = "ct-benchmark-random"
_KB_PER_GB = 1024.0 ** 2
_WORKER_FLAG = "--benchmark-worker"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slices", type=int, nargs="+", default=list(DEFAULT_SLICES),
                        help="slice counts of the synthetic 512x512 CTs (default: 100 200)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument("--device", default="cpu", help="device for the network (default: cpu)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--batch-size", type=int, default=0, help="slices per batch (default: per device)")
    parser.add_argument("--no-flip-tta", action="store_true", help="one network pass per slice (as segment --no-flip-tta)")
    parser.add_argument("--models", default=None, metavar="DIR",
                        help="folder of model directories (default: the bundled models, else random weights)")
    parser.add_argument("--check-bf16", type=int, default=0, metavar="N",
                        help="also compare bf16 with fp32 labels on N slices of the first case (accuracy check)")


# ------------------------------------------------------------------ synthetic input
def synthetic_pelvis_ct(slices: int, seed: int = 0):
    """A 512x512xN HFS CT Volume in HU: body, fat, pelvic bones, bladder, rectal gas, noise."""
    from ..volume import Volume

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:MATRIX, 0:MATRIX].astype(np.float32)
    cy, cx = MATRIX / 2 + 20, MATRIX / 2
    hu = np.empty((slices, MATRIX, MATRIX), dtype=np.int16)
    for k in range(slices):
        scale = 1.0 + 0.08 * np.sin(np.pi * k / max(slices - 1, 1))
        body = ((x - cx) / (190 * scale)) ** 2 + ((y - cy) / (130 * scale)) ** 2 <= 1
        muscle = ((x - cx) / (165 * scale)) ** 2 + ((y - cy) / (108 * scale)) ** 2 <= 1
        bones = ((((x - cx - 95) / 28) ** 2 + ((y - cy + 10) / 45) ** 2 <= 1)
                 | (((x - cx + 95) / 28) ** 2 + ((y - cy + 10) / 45) ** 2 <= 1)
                 | (((x - cx) / 30) ** 2 + ((y - cy - 75) / 22) ** 2 <= 1))
        bladder = ((x - cx) / 45) ** 2 + ((y - cy + 40) / 35) ** 2 <= 1
        rectum = ((x - cx) / 16) ** 2 + ((y - cy - 35) / 14) ** 2 <= 1
        slice_hu = np.full((MATRIX, MATRIX), -1000.0, np.float32)
        slice_hu[body] = -100.0
        slice_hu[muscle] = 45.0
        slice_hu[bladder] = 8.0
        slice_hu[rectum] = -600.0
        slice_hu[bones] = 650.0
        slice_hu += rng.normal(0.0, 12.0, slice_hu.shape).astype(np.float32)
        hu[k] = np.clip(slice_hu, -1024, 3000).astype(np.int16)
    spacing = (PIXEL_SPACING_MM, PIXEL_SPACING_MM, SLICE_THICKNESS_MM)
    origin = (-(MATRIX - 1) / 2 * PIXEL_SPACING_MM, -(MATRIX - 1) / 2 * PIXEL_SPACING_MM, 0.0)
    return Volume(hu, spacing, origin, np.eye(3), modality="CT")


# ------------------------------------------------------------------ FLOPs and matmul
def count_flops(network: Any, input_shape: tuple[int, ...]) -> int:
    """FLOPs (2 per multiply-add) of Conv2d/Linear layers for one forward pass of ``input_shape`` (N, C, H, W)."""
    import torch
    from torch import nn

    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += 2 * output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs, output) -> None:
        nonlocal total
        total += 2 * output.numel() * module.in_features

    handles = []
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        with torch.inference_mode():
            network(torch.zeros(input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return total


def matmul_gflops(precision: str, size: int = MATMUL_SIZE, seconds: float = MATMUL_SECONDS) -> float:
    """GFLOP/s of a square ``size`` matmul on the CPU in the network path's dtype.

    The best single multiplication over ``seconds`` is taken: on a shared machine that is
    the closest estimate of what the cores can do (the network time is not best-of, so the
    ratio errs against the network).
    """
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best, started = float("inf"), time.perf_counter()
    while time.perf_counter() - started < seconds:
        tick = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - tick)
    return 2.0 * size ** 3 / best / 1e9


# ------------------------------------------------------------------ worker (fresh process per case)
def _worker(config: dict) -> dict:
    import resource

    from ..ct.inference import InferenceOptions
    from ..pipeline import segment

    options = InferenceOptions(batch_size=config["batch_size"], precision=config["precision"],
                               flip_tta=config["flip_tta"])
    started = time.perf_counter()
    result = segment(config["dicom"], config["out"], model=config["model"], device=config["device"],
                     options=options, models_root=config["models_root"])
    wall = time.perf_counter() - started
    report = result.report
    return {
        "timings_s": report["timings_s"],
        "wall_s": wall,
        "network_slices": len(report["preprocessing"].get("slice_indices", [])),
        "precision": report["device"].get("precision"),
        "batch_size": report["device"].get("batch_size"),
        "network_passes": 2 if report["device"].get("flip_tta") else 1,
        "device": report["device"].get("description"),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KB_PER_GB,
    }


def _run_worker(config: dict) -> dict:
    code = ("import json, sys; from CervixAutoSegLib.benchmarks.ct import _worker; "
            "print(json.dumps(_worker(json.loads(sys.argv[1]))))")
    completed = subprocess.run([sys.executable, "-c", code, json.dumps(config)], capture_output=True, text=True,
                               check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark worker failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ command
def _model(work: Path, models_root: str | None = None) -> tuple[str, str | None, bool]:
    """(model id, models root or None for the bundled folder, is_random)."""
    from ..errors import ModelError
    from ..models import find_model

    if models_root is not None:
        return find_model("ct", models_root).id, str(models_root), False
    try:
        return find_model("ct").id, None, False
    except ModelError:
        import torch

        from ..ct.network import ResAUNet
        from ..ct.preprocess import CTPreprocessing
        from ..models import write_model_dir

        torch.manual_seed(0)
        write_model_dir(work / "models" / RANDOM_MODEL_ID, ResAUNet(), model_id=RANDOM_MODEL_ID, family="ct",
                        architecture="ResAUNet", preprocessing=CTPreprocessing().to_dict())
        return RANDOM_MODEL_ID, str(work / "models"), True


def precision_agreement(model_id: str, models_root: str | None, volume: Any, slices: int) -> dict:
    """bf16-autocast vs fp32 labels on ``slices`` body slices of ``volume``: pixel agreement, Dice per class."""
    import torch

    from ..ct.inference import InferenceOptions, predict_slices, prepare_network
    from ..ct.preprocess import preprocess_ct
    from ..models import find_model, load_network

    card = find_model(model_id, models_root)
    batch, _ = preprocess_ct(volume, card.preprocessing)
    step = max(batch.shape[0] // max(slices, 1), 1)
    batch = np.ascontiguousarray(batch[::step][:slices])
    network = prepare_network(load_network(card, "cpu"), torch.device("cpu"))
    labels = {}
    for precision in ("fp32", "bf16"):
        started = time.perf_counter()
        labels[precision], _ = predict_slices(network, batch, options=InferenceOptions(precision=precision))
        labels[precision + "_s"] = time.perf_counter() - started
    reference, fast = labels["fp32"], labels["bf16"]
    dice = {}
    for structure in card.structures:
        a, b = reference == structure.value, fast == structure.value
        total = int(a.sum()) + int(b.sum())
        dice[structure.name] = 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total
    return {"slices": int(batch.shape[0]), "pixel_agreement": float(np.mean(reference == fast)),
            "dice_bf16_vs_fp32": dice, "fp32_s": labels["fp32_s"], "bf16_s": labels["bf16_s"]}


def _flops_per_slice(model_id: str, models_root: str | None) -> int:
    from ..ct.inference import fuse_batchnorms
    from ..ct.preprocess import CROP_SIZE
    from ..models import find_model, load_network

    network = load_network(find_model(model_id, models_root), "cpu")
    fuse_batchnorms(network)
    return count_flops(network, (1, 1, CROP_SIZE, CROP_SIZE))


def run(args: argparse.Namespace) -> int:
    from ..dicom_writer import write_dicom_series

    cases = []
    agreement = None
    with tempfile.TemporaryDirectory(prefix="cervixautoseg-bench-") as folder:
        work = Path(folder)
        model_id, models_root, random_weights = _model(work, args.models)
        flops_slice = _flops_per_slice(model_id, models_root)
        print(f"model {model_id}{' (random weights: timing only)' if random_weights else ''}; "
              f"{flops_slice / 1e9:.2f} GFLOP per 256x256 slice", file=sys.stderr)
        for slices in args.slices:
            dicom = work / f"ct{slices}"
            volume = synthetic_pelvis_ct(slices)
            write_dicom_series(volume, dicom, modality="CT")
            if args.check_bf16 and not cases:
                agreement = precision_agreement(model_id, models_root, volume, args.check_bf16)
            del volume
            print(f"segmenting a 512x512x{slices} CT ...", file=sys.stderr)
            measured = _run_worker({"dicom": str(dicom), "out": str(work / f"out{slices}"), "model": model_id,
                                    "models_root": models_root, "device": args.device,
                                    "precision": args.precision, "batch_size": args.batch_size,
                                    "flip_tta": not args.no_flip_tta})
            network_s = measured["timings_s"].get("network", 0.0)
            measured["slices"] = slices
            measured["network_gflops_per_s"] = (flops_slice * measured["network_slices"] * measured["network_passes"]
                                                / network_s / 1e9
                                                if network_s > 0 else 0.0)
            cases.append(measured)
            for path in dicom.iterdir():
                path.unlink()
    precision = cases[0]["precision"] if cases else "fp32"
    matmul = matmul_gflops(precision)
    summary = _summarise(cases, matmul, flops_slice, model_id, random_weights)
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


def _summarise(cases: list[dict], matmul: float, flops_slice: int, model_id: str, random_weights: bool) -> dict:
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
        "model": model_id, "random_weights": random_weights, "gflop_per_slice": flops_slice / 1e9,
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
          f"network {summary['gflop_per_slice']:.2f} GFLOP/slice; precision {summary['cases'][0]['precision'] if summary['cases'] else '-'}")
    for name, target in summary["targets"].items():
        print(f"target {name} {target['target']}: {'met' if target['met'] else 'NOT met'}")
