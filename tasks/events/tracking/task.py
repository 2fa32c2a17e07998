"""``EventTrackingTask``: trains ``MambaEVTTracker`` on pairs, evaluates by tracking sequences."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geossm.engine.task import Task
from geossm.registry import TASKS

from .metrics import TrackingMetric
from .models import track


@TASKS.register
class EventTrackingTask(Task):
    """Train ``MambaEVTTracker`` on pairs; evaluate by tracking whole sequences.

    Training batches: ``template (B, 2, T, T)``, ``search (B, 2, S, S)``, ``memory (B, M, 2, T,
    T)``, ``cell (B,)``, ``offset (B, 2)``, ``size (B, 2)``. Loss: cross-entropy of the
    target cell over the ``G x G`` heatmap + ``loss.box_weight`` x L1 of offset and size at
    that cell. Evaluation and prediction batches (``frames (B, K, 2, H, W)``, ``boxes (B, K,
    4)``) run ``track`` in ``predict_step`` (config ``tracker: {...}`` = its keyword arguments);
    evaluation reports ``success_auc``, ``precision_20`` and ``norm_precision`` and no loss
    (best.pt selects on ``success_auc``).
    """

    stack_keys = ("template", "search", "memory", "offset", "size", "frames", "boxes")
    best_metric, best_mode = "success_auc", "max"
    #: Evaluation tracks whole sequences: no training loss to report, the metrics alone.
    evaluation_loss = False

    def _tracker_kwargs(self) -> dict[str, Any]:
        tr = self.cfg.get("tracker") if hasattr(self.cfg, "get") else None
        return dict(tr) if tr else {}

    def forward(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The tracker on a training batch of template / search (/ memory) crops."""
        return model(template=batch["template"].float(), search=batch["search"].float(),
                     memory=batch["memory"].float() if "memory" in batch else None)

    def loss(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]
             ) -> torch.Tensor | dict[str, torch.Tensor]:
        weight = float((self.cfg.get("loss") or {}).get("box_weight", 5.0))
        cell = batch["cell"].long()
        idx = torch.arange(len(cell), device=cell.device)
        ce = F.cross_entropy(outputs["logits"].float(), cell)
        l1 = (F.l1_loss(outputs["offset"][idx, cell].float(), batch["offset"].float())
              + F.l1_loss(outputs["size"][idx, cell].float(), batch["size"].float()))
        return {"loss": ce + weight * l1, "ce": ce.detach(), "l1": l1.detach()}

    def predict_step(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``{"tracks": (B, K, 4)}``: ``track`` over whole sequences (``frames (B, K, 2, H, W)``,
        ``boxes (B, K, 4)``, of which only the first box is read)."""
        net = getattr(model, "module", model)
        return {"tracks": track(net, batch["frames"].float(), batch["boxes"][:, 0].float(),
                                **self._tracker_kwargs())}

    def build_metrics(self) -> TrackingMetric:
        return TrackingMetric()

    def load_input(self, path: str | os.PathLike) -> dict[str, Any]:
        """A ``.npz`` with ``frames (K, 2, H, W)`` and ``boxes (K, 4)`` (at least the first)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        with np.load(path, allow_pickle=False) as z:
            if "frames" not in z.files or "boxes" not in z.files:
                raise ValueError(f"input file {path}: expected arrays 'frames' and 'boxes', got "
                                 f"{z.files}")
            return {"frames": z["frames"], "boxes": z["boxes"]}
