"""Segmentation losses compared in the ResAU-Net paper: Lovász-softmax (its choice), CE,
symmetric CE and soft Dice; plus ``lovasz+ce``, their sum, which keeps the per-pixel
gradient of CE where Lovász alone leaves thin structures (CTV-N) with soft, noisy borders.

Every loss takes raw scores ``logits`` ``(N, C, H, W)`` and integer labels ``target``
``(N, H, W)`` with values in ``[0, C)`` and returns a scalar tensor.  They compute in
float32 even when the network ran under bf16 autocast (sorting and log-probabilities
are precision-sensitive).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .config import DEFAULT_LOSS, LOSS_NAMES

SCE_ALPHA = 0.1
SCE_BETA = 1.0
"""Wang et al. (ICCV 2019) weights of CE and reverse CE (their CIFAR-10 setting)."""
RCE_LOG_FLOOR = 1e-4
"""log(0) of the one-hot label in reverse CE is clamped to log(1e-4) (Wang et al.)."""
DICE_SMOOTH = 1.0


def lovasz_grad(sorted_truth: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at the sorted errors.

    Args:
        sorted_truth: ``(P,)`` float 0/1 foreground indicator of the pixels, ordered by
            decreasing error.

    Returns:
        ``(P,)`` weights ``Δ J(π_1..π_i) - Δ J(π_1..π_{i-1})`` where ``Δ J`` is the
        Jaccard loss ``1 - |y ∩ ŷ| / |y ∪ ŷ|`` of the set of the first i mispredicted pixels.
    """
    total = sorted_truth.sum()
    intersection = total - sorted_truth.cumsum(0)
    union = total + (1.0 - sorted_truth).cumsum(0)
    jaccard = 1.0 - intersection / union
    if sorted_truth.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax_flat(probabilities: torch.Tensor, labels: torch.Tensor, classes: str = "present") -> torch.Tensor:
    """Lovász-softmax on flattened pixels.

    Args:
        probabilities: ``(P, C)`` softmax outputs.
        labels: ``(P,)`` integer labels.
        classes: ``"present"`` averages over classes present in ``labels`` (Berman et
            al.'s default), ``"all"`` over all C classes.
    """
    if probabilities.numel() == 0:
        return probabilities.sum() * 0.0
    n_classes = probabilities.shape[1]
    losses = []
    for c in range(n_classes):
        truth = (labels == c).to(probabilities.dtype)
        if classes == "present" and truth.sum() == 0:
            continue
        errors = (truth - probabilities[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(truth[order])))
    if not losses:
        return probabilities.sum() * 0.0
    return torch.stack(losses).mean()


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, classes: str = "present",
                   per_image: bool = False) -> torch.Tensor:
    """Lovász-softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018).

    A convex surrogate of the per-class Jaccard loss evaluated at the softmax output.
    ``per_image`` averages per-image losses instead of pooling the batch's pixels.
    """
    probabilities = torch.softmax(logits.float(), dim=1)
    n_classes = probabilities.shape[1]
    flat = probabilities.permute(0, 2, 3, 1).reshape(probabilities.shape[0], -1, n_classes)
    labels = target.reshape(target.shape[0], -1)
    if per_image:
        return torch.stack([lovasz_softmax_flat(p, t, classes) for p, t in zip(flat, labels)]).mean()
    return lovasz_softmax_flat(flat.reshape(-1, n_classes), labels.reshape(-1), classes)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross-entropy, averaged over pixels."""
    return F.cross_entropy(logits.float(), target.long())


def reverse_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-Σ_c p_c log q_c`` with q the one-hot label clamped to ``[1e-4, 1]``."""
    probabilities = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target.long(), probabilities.shape[1]).permute(0, 3, 1, 2).float()
    log_label = torch.log(one_hot.clamp(min=RCE_LOG_FLOOR, max=1.0))
    return -(probabilities * log_label).sum(dim=1).mean()


def symmetric_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                            alpha: float = SCE_ALPHA, beta: float = SCE_BETA) -> torch.Tensor:
    """Symmetric cross-entropy ``α·CE + β·RCE`` (Wang et al., ICCV 2019)."""
    return alpha * cross_entropy(logits, target) + beta * reverse_cross_entropy(logits, target)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, include_background: bool = False,
              smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """``1 - mean_c (2 Σ p g + s) / (Σ p + Σ g + s)`` over the batch, per class.

    Background (class 0) is left out by default: it dominates the pixel count and would
    make the loss look good while the organs are missed.
    """
    probabilities = torch.softmax(logits.float(), dim=1)
    n_classes = probabilities.shape[1]
    one_hot = F.one_hot(target.long(), n_classes).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    denominator = probabilities.sum(dims) + one_hot.sum(dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    first = 0 if include_background else 1
    return 1.0 - dice[first:].mean()


def lovasz_plus_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE + Lovász-softmax, equal weights (CE calibrates every pixel, Lovász the overlap)."""
    return cross_entropy(logits, target) + lovasz_softmax(logits, target)


def make_loss(name: str = DEFAULT_LOSS) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Loss function by name (:data:`LOSS_NAMES`)."""
    table = {
        "lovasz": lovasz_softmax,
        "ce": cross_entropy,
        "sce": symmetric_cross_entropy,
        "dice": soft_dice,
        "lovasz+ce": lovasz_plus_cross_entropy,
    }
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {LOSS_NAMES}") from None
