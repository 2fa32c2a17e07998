"""Segmentation and classification metrics, accumulated over batches and summed over DDP ranks.

- ``SegmentationMetric``: a confusion matrix over points (``ignore_index`` skipped) reporting
  ``oa`` (overall accuracy), ``macc`` (mean class accuracy), ``miou`` and ``iou/<class>``.
  Means run over the classes present in the targets or the predictions of the evaluated data
  (absent classes have no defined IoU).
- ``PartSegMetric``: ShapeNetPart's shape IoUs. For a shape of category ``c`` with parts
  ``P_c``: ``IoU(shape) = mean_{p in P_c} |pred=p & gt=p| / |pred=p | gt=p|`` with a part absent
  from both counted as 1; ``ins_miou`` averages shapes, ``cls_miou`` averages the categories'
  means (categories without shapes are skipped). Predictions are the arg-max over the shape's
  own parts (category-conditioned).
- ``ClassificationMetric``: ``oa`` and ``macc`` over samples.

States are sums (confusion counts, IoU sums and shape counts), so ``reduce`` (``all_reduce``)
followed by ``compute`` equals the single-process result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from geossm.engine.metrics import ConfusionMatrix, Metric

__all__ = ["SegmentationMetric", "ClassificationMetric", "PartSegMetric", "part_mask",
           "masked_prediction", "LabelFileWriter"]


class SegmentationMetric(ConfusionMatrix):
    """Point-wise confusion matrix; reports ``oa``, ``macc``, ``miou`` and (``per_class``)
    ``iou/<name>``.

    Args:
        num_classes: ``C``.
        ignore_index: targets equal to it are skipped, default -1.
        class_names: ``C`` names for the per-class report, default indices.
        per_class: report ``iou/<name>`` too, default True.
        category_parts: part segmentation: the parts of every category; predictions are then
            the arg-max over each shape's own parts (needs ``category (B,)`` and ``batch (N,)``
            in the batch), default None (plain arg-max).
        logits_key, target_key, prefix: see ``geossm.engine.metrics.ConfusionMatrix``.
        batch_key, category_key: batch keys of the sample of every point and the category of
            every sample (part segmentation), default ``batch`` and ``category``; on original
            points ``full_batch`` and ``sample_category`` (with ``full_logits``, ``full_label``).

    ``update(outputs, batch)``: ``outputs`` logits ``(N, C)`` (or a dict with ``logits``),
    ``batch["label"] (N,)``.
    """

    def __init__(self, num_classes: int, ignore_index: int = -1,
                 class_names: Sequence[str] | None = None, per_class: bool = True,
                 category_parts: Sequence[Sequence[int]] | None = None,
                 logits_key: str = "logits", target_key: str = "label", prefix: str = "",
                 batch_key: str = "batch", category_key: str = "category") -> None:
        super().__init__(num_classes, ignore_index=ignore_index, logits_key=logits_key,
                         target_key=target_key, class_names=class_names, per_class=per_class,
                         prefix=prefix)
        self.mask = part_mask(category_parts, num_classes) if category_parts else None
        self.batch_key, self.category_key = batch_key, category_key

    def update(self, outputs: Any, batch: Mapping[str, Any]) -> None:
        logits = outputs if isinstance(outputs, torch.Tensor) else outputs[self.logits_key]
        logits = logits.detach()
        if self.mask is not None and logits.dim() == 2:
            target = batch[self.target_key]
            logits = masked_prediction(logits, batch[self.category_key].to(target.device),
                                       batch[self.batch_key].to(target.device),
                                       self.mask.to(target.device))
        self.add(logits, batch[self.target_key])

    def compute(self) -> dict[str, float]:
        out = super().compute()
        p = self.prefix
        out[f"{p}oa"] = out.pop(f"{p}acc")
        # Classes absent from targets and predictions have no IoU: leave them out of the report.
        return {k: v for k, v in out.items() if not (k.startswith(f"{p}iou/") and math.isnan(v))}


class ClassificationMetric(ConfusionMatrix):
    """Per-sample classification: ``oa`` and ``macc`` from logits ``(B, C)`` and labels
    ``(B,)``."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
                 prefix: str = "") -> None:
        super().__init__(num_classes, ignore_index=-1, class_names=class_names, prefix=prefix)

    def compute(self) -> dict[str, float]:
        out = super().compute()
        p = self.prefix
        return {f"{p}oa": out[f"{p}acc"], f"{p}macc": out[f"{p}macc"]}


def part_mask(category_parts: Sequence[Sequence[int]], num_parts: int,
              device: torch.device | str | None = None) -> torch.Tensor:
    """``(num_categories, num_parts) bool``: which parts belong to each category."""
    mask = torch.zeros(len(category_parts), num_parts, dtype=torch.bool, device=device)
    for c, parts in enumerate(category_parts):
        for p in parts:
            if not 0 <= p < num_parts:
                raise ValueError(f"category_parts: part {p} of category {c} is outside "
                                 f"[0, {num_parts})")
            mask[c, p] = True
    return mask


