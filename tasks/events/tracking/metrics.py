"""Tracking metrics as the toolkits (OTB / LaSOT / pytracking) define them: success plot and its
AUC, precision at 20 px, normalised precision at 0.2; ``TrackingMetric`` averages them over
sequences."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from geossm.engine.metrics import Metric


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``(N, 4)`` and ``(N, 4)`` ``[x, y, w, h]`` -> ``(N,)``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    x1 = np.maximum(a[:, 0], b[:, 0])
    y1 = np.maximum(a[:, 1], b[:, 1])
    x2 = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y2 = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


SUCCESS_THRESHOLDS = np.linspace(0, 1, 21)
PRECISION_THRESHOLDS = np.arange(0, 51, dtype=np.float64)
NORM_PRECISION_THRESHOLDS = np.arange(0, 51, dtype=np.float64) / 100


def success_curve(pred: np.ndarray, gt: np.ndarray,
                  thresholds: np.ndarray = SUCCESS_THRESHOLDS) -> np.ndarray:
    """Fraction of frames with IoU > threshold, for each threshold (OTB success plot)."""
    ious = iou_xywh(pred, gt)
    return (ious[None, :] > np.asarray(thresholds)[:, None]).mean(1)


def success_auc(pred: np.ndarray, gt: np.ndarray) -> float:
    """Area under the success plot: the mean of ``success_curve`` over 21 thresholds in [0, 1]."""
    return float(success_curve(pred, gt).mean())


def center_errors(pred: np.ndarray, gt: np.ndarray, normalized: bool = False) -> np.ndarray:
    """Centre distances ``(N,)`` in pixels, or with ``normalized`` per axis divided by the
    ground-truth width / height before the norm (LaSOT's normalised precision)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    d = (pred[:, :2] + pred[:, 2:] / 2) - (gt[:, :2] + gt[:, 2:] / 2)
    if normalized:
        d = d / np.maximum(gt[:, 2:], 1e-12)
    return np.linalg.norm(d, axis=1)


def precision(pred: np.ndarray, gt: np.ndarray, threshold: float = 20.0) -> float:
    """Fraction of frames whose centre lies within ``threshold`` pixels (default 20)."""
    return float((center_errors(pred, gt) <= threshold).mean())


def normalized_precision(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.2) -> float:
    """Fraction of frames whose size-normalised centre error is within ``threshold`` (0.2)."""
    return float((center_errors(pred, gt, normalized=True) <= threshold).mean())


class TrackingMetric(Metric):
    """Success AUC, precision at 20 px and normalised precision at 0.2, averaged over sequences
    (each sequence's scores over its frames after the first, as the toolkits do)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(3, dtype=torch.float64))
        self.add_state("count", torch.zeros((), dtype=torch.float64))

    def update(self, outputs: Any, batch: Mapping[str, Any]) -> None:
        if not isinstance(outputs, Mapping) or "tracks" not in outputs:
            return
        pred = outputs["tracks"].detach().cpu().numpy()
        gt = batch["boxes"].detach().cpu().numpy()
        for p, g in zip(pred, gt):
            p, g = p[1:], g[1:]
            self.sums += torch.tensor([success_auc(p, g), precision(p, g),
                                       normalized_precision(p, g)], dtype=torch.float64)
            self.count += 1

    def compute(self) -> dict[str, float]:
        n = float(self.count)
        if n == 0:
            return {}
        s = (self.sums / n).tolist()
        return {"success_auc": s[0], "precision_20": s[1], "norm_precision": s[2]}
