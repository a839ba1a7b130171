"""The numbers of ``benchmark FAMILY`` (:mod:`.segment`): targets judged, speed-ups, the printed table.

Times are seconds, memory GiB (``peak_rss_gb``), FLOPs GFLOP; shapes ``x`` by ``y`` by ``z``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .flops import MATMUL_SIZE
from .spec import BenchmarkTargets

STAGES = ("load", "preprocess", "model_load", "network", "postprocess", "write", "total")
"""``report.json`` ``timings_s`` keys, in pipeline order."""


def summarise(cases: list[dict], matmul: float, card: Any, random_weights: bool, plan: dict,
              baselines: list[dict], model_parameters: dict[str, int] | None = None) -> dict:
    """The JSON document: every segment run (``cases``), every baseline pass with its speed-ups, the
    targets of ``plan["targets"]`` judged on the runs with the plan's first flip-TTA setting."""
    for case in cases:
        case["network_fraction_of_matmul"] = case["network_gflops_per_s"] / matmul if matmul else 0.0
    for run in baselines:
        _add_speedups(run, cases)
    flips = plan["flip_tta_runs"]
    summary = {
        "model": card.id, "random_weights": random_weights,
        "gflop_per_item": max((c["gflop_per_item"] for c in cases), default=0.0),
        "matmul_gflops_per_s": matmul, "matmul_dtype": "bf16" if cases and cases[0]["precision"] == "bf16" else "fp32",
        "cpu_threads": os.cpu_count(), "cases": cases,
        "targets": judge(cases, baselines, plan["targets"]),
    }
    comparison = selective_tta_comparison(cases)
    if comparison is not None:
        summary["selective_tta"] = comparison
    if plan["comparative"]:  # a case that chose its flip-TTA runs says which ones the targets count
        summary["targets_judged_on"] = f"flip TTA {'on' if flips[0] else 'off'}"
    if model_parameters is not None:
        summary["model_parameters"] = model_parameters
    if plan["baselines"]:
        summary["baselines"] = baselines
    return summary


def _add_speedups(run: dict, cases: list[dict]) -> None:
    """``run`` (a baseline pass) gets the matching judged case's seconds and the speed-ups:

    * ``speedup_process``: the baseline's whole process over the case's (both fresh processes:
      start-up, imports, reading and preprocessing the same DICOM; then the case runs both stages,
      cleans and writes everything, the baseline runs its one pass and writes nothing — so this
      understates the case's advantage a little); what a user waits for either way;
    * ``speedup_whole_case``: the baseline's forward passes alone over the case's whole ``segment``
      (imports, reading and writing on one side only: the strictest reading);
    * ``speedup_network``: forward passes over forward passes (both PocketNet stages against one pass).
    """
    case = next((c for c in cases if c["target_run"] and c["slices"] == run["slices"]
                 and c["series"] == run["series"]), None)
    if case is None:
        return
    total, network = case["timings_s"]["total"], case["timings_s"].get("network", 0.0)
    run["case_total_s"], run["case_network_s"] = total, network
    run["speedup_whole_case"] = run["network_s"] / total if total > 0 else 0.0
    run["speedup_network"] = run["network_s"] / network if network > 0 else 0.0
    if run.get("process_s") and case.get("process_s"):
        run["case_process_s"] = case["process_s"]
        run["speedup_process"] = run["process_s"] / case["process_s"]


def judge(cases: list[dict], baselines: list[dict], targets: BenchmarkTargets) -> dict:
    """Target name → ``{"target": "<= 60.0", "met": bool, or None when not measured}``."""
    judged = [c for c in cases if c["target_run"]]
    results: dict[str, dict] = {}
    if targets.min_network_fraction_of_matmul is not None:
        floor = targets.min_network_fraction_of_matmul
        results["network_fraction_of_matmul"] = {
            "target": f">= {floor}", "met": all(c["network_fraction_of_matmul"] >= floor for c in judged)}
    timed = [c for c in judged if targets.total_up_to_size is None or c["slices"] <= targets.total_up_to_size]
    results[targets.total_name] = {"target": f"<= {targets.max_total_s}",
                                   "met": all(c["timings_s"]["total"] <= targets.max_total_s for c in timed)}
    results["peak_rss_gb"] = {"target": f"<= {targets.max_peak_rss_gb}",
                              "met": all(c["peak_rss_gb"] <= targets.max_peak_rss_gb for c in judged)}
    if targets.min_speedup_vs_baseline is not None:
        floor = targets.min_speedup_vs_baseline
        measured = [b for b in baselines if "speedup_whole_case" in b]
        key = "speedup_process" if measured and all("speedup_process" in b for b in measured) else "speedup_whole_case"
        met = all(b[key] >= floor for b in measured) if measured else None
        results["speedup_vs_baseline"] = {"target": f">= {floor}", "met": met, "measure": key}
    results.update(_judge_selective_tta(cases, targets))
    return results


