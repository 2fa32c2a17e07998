"""Graph metrics: accuracy, binary ROC-AUC, multi-label average precision, mean absolute
error, mean ± std, and which direction of each is better (``selection_mode``).

All read ``outputs`` (logits, ``(N, C)`` for nodes or ``(G, C)`` for graphs) and the PyG batch
(``y``; node tasks also ``mask (N,) bool``: only masked rows count). Accuracy keeps summable
counts (MAE: summed errors); ROC-AUC and AP need every score, so they keep the scores and
gather them from all DDP ranks in ``reduce`` (``all_gather_lists``; a no-op in one process).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from geossm.engine.metrics import ListMetric, MeanMetric

__all__ = ["Accuracy", "RocAuc", "AveragePrecision", "MeanAbsoluteError", "LOWER_IS_BETTER",
           "selection_mode", "best_of", "roc_auc", "average_precision",
           "mean_std", "summarize"]


#: Metrics where lower is better: their best run, epoch or variant is the minimum.
LOWER_IS_BETTER = frozenset({"mae", "loss"})


def selection_mode(metric: str, mode: str | None = None) -> str:
    """``mode`` when given, else ``"min"`` for a ``LOWER_IS_BETTER`` metric and ``"max"`` for
    the rest. ``metric`` may be prefixed (``best.mae``, ``last.train_loss``): the part after
    the last ``.``, without a ``train_``, ``val_`` or ``test_`` prefix, counts."""
    if mode:
        return str(mode)
    name = str(metric).rsplit(".", 1)[-1]
    for prefix in ("test_", "val_", "train_"):
        name = name.removeprefix(prefix)
    return "min" if name in LOWER_IS_BETTER else "max"


def best_of(metric: str, mode: str | None = None):
    """``min`` or ``max`` (the builtin) that picks the best of ``metric``'s values
    (``selection_mode``)."""
    return min if selection_mode(metric, mode) == "min" else max


def _rows(outputs: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    logits = outputs if isinstance(outputs, torch.Tensor) else outputs["logits"]
    y = batch["y"] if isinstance(batch, Mapping) else batch.y
    mask = batch.get("mask") if isinstance(batch, Mapping) else getattr(batch, "mask", None)
    logits = logits.detach()
    if mask is not None:
        logits, y = logits[mask], y[mask]
    return logits, y


class Accuracy(MeanMetric):
    """Share of (masked) rows whose argmax equals ``y``; reports ``{prefix}acc``.

    Shapes: logits ``(N, C)``, ``y (N,)`` long, ``mask (N,)`` bool (optional).
    """

    def __init__(self, prefix: str = "") -> None:
        super().__init__(f"{prefix}acc")

    def update(self, outputs: Any, batch: Any) -> None:
        logits, y = _rows(outputs, batch)
        y = y.view(-1)
        if logits.shape[0] != y.shape[0]:
            raise ValueError(f"Accuracy: {logits.shape[0]} predictions for {y.shape[0]} targets")
        self.total += (logits.argmax(-1) == y).sum().to(self.total)
        self.weight += y.numel()


class _Gathered(ListMetric):
    """Keeps per-batch (scores, targets) on the CPU; ``reduce`` gathers them from all ranks."""

    list_states = ("scores", "targets")

    def _cat(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.scores:
            return torch.zeros(0), torch.zeros(0)
        return torch.cat(self.scores), torch.cat(self.targets)


def roc_auc(score: torch.Tensor, target: torch.Tensor) -> float:
    """Area under the ROC curve of binary ``target (N,)`` ranked by ``score (N,)``.

    Mann-Whitney: ``(Σ ranks of positives - P(P+1)/2) / (P·N)`` with tied scores given their
    mean rank (equal to ``sklearn.metrics.roc_auc_score``). NaN when one class is absent.
    """
    score, target = score.double().view(-1), target.view(-1).bool()
    p = int(target.sum())
    neg = target.numel() - p
    if p == 0 or neg == 0:
        return float("nan")
    order = torch.argsort(score)
    s = score[order]
    # Mean 1-based rank of every run of equal scores.
    new = torch.ones_like(s, dtype=torch.bool)
    new[1:] = s[1:] != s[:-1]
    run = torch.cumsum(new, 0) - 1
    starts = torch.nonzero(new).view(-1).double()
    ends = torch.cat([starts[1:], torch.tensor([float(s.numel())], dtype=torch.float64)])
    mean_rank = (starts + 1 + ends) / 2
    ranks = torch.empty_like(s)
    ranks[order] = mean_rank[run]
    return float((ranks[target].sum() - p * (p + 1) / 2) / (p * neg))


def average_precision(score: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over labels of the average precision ``Σ_k (R_k - R_{k-1}) P_k`` (sklearn's
    definition, thresholds at distinct scores); labels without a positive are skipped (OGB /
    LRGB practice). Shapes: ``score, target: (N, L)`` or ``(N,)``. NaN if no label counts."""
    if score.dim() == 1:
        score, target = score.view(-1, 1), target.view(-1, 1)
    aps = []
    for j in range(score.shape[1]):
        y = target[:, j].double()
        keep = ~torch.isnan(y)
        s, y = score[keep, j].double(), y[keep]
        pos = float(y.sum())
        if pos == 0:
            continue
        order = torch.argsort(s, descending=True)
        s, y = s[order], y[order]
        # Only the last index of each run of tied scores is a threshold.
        last = torch.ones_like(s, dtype=torch.bool)
        last[:-1] = s[:-1] != s[1:]
        tp = torch.cumsum(y, 0)[last]
        k = torch.nonzero(last).view(-1).double() + 1
        precision, recall = tp / k, tp / pos
        prev = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
        aps.append(float(((recall - prev) * precision).sum()))
    return sum(aps) / len(aps) if aps else float("nan")


