"""Event recognition task (``task: EventClassificationTask``).

Batches (``pack_collate``): windowed representations give ``frames (B, C, H, W)`` (stacked);
raw events give ``events (sum N_i, 4)`` with ``cu_seqlens (B+1,)``; ``label (B,)`` either way.
Config keys read here besides the standard ones::

    model.num_classes       classes
    loss.label_smoothing    cross-entropy label smoothing, default 0

Reported metrics: ``acc`` (best.pt selects on it), ``macc``, ``miou`` and the mean ``loss``.
``geossm predict`` reads any event file ``read_events`` knows and writes ``logits``/``pred``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geossm.engine.metrics import ConfusionMatrix
from geossm.engine.task import Task
from geossm.packed import pack_collate
from geossm.registry import DATASETS, TASKS

from .io import read_events


@TASKS.register
class EventClassificationTask(Task):
    """Classify event recordings with ``EventMambaCls`` (either mode)."""

    stack_keys = ("frames",)
    best_metric, best_mode = "acc", "max"

    def collate(self, samples):
        return pack_collate(samples, stack_keys=self.stack_keys)

    def forward(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        if "frames" in batch:
            return model(frames=batch["frames"].float())
        if "events" in batch:
            return model(events=batch["events"], cu_seqlens=batch["cu_seqlens"])
        raise ValueError(f"EventClassificationTask: a batch needs 'frames' or 'events', got "
                         f"keys {sorted(batch)}")

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        smoothing = float((self.cfg.get("loss") or {}).get("label_smoothing", 0.0)
                          if hasattr(self.cfg, "get") else 0.0)
        return F.cross_entropy(outputs.float(), batch["label"].long(), label_smoothing=smoothing)

    def build_metrics(self) -> ConfusionMatrix:
        n = self.cfg.model.get("num_classes")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"config key 'model.num_classes' must be an int >= 1, got {n!r}")
        return ConfusionMatrix(n)

    def load_input(self, path: str | os.PathLike) -> dict[str, Any]:
        """An event file (any ``read_events`` format) in the dataset's evaluation
        representation; ``.npz`` holding ``frames`` / ``events`` arrays is taken as is."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "frames" in z.files or "events" in z.files:
                    return {k: z[k] for k in z.files if k in ("frames", "events", "label")}
        return self.preprocess({"events": read_events(path).events})

    def preprocess(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """A recording ``{"events": (N,) EVENT_DTYPE, ...}`` in the dataset's evaluation
        representation (``data.representation``, ``n_time_bins``, ``max_events`` over the
        dataset class's sensor size; no dataset folder is read)."""
        data = self.cfg.data
        settings = {k: data[k] for k in ("representation", "n_time_bins", "max_events")
                    if k in data}
        return DATASETS.get(str(data.name)).build_preprocess(settings)(sample)

    def write_prediction(self, sample, result, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{k: np.asarray(v) for k, v in result.items()})
        return [path]


__all__ = ["EventClassificationTask"]
