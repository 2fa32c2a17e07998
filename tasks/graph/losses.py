"""Graph losses: the training objective's extra terms that need the model's own weights.

The task's ``loss(outputs, batch)`` is the data term (cross-entropy); ``Task.build_loss(model)``
adds terms like the one here, bound to the module they regularise when the trainer builds the
model (not smuggled through ``forward``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["WithInputL2"]


class WithInputL2:
    """``loss(outputs, batch) + input_l2 / 2 · ||W||²`` while ``encoder`` trains; the plain
    ``loss`` in evaluation (``encoder.eval()``).

    A coupled L2 on the input projection only (Kipf & Welling's GCN recipe): under Adam it
    drives the weights of rarely seen features to zero, which AdamW's decoupled decay does not,
    so the term goes into the loss rather than into the optimiser.

    Args:
        loss: the data term, ``(outputs, batch) -> scalar tensor``.
        encoder: the module whose ``weight`` (``W``, e.g. ``nn.Linear(in, dim)``) is penalised.
        input_l2: the coefficient, > 0.
    """

    def __init__(self, loss: Callable[[Any, Any], torch.Tensor], encoder: nn.Module,
                 input_l2: float) -> None:
        if not isinstance(getattr(encoder, "weight", None), torch.Tensor):
            raise TypeError(f"WithInputL2: encoder must have a weight tensor, got "
                            f"{type(encoder).__name__}")
        if not input_l2 > 0:
            raise ValueError(f"WithInputL2: input_l2 must be > 0, got {input_l2!r}")
        self.loss, self.encoder, self.input_l2 = loss, encoder, float(input_l2)

    def penalty(self) -> torch.Tensor:
        """``input_l2 / 2 · ||W||²`` (a scalar with gradients to ``W``)."""
        return 0.5 * self.input_l2 * self.encoder.weight.pow(2).sum()

    def __call__(self, outputs: Any, batch: Mapping[str, Any] | Any) -> torch.Tensor:
        loss = self.loss(outputs, batch)
        return loss + self.penalty() if self.encoder.training else loss
