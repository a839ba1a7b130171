"""``cervixautoseg train FAMILY``: train a registered model family and write a model directory.

The options every family shares — where the cases come from, the case split, the output
model directory, the work folder with resumable checkpoints, and the shared loop's
hyper-parameters (:class:`~CervixAutoSegLib.training_config.LoopConfig`) — are defined here;
each family's trainer (:class:`~CervixAutoSegLib.families.FamilyTrainer`) adds its own
(``cervixautoseg train ct --help``).  Whatever the family, the model card's held-out numbers
are measured through the very path ``segment`` runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

import numpy as np

HELP = "train a model family (e.g. ct) on image + label pairs or synthetic phantoms"

RUN_FILE = "run.json"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..families import families

    sub = parser.add_subparsers(dest="family", metavar="FAMILY", required=True)
    for family in families():
        if family.trainer is not None:
            family_parser = sub.add_parser(family.name, help=family.trainer.help, description=family.trainer.help)
            _add_shared_arguments(family_parser, family)
            family.trainer.add_arguments(family_parser)


def _add_shared_arguments(parser: argparse.ArgumentParser, family) -> None:
    defaults = family.trainer.config_type()()
    source = parser.add_argument_group("data")
    source.add_argument("--data", type=Path, help="folder of cases: <case>/image.nii.gz + labels.nii.gz "
                                                  "or <case>/dicom/ + truth.nii.gz, or a dataset folder "
                                                  "(dataset import; its split, if any, wins over --split)")
    source.add_argument("--include-incomplete", action="store_true",
                        help="dataset: also train on cases missing a structure (its voxels count as background)")
    source.add_argument("--phantom-seeds", metavar="RANGE",
                        help="train on synthetic phantoms of these seeds, e.g. 1000-1099 (never use >= 5000)")
    source.add_argument("--split", default="111:30:15", help="train:validation:test case ratio (default %(default)s)")
    source.add_argument("--folds", type=int, metavar="K",
                        help="K-fold cross-validation of the non-test cases (the --split test share stays out)")
    source.add_argument("--fold", default="0", metavar="I|all",
                        help="with --folds: train fold I (0-based; default 0), or every fold in turn into "
                             "<work>/fold-I and <out>/fold-I with a summary in <out>/cross_validation.json")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--work", type=Path, help="checkpoints, log and cache (default: <out>.work)")
    parser.add_argument("--resume", action="store_true", help="continue from <work>/checkpoint.pt")
    parser.add_argument("--export-only", action="store_true", help="only export <work>/best.pt to --out")
    parser.add_argument("--model-id", default=family.trainer.default_model_id,
                        help="id in the model card (default %(default)s)")
    parser.add_argument("--model-version", default="1")
    parser.add_argument("--eval-phantom-seeds", metavar="RANGE",
                        help="also evaluate the exported model on these held-out phantom seeds")
    loop = parser.add_argument_group("training loop")
    loop.add_argument("--lr", type=float, default=defaults.learning_rate, help="Adam learning rate")
    loop.add_argument("--batch-size", type=int, default=defaults.batch_size)
    loop.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    loop.add_argument("--steps-per-epoch", type=int, default=defaults.steps_per_epoch)
    loop.add_argument("--patience", type=int, default=defaults.patience,
                      help="early stop after this many epochs without validation-loss gain")
    loop.add_argument("--lr-schedule", default=defaults.lr_schedule, choices=("exponential", "cosine"))
    loop.add_argument("--lr-decay", type=float, default=defaults.lr_decay, help="per-epoch LR factor (exponential)")
    loop.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="L2 penalty")
    loop.add_argument("--no-bf16", action="store_true", help="train in float32")
    loop.add_argument("--threads", type=int, default=defaults.threads)
    loop.add_argument("--checkpoint-minutes", type=float, default=defaults.checkpoint_minutes)
    loop.add_argument("--seed", type=int, default=defaults.seed)
    loop.add_argument("--init-from", type=Path, metavar="MODEL_DIR",
                      help="warm start: begin a fresh run from this model directory's weights")
    grid = parser.add_argument_group("grid search")
    grid.add_argument("--grid-search", action="store_true", help="pick LR and batch size on validation loss first")
    grid.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-4, 1e-4])
    grid.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    grid.add_argument("--grid-epochs", type=int, default=1)


def loop_fields(args: argparse.Namespace) -> dict:
    """The shared loop's fields of a family config, from the shared options."""
    return dict(learning_rate=args.lr, batch_size=args.batch_size, max_epochs=args.max_epochs,
                steps_per_epoch=args.steps_per_epoch, patience=args.patience, lr_schedule=args.lr_schedule,
                lr_decay=args.lr_decay, weight_decay=args.weight_decay, checkpoint_minutes=args.checkpoint_minutes,
                seed=args.seed, bf16=not args.no_bf16, threads=args.threads,
                init_from=str(args.init_from) if args.init_from else None)