def selective_tta_comparison(cases: list[dict]) -> dict | None:
    """The judged run of the first size against its full-flip-TTA twin (same image, same run):
    network seconds of each, their ratio, items mirrored, and the judged run's seconds outside
    the network (:func:`outside_network_s`).  None without a twin.

    With repetitions (``repeats_network_s`` of both), the ratio is the median of the rounds' own
    ratios: the two runs of a round are neighbours in time, so a slow spell of a shared machine
    slows both, where the ratio of two medians may take them from different spells."""
    full = next((c for c in cases if c.get("tta_mode") == "full" and not c["target_run"]), None)
    if full is None:
        return None
    judged = next((c for c in cases if c["target_run"] and c["slices"] == full["slices"]
                   and c["series"] == full["series"]), None)
    if judged is None:
        return None
    selective_s, full_s = judged["timings_s"].get("network", 0.0), full["timings_s"].get("network", 0.0)
    comparison = {"slices": judged["slices"], "series": judged["series"], "mode": judged.get("tta_mode"),
                  "network_s": selective_s, "full_tta_network_s": full_s,
                  "network_fraction_of_full": selective_s / full_s if full_s > 0 else None,
                  "items": judged.get("items"), "mirrored_items": judged.get("mirrored_items"),
                  "outside_network_s": outside_network_s(judged)}
    rounds = list(zip(judged.get("repeats_network_s", []), full.get("repeats_network_s", [])))
    if len(rounds) > 1 and all(f > 0 for _, f in rounds):
        fractions = [s / f for s, f in rounds]
        comparison["network_fraction_of_full"] = float(np.median(fractions))
        comparison["round_fractions"] = [round(value, 4) for value in fractions]
    return comparison


def outside_network_s(case: dict) -> float:
    """Seconds of a ``segment`` run outside the network: its whole process (start-up, imports,
    read ... write) minus its network seconds; with repetitions, the median over the rounds."""
    rounds = list(zip(case.get("repeats_s", []), case.get("repeats_network_s", [])))
    if len(rounds) > 1:
        return float(np.median([process - network for process, network in rounds]))
    return case.get("process_s", case["timings_s"]["total"]) - case["timings_s"].get("network", 0.0)


def _judge_selective_tta(cases: list[dict], targets: BenchmarkTargets) -> dict:
    """The selective-TTA and outside-the-network targets (None when the run did not measure them)."""
    results: dict[str, dict] = {}
    comparison = selective_tta_comparison(cases)
    if targets.max_selective_tta_network_fraction is not None:
        fraction = comparison and comparison["network_fraction_of_full"]
        ceiling = targets.max_selective_tta_network_fraction
        results["selective_tta_network_fraction"] = {
            "target": f"<= {ceiling}", "met": None if fraction is None else bool(fraction <= ceiling)}
    if targets.max_outside_network_s is not None:
        judged = [c for c in cases if c["target_run"] and "process_s" in c]
        results["outside_network_s"] = {
            "target": f"<= {targets.max_outside_network_s}",
            "met": all(outside_network_s(c) <= targets.max_outside_network_s for c in judged) if judged else None}
    return results


