"""Metrics accumulated over batches and summed over DDP ranks.

A ``Metric`` keeps its state in tensors that add up across batches and across processes
(counts, sums, confusion matrices): ``update`` adds one batch, ``reduce`` sums the states over
ranks with ``all_reduce`` (a no-op in one process), ``compute`` turns them into floats. Ratios
are taken only in ``compute``, after the reduction, so a distributed result equals the
single-process one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from geossm.engine.distributed import all_gather_lists, all_reduce_sum_


class Metric:
    """Base class: register states with ``add_state``, implement ``update`` and ``compute``."""

    def __init__(self) -> None:
        self._defaults: dict[str, torch.Tensor] = {}

    def add_state(self, name: str, default: torch.Tensor) -> None:
        """Declare a summable state tensor, reset to ``default`` by ``reset``."""
        self._defaults[name] = default.detach().clone()
        setattr(self, name, default.detach().clone())

    def update(self, outputs: Any, batch: Mapping[str, Any]) -> None:
        """Add one batch (``outputs`` as returned by ``Task.forward``)."""
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        """Metric values from the (reduced) states."""
        raise NotImplementedError

    def reset(self) -> None:
        for name, default in self._defaults.items():
            setattr(self, name, default.clone().to(getattr(self, name).device))

    def reduce(self) -> None:
        """Sum every state over DDP ranks (call once, before ``compute``)."""
        for name in self._defaults:
            all_reduce_sum_(getattr(self, name))

    def to(self, device: torch.device | str) -> "Metric":
        for name in self._defaults:
            setattr(self, name, getattr(self, name).to(device))
        return self


class ListMetric(Metric):
    """Base class for metrics whose state does not add up: per-batch items kept in Python lists
    on the host (scores ranked over a whole split, per-frame detections).

    Name the lists in ``list_states``; ``reset`` empties them, ``reduce`` concatenates each over
    the DDP ranks in rank order (``all_gather_lists``), and ``to`` leaves them on the host.
    """

    list_states: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        for name in self.list_states:
            setattr(self, name, [])

    def reduce(self) -> None:
        gathered = all_gather_lists(*(getattr(self, name) for name in self.list_states))
        for name, items in zip(self.list_states, gathered):
            setattr(self, name, items)

    def to(self, device: torch.device | str) -> "ListMetric":
        return self


class MetricCollection(Metric):
    """Several metrics updated together; ``compute`` merges their dicts (names must differ)."""

    def __init__(self, *metrics: Metric) -> None:
        super().__init__()
        self.metrics = list(metrics)

    def update(self, outputs: Any, batch: Mapping[str, Any]) -> None:
        for m in self.metrics:
            m.update(outputs, batch)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in self.metrics:
            for k, v in m.compute().items():
                if k in out:
                    raise ValueError(f"MetricCollection: two metrics report '{k}'")
                out[k] = v
        return out

    def reset(self) -> None:
        for m in self.metrics:
            m.reset()

    def reduce(self) -> None:
        for m in self.metrics:
            m.reduce()

    def to(self, device: torch.device | str) -> "MetricCollection":
        for m in self.metrics:
            m.to(device)
        return self


class MeanMetric(Metric):
    """Weighted mean of a scalar: ``add(value, weight)``; reports ``{name: mean}``.

    ``update(outputs, batch)`` reads ``outputs[key]`` (default ``name``) with weight 1.
    """

    def __init__(self, name: str = "loss", key: str | None = None) -> None:
        super().__init__()
        self.name, self.key = name, key or name
        self.add_state("total", torch.zeros((), dtype=torch.float64))
        self.add_state("weight", torch.zeros((), dtype=torch.float64))

    def add(self, value: torch.Tensor | float, weight: float = 1.0) -> None:
        value = torch.as_tensor(value).detach().to(self.total.device, torch.float64)
        self.total += value * weight
        self.weight += weight

    def update(self, outputs: Any, batch: Mapping[str, Any]) -> None:
        self.add(outputs[self.key])

    def compute(self) -> dict[str, float]:
        w = float(self.weight)
        return {self.name: float(self.total) / w if w > 0 else float("nan")}


class ConfusionMatrix(Metric):
    """Classification / segmentation metrics from a ``(C, C)`` confusion matrix.

    ``cm[t, p]`` counts items of true class ``t`` predicted as ``p``. Reports ``acc`` (overall
    accuracy), ``macc`` (mean class accuracy) and ``miou`` (mean intersection over union,
    ``tp / (tp + fp + fn)``), means over classes present in targets or predictions; with
    ``per_class=True`` also ``iou/<class>``.

    Args:
        num_classes: ``C``.
        ignore_index: targets equal to it are skipped (default -1).
        logits_key: key of ``outputs`` holding logits ``(N, C)`` (or predictions ``(N,)`` int);
            if ``outputs`` is a tensor it is used directly.
        target_key: key of ``batch`` holding targets ``(N,)``.
        class_names: names for ``per_class`` reports (default: indices).
        per_class: also report per-class IoU.
        prefix: prepended to every reported name.
    """

    def __init__(self, num_classes: int, ignore_index: int = -1, logits_key: str = "logits",
                 target_key: str = "label", class_names: Sequence[str] | None = None,
                 per_class: bool = False, prefix: str = "") -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be an int >= 1, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"ConfusionMatrix: class_names must have {num_classes} names, "
                             f"got {len(class_names)}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.logits_key, self.target_key = logits_key, target_key
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.per_class, self.prefix = per_class, prefix
        self.add_state("cm", torch.zeros(num_classes, num_classes, dtype=torch.int64))

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count predicted labels ``pred (N,)`` or logits ``(N, C)`` against ``target (N,)``."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(-1)
        if pred.shape != target.shape:
            raise ValueError(f"ConfusionMatrix: predictions {tuple(pred.shape)} and targets "
                             f"{tuple(target.shape)} differ in shape")
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(f"ConfusionMatrix: targets must lie in [0, {self.num_classes}) or equal "
                             f"ignore_index={self.ignore_index}, got range "
                             f"[{int(target.min())}, {int(target.max())}]")
        idx = target * self.num_classes + pred.clamp(0, self.num_classes - 1)
        self.cm += torch.bincount(idx, minlength=self.num_classes ** 2).view(
            self.num_classes, self.num_classes).to(self.cm.device)

    def update(self, outputs: Any, batch: Mapping[str, Any]) -> None:
        logits = outputs if isinstance(outputs, torch.Tensor) else outputs[self.logits_key]
        self.add(logits.detach(), batch[self.target_key])

    def compute(self) -> dict[str, float]:
        cm = self.cm.double().cpu()
        tp = cm.diag()
        gt, pr = cm.sum(1), cm.sum(0)
        union = gt + pr - tp
        present = union > 0
        total = cm.sum()
        p = self.prefix
        out = {
            f"{p}acc": float(tp.sum() / total) if total > 0 else float("nan"),
            f"{p}macc": float((tp[gt > 0] / gt[gt > 0]).mean()) if (gt > 0).any() else float("nan"),
            f"{p}miou": float((tp[present] / union[present]).mean()) if present.any() else float("nan"),
        }
        if self.per_class:
            for i, name in enumerate(self.class_names):
                out[f"{p}iou/{name}"] = float(tp[i] / union[i]) if union[i] > 0 else float("nan")
        return out