def parse_structure_weights(text: str | None, structures) -> dict[int, float] | None:
    """``"CTVn=3,Rectum=1.5"`` → ``{3: 3.0, 2: 1.5}`` (label values of ``structures``, by name)."""
    from ..errors import InputError

    if not text:
        return None
    by_name = {s.name.lower(): s.value for s in structures}
    weights: dict[int, float] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            label, weight = by_name[name.strip().lower()], float(value)
        except (KeyError, ValueError):
            raise InputError(f"--structure-weights: expected NAME=WEIGHT with NAME in "
                             f"{', '.join(s.name for s in structures)}, got {item!r}") from None
        if weight < 0:
            raise InputError(f"--structure-weights: weights must be >= 0, got {item!r}")
        weights[label] = weight
    return weights


def _sources(args: argparse.Namespace, family):
    from ..cases import discover_cases, parse_seed_range, phantom_cases
    from ..errors import InputError

    if bool(args.data) == bool(args.phantom_seeds):
        raise InputError("give exactly one of --data DIR or --phantom-seeds RANGE")
    if args.data:
        from ..dataset.manifest import is_dataset

        if is_dataset(args.data):
            return _dataset_sources(args, family)
        return discover_cases(args.data, family.modality), {"kind": "folder", "path": str(args.data)}
    from ..phantom import PHANTOM_VERSION

    seeds = parse_seed_range(args.phantom_seeds)
    return phantom_cases(seeds, family.modality), {
        "kind": f"synthetic phantoms (CervixAutoSegLib.phantom, {family.modality}), not patient data",
        "seeds": args.phantom_seeds,
        "phantom_version": PHANTOM_VERSION,
    }


def _dataset_sources(args: argparse.Namespace, family) -> tuple[list, dict]:
    """Cases of a dataset folder for ``family`` and the data summary the model card records."""
    from ..cases import dataset_cases
    from ..dataset.manifest import MANIFEST_FILE, load_dataset
    from ..errors import InputError
    from ..models import file_sha256

    dataset = load_dataset(args.data)
    if dataset.family != family.name:
        raise InputError(f"dataset {args.data} holds {dataset.family} structures; train it with "
                         f"`cervixautoseg train {dataset.family}`")
    theirs = {(s.value, s.name) for s in dataset.structures}
    ours = {(s.value, s.name) for s in family.structures}
    if theirs != ours:
        raise InputError(f"dataset {args.data} labels {sorted(theirs)}, family {family.name} needs {sorted(ours)}")
    sources = dataset_cases(args.data, family.modality, include_incomplete=args.include_incomplete)
    summary = {"kind": "dataset", "path": str(args.data), "family": dataset.family,
               "manifest_sha256": file_sha256(Path(args.data) / MANIFEST_FILE),
               "include_incomplete": bool(args.include_incomplete),
               "split_source": "dataset manifest" if any(s.split for s in sources) else "--split"}
    return sources, summary


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
    from ..families import get_family

    family = get_family(args.family)
    work = args.work or args.out.with_name(args.out.name + ".work")
    if args.export_only:
        work.mkdir(parents=True, exist_ok=True)
        export_model(family, work, args.out, args.model_id, args.model_version, args.eval_phantom_seeds)
        return 0
    config = family.trainer.config(args, loop_fields(args))
    sources, data_summary = _sources(args, family)
    if not args.folds:
        train_fold(args, family, config, sources, data_summary, None, work, args.out)
        return 0
    folds = _chosen_folds(args.fold, args.folds)
    cards = {fold: train_fold(args, family, copy.deepcopy(config), sources, data_summary, fold,
                              work / f"fold-{fold}" if len(folds) > 1 else work,
                              args.out / f"fold-{fold}" if len(folds) > 1 else args.out)
             for fold in folds}
    if len(folds) > 1:
        write_cross_validation_summary(args.out / CROSS_VALIDATION_FILE, cards)
    return 0


