"""``cervixautoseg qa-calibrate MODEL_DIR``: fit the slice-flag thresholds of a model on cases with truth.

    cervixautoseg qa-calibrate Resources/Models/ct-resaunet-phantom --phantom-seeds 3000-3009
    cervixautoseg qa-calibrate MY_MODEL --data CASES            # <case>/image.nii.gz + labels.nii.gz
    cervixautoseg qa-calibrate MY_MODEL --phantom-seeds 6000-6004 --evaluate --corruptions

Every case is segmented exactly as ``segment`` does (the model's own inference defaults), each
(structure, slice) gets its 2D DSC against the truth, and the thresholds are fitted so that at most
``--budget`` of the acceptable slices (DSC ≥ ``--good-dsc``) are flagged
(:mod:`CervixAutoSegLib.qa.calibrate`).  They are written into the model card's
``qa.slice_flags`` (thresholds and what the calibration measured), atomically: a reader sees the
old card or the new one.  The weights and every other part of the card are left as they are.

``--evaluate`` writes nothing: it measures precision and recall of the card's current flags for
slices with DSC < ``--good-dsc``; ``--corruptions`` also corrupts every result one slice at a time
(:mod:`CervixAutoSegLib.qa.corrupt`) and counts corrupted and untouched slices flagged.

Calibrate on cases the model was not trained on and that nobody will later judge it on: training
cases are refused (the model knows them too well) unless ``--allow-training-cases``.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

HELP = "fit a model's slice-flag thresholds on cases with known truth and write them into its card"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..qa.calibrate import DEFAULT_BUDGET, GOOD_DSC

    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="model directory whose card is updated")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="folder of cases: <case>/image.nii.gz + labels.nii.gz "
                                                  "or <case>/dicom/ + truth.nii.gz")
    source.add_argument("--phantom-seeds", metavar="RANGE", help="synthetic phantoms of these seeds, e.g. 3000-3009")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help="largest share of acceptable slices that may be flagged (default %(default)s)")
    parser.add_argument("--good-dsc", type=float, default=GOOD_DSC,
                        help="2D DSC from which a slice counts as acceptable (default %(default)s)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--evaluate", action="store_true",
                        help="only measure the card's current flags on these cases; write nothing")
    parser.add_argument("--corruptions", action="store_true",
                        help="also corrupt each result one slice at a time and count what the flags catch")
    parser.add_argument("--allow-training-cases", action="store_true",
                        help="calibrate even on cases the model was trained or validated on")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the measurements as JSON")


def _sources(args: argparse.Namespace, modality: str) -> tuple[list, str]:
    from ..cases import discover_cases, parse_seed_range, phantom_cases

    if args.data:
        return discover_cases(args.data, modality), f"cases in {args.data}"
    return phantom_cases(parse_seed_range(args.phantom_seeds), modality), f"phantom seeds {args.phantom_seeds}"


def training_overlap(card: Any, names: list[str]) -> list[str]:
    """Case names among ``names`` that the card says it was trained, validated or tested on (its
    recorded split, and every seed of the phantom range it was trained from)."""
    from ..cases import parse_seed_range
    from ..families import get_family

    known = {name for part in (card.training.get("split") or {}).values() for name in part}
    data = card.training.get("data") or {}
    if str(data.get("kind", "")).startswith("synthetic phantoms") and data.get("seeds"):
        modality = get_family(card.family).modality.lower()
        known |= {f"phantom-{modality}-{seed}" for seed in parse_seed_range(str(data["seeds"]))}
    return sorted(set(names) & known)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..families import get_family
    from ..models import read_card

    card = read_card(args.model_dir)
    if not 0.0 < args.budget < 1.0 or not 0.0 < args.good_dsc <= 1.0:
        raise InputError("--budget must be in (0, 1) and --good-dsc in (0, 1]")
    sources, described = _sources(args, get_family(card.family).modality)
    overlap = training_overlap(card, [s.name for s in sources])
    if overlap and not args.allow_training_cases:
        raise InputError(f"{len(overlap)} of these cases are in model {card.id}'s training data "
                         f"({', '.join(overlap[:3])}{'...' if len(overlap) > 3 else ''}): calibrate on other cases "
                         "(or --allow-training-cases)")
    samples, rates = collect(card, sources, args.device, args.good_dsc, args.corruptions)
    summary = {"model": card.id, "cases": described, "case_count": len(sources)}
    if args.evaluate:
        summary["measured"] = _measured(samples, card, args.good_dsc)
    else:
        summary.update(calibrate_card(args.model_dir, card, samples, described, args.budget, args.good_dsc))
    if rates is not None:
        summary["corruptions"] = {"recall": round(rates.recall, 4), "false_alarm_rate": round(rates.false_alarm_rate, 4),
                                  "corrupted": rates.corrupted, "untouched": rates.untouched,
                                  "by_kind": {k: {"slices": v[0], "flagged": v[1]} for k, v in rates.by_kind.items()}}
    _print(summary, args)
    if args.json:
        from ..atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps(summary, indent=2) + "\n")
    return 0


def collect(card: Any, sources: list, device: str, good_dsc: float, corruptions: bool) -> tuple[list, Any]:
    """Segment every case as ``segment`` does → calibration samples (and corruption counts)."""
    import numpy as np

    from ..pipeline import segment
    from ..postprocess import rules_for
    from ..qa.calibrate import samples_of, slice_dsc
    from ..qa.config import QAConfig
    from ..qa.corrupt import FlagRates, flag_rates

    rules = {rule.value: rule for rule in rules_for(card.structures)}
    regions = {s.name: (s.value, *rules[s.value].includes) for s in card.structures}
    samples, rates = [], FlagRates() if corruptions else None
    for index, source in enumerate(sources):
        volume, truth = source.load()
        result = segment(volume, None, model=card, device=device, keep_evidence=corruptions)
        dsc = slice_dsc(np.asarray(result.labels.array), np.asarray(truth), regions)
        samples += samples_of(source.name, result.report["qa"]["slices"], dsc)
        if rates is not None:
            flag_rates(result.labels, card.structures, QAConfig.from_card(card), np.random.default_rng(index),
                       evidence=result.evidence, rates=rates)
        print(f"{source.name}: {len(dsc)} structure slices", flush=True)
    return samples, rates


def _measured(samples: list, card: Any, good_dsc: float) -> dict:
    from ..qa.calibrate import measure
    from ..qa.config import QAConfig

    thresholds = QAConfig.from_card(card).thresholds
    return measure(samples, thresholds, good_dsc)


def calibrate_card(model_dir: Path, card: Any, samples: list, described: str, budget: float,
                   good_dsc: float) -> dict:
    """Fit, measure in-sample, and write the card's ``qa.slice_flags``; returns what was written."""
    from .. import __version__
    from ..qa.calibrate import fit_thresholds, measure

    thresholds, quantile = fit_thresholds(samples, budget=budget, good_dsc=good_dsc)
    calibration = {
        "cases": described, "case_count": len({s.case for s in samples}), "budget": budget, "quantile": quantile,
        "measured_on_calibration_cases": measure(samples, thresholds, good_dsc),
        "weights_sha256": {entry.role: entry.sha256 for entry in card.networks},
        "tool_version": __version__,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    write_card_qa(model_dir, {"thresholds": thresholds, "calibration": calibration}, "slice_flags")
    return {"thresholds": thresholds, "calibration": calibration}


def write_card_qa(model_dir: Path, section: dict, key: str) -> None:
    """Replace ``qa.<key>`` of ``model_dir/model.json``, atomically; everything else stays byte-for-byte
    the same JSON (re-serialised with the card's indentation)."""
    from ..atomic import write_text_atomic
    from ..models import CARD_FILE
    from ..qa.config import merged_qa

    path = Path(model_dir) / CARD_FILE
    document = json.loads(path.read_text(encoding="utf-8"))
    document["qa"] = merged_qa(document.get("qa"), **{key: section})
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def _print(summary: dict, args: argparse.Namespace) -> None:
    measured = summary.get("measured") or summary["calibration"]["measured_on_calibration_cases"]
    percent = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    print(f"{summary['model']} on {summary['case_count']} case(s) ({summary['cases']}): {measured['slices']} "
          f"structure slices, {measured['bad_slices']} with 2D DSC < {measured['good_dsc']} "
          f"({measured['bad_slices_not_drawn']} not drawn at all)")
    print(f"  flags: precision {percent(measured['precision'])}, recall {percent(measured['recall'])}, "
          f"false alarms on {percent(measured['false_alarm_rate'])} of acceptable slices")
    if "calibration" in summary:
        print(f"  thresholds fitted at quantile {summary['calibration']['quantile']} (budget {args.budget:g}) and "
              f"written to {Path(args.model_dir) / 'model.json'}")
    corruptions = summary.get("corruptions")
    if corruptions:
        kinds = ", ".join(f"{k} {v['flagged']}/{v['slices']}" for k, v in corruptions["by_kind"].items())
        print(f"  corruptions: {percent(corruptions['recall'])} of {corruptions['corrupted']} corrupted slices "
              f"flagged ({kinds}); {percent(corruptions['false_alarm_rate'])} of {corruptions['untouched']} "
              "untouched slices flagged")