class RocAuc(_Gathered):
    """Binary ROC-AUC of the positive-class score; reports ``{prefix}roc_auc``.

    The score is ``softmax(logits)[:, 1]`` for two-column logits, else the single logit.
    Shapes: logits ``(N, 2)`` or ``(N,)`` / ``(N, 1)``, ``y (N,)`` in {0, 1}.
    """

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix

    def update(self, outputs: Any, batch: Any) -> None:
        logits, y = _rows(outputs, batch)
        score = (logits.float().softmax(-1)[:, 1] if logits.dim() == 2 and logits.shape[1] == 2
                 else logits.float().view(-1))
        self.scores.append(score.cpu())
        self.targets.append(y.view(-1).cpu())

    def compute(self) -> dict[str, float]:
        s, t = self._cat()
        return {f"{self.prefix}roc_auc": roc_auc(s, t)}


class AveragePrecision(_Gathered):
    """Multi-label average precision (mean over labels); reports ``{prefix}ap``.

    Shapes: logits ``(N, L)``, ``y (N, L)`` in {0, 1} (NaN = unlabelled).
    """

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix

    def update(self, outputs: Any, batch: Any) -> None:
        logits, y = _rows(outputs, batch)
        self.scores.append(logits.float().cpu())
        self.targets.append(y.float().cpu())

    def compute(self) -> dict[str, float]:
        s, t = self._cat()
        return {f"{self.prefix}ap": average_precision(s, t) if s.numel() else float("nan")}


class MeanAbsoluteError(MeanMetric):
    """Mean of ``|prediction - y|`` over every labelled entry; reports ``{prefix}mae``.

    Shapes: predictions ``(G, K)``, ``y (G, K)`` float (NaN = unlabelled: padded graphs). With
    every entry labelled this is sklearn's ``mean_absolute_error`` (uniform average over the K
    targets), LRGB's metric for Peptides-struct.
    """

    def __init__(self, prefix: str = "") -> None:
        super().__init__(f"{prefix}mae")

    def update(self, outputs: Any, batch: Any) -> None:
        pred, y = _rows(outputs, batch)
        if pred.shape != y.shape:
            raise ValueError(f"MeanAbsoluteError: predictions {tuple(pred.shape)} for targets "
                             f"{tuple(y.shape)}")
        known = ~torch.isnan(y)
        self.total += torch.where(known, (pred.double() - y.double()).abs(), 0.0).sum().to(
            self.total)
        self.weight += known.sum().to(self.weight)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value) of finite values."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, sd


def summarize(runs: Mapping[Any, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{run: {metric: value}}`` -> ``{metric: {"mean", "std", "n"}}`` over runs (splits,
    folds or seeds), for every numeric metric present in all runs."""
    rows = list(runs.values())
    if not rows:
        raise ValueError("summarize: expected at least one run, got none")
    keys = [k for k in rows[0] if all(isinstance(r.get(k), (int, float)) for r in rows)]
    out = {}
    for k in keys:
        m, sd = mean_std(r[k] for r in rows)
        out[k] = {"mean": m, "std": sd, "n": len(rows)}
    return out