def _chosen_folds(text: str, folds: int) -> list[int]:
    from ..errors import InputError

    if text == "all":
        return list(range(folds))
    try:
        return [int(text)]
    except ValueError:
        raise InputError(f"--fold must be a fold number or 'all', got {text!r}") from None


def train_fold(args: argparse.Namespace, family, config, sources, data_summary: dict, fold: int | None,
               work: Path, out: Path):
    """Train ``family`` on the split of ``fold`` (None: the ``--split`` ratios) in ``work``, export to ``out``."""
    from ..cases import fold_split, manifest_split, split_cases
    from ..errors import InputError
    from ..training import CHECKPOINT_FILE, grid_search, train_network, write_json

    ratios = _split_ratios(args.split)
    fixed = manifest_split(sources)
    if fixed is not None:
        log.warning("the dataset's own split is used (%d train, %d validation, %d test cases); --split %s is "
                    "ignored", *(len(part) for part in fixed), args.split)
        train_src, val_src, test_src = fixed if fold is None else _manifest_fold(fixed, args.folds, fold)
    elif fold is None:
        train_src, val_src, test_src = split_cases(sources, ratios, seed=args.seed)
    else:
        train_src, val_src, test_src = fold_split(sources, args.folds, fold, ratios, seed=args.seed)
    if not val_src:
        raise InputError(f"need at least 2 cases for a training/validation split, found {len(sources)}")
    work.mkdir(parents=True, exist_ok=True)
    run_document = {
        "data": {**data_summary, "cases": len(sources),
                 "split_ratio": "dataset manifest" if fixed is not None else args.split,
                 **({"folds": args.folds, "fold": fold} if fold is not None else {}),
                 "train": [s.name for s in train_src], "validation": [s.name for s in val_src],
                 "test": [s.name for s in test_src]},
        "preprocessing": family.trainer.preprocessing(config),
    }
    task = family.trainer.task(config, train_src, val_src, work)
    if args.grid_search and not (args.resume and (work / CHECKPOINT_FILE).is_file()):
        lr, batch, trials = grid_search(task, config, args.lrs, args.batch_sizes, args.grid_epochs, work)
        config.learning_rate, config.batch_size = lr, batch
        run_document["grid_search"] = {"trials": trials, "chosen": {"learning_rate": lr, "batch_size": batch}}
    run_document["config"] = config.to_dict()
    if not (args.resume and (work / RUN_FILE).is_file()):
        write_json(work / RUN_FILE, run_document)
    train_network(task, config, work, resume=args.resume)
    return export_model(family, work, out, args.model_id, args.model_version, args.eval_phantom_seeds,
                        test_sources=test_src, learned_from=[*train_src, *val_src])


def _manifest_fold(fixed: tuple[list, list, list], folds: int, fold: int) -> tuple[list, list, list]:
    """Fold ``fold`` of ``folds`` over a manifest's train + validation cases; its test cases stay out."""
    from ..errors import InputError

    train, validation, test = fixed
    pool = [*train, *validation]
    if folds < 2 or not 0 <= fold < folds or len(pool) < folds:
        raise InputError(f"{folds} folds need 2 or more folds and at least {folds} train/validation cases, "
                         f"the dataset has {len(pool)}")
    parts = [pool[i::folds] for i in range(folds)]
    return [s for i, part in enumerate(parts) if i != fold for s in part], parts[fold], test


CROSS_VALIDATION_FILE = "cross_validation.json"


