"""Agreement between reviewers (issue 16): kappas equal scikit-learn's ``cohen_kappa_score`` with the same
weights, ordinal alpha equals the ``krippendorff`` package (both test-only oracles), intervals contain the
estimate and narrow with more cases, 'not assessable' is left out, blinded sources stay apart."""

from __future__ import annotations

import math

import numpy as np
import pytest
from review_cases import record

from CervixAutoSegLib.review.agreement import (ALL_STRUCTURES, WEIGHTINGS, agreement, cohen_kappa,
                                               krippendorff_alpha_ordinal, unit_coincidences)
from CervixAutoSegLib.review.grades import Grade

sklearn_metrics = pytest.importorskip("sklearn.metrics")  # test-only oracle
krippendorff = pytest.importorskip("krippendorff")  # test-only oracle
SKLEARN_WEIGHTS = {"unweighted": None, "linear": "linear", "quadratic": "quadratic"}
LABELS = [1, 2, 3, 4]


def paired_grades(rng, n, spread=(0.1, 0.8, 0.1), probabilities=(0.6, 0.2, 0.1, 0.1)):
    first = rng.choice(4, size=n, p=probabilities) + 1
    second = np.clip(first + rng.choice([-1, 0, 1], size=n, p=spread), 1, 4)
    return first, second


def records_of(first, second, cases, structure="Bladder"):
    out = []
    for k, (a, b, case) in enumerate(zip(first, second, cases)):
        out += [record(f"c{case}", structure, k, "Dr A", int(a)), record(f"c{case}", structure, k, "Dr B", int(b))]
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_kappa_equals_scikit_learn(seed, weighting):
    rng = np.random.default_rng(seed)
    a, b = paired_grades(rng, 150)
    if seed == 3:  # a category nobody used: the distances stay those of the 4-point scale
        a, b = np.where(a == 3, 4, a), np.where(b == 3, 4, b)
    confusion = np.zeros((4, 4))
    np.add.at(confusion, (a - 1, b - 1), 1)
    expected = sklearn_metrics.cohen_kappa_score(a, b, labels=LABELS, weights=SKLEARN_WEIGHTS[weighting])
    assert float(cohen_kappa(confusion, weighting)) == pytest.approx(expected, abs=1e-12)
    result = agreement(records_of(a, b, rng.integers(0, 6, a.size)))
    pair = next(p for p in result.pairs if p.scope == ALL_STRUCTURES)
    assert pair.kappa[weighting].value == pytest.approx(expected, abs=1e-12)
    assert pair.exact_percent.value == pytest.approx(100 * np.mean(a == b))


@pytest.mark.parametrize("n_reviewers", [2, 3, 4])
def test_ordinal_alpha_equals_the_krippendorff_package(n_reviewers):
    rng = np.random.default_rng(n_reviewers)
    truth = rng.choice(4, size=60, p=[0.5, 0.25, 0.15, 0.1]) + 1
    data = np.clip(truth + rng.choice([-1, 0, 1], size=(n_reviewers, 60), p=[0.15, 0.7, 0.15]), 1, 4).astype(float)
    data[rng.random(data.shape) < 0.2] = np.nan  # missing grades (not graded, or not assessable)
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal")
    records = []
    for reviewer in range(n_reviewers):
        for unit in range(60):
            grade = Grade.NOT_ASSESSABLE if np.isnan(data[reviewer, unit]) else int(data[reviewer, unit])
            records.append(record(f"c{unit % 7}", "Rectum", unit, f"R{reviewer}", grade))
    result = agreement(records)
    alpha = next(a for a in result.alphas if a.scope == ALL_STRUCTURES)
    assert alpha.alpha.value == pytest.approx(expected, abs=1e-12)
    assert alpha.n_reviewers == n_reviewers
    # The same through the coincidence matrix directly.
    counts = np.array([[np.sum(data[:, u] == c) for c in LABELS] for u in range(60)])
    assert float(krippendorff_alpha_ordinal(unit_coincidences(counts).sum(axis=0))) == pytest.approx(expected)


def test_intervals_contain_the_estimate_and_narrow_with_more_cases():
    widths = {"kappa": [], "alpha": [], "exact": []}
    rng = np.random.default_rng(11)
    cohort = [paired_grades(rng, 30, spread=(s / 2, 1 - s, s / 2)) for s in rng.uniform(0.05, 0.6, 80)]
    for n_cases in (5, 20, 80):  # the first 5, 20, 80 cases of one cohort; agreement varies between cases
        a, b = (np.concatenate(side) for side in zip(*cohort[:n_cases]))
        result = agreement(records_of(a, b, np.repeat(np.arange(n_cases), 30)))
        pair = result.pairs[-1]
        alpha = result.alphas[-1].alpha
        for name, estimate in (("kappa", pair.kappa["linear"]), ("alpha", alpha), ("exact", pair.exact_percent)):
            assert estimate.low <= estimate.value <= estimate.high, (name, estimate)
            widths[name].append(estimate.high - estimate.low)
    for name, values in widths.items():
        assert values[0] > values[1] > values[2], (name, values)


def test_not_assessable_is_left_out_and_sources_stay_apart():
    records = [record("c1", "CTVp", k, "A", 1, "ai") for k in range(5)] + \
        [record("c1", "CTVp", k, "B", 1, "ai") for k in range(5)] + \
        [record("c1", "CTVp", k, "A", 1, "manual") for k in range(5)] + \
        [record("c1", "CTVp", k, "B", 4, "manual") for k in range(5)] + \
        [record("c1", "CTVp", 9, "A", Grade.NOT_ASSESSABLE, "ai"), record("c1", "CTVp", 9, "B", 4, "ai")]
    result = agreement(records)
    by_scope = {p.scope: p for p in result.pairs}
    assert set(by_scope) == {"CTVp (ai)", "CTVp (manual)", ALL_STRUCTURES}
    assert by_scope["CTVp (ai)"].n_slices == 5 and by_scope["CTVp (ai)"].exact_percent.value == 100.0
    assert by_scope["CTVp (manual)"].exact_percent.value == 0.0
    assert math.isnan(by_scope["CTVp (ai)"].kappa["unweighted"].value)  # all one grade: kappa undefined
    assert by_scope["CTVp (ai)"].kappa["unweighted"].text() == "n/a"
    assert len(result.disagreements) == 5 and {d.blinded_source for d in result.disagreements} == {"manual"}


def test_slices_two_or_more_grades_apart_are_listed():
    records = [record("c1", "Bladder", 1, "A", 1), record("c1", "Bladder", 1, "B", 2),
               record("c1", "Bladder", 2, "A", 1), record("c1", "Bladder", 2, "B", 3),
               record("c2", "Rectum", 7, "A", 4), record("c2", "Rectum", 7, "B", 1), record("c2", "Rectum", 7, "C", 4)]
    found = agreement(records).disagreements
    assert [(d.case_id, d.slice_index, d.reviewer_a, d.reviewer_b, d.difference) for d in found] == [
        ("c1", 2, "A", "B", 2), ("c2", 7, "A", "B", 3), ("c2", 7, "B", "C", 3)]


def test_a_single_reviewer_gives_no_agreement_rows():
    result = agreement([record("c1", "Bladder", k, "A", 1) for k in range(3)])
    assert result.pairs == () and result.alphas == () and result.reviewers == ("A",)