def print_table(summary: dict) -> None:
    """The human-readable report on stdout (one row per segment run, then baselines and targets)."""
    cases = summary["cases"]
    named = any(c.get("series") for c in cases)
    roles = list(dict.fromkeys(s["role"] for c in cases for s in c.get("stages", [])))
    columns = [*STAGES[:4], *(f"stage:{r}" for r in roles), *STAGES[4:]]
    label = f"{'series':<9} {'size':>5} {'tta':>4}" if named else f"{'slices':>6} {'flip TTA':>9}"
    print(f"{label} " + " ".join(f"{name:>11}" for name in columns) + f" {'net GFLOP/s':>12} {'% matmul':>9}"
          f" {'peak RSS':>9}")
    for case in cases:
        seconds = {**case["timings_s"], **{f"stage:{s['role']}": s["seconds"] for s in case.get("stages", [])}}
        times = " ".join(f"{seconds[name]:10.2f}s" if name in seconds else f"{'-':>11}" for name in columns)
        tta = {True: "on", False: "off"}.get(case.get("flip_tta"), "-")
        row = (f"{case['series']:<9} {case['slices']:>5} {tta:>4}" if named
               else f"{case['slices']:>6} {case.get('tta_mode', tta):>9}")
        print(f"{row} {times} {case['network_gflops_per_s']:12.1f} "
              f"{100 * case['network_fraction_of_matmul']:8.1f}% {case['peak_rss_gb']:7.2f}GB")
    precision = cases[0]["precision"] if cases else "-"
    print(f"matmul ({summary['matmul_dtype']}, {MATMUL_SIZE}x{MATMUL_SIZE}): {summary['matmul_gflops_per_s']:.1f} "
          f"GFLOP/s; network {summary['gflop_per_item']:.2f} GFLOP per slice or window; precision {precision}")
    if roles:
        print("stage:ROLE = wall seconds of that network stage (its weights, windows and own cleaning), "
              "a share of model_load + network")
    if summary["random_weights"] and roles[1:]:
        print("random weights: contours are meaningless, and a later stage sees what the random earlier one gave "
              "(the family's benchmark case says what that is), so per-stage times are indicative")
    if "baselines" in summary:
        _print_baselines(summary)
    if "selective_tta" in summary:
        _print_selective_tta(summary["selective_tta"])
    if "targets_judged_on" in summary:
        print(f"targets judged on the runs with {summary['targets_judged_on']}:")
    for name, target in summary["targets"].items():
        verdict = "not measured" if target["met"] is None else ("met" if target["met"] else "NOT met")
        print(f"target {name} {target['target']}: {verdict}")


def _print_selective_tta(comparison: dict) -> None:
    fraction = comparison["network_fraction_of_full"]
    share = "-" if fraction is None else f"{100 * fraction:.0f} %"
    rounds = comparison.get("round_fractions")
    paired = (f" (median of the rounds' own ratios: {', '.join(f'{100 * r:.0f} %' for r in rounds)})"
              if rounds else "")
    print(f"flip TTA on {comparison['slices']} slices: {comparison['mode']} mirrored {comparison['mirrored_items']} of "
          f"{comparison['items']} items, network {comparison['network_s']:.2f} s against full flip TTA's "
          f"{comparison['full_tta_network_s']:.2f} s (median runs): {share}{paired}; outside the network (start-up, "
          f"imports, read ... write) {comparison['outside_network_s']:.2f} s")


def _print_baselines(summary: dict) -> None:
    """One header line per baseline network, then one row per image it ran on."""
    runs = summary["baselines"]
    if not runs:
        print("baselines: none run")
        return
    ours = summary.get("model_parameters", {})
    model = ", ".join(f"{role} {count:,}" for role, count in ours.items())
    for name in dict.fromkeys(r["name"] for r in runs):
        first = next(r for r in runs if r["name"] == name)
        print(f"baseline {name}: {first['description']}; {first['parameters']:,} parameters"
              f"{f' (model: {model})' if model else ''}, {first['gflop_per_item']:.2f} GFLOP per window "
              f"(model: {summary['gflop_per_item']:.2f}); speed-up = baseline seconds / case seconds: "
              "process = both whole processes (the baseline reads, preprocesses and runs its one pass), "
              "passes/case = its passes alone against the whole case, network = passes against passes")
        print(f"{'series':<9} {'size':>5} {'windows':>8} {'network':>10} {'process':>9} {'peak RSS':>9}"
              f" {'case process':>13} {'case total':>11} {'case network':>13} {'speed-up process':>17}"
              f" {'passes/case':>12} {'network':>8}")
        for run in (r for r in runs if r["name"] == name):
            print(f"{run['series'] or '-':<9} {run['slices']:>5} {run['passes']:>8} {run['network_s']:9.2f}s "
                  f"{run.get('process_s', 0.0):8.2f}s {run['peak_rss_gb']:7.2f}GB "
                  f"{run.get('case_process_s', 0.0):12.2f}s {run.get('case_total_s', 0.0):10.2f}s "
                  f"{run.get('case_network_s', 0.0):12.2f}s {run.get('speedup_process', 0.0):16.2f}x "
                  f"{run.get('speedup_whole_case', 0.0):11.2f}x {run.get('speedup_network', 0.0):7.2f}x")
