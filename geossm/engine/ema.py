"""Exponential moving average of the weights (``train.ema``), the weights a run evaluates.

With ``train.ema: DECAY`` the trainer keeps, beside the trained model, a copy whose parameters
*and buffers* (BatchNorm running statistics too) follow ``ema = DECAY * ema + (1 - DECAY) *
weights`` after every optimizer step (PyTorch's ``AveragedModel`` with its EMA update). That
copy is what validation, the test, ``best.pt`` / ``last.pt``'s ``model`` entry, ``predict``
and ``Predictor`` see; the trained weights travel in the checkpoints' ``train_model`` entry so
that a resumed run continues both exactly. Why: on small or noisy validation sets the
best-validation epoch of the raw weights is picked partly by the noise of one step; the average
over the last ~1 / (1 - DECAY) steps moves less from step to step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def check_ema_decay(decay: Any) -> float | None:
    """``train.ema`` as a float in (0, 1), or None when off (null / false / 0)."""
    if decay is None or decay is False or decay == 0:
        return None
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
        raise ValueError(f"train.ema must be null (off) or a decay per optimizer step in (0, 1), "
                         f"e.g. 0.99; got {decay!r}")
    return float(decay)


def build_weight_average(model: torch.nn.Module, decay: Any) -> AveragedModel | None:
    """An EMA copy of ``model`` (parameters and buffers) for ``train.ema``, or None when off.

    The first ``update_parameters`` call copies the weights (so weights loaded after this, e.g.
    ``model.init_from``, start the average), later ones move it by ``1 - decay``."""
    decay = check_ema_decay(decay)
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


__all__ = ["check_ema_decay", "build_weight_average"]
