"""Losses of the segmentation and classification tasks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1,
                  label_smoothing: float = 0.0,
                  class_weights: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the non-ignored targets, computed in float32 (the model may run
    under bf16 autocast). A batch whose targets are all ignored gives a zero loss that still
    back-propagates (so DDP ranks stay in step).

    Shapes: ``logits (N, C)``, ``target (N,)`` -> scalar.
    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy: expected logits (N, C) and target (N,), got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing: expected a float in [0, 1), got {label_smoothing!r}")
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
        if weight.shape != (logits.shape[1],):
            raise ValueError(f"class_weights: expected {logits.shape[1]} values, got "
                             f"{tuple(weight.shape)}")
    target = target.long()
    if not bool((target != ignore_index).any()):
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index,
                           label_smoothing=label_smoothing)