def write_cross_validation_summary(path: Path, cards: dict) -> dict:
    """Per-fold validation DSC of the exported ``cards`` ({fold: ModelCard}) and their mean ± SD."""
    from ..training import write_json

    per_fold = {str(fold): card.validation for fold, card in cards.items()}
    means = [v["mean_dsc"] for v in per_fold.values() if v.get("mean_dsc") is not None]
    summary = {"folds": len(cards), "per_fold": per_fold,
               "mean_dsc": float(np.mean(means)) if means else None,
               "sd_dsc": float(np.std(means, ddof=1)) if len(means) > 1 else None}
    write_json(path, summary)
    print(f"cross-validation over {len(cards)} folds: mean DSC {summary['mean_dsc']} (SD {summary['sd_dsc']})")
    return summary


def export_model(family, work: Path, out: Path, model_id: str, version: str, eval_phantom_seeds: str | None,
                 test_sources=None, learned_from=None):
    """Write ``out`` from ``work/best.pt``; the card's test and held-out numbers are measured on the
    written model through ``segment``'s own path (flip TTA and post-processing as a user gets them).

    The card's ``qa.plausibility`` ranges are learned from the label maps of ``learned_from`` (the
    training and validation cases; with ``--export-only`` the cases ``run.json`` names), so a retrained
    model judges results by its own training data; the rest of an earlier card's ``qa`` (calibrated
    thresholds, selective flip TTA) is kept, and all of it when nothing could be learned.
    """
    import torch

    from ..cases import parse_seed_range, phantom_cases
    from ..errors import InputError
    from ..models import write_model_dir
    from ..training import BEST_FILE, CHECKPOINT_FILE, environment_summary, evaluate_model

    best_path = work / BEST_FILE
    if not best_path.is_file():
        raise InputError(f"no {BEST_FILE} in {work}: nothing trained yet")
    best = torch.load(best_path, map_location="cpu", weights_only=False)
    run_document = json.loads((work / RUN_FILE).read_text()) if (work / RUN_FILE).is_file() else {}
    config = family.trainer.config_type().from_dict(best["config"])
    preprocessing = run_document.get("preprocessing") or family.trainer.preprocessing(config)
    earlier = _earlier_card(out, family.name)
    networks, split_note = family.trainer.export(best, config, preprocessing, earlier)
    epochs_run = None
    if (work / CHECKPOINT_FILE).is_file():
        epochs_run = torch.load(work / CHECKPOINT_FILE, map_location="cpu", weights_only=False)["epoch"]
    validation_cases = len(run_document.get("data", {}).get("validation", []))
    validation_cases = min(validation_cases, getattr(config, "max_val_cases", validation_cases))  # MR: a few per epoch
    validation = {"split": split_note, "cases": validation_cases,
                  "best_epoch": best["metrics"]["epoch"], "val_loss": best["metrics"]["val_loss"],
                  "dsc": best["metrics"]["dsc"], "mean_dsc": best["metrics"]["mean_dsc"]}
    if "hd95_mm" in best["metrics"]:
        validation["hd95_mm"] = best["metrics"]["hd95_mm"]
        validation["hd95_cases"] = best["metrics"].get("hd95_cases")
    data = run_document.get("data", {})
    training = {
        "data": {k: v for k, v in data.items() if k not in ("train", "validation", "test")},
        "cases": {k: len(data.get(k, [])) for k in ("train", "validation", "test")},
        "split": {k: data.get(k, []) for k in ("train", "validation", "test")},
        "architecture": family.trainer.architecture_note,
        "config": config.to_dict(), "grid_search": run_document.get("grid_search"), "epochs_run": epochs_run,
        "optimizer": "Adam(betas=(0.9, 0.999))", "environment": environment_summary(),
    }

    earlier_stages = _earlier_stages(earlier, getattr(config, "stage", None))
    qa = learned_qa(family, work, run_document, earlier, learned_from)

    def write(validation_document: dict):
        if earlier_stages is not None:  # a staged family: keep what the other stages' runs recorded
            stage = config.stage
            training["stages"] = {**earlier_stages[0], stage: {k: v for k, v in training.items() if k != "stages"}}
            validation_document["stages"] = {**earlier_stages[1],
                                             stage: {k: v for k, v in validation_document.items() if k != "stages"}}
        return write_model_dir(out, networks, model_id=model_id, family=family.name, version=version,
                               preprocessing=preprocessing, training=training, validation=validation_document,
                               qa=qa)

    card = write(validation)
    if test_sources:
        validation["test"] = _summary(evaluate_model(card, test_sources, "test split, full pipeline as segment"))
    if eval_phantom_seeds:
        held_out = phantom_cases(parse_seed_range(eval_phantom_seeds), family.modality)
        validation["held_out_phantoms"] = _summary(evaluate_model(
            card, held_out, f"phantom seeds {eval_phantom_seeds}, full pipeline as segment"))
    if test_sources or eval_phantom_seeds:
        card = write(validation)
    print(f"model {card.id} written to {out} (validation mean DSC {validation['mean_dsc']})")
    return card


