"""Losses: class-balanced focal loss and multiclass dice, per stage map.

All take probabilities (B, C, H, W) that sum to one over C and integer targets (B, H, W)
with IGNORE_INDEX on pixels that carry no label (tile padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from common.classes import IGNORE_INDEX
from training.model import ModelOutput, upsample

_EPS = 1e-6


def class_balanced_weights(
    pixel_counts: Sequence[int], beta: float | Literal["auto"] = "auto"
) -> torch.Tensor:
    """Cui et al. (2019) weights (1 - beta) / (1 - beta ** n_c), scaled to sum to the class count.

    beta "auto" is 1 - 1 / max(n_c): the largest class's effective number is then about
    63% of its count and rarer classes weigh close to inversely to their counts. A class
    with no pixels gets weight 0: it never appears in a target.
    """
    n = torch.tensor([float(c) for c in pixel_counts], dtype=torch.float64)
    if beta == "auto":
        beta = 1.0 - 1.0 / max(float(n.max()), 2.0)
    effective = 1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n)
    w = torch.where(n > 0, (1.0 - beta) / effective.clamp_min(1e-12), torch.zeros_like(n))
    if w.sum() == 0:
        raise ValueError("no labelled pixels in any class")
    return (w * len(pixel_counts) / w.sum()).float()


@dataclass(frozen=True)
class Target:
    """A batch's class-index masks in the forms the losses use, computed once per batch.

    The losses run on every stage's map (eight per step with MSM on); preparing the
    target once and masking by multiplication instead of boolean indexing keeps them
    free of data-dependent shapes, so they never wait on the device.
    """

    index: torch.Tensor  # (B, H, W) class index, ignored pixels clamped to the last class
    pixel_weight: torch.Tensor  # (B, H, W) the class weight of each pixel, 0 where ignored
    weight_sum: torch.Tensor  # () sum of pixel_weight
    valid: torch.Tensor  # (B, 1, H, W) 1.0 on labelled pixels
    onehot: torch.Tensor  # (B, C, H, W) one-hot class, 0 on ignored pixels
    present: torch.Tensor  # (C,) 1.0 for the classes with labelled pixels in the batch


def prepare_target(target: torch.Tensor, weights: torch.Tensor) -> Target:
    """Integer masks (B, H, W) with IGNORE_INDEX, and per-class weights (C,), as a Target."""
    classes = weights.shape[0]
    valid = (target != IGNORE_INDEX).float()
    index = target.clamp(max=classes - 1)
    pixel_weight = weights.to(target.device, torch.float32)[index] * valid
    onehot = F.one_hot(index, classes).permute(0, 3, 1, 2).float() * valid.unsqueeze(1)
    return Target(
        index=index,
        pixel_weight=pixel_weight,
        weight_sum=pixel_weight.sum(),
        valid=valid.unsqueeze(1),
        onehot=onehot,
        present=(onehot.sum((0, 2, 3)) > 0).float(),
    )


def focal_loss(probs: torch.Tensor, target: Target, gamma: float = 2.0) -> torch.Tensor:
    """Weighted mean over labelled pixels of -(1 - p_y)^gamma log p_y, weights w_y.

    Normalised by the sum of the pixels' weights (as torch's weighted cross-entropy), so
    that rare classes with large weights and the many normal pixels with small ones
    contribute on an equal footing whatever the weights' scale. 0 with no labelled pixel.
    """
    p = probs.gather(1, target.index.unsqueeze(1)).squeeze(1).clamp(_EPS, 1.0)
    loss = -target.pixel_weight * (1.0 - p).pow(gamma) * p.log()
    return loss.sum() / target.weight_sum.clamp_min(_EPS)


def dice_loss(probs: torch.Tensor, target: Target, smooth: float = 1.0) -> torch.Tensor:
    """Multiclass dice loss, averaged over the classes present in the batch's target.

    Per class: 1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s), with s = `smooth`; 0 when
    no class is present (no labelled pixel).
    """
    dims = (0, 2, 3)
    inter = (probs * target.onehot).sum(dims)
    total = (probs * target.valid).sum(dims) + target.onehot.sum(dims)
    dice = 1.0 - (2.0 * inter + smooth) / (total + smooth)
    return (dice * target.present).sum() / target.present.sum().clamp_min(1.0)


def merge_anomaly_classes(target: torch.Tensor) -> torch.Tensor:
    """Class-index masks to normal (0) vs anomaly (1), keeping IGNORE_INDEX (binary prompts)."""
    return torch.where(target == IGNORE_INDEX, target, (target > 0).to(target.dtype))


def total_loss(
    output: ModelOutput,
    target: torch.Tensor,
    weights: torch.Tensor,
    msm_stage_weights: Sequence[float],
    gamma: float = 2.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_local (summed over stages) + L_MSM (stage-weighted), each focal + dice at target size.

    Returns the loss and its parts as floats for logging.
    """
    size = target.shape[-1]
    prepared = prepare_target(target, weights)

    def one(probs: torch.Tensor) -> torch.Tensor:
        up = upsample(probs.float(), size)
        return focal_loss(up, prepared, gamma) + dice_loss(up, prepared)

    local = torch.stack([one(p) for p in output.stage_probs]).sum()
    parts = {"local": float(local.detach())}
    loss = local
    if output.msm_probs:
        msm = sum(
            (w * one(p) for w, p in zip(msm_stage_weights, output.msm_probs, strict=True)),
            start=torch.zeros((), device=target.device),
        )
        parts["msm"] = float(msm.detach())
        loss = loss + msm
    parts["loss"] = float(loss.detach())
    return loss, parts
