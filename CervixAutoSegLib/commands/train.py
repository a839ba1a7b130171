"""``cervixautoseg train ct``: train ResAU-Net on image + label pairs and write a model directory.

Examples::

    cervixautoseg train ct --data CASES/ --out Resources/Models/my-ct-model
    cervixautoseg train ct --phantom-seeds 1000-1099 --out MODEL --work runs/ct --resume
    cervixautoseg train ct --grid-search --lrs 1e-3 3e-4 --batch-sizes 4 8 --data CASES/ --out MODEL
    cervixautoseg train ct --export-only --work runs/ct --out MODEL --eval-phantom-seeds 5000-5009

``--work`` keeps checkpoints (``checkpoint.pt`` every few minutes and each epoch, ``best.pt``),
the per-epoch log (``log.jsonl``) and the slice cache; re-running with ``--resume``
continues where the last run stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

HELP = "train a CT (ResAU-Net) model on image + label pairs or synthetic phantoms"

RUN_FILE = "run.json"
DEFAULT_MODEL_ID = "ct-resaunet"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..ct.config import ATTENTION_KINDS, LOSS_NAMES, TrainConfig

    defaults = TrainConfig()
    parser.add_argument("family", choices=["ct"], help="model family (only ct here)")
    source = parser.add_argument_group("data")
    source.add_argument("--data", type=Path, help="folder of cases: <case>/image.nii.gz + labels.nii.gz "
                                                  "or <case>/dicom/ + truth.nii.gz")
    source.add_argument("--phantom-seeds", metavar="RANGE",
                        help="train on synthetic phantoms of these seeds, e.g. 1000-1099 (never use >= 5000)")
    source.add_argument("--split", default="111:30:15", help="train:validation:test case ratio (default %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--work", type=Path, help="checkpoints, log and cache (default: <out>.work)")
    parser.add_argument("--resume", action="store_true", help="continue from <work>/checkpoint.pt")
    parser.add_argument("--export-only", action="store_true", help="only export <work>/best.pt to --out")
    parser.add_argument("--model-id", default=DEFAULT_MODEL_ID, help="id in the model card (default %(default)s)")
    parser.add_argument("--model-version", default="1")
    parser.add_argument("--eval-phantom-seeds", metavar="RANGE",
                        help="also evaluate the exported model on these held-out phantom seeds")
    hyper = parser.add_argument_group("training")
    hyper.add_argument("--loss", default=defaults.loss, choices=LOSS_NAMES)
    hyper.add_argument("--lr", type=float, default=defaults.learning_rate, help="Adam learning rate")
    hyper.add_argument("--batch-size", type=int, default=defaults.batch_size)
    hyper.add_argument("--patch-size", type=int, default=defaults.patch_size, help="multiple of 32")
    hyper.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    hyper.add_argument("--steps-per-epoch", type=int, default=defaults.steps_per_epoch)
    hyper.add_argument("--patience", type=int, default=defaults.patience,
                       help="early stop after this many epochs without validation-loss gain")
    hyper.add_argument("--lr-decay", type=float, default=defaults.lr_decay, help="per-epoch LR factor")
    hyper.add_argument("--attention", default=defaults.attention, choices=ATTENTION_KINDS)
    hyper.add_argument("--no-augment", action="store_true")
    hyper.add_argument("--no-bf16", action="store_true", help="train in float32")
    hyper.add_argument("--threads", type=int, default=defaults.threads)
    hyper.add_argument("--checkpoint-minutes", type=float, default=defaults.checkpoint_minutes)
    hyper.add_argument("--max-val-slices", type=int, default=defaults.max_val_slices,
                       help="validate on at most N evenly spaced slices per case (0 = all)")
    hyper.add_argument("--hd95-cases", type=int, default=defaults.hd95_cases,
                       help="validation cases whose HD95 is logged each epoch (default %(default)s)")
    hyper.add_argument("--seed", type=int, default=defaults.seed)
    hyper.add_argument("--structure-weights", metavar="NAME=W,...",
                       help="odds of centring foreground patches on each structure, e.g. CTVn=3 "
                            "(others 1; default: equal)")
    hyper.add_argument("--end-fraction", type=float, default=defaults.end_fraction,
                       help="share of patches from slices just beyond a structure's cranial or caudal end, "
                            "where a 2D network cannot see it stop (default %(default)s)")
    hyper.add_argument("--end-margin-mm", type=float, default=defaults.end_margin_mm,
                       help="how far beyond the end those slices reach (default %(default)s mm)")
    hyper.add_argument("--init-from", type=Path, metavar="MODEL_DIR",
                       help="warm start: begin a fresh run from this model directory's weights")
    grid = parser.add_argument_group("grid search")
    grid.add_argument("--grid-search", action="store_true", help="pick LR and batch size on validation loss first")
    grid.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-4, 1e-4])
    grid.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    grid.add_argument("--grid-epochs", type=int, default=1)


def _config(args: argparse.Namespace):
    from ..ct.config import TrainConfig
    from ..errors import InputError

    if args.patch_size % 32:
        raise InputError(f"--patch-size must be a multiple of 32, got {args.patch_size}")
    if not 0.0 <= args.end_fraction <= 1.0:
        raise InputError(f"--end-fraction must be between 0 and 1, got {args.end_fraction}")
    return TrainConfig(
        loss=args.loss, learning_rate=args.lr, batch_size=args.batch_size, patch_size=args.patch_size,
        max_epochs=args.max_epochs, steps_per_epoch=args.steps_per_epoch, patience=args.patience,
        lr_decay=args.lr_decay, checkpoint_minutes=args.checkpoint_minutes, seed=args.seed,
        attention=args.attention, augment=not args.no_augment, bf16=not args.no_bf16, threads=args.threads,
        max_val_slices=args.max_val_slices, hd95_cases=args.hd95_cases,
        structure_weights=parse_structure_weights(args.structure_weights),
        end_fraction=args.end_fraction, end_margin_mm=args.end_margin_mm,
        init_from=str(args.init_from) if args.init_from else None,
    )


def parse_structure_weights(text: str | None) -> dict[int, float] | None:
    """``"CTVn=3,Rectum=1.5"`` → ``{3: 3.0, 2: 1.5}`` (label values of the CT structures)."""
    from ..errors import InputError
    from ..structures import CT_STRUCTURES

    if not text:
        return None
    by_name = {s.name.lower(): s.value for s in CT_STRUCTURES}
    weights: dict[int, float] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            label, weight = by_name[name.strip().lower()], float(value)
        except (KeyError, ValueError):
            raise InputError(f"--structure-weights: expected NAME=WEIGHT with NAME in "
                             f"{', '.join(s.name for s in CT_STRUCTURES)}, got {item!r}") from None
        if weight < 0:
            raise InputError(f"--structure-weights: weights must be >= 0, got {item!r}")
        weights[label] = weight
    return weights


def _sources(args: argparse.Namespace):
    from ..ct.dataset import discover_cases, parse_seed_range, phantom_cases
    from ..errors import InputError

    if bool(args.data) == bool(args.phantom_seeds):
        raise InputError("give exactly one of --data DIR or --phantom-seeds RANGE")
    if args.data:
        return discover_cases(args.data), {"kind": "folder", "path": str(args.data)}
    from ..phantom import PHANTOM_VERSION

    seeds = parse_seed_range(args.phantom_seeds)
    return phantom_cases(seeds), {
        "kind": "synthetic phantoms (CervixAutoSegLib.phantom.make_ct_phantom), not patient data",
        "seeds": args.phantom_seeds,
        "phantom_version": PHANTOM_VERSION,
    }


def _split_ratios(text: str) -> tuple[int, ...]:
    from ..errors import InputError

    try:
        ratios = tuple(int(v) for v in text.split(":"))
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or any(r < 0 for r in ratios) or ratios[0] == 0:
        raise InputError(f"--split must be three non-negative integers like 111:30:15, got {text!r}")
    return ratios


def run(args: argparse.Namespace) -> int:
    from ..ct.dataset import split_cases
    from ..ct.preprocess import CTPreprocessing
    from ..ct.training import (CACHE_DIR, grid_search, load_slice_cases, train_network, write_json)

    work = args.work or args.out.with_name(args.out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    if args.export_only:
        export_model(work, args.out, args.model_id, args.model_version, args.eval_phantom_seeds)
        return 0
    config = _config(args)
    params = CTPreprocessing()
    sources, data_summary = _sources(args)
    train_src, val_src, test_src = split_cases(sources, _split_ratios(args.split), seed=args.seed)
    if not val_src:
        from ..errors import InputError

        raise InputError(f"need at least 2 cases for a training/validation split, found {len(sources)}")
    run_document = {
        "data": {**data_summary, "cases": len(sources), "split_ratio": args.split,
                 "train": [s.name for s in train_src], "validation": [s.name for s in val_src],
                 "test": [s.name for s in test_src]},
        "preprocessing": params.to_dict(),
    }
    cache = work / CACHE_DIR
    train_cases = load_slice_cases(train_src, params, cache)
    val_cases = load_slice_cases(val_src, params, cache)
    if args.grid_search and not (args.resume and (work / "checkpoint.pt").is_file()):
        lr, batch, trials = grid_search(config, args.lrs, args.batch_sizes, train_cases, val_cases,
                                        args.grid_epochs, work)
        config.learning_rate, config.batch_size = lr, batch
        run_document["grid_search"] = {"trials": trials, "chosen": {"learning_rate": lr, "batch_size": batch}}
    run_document["config"] = config.to_dict()
    if not (args.resume and (work / RUN_FILE).is_file()):
        write_json(work / RUN_FILE, run_document)
    train_network(config, train_cases, val_cases, work, resume=args.resume)
    export_model(work, args.out, args.model_id, args.model_version, args.eval_phantom_seeds,
                 test_sources=test_src)
    return 0


def export_model(work: Path, out: Path, model_id: str, version: str, eval_phantom_seeds: str | None,
                 test_sources=None):
    """Write ``out`` from ``work/best.pt`` with a model card of the metrics actually measured."""
    import torch

    from ..ct.dataset import parse_seed_range, phantom_cases
    from ..ct.network import ARCHITECTURE
    from ..ct.preprocess import CTPreprocessing
    from ..ct.training import (BEST_FILE, CHECKPOINT_FILE, TrainConfig, build_ct_network, environment_summary,
                               evaluate_cases)
    from ..errors import InputError
    from ..models import write_model_dir

    best_path = work / BEST_FILE
    if not best_path.is_file():
        raise InputError(f"no {BEST_FILE} in {work}: nothing trained yet")
    best = torch.load(best_path, map_location="cpu", weights_only=False)
    run_document = json.loads((work / RUN_FILE).read_text()) if (work / RUN_FILE).is_file() else {}
    config = TrainConfig.from_dict(best["config"])
    network = build_ct_network(config)
    network.load_state_dict(best["model"])
    network.eval()
    params = CTPreprocessing.from_dict(run_document.get("preprocessing"))
    epochs_run = None
    if (work / CHECKPOINT_FILE).is_file():
        epochs_run = torch.load(work / CHECKPOINT_FILE, map_location="cpu", weights_only=False)["epoch"]
    validation = {
        "split": "validation (cropped 256x256 slices, per-case 3D DSC, no post-processing)",
        "cases": len(run_document.get("data", {}).get("validation", [])),
        "best_epoch": best["metrics"]["epoch"],
        "val_loss": best["metrics"]["val_loss"],
        "dsc": best["metrics"]["dsc"],
        "mean_dsc": best["metrics"]["mean_dsc"],
    }
    if "hd95_mm" in best["metrics"]:
        validation["hd95_mm"] = best["metrics"]["hd95_mm"]
        validation["hd95_cases"] = best["metrics"].get("hd95_cases")
    if test_sources:
        validation["test"] = _summary(evaluate_cases(network, test_sources, params, config.bf16),
                                      "test split, full input grid, no post-processing")
    if eval_phantom_seeds:
        held_out = phantom_cases(parse_seed_range(eval_phantom_seeds))
        validation["held_out_phantoms"] = _summary(evaluate_cases(network, held_out, params, config.bf16),
                                                   f"phantom seeds {eval_phantom_seeds}, full grid, no post-processing")
    training = {
        "data": {k: v for k, v in run_document.get("data", {}).items() if k not in ("train", "validation", "test")},
        "cases": {k: len(run_document.get("data", {}).get(k, [])) for k in ("train", "validation", "test")},
        "config": config.to_dict(),
        "grid_search": run_document.get("grid_search"),
        "epochs_run": epochs_run,
        "optimizer": "Adam(betas=(0.9, 0.999))",
        "environment": environment_summary(),
    }
    card = write_model_dir(
        out, network, model_id=model_id, family="ct", architecture=ARCHITECTURE,
        architecture_kwargs={"in_channels": 1, "classes": 5, "attention": config.attention}, version=version,
        preprocessing=params.to_dict(), training=training, validation=validation,
    )
    print(f"model {card.id} written to {out} (sha256 {card.sha256[:12]}…, "
          f"validation mean DSC {validation['mean_dsc']})")
    return card


def _summary(result: dict, description: str) -> dict:
    summary = {"description": description, "cases": result["cases"], "dsc": result["dsc"],
               "mean_dsc": result["mean_dsc"]}
    if "hd95_mm" in result:
        summary["hd95_mm"] = result["hd95_mm"]
    return summary