QA_FEATURES_DIR = "qa-features"
"""Per-case features for the plausibility ranges, cached in the work folder by case fingerprint."""


def learned_qa(family, work: Path, run_document: dict, earlier, sources=None) -> dict:
    """The card's ``qa``: the earlier card's, with ``plausibility`` learned anew from ``sources`` (or the
    training + validation cases ``run.json`` names) when they can be read."""
    from ..errors import CervixAutoSegError
    from ..qa.config import merged_qa
    from ..qa.plausibility import ranges_from_features

    data = run_document.get("data", {})
    try:
        sources = sources if sources is not None else _recorded_cases(data, family.modality)
        features = [_case_features(source, family.structures, work / QA_FEATURES_DIR) for source in sources]
    except (CervixAutoSegError, OSError) as error:
        log.warning("plausibility ranges not learned (%s); the earlier card's are kept", error)
        features = []
    ranges = None
    if features:
        ranges = ranges_from_features(features, [s.name for s in family.structures],
                                      source=_described(data, len(features)))
    return merged_qa(earlier.qa if earlier is not None else None, plausibility=ranges)


def _recorded_cases(data: dict, modality: str) -> list:
    """The training + validation cases a run recorded, found again (folder or phantom seeds)."""
    from ..cases import discover_cases, parse_seed_range, phantom_cases

    names = set(data.get("train", [])) | set(data.get("validation", []))
    if data.get("kind") == "dataset":
        from ..cases import dataset_cases

        found = dataset_cases(data["path"], modality, include_incomplete=bool(data.get("include_incomplete")))
    elif data.get("kind") == "folder":
        found = discover_cases(data["path"], modality)
    elif data.get("seeds"):
        found = phantom_cases(parse_seed_range(str(data["seeds"])), modality)
    else:
        return []
    return [source for source in found if source.name in names]


def _case_features(source, structures, cache: Path) -> dict:
    from ..atomic import write_text_atomic
    from ..qa.case_features import case_features

    path = cache / f"{source.fingerprint}.json"
    if path.is_file():
        return json.loads(path.read_text())
    image, labels = source.load()
    features = case_features(image, labels, structures)
    cache.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(features))
    return features


def _described(data: dict, count: int) -> str:
    where = (f"phantom seeds {data['seeds']}" if data.get("seeds") else
             f"dataset {data.get('path', '?')}" if data.get("kind") == "dataset" else f"cases in {data.get('path', '?')}")
    return f"truth label maps of the {count} training and validation cases ({where})"


def _earlier_card(out: Path, family: str):
    """The model of ``family`` already in ``out`` (None: none, unreadable, or another family's)."""
    from ..errors import ModelError
    from ..models import read_card

    try:
        earlier = read_card(out)
    except ModelError:
        return None
    return earlier if earlier.family == family else None


def _earlier_stages(earlier, stage: str | None) -> tuple[dict, dict] | None:
    """(training, validation) per stage recorded by the other stages' exports in ``earlier``, for a
    family trained stage by stage (its config has a ``stage``); None for single-stage families."""
    if stage is None:
        return None
    if earlier is None:
        return {}, {}
    keep = lambda per_stage: {k: v for k, v in per_stage.items() if k != stage}  # noqa: E731 - this stage is redone
    return keep(earlier.training.get("stages", {})), keep(earlier.validation.get("stages", {}))


def _summary(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "per_case"}
