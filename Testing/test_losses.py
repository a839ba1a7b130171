"""Losses: Lovász-softmax against the Lovász extension computed from its definition;
CE / symmetric CE / soft Dice on hand-checked cases; all losses sane on perfect and random input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from CervixAutoSegLib.ct.losses import (LOSS_NAMES, RCE_LOG_FLOOR, lovasz_softmax, lovasz_softmax_flat, make_loss,
                                        soft_dice, symmetric_cross_entropy)


def jaccard_set_loss(mispredicted: set, truth: np.ndarray) -> float:
    """Δ_J(M) = |M| / |{truth} ∪ M| (Berman et al., eq. 3), M = set of mispredicted pixels."""
    foreground = set(np.flatnonzero(truth))
    union = foreground | mispredicted
    return len(mispredicted) / len(union) if union else 0.0


def lovasz_extension_by_integral(errors: np.ndarray, truth: np.ndarray) -> float:
    """Lovász extension as ∫_0^1 Δ({i : m_i >= t}) dt — exact for a piecewise-constant integrand.

    An independent route from the greedy/sorted formula the implementation uses.
    """
    levels = np.unique(np.concatenate([errors, [0.0]]))[::-1]  # descending, ends at 0
    total = 0.0
    for upper, lower in zip(levels[:-1], levels[1:]):
        superlevel = set(np.flatnonzero(errors >= upper))
        total += (upper - lower) * jaccard_set_loss(superlevel, truth)
    return total


def brute_force_lovasz_softmax(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean over present classes of the Lovász extension at m_c = |1[y=c] - p_c|."""
    values = []
    for c in range(probabilities.shape[1]):
        truth = (labels == c).astype(float)
        if truth.sum() == 0:
            continue
        values.append(lovasz_extension_by_integral(np.abs(truth - probabilities[:, c]), truth))
    return float(np.mean(values))


@pytest.mark.parametrize("seed", range(5))
def test_lovasz_softmax_equals_the_lovasz_extension_from_its_definition(seed):
    rng = np.random.default_rng(seed)
    n_pixels, n_classes = 9, 3
    probabilities = rng.dirichlet(np.ones(n_classes), size=n_pixels)
    labels = rng.integers(0, n_classes, size=n_pixels)
    if seed == 0:
        probabilities[:4] = probabilities[0]  # ties between errors
        labels[:4] = labels[0]
    ours = lovasz_softmax_flat(torch.tensor(probabilities, dtype=torch.float64), torch.tensor(labels))
    assert float(ours) == pytest.approx(brute_force_lovasz_softmax(probabilities, labels), abs=1e-10)


def test_lovasz_of_a_hard_prediction_is_the_jaccard_loss():
    # 2x3 image, classes 0/1: truth has 3 pixels of class 1, prediction 2 of them + 1 false positive.
    truth = np.array([[1, 1, 1], [0, 0, 0]])
    pred = np.array([[1, 1, 0], [1, 0, 0]])
    logits = torch.tensor(np.eye(2)[pred].transpose(2, 0, 1)[None] * 1e4, dtype=torch.float32)
    loss = lovasz_softmax(logits, torch.tensor(truth)[None])
    iou_1 = 2 / 4
    iou_0 = 2 / 4  # class 0: truth {3,4,5}, pred {2,4,5} → 2 / 4
    assert float(loss) == pytest.approx(1 - (iou_0 + iou_1) / 2, abs=1e-6)


def test_lovasz_batch_equals_pooled_pixels_and_per_image_mode_differs_when_it_should():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(2, 3, 4, 4)), dtype=torch.float64)
    target = torch.tensor(rng.integers(0, 3, size=(2, 4, 4)))
    pooled = lovasz_softmax(logits, target)
    probabilities = torch.softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    assert float(pooled) == pytest.approx(brute_force_lovasz_softmax(probabilities, target.reshape(-1).numpy()),
                                          abs=1e-6)
    per_image = lovasz_softmax(logits, target, per_image=True)
    assert float(per_image) != pytest.approx(float(pooled), abs=1e-9)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_each_loss_is_near_zero_for_a_perfect_prediction_and_has_finite_gradients(name):
    loss_fn = make_loss(name)
    rng = np.random.default_rng(0)
    target = torch.tensor(rng.integers(0, 5, size=(2, 8, 8)))
    perfect = F.one_hot(target, 5).permute(0, 3, 1, 2).float() * 50.0
    assert float(loss_fn(perfect, target)) < 1e-3
    logits = torch.tensor(rng.normal(size=(2, 5, 8, 8)), dtype=torch.float32, requires_grad=True)
    loss = loss_fn(logits, target)
    loss.backward()
    assert loss.item() > 0.05
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_each_loss_decreases_when_the_prediction_moves_towards_the_truth(name):
    loss_fn = make_loss(name)
    rng = np.random.default_rng(2)
    target = torch.tensor(rng.integers(0, 5, size=(1, 6, 6)))
    noise = torch.tensor(rng.normal(size=(1, 5, 6, 6)), dtype=torch.float32)
    truth = F.one_hot(target, 5).permute(0, 3, 1, 2).float()
    values = [float(loss_fn(noise + k * truth, target)) for k in (0.0, 2.0, 6.0)]
    assert values[0] > values[1] > values[2]


def test_symmetric_ce_is_alpha_ce_plus_beta_reverse_ce_by_hand():
    logits = torch.tensor([[[[2.0]], [[0.0]], [[-1.0]]]])  # one pixel, 3 classes
    target = torch.tensor([[[0]]])
    p = np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum()
    ce = -np.log(p[0])
    rce = -(p[1] + p[2]) * np.log(RCE_LOG_FLOOR)
    assert float(symmetric_cross_entropy(logits, target, alpha=0.3, beta=2.0)) == pytest.approx(0.3 * ce + 2 * rce,
                                                                                              rel=1e-5)


def test_soft_dice_by_hand_ignores_background():
    # Class-1 probabilities 1 on two pixels, truth class 1 on one of them: Dice 2*1/(2+1).
    logits = torch.full((1, 2, 1, 2), -1e4)
    logits[0, 1] = 1e4
    target = torch.tensor([[[1, 0]]])
    assert float(soft_dice(logits, target, smooth=0.0)) == pytest.approx(1 - 2 / 3, abs=1e-6)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("focal")


def test_brute_force_helper_is_itself_right_on_a_tiny_case():
    # m = (0.8, 0.3), truth = (1, 0): ∫ = 0.5·Δ({0}) + 0.3·Δ({0,1}) = 0.5·1 + 0.3·1 = 0.8
    errors = np.array([0.8, 0.3])
    truth = np.array([1.0, 0.0])
    assert lovasz_extension_by_integral(errors, truth) == pytest.approx(0.8)
    # Exhaustive check of Δ on all subsets: monotone, Δ(∅) = 0.
    for size in range(3):
        for subset in itertools.combinations(range(2), size):
            assert 0.0 <= jaccard_set_loss(set(subset), truth) <= 1.0
