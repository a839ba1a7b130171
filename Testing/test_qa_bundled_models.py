"""The bundled models' QA where it matters: unseen phantoms (seeds ≥ 6000 — never training 1000-1149 /
2000-2023, calibration 3000+, nor the cards' held-out 5000-5009) and the real CT of Testing/Data.

Done-when items of issue 15 checked here:

* deliberately corrupted predictions (a slice erased, shifted 10 mm, a spurious island, an extra slice
  past the end, a structure swapped with its neighbour on one slice): ≥ 90 % of the corrupted slices
  flagged, ≤ 10 % of the untouched ones — with the card's calibrated thresholds, and for CT with the
  network's own evidence from the uncorrupted run (so untouched slices are judged as a user gets them);
* uncorrupted unseen phantoms: no case implausible;
* the real CT: CTVn implausible, with its reasons.

One CT network run per phantom and one on the real CT per session (module fixtures); MR is judged on
phantom truth (a perfect "prediction") — a bundled MR network run costs minutes on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from CervixAutoSegLib.families import get_family
from CervixAutoSegLib.models import find_model
from CervixAutoSegLib.qa import IMPLAUSIBLE, QAConfig, assess
from CervixAutoSegLib.qa.corrupt import KINDS, FlagRates, flag_rates

REAL_CT = Path(__file__).parent / "Data" / "real_ct_abdomen_pelvis_3mm.nii.gz"  # see Data/README.md
UNSEEN_CT_SEED = 6000
UNSEEN_MR_SEEDS = (6000, 6001)
MIN_RECALL, MAX_FALSE_ALARMS = 0.9, 0.1


@pytest.fixture(scope="module")
def unseen_ct():
    """(phantom, segment result with the network's evidence) of the bundled CT model, default options."""
    from CervixAutoSegLib.phantom import make_ct_phantom
    from CervixAutoSegLib.pipeline import segment

    phantom = make_ct_phantom(UNSEEN_CT_SEED)
    return phantom, segment(phantom.image, None, model="ct", device="cpu", keep_evidence=True)


@pytest.fixture(scope="module")
def unseen_mr_truths():
    from CervixAutoSegLib.phantom import make_mr_phantom

    return [make_mr_phantom(seed) for seed in UNSEEN_MR_SEEDS]


def test_the_bundled_cards_carry_calibrated_thresholds_and_learned_ranges():
    for family in ("ct", "mr"):
        card = find_model(family)
        config = QAConfig.from_card(card)
        assert config.calibrated and config.plausibility["cases"] >= 20, family
        assert set(config.plausibility["structures"]) == {s.name for s in card.structures}
        assert config.selective_flip is not None and 0 < config.selective_flip.max_mirrored_fraction <= 0.5
        calibration = card.qa["slice_flags"]["calibration"]
        assert calibration["weights_sha256"] == {n.role: n.sha256 for n in card.networks}  # made for these weights
        assert "phantom seeds 3" in calibration["cases"]  # 3000+: neither training nor the seeds judged here


def test_corrupted_slices_of_an_unseen_ct_prediction_are_flagged_and_untouched_ones_mostly_not(unseen_ct):
    _, result = unseen_ct
    card = result.model
    rates = flag_rates(result.labels, card.structures, QAConfig.from_card(card), np.random.default_rng(0),
                       evidence=result.evidence)
    assert set(rates.by_kind) == set(KINDS) and rates.corrupted >= 20
    assert rates.recall >= MIN_RECALL, (rates.by_kind, rates.missed)
    assert rates.false_alarm_rate <= MAX_FALSE_ALARMS, rates.false_alarm_rate


def test_corrupted_slices_of_unseen_mr_contours_are_flagged(unseen_mr_truths):
    card = find_model("mr")
    rates = FlagRates()
    for index, phantom in enumerate(unseen_mr_truths):
        flag_rates(phantom.labels, card.structures, QAConfig.from_card(card), np.random.default_rng(index), rates=rates)
    assert rates.recall >= MIN_RECALL, (rates.by_kind, rates.missed)
    assert rates.false_alarm_rate <= MAX_FALSE_ALARMS, rates.false_alarm_rate


def test_uncorrupted_unseen_phantoms_are_never_implausible(unseen_ct, unseen_mr_truths):
    phantom, result = unseen_ct
    qa = result.report["qa"]
    assert qa["verdict"] != IMPLAUSIBLE, qa["reasons"]
    assert qa["evidence"] and result.report["device"]["mirrored_items"] < result.report["device"]["items"]
    card = find_model("mr")
    for truth in unseen_mr_truths:
        judged = assess(truth.image, truth.labels, card.structures, card.qa)
        assert judged["verdict"] != IMPLAUSIBLE, (truth.seed, judged["reasons"])


def test_the_real_ct_gets_an_implausible_ctvn_with_its_reasons():
    """The phantom-trained CT model draws CTVn at ~483 ml in many pieces far above the pelvis on a real
    abdomen-pelvis CT: the report must say so plainly."""
    from CervixAutoSegLib.pipeline import segment
    from CervixAutoSegLib.report import qa_summary_lines, qa_warning

    report = segment(REAL_CT, None, model="ct", device="cpu").report
    qa = report["qa"]
    ctvn = qa["plausibility"]["structures"]["CTVn"]
    assert qa["verdict"] == IMPLAUSIBLE and ctvn["verdict"] == IMPLAUSIBLE
    reasons = " | ".join(ctvn["reasons"])
    for finding in ("CTVn volume", "CTVn cranio-caudal extent", "CTVn number of separate pieces"):
        assert finding in reasons and "far above the training range" in reasons, reasons
    assert ctvn["features"]["volume_ml"] > 300 and ctvn["features"]["extent_mm"] > 250
    assert any("CTVn: implausible" in line for line in qa_summary_lines(report))
    assert "CTVn implausible" in qa_warning(report)
    assert get_family("ct").structures[2].name == "CTVn"