def masked_prediction(logits: torch.Tensor, category: torch.Tensor, batch: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """Arg-max over each point's category's parts only.

    Shapes: ``logits (N, P)``, ``category (B,)``, ``batch (N,)`` sample of every point,
    ``mask (num_categories, P)`` -> ``(N,) long``.
    """
    allowed = mask[category.long()][batch.long()]  # (N, P)
    return logits.float().masked_fill(~allowed, float("-inf")).argmax(-1)


class PartSegMetric(Metric):
    """ShapeNetPart instance mIoU (``ins_miou``) and class mIoU (``cls_miou``), plus
    ``miou/<category>`` per category with shapes.

    Args:
        category_parts: global part indices of every category.
        category_names: names of the categories (default indices).
        logits_key, target_key, batch_key, category_key: see ``SegmentationMetric``; the batch
            needs ``category (B,)`` and ``batch (N,)`` (added by the packing collate).
        prefix: prepended to the reported names.
    """

    def __init__(self, category_parts: Sequence[Sequence[int]],
                 category_names: Sequence[str] | None = None, logits_key: str = "logits",
                 target_key: str = "label", prefix: str = "", batch_key: str = "batch",
                 category_key: str = "category") -> None:
        super().__init__()
        if not category_parts:
            raise ValueError("PartSegMetric: category_parts must list at least one category")
        self.category_parts = [tuple(int(p) for p in parts) for parts in category_parts]
        self.num_parts = max(max(p) for p in self.category_parts) + 1
        k = len(self.category_parts)
        names = list(category_names) if category_names is not None else [str(i) for i in range(k)]
        if len(names) != k:
            raise ValueError(f"PartSegMetric: category_names must have {k} names, got {len(names)}")
        self.category_names, self.logits_key, self.target_key = names, logits_key, target_key
        self.prefix, self.batch_key, self.category_key = prefix, batch_key, category_key
        self.mask = part_mask(self.category_parts, self.num_parts)
        self.add_state("iou_sum", torch.zeros(k, dtype=torch.float64))
        self.add_state("shapes", torch.zeros(k, dtype=torch.int64))

    def add(self, logits: torch.Tensor, target: torch.Tensor, category: torch.Tensor,
            batch: torch.Tensor) -> None:
        """One batch: ``logits (N, P)`` (or predictions ``(N,)``), ``target (N,)``,
        ``category (B,)``, ``batch (N,)``."""
        category = category.reshape(-1).long().to(target.device)
        batch = batch.reshape(-1).long().to(target.device)
        if target.shape[0] != batch.shape[0]:
            raise ValueError(f"PartSegMetric: target has {target.shape[0]} points, batch has "
                             f"{batch.shape[0]}")
        mask = self.mask.to(target.device)
        if logits.dim() == 2:
            if logits.shape[1] < self.num_parts:
                raise ValueError(f"PartSegMetric: logits need >= {self.num_parts} part columns, "
                                 f"got {logits.shape[1]}")
            pred = masked_prediction(logits[:, :self.num_parts], category, batch, mask)
        else:
            pred = logits.reshape(-1).long()
        b = category.numel()
        p = self.num_parts
        # Per (shape, part) intersection and union counts in two bincounts.
        valid = target >= 0
        t_idx = batch * p + target.clamp(min=0)
        p_idx = batch * p + pred.clamp(0, p - 1)
        inter = torch.bincount(t_idx[valid & (pred == target)], minlength=b * p).view(b, p)
        gt = torch.bincount(t_idx[valid], minlength=b * p).view(b, p)
        pr = torch.bincount(p_idx[valid], minlength=b * p).view(b, p)
        union = gt + pr - inter
        own = mask[category]  # (B, P) the parts of each shape's category
        iou = torch.where(union > 0, inter.double() / union.clamp(min=1).double(),
                          torch.ones_like(union, dtype=torch.float64))
        shape_iou = (iou * own).sum(1) / own.sum(1).clamp(min=1)
        self.iou_sum.index_add_(0, category.to(self.iou_sum.device),
                                shape_iou.to(self.iou_sum.device))
        self.shapes.index_add_(0, category.to(self.shapes.device),
                               torch.ones_like(category).to(self.shapes.device))

    def update(self, outputs: Any, batch: Mapping[str, Any]) -> None:
        logits = outputs if isinstance(outputs, torch.Tensor) else outputs[self.logits_key]
        self.add(logits.detach(), batch[self.target_key], batch[self.category_key],
                 batch[self.batch_key])

    def compute(self) -> dict[str, float]:
        p = self.prefix
        shapes = self.shapes.double().cpu()
        sums = self.iou_sum.cpu()
        have = shapes > 0
        out = {
            f"{p}ins_miou": float(sums.sum() / shapes.sum()) if have.any() else float("nan"),
            f"{p}cls_miou": float((sums[have] / shapes[have]).mean()) if have.any() else float("nan"),
        }
        for i, name in enumerate(self.category_names):
            if have[i]:
                out[f"{p}miou/{name}"] = float(sums[i] / shapes[i])
        return out


class LabelFileWriter(Metric):
    """Writes every evaluated sample's per-point predictions to a file (no values reported): a
    split's predictions in a benchmark's submission layout while it is scored.

    Args:
        write: ``write(scan_id, pred)`` for each sample, ``pred (N,) int64`` the arg-max of the
            logits of each of its points (of every original point with ``full_logits``).

    ``update(outputs, batch)``: ``outputs`` logits ``(N, C)`` (``batch["batch"]``) or a dict
    with ``full_logits (M, C)`` (``batch["full_batch"]``); ``batch["scan_id"]`` one name per
    sample.
    """

    def __init__(self, write) -> None:
        super().__init__()
        self.write = write

    def update(self, outputs: Any, batch: Mapping[str, Any]) -> None:
        if isinstance(outputs, torch.Tensor):
            pred, point_batch = outputs.detach().argmax(-1), batch["batch"]
        else:
            pred, point_batch = outputs["full_logits"].detach().argmax(-1), batch["full_batch"]
        pred, point_batch = pred.cpu().numpy(), point_batch.cpu().numpy()
        for b, scan_id in enumerate(batch["scan_id"]):
            self.write(scan_id, pred[point_batch == b])

    def compute(self) -> dict[str, float]:
        return {}
