"""Agreement between reviewers on the slices they both graded.

Units are the exchange format's keys ``(case_id, structure, slice_index, blinded_source)``;
"not assessable" grades are left out (a unit a reviewer could not assess is missing for them).
The four grades are ordinal categories 1..4 (acceptable .. unacceptable).

* Per pair of reviewers: % exact agreement and Cohen's kappa — unweighted, linear and quadratic
  weights on the category distance |i - j|.  The four categories are always all used, so the
  distance between "acceptable" and "unacceptable" is 3 even when nobody graded "major"; this
  equals scikit-learn's ``cohen_kappa_score(a, b, labels=[1, 2, 3, 4], weights=...)``.
* Over all reviewers: Krippendorff's alpha with the ordinal metric (Krippendorff 2011,
  "Computing Krippendorff's alpha-reliability"), from the coincidence matrix of the units that
  at least two reviewers assessed.
* 95 % confidence intervals: percentile bootstrap over *cases* (slices of one case are not
  independent), 2000 replicates with a fixed seed.  Every statistic is a function of additive
  per-case matrices (confusion or coincidence), so each replicate is one weighted sum.
* The slices where two reviewers differ by two grades or more, listed for a consensus meeting.

Kappa is undefined (nan, "n/a") when the expected disagreement is zero, e.g. every grade the same.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence

import numpy as np

from .grades import ORDINAL_GRADES, Grade
from .model import GradeRecord
from .summary import bootstrap_interval, structure_order

N_CATEGORIES = len(ORDINAL_GRADES)
WEIGHTINGS = ("unweighted", "linear", "quadratic")
ALL_STRUCTURES = "All structures"
LARGE_DIFFERENCE = 2
"""Grades this far apart (or further) on the 4-point scale are listed as disagreements."""

Unit = tuple[str, str, int, str]


# ------------------------------------------------------------------ the statistics
def weight_matrix(weighting: str) -> np.ndarray:
    """Disagreement weights of the 4 ordinal categories: 0/1, |i - j| or (i - j)^2."""
    i, j = np.indices((N_CATEGORIES, N_CATEGORIES))
    if weighting == "unweighted":
        return (i != j).astype(float)
    if weighting == "linear":
        return np.abs(i - j).astype(float)
    if weighting == "quadratic":
        return ((i - j) ** 2).astype(float)
    raise ValueError(f"unknown weighting {weighting!r}; use one of {WEIGHTINGS}")


def cohen_kappa(confusion: np.ndarray, weighting: str = "unweighted") -> np.ndarray:
    """Cohen's kappa of confusion matrices, shape (..., 4, 4) → (...): 1 - sum(w O) / sum(w E)."""
    confusion = np.asarray(confusion, dtype=float)
    n = confusion.sum(axis=(-2, -1), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = confusion.sum(axis=-1, keepdims=True) * confusion.sum(axis=-2, keepdims=True) / n
        weights = weight_matrix(weighting)
        return 1.0 - (weights * confusion).sum(axis=(-2, -1)) / (weights * expected).sum(axis=(-2, -1))


def exact_agreement(confusion: np.ndarray) -> np.ndarray:
    """% of units on the diagonal, shape (..., 4, 4) → (...)."""
    confusion = np.asarray(confusion, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * np.trace(confusion, axis1=-2, axis2=-1) / confusion.sum(axis=(-2, -1))


def ordinal_distances(marginals: np.ndarray) -> np.ndarray:
    """Krippendorff's squared ordinal distances from category totals, shape (..., 4) → (..., 4, 4):
    ``(sum of n_g for g from c to k  -  (n_c + n_k) / 2) ** 2``."""
    cumulative = np.cumsum(marginals, axis=-1)
    c, k = np.indices((N_CATEGORIES, N_CATEGORIES))
    low, high = np.minimum(c, k), np.maximum(c, k)
    between = cumulative[..., high] - cumulative[..., low] + marginals[..., low]
    return (between - (marginals[..., c] + marginals[..., k]) / 2.0) ** 2


def krippendorff_alpha_ordinal(coincidence: np.ndarray) -> np.ndarray:
    """Alpha of coincidence matrices, shape (..., 4, 4) → (...): ``1 - (n - 1) sum(o d) / sum(n_c n_k d)``."""
    coincidence = np.asarray(coincidence, dtype=float)
    marginals = coincidence.sum(axis=-1)
    n = marginals.sum(axis=-1)
    distances = ordinal_distances(marginals)
    observed = (coincidence * distances).sum(axis=(-2, -1))
    expected = (marginals[..., :, None] * marginals[..., None, :] * distances).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - (n - 1.0) * observed / expected


def unit_coincidences(counts: np.ndarray) -> np.ndarray:
    """Coincidence contributions of units, (U, 4) category counts → (U, 4, 4); zero for units with < 2 values."""
    counts = np.asarray(counts, dtype=float)
    m = counts.sum(axis=-1)
    pairs = counts[:, :, None] * counts[:, None, :] - np.einsum("uc,ck->uck", counts, np.eye(N_CATEGORIES))
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = pairs / (m - 1.0)[:, None, None]
    return np.where((m >= 2)[:, None, None], scaled, 0.0)


# ------------------------------------------------------------------ results
@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate and its 95 % bootstrap interval over cases (nan: undefined / < 2 cases)."""

    value: float
    low: float = math.nan
    high: float = math.nan

    def text(self, digits: int = 3) -> str:
        if not math.isfinite(self.value):
            return "n/a"
        interval = f" ({self.low:.{digits}f} to {self.high:.{digits}f})" if math.isfinite(self.low) else ""
        return f"{self.value:.{digits}f}{interval}"


@dataclasses.dataclass(frozen=True)
class PairAgreement:
    scope: str
    reviewer_a: str
    reviewer_b: str
    n_slices: int
    n_cases: int
    exact_percent: Estimate
    kappa: dict[str, Estimate]
    """Weighting ("unweighted", "linear", "quadratic") → kappa."""


@dataclasses.dataclass(frozen=True)
class AlphaAgreement:
    scope: str
    n_reviewers: int
    n_units: int
    """Units that two or more reviewers assessed (the pairable ones)."""
    n_cases: int
    alpha: Estimate


@dataclasses.dataclass(frozen=True)
class Disagreement:
    case_id: str
    structure: str
    slice_index: int
    blinded_source: str
    reviewer_a: str
    grade_a: Grade
    reviewer_b: str
    grade_b: Grade

    @property
    def difference(self) -> int:
        return abs(self.grade_a.rank - self.grade_b.rank)  # type: ignore[operator]


@dataclasses.dataclass(frozen=True)
class Agreement:
    reviewers: tuple[str, ...]
    pairs: tuple[PairAgreement, ...]
    alphas: tuple[AlphaAgreement, ...]
    disagreements: tuple[Disagreement, ...]


# ------------------------------------------------------------------ from records
def unit_ranks(records: Iterable[GradeRecord]) -> tuple[dict[Unit, dict[str, Grade]], tuple[str, ...]]:
    """Assessable grades by unit and reviewer; the reviewers, sorted."""
    units: dict[Unit, dict[str, Grade]] = {}
    reviewers = set()
    for record in records:
        reviewers.add(record.reviewer)
        if record.grade is not Grade.NOT_ASSESSABLE:
            units.setdefault(record.key, {})[record.reviewer] = record.grade
    return units, tuple(sorted(reviewers))


def scope_of(unit: Unit) -> str:
    """A unit's structure, with its blinded source when it has one ("Bladder (ai)")."""
    return f"{unit[1]} ({unit[3]})" if unit[3] else unit[1]


def agreement(records: Sequence[GradeRecord], order: Sequence[str] = ()) -> Agreement:
    """Pairwise kappas, alpha and large disagreements, per structure and over all structures."""
    units, reviewers = unit_ranks(records)
    by_scope: dict[str, list[Unit]] = {}
    for unit in units:
        by_scope.setdefault(scope_of(unit), []).append(unit)
    scopes = [(name, by_scope[name]) for name in structure_order(by_scope, _scoped_order(order, by_scope))]
    scopes.append((ALL_STRUCTURES, list(units)))
    pairs, alphas = [], []
    for scope, scope_units in scopes:
        for a, b in itertools.combinations(reviewers, 2):
            pair = pair_agreement(scope, a, b, {u: units[u] for u in scope_units})
            if pair is not None:
                pairs.append(pair)
        alpha = alpha_agreement(scope, {u: units[u] for u in scope_units}, reviewers)
        if alpha is not None:
            alphas.append(alpha)
    return Agreement(reviewers, tuple(pairs), tuple(alphas), tuple(disagreements(units, reviewers)))


def _scoped_order(order: Sequence[str], scopes: Iterable[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(order)}
    return sorted(scopes, key=lambda s: (rank.get(s.split(" (")[0], len(rank)), s))


def _case_index(units: Iterable[Unit]) -> dict[str, int]:
    return {case: i for i, case in enumerate(sorted({u[0] for u in units}))}


def pair_agreement(scope: str, a: str, b: str, units: dict[Unit, dict[str, Grade]]) -> PairAgreement | None:
    """Agreement of reviewers ``a`` and ``b`` on the units both assessed (None: no such unit)."""
    shared = [u for u, grades in units.items() if a in grades and b in grades]
    if not shared:
        return None
    cases = _case_index(shared)
    per_case = np.zeros((len(cases), N_CATEGORIES, N_CATEGORIES))
    for unit in shared:
        per_case[cases[unit[0]], units[unit][a].rank - 1, units[unit][b].rank - 1] += 1  # type: ignore[operator]
    exact = _estimate(per_case, exact_agreement)
    kappas = {w: _estimate(per_case, lambda c, w=w: cohen_kappa(c, w)) for w in WEIGHTINGS}
    return PairAgreement(scope, a, b, len(shared), len(cases), exact, kappas)


def alpha_agreement(scope: str, units: dict[Unit, dict[str, Grade]], reviewers: Sequence[str]) \
        -> AlphaAgreement | None:
    """Krippendorff's ordinal alpha over every reviewer (None: fewer than 2 reviewers or no pairable unit)."""
    pairable = [u for u, grades in units.items() if len(grades) >= 2]
    if len(reviewers) < 2 or not pairable:
        return None
    cases = _case_index(pairable)
    counts = np.zeros((len(pairable), N_CATEGORIES))
    for row, unit in enumerate(pairable):
        for grade in units[unit].values():
            counts[row, grade.rank - 1] += 1  # type: ignore[operator]
    contributions = unit_coincidences(counts)
    per_case = np.zeros((len(cases), N_CATEGORIES, N_CATEGORIES))
    np.add.at(per_case, np.array([cases[u[0]] for u in pairable]), contributions)
    return AlphaAgreement(scope, len(reviewers), len(pairable), len(cases),
                          _estimate(per_case, krippendorff_alpha_ordinal))


def _estimate(per_case: np.ndarray, statistic) -> Estimate:
    """Point estimate on all cases; bootstrap interval over cases when there are two or more."""
    value = float(statistic(per_case.sum(axis=0)))
    if per_case.shape[0] < 2:
        return Estimate(value)
    shape = per_case.shape[1:]
    low, high = bootstrap_interval(per_case, lambda sums: statistic(sums.reshape(-1, *shape)))
    return Estimate(value, low, high)


def disagreements(units: dict[Unit, dict[str, Grade]], reviewers: Sequence[str],
                  minimum: int = LARGE_DIFFERENCE) -> list[Disagreement]:
    """Every (unit, pair of reviewers) whose grades differ by ``minimum`` or more, sorted by unit."""
    found = []
    for unit in sorted(units):
        grades = units[unit]
        for a, b in itertools.combinations([r for r in reviewers if r in grades], 2):
            if abs(grades[a].rank - grades[b].rank) >= minimum:  # type: ignore[operator]
                found.append(Disagreement(*unit, a, grades[a], b, grades[b]))
    return found


# ------------------------------------------------------------------ tables
def pair_lines(pairs: Sequence[PairAgreement]) -> list[list[str]]:
    header = ["Scope", "Reviewers", "Slices", "Cases", "Exact agreement % (95% CI)", "Kappa (95% CI)",
              "Linear kappa (95% CI)", "Quadratic kappa (95% CI)"]
    lines = [header]
    for p in pairs:
        lines.append([p.scope, f"{p.reviewer_a} vs {p.reviewer_b}", str(p.n_slices), str(p.n_cases),
                      p.exact_percent.text(1), *(p.kappa[w].text() for w in WEIGHTINGS)])
    return lines


def alpha_lines(alphas: Sequence[AlphaAgreement]) -> list[list[str]]:
    lines = [["Scope", "Reviewers", "Slices", "Cases", "Krippendorff's alpha, ordinal (95% CI)"]]
    lines += [[a.scope, str(a.n_reviewers), str(a.n_units), str(a.n_cases), a.alpha.text()] for a in alphas]
    return lines


def disagreement_lines(found: Sequence[Disagreement]) -> list[list[str]]:
    lines = [["case_id", "structure", "slice_index", "blinded_source", "reviewer_a", "grade_a", "reviewer_b",
              "grade_b", "difference"]]
    lines += [[d.case_id, d.structure, str(d.slice_index), d.blinded_source, d.reviewer_a, d.grade_a.value,
               d.reviewer_b, d.grade_b.value, str(d.difference)] for d in found]
    return lines
