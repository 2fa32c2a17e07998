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

from geossm.engine.inputs import check_field
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
    input_suffixes = (".npz",)

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
        """A ``.npz`` with ``frames (K, 2, H, W)`` and ``boxes (M, 4)`` (at least the first),
        checked by ``validate_input``."""
        path = Path(path)
        if path.is_file() and path.suffix.lower() != ".npz":
            raise ValueError(f"input file {path}: expected an .npz with 'frames' and 'boxes', "
                             f"got '{path.suffix}'")
        arrays = super().load_input(path)  # allow_pickle=False; corrupt files: one line
        return self.preprocess(arrays, source=f"input file {path}")

    def preprocess(self, sample: Mapping[str, Any], *, source: str = "sample") -> dict[str, Any]:
        """``{"frames", "boxes"}`` of one sequence, checked (``validate_input``), as arrays."""
        self.validate_input(sample, source=source)
        return {"frames": np.asarray(sample["frames"]), "boxes": np.asarray(sample["boxes"])}

    def validate_input(self, sample: Mapping[str, Any], *, source: str = "sample") -> None:
        """Raise ``ValueError`` (naming ``source``, the field, the expectation and what came)
        unless ``sample`` is a sequence the tracker runs on: ``frames (K, 2, H, W)`` finite
        numbers (two polarity channels) with ``K >= 1``, and ``boxes (M, 4)`` finite numbers
        ``x, y, w, h`` with ``1 <= M <= K`` (usually ``K``; only the first, the target in frame
        0, is read)."""
        frames = check_field(sample, "frames", source=source, shape=("K", 2, "H", "W"),
                             kind="number", finite=True, note="(K frames of 2 polarities)")
        if len(frames) == 0:
            raise ValueError(f"{source}: frames: expected at least one frame, got shape "
                             f"{tuple(frames.shape)}")
        boxes = check_field(sample, "boxes", source=source, shape=("M", 4), kind="number",
                            finite=True)
        if not 1 <= len(boxes) <= len(frames):
            raise ValueError(f"{source}: boxes: expected 1 to K={len(frames)} boxes (x, y, w, h; "
                             f"the first is the target in frame 0), got shape "
                             f"{tuple(boxes.shape)}")
        _check_first_box(boxes[0], frames.shape[-1], frames.shape[-2], source)


def _check_first_box(box: np.ndarray, width: int, height: int, source: str) -> None:
    """The target box ``(4,)`` ``x, y, w, h`` (top-left corner, pixels) must have a positive
    size and overlap the ``width x height`` frame: the tracker crops around it."""
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        raise ValueError(f"{source}: boxes[0]: expected a positive width and height (x, y, w, h), "
                         f"got w={w:g}, h={h:g}")
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise ValueError(f"{source}: boxes[0]: expected a box overlapping the {width} x {height} "
                         f"frame (x, y the top-left corner), got x={x:g}, y={y:g}, w={w:g}, "
                         f"h={h:g}")
