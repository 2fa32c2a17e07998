"""Segmentation and classification tasks (``task: SegmentationTask`` / ``ClassificationTask``).

Batches are packed by ``pack_collate``: ``coord (N, 3)``, ``feat (N, C)``, ``label (N,)`` (or
``(B,)`` for classification), ``category (B,)`` when the dataset has categories, ``cu_seqlens
(B+1,)`` and ``batch (N,)``. Config keys read here (besides the standard ones)::

    model.num_classes        classes (segmentation: per point; classification: per sample)
    model.num_categories     > 0: category-conditioned parts (ShapeNetPart, synthetic parts)
    loss: {label_smoothing: 0.0, class_weights: null, ignore_index: -1}

Part-segmentation datasets (with ``CATEGORY_PARTS``) also report the instance and class mIoU
(``ins_miou``, ``cls_miou``) and predict within each shape's own parts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geossm.config import to_container
from geossm.engine.inputs import check_field
from geossm.engine.metrics import MetricCollection
from geossm.engine.task import Task
from geossm.packed import cu_seqlens_from_lengths, pack_collate
from geossm.registry import DATASETS, TASKS

from .datasets import (SemanticKITTI, read_semantickitti_scan, semantickitti_learning_map,
                       semantickitti_prediction_path, write_semantickitti_label)
from .losses import cross_entropy
from .metrics import (ClassificationMetric, LabelFileWriter, PartSegMetric, SegmentationMetric,
                      masked_prediction, part_mask)
from .neighbours import knn
from .transforms import PointPreprocess


#: Channels of the per-point arrays ``data.feat_keys`` may name (others: any, checked in total).
FEATURE_WIDTHS = {"coord": 3, "normal": 3, "color": 3}
#: Value ranges of those arrays (colours are scaled to [0, 1], as the datasets give them).
FEATURE_RANGES = {"color": {"low": 0.0, "high": 1.0}}


def _loss_cfg(cfg) -> dict[str, Any]:
    loss = dict(cfg.get("loss") or {}) if hasattr(cfg, "get") else {}
    unknown = set(loss) - {"label_smoothing", "class_weights", "ignore_index"}
    if unknown:
        raise ValueError(f"loss: unknown keys {sorted(unknown)} (known: label_smoothing, "
                         "class_weights, ignore_index)")
    return loss


class _PointTask(Task):
    input_keys = ("coord", "feat", "cu_seqlens")
    label_per_point = True  # ground truth of a sample: (N,) per point, or one class

    def dataset_class(self) -> type:
        return DATASETS.get(str(self.cfg.data.name))

    def forward(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        kwargs = {k: batch[k] for k in self.input_keys}
        if "neighbours" in batch:   # the kNN embedding's, from the loader (train.knn_in_loader)
            kwargs["neighbours"] = batch["neighbours"]
        if int(self.cfg.model.get("num_categories", 0) or 0) > 0:
            if "category" not in batch:
                raise ValueError("model.num_categories > 0 needs samples with 'category' "
                                 f"(dataset {self.cfg.data.name} gives {sorted(batch)})")
            kwargs["category"] = batch["category"]
        return model(**kwargs)

    def collate(self, samples) -> dict[str, Any]:
        """The packed batch, with the kNN embedding's neighbours (``with_neighbours``)."""
        return self.with_neighbours(super().collate(samples))

    def with_neighbours(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` with ``neighbours (N, k)``: ``knn(coord, cu_seqlens, model.k)`` of its
        packed points, where ``train.knn_in_loader`` is true (default false: the model computes
        them); training, evaluation and prediction batches alike. In the loader's workers this
        is CPU work (SciPy's KD-tree, one core per worker) that overlaps the GPU's steps, in
        place of the model's own search on the GPU; on the CPU the same function gives the
        same neighbours as the model's own call."""
        train = getattr(self.cfg, "train", None) or {}   # a task built without a config: off
        if not train.get("knn_in_loader", False):
            return batch
        k = self.cfg.model.get("k")
        if not isinstance(k, int) or k < 1:
            raise ValueError("train.knn_in_loader needs the kNN embedding's neighbour count as "
                             f"model.k (an int >= 1), got {k!r}")
        batch["neighbours"] = knn(batch["coord"].float(), batch["cu_seqlens"], k)
        return batch

    def num_classes(self) -> int:
        n = self.cfg.model.get("num_classes")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"config key 'model.num_classes' must be an int >= 1, got {n!r}")
        return n

    def loss(self, outputs: torch.Tensor | Mapping[str, torch.Tensor],
             batch: Mapping[str, Any]) -> torch.Tensor:
        if isinstance(outputs, Mapping):  # full-resolution evaluation: the sampled points' logits
            outputs = outputs["logits"]
        cfg = _loss_cfg(self.cfg)
        return cross_entropy(outputs, batch[self.target_key],
                             ignore_index=int(cfg.get("ignore_index", -1)),
                             label_smoothing=float(cfg.get("label_smoothing", 0.0)),
                             class_weights=cfg.get("class_weights"))

    def preprocess(self, sample: Mapping[str, Any], *, source: str = "sample") -> dict[str, Any]:
        """A raw sample (``coord`` and the arrays ``data.feat_keys`` names, optional ``label`` and
        ``category``) prepared as the dataset prepares evaluation samples, keeping every
        grid-sampled point (no ``num_points`` subset): grid sampling, normalisation, ``feat``.
        ``validate_input`` checks it first (``source`` starts its messages)."""
        self.validate_input(sample, source=source)
        return self._prepare(sample)

    def validate_input(self, sample: Mapping[str, Any], *, source: str = "sample") -> None:
        """Raise ``ValueError`` (naming ``source``, the field, the expectation and what came)
        unless ``sample`` is a point cloud the model can run on. Shapes first, then values:

        - ``coord (N, 3)`` numbers, finite, ``N >= 1``;
        - every ``data.feat_keys`` array ``(N, C)`` (or ``(N,)``) numbers, finite (``color`` in
          [0, 1]); their channels together ``model.in_channels``;
        - ``category``: one integer in ``[0, model.num_categories)``, required when
          ``model.num_categories > 0`` (ignored otherwise);
        - ``label`` (optional ground truth): integers in ``[0, model.num_classes)`` or
          ``loss.ignore_index``, one per point (or one for the cloud: ``label_per_point``).
        """
        coord = check_field(sample, "coord", source=source, shape=("N", 3), kind="number",
                            finite=True)
        n = len(coord)
        if n == 0:
            raise ValueError(f"{source}: coord: expected at least one point, got shape (0, 3)")
        self._check_features(sample, n, source)
        num_categories = int(self.cfg.model.get("num_categories", 0) or 0)
        if num_categories > 0:  # otherwise the model does not read it
            check_field(sample, "category", source=source, shape=(), kind="int", low=0,
                        high=num_categories, note=f"(model.num_categories={num_categories})")
        num_classes = self.num_classes()
        check_field(sample, "label", source=source, shape=(n,) if self.label_per_point else (),
                    kind="int", low=0, high=num_classes, required=False,
                    ignore=int(_loss_cfg(self.cfg).get("ignore_index", -1)),
                    note=f"(model.num_classes={num_classes})")

    def _check_features(self, sample: Mapping[str, Any], n: int, source: str) -> None:
        """The ``data.feat_keys`` arrays: ``n`` rows each, finite numbers, and as many
        channels together as ``model.in_channels`` (when the config sets it)."""
        widths = []  # (key, channels); a key may be named twice
        for key in self._prediction_preprocess().feat_keys:
            one_channel = key in sample and np.ndim(sample[key]) == 1  # (N,): one channel
            value = check_field(sample, key, source=source, kind="number", finite=True,
                                shape=(n,) if one_channel else (n, FEATURE_WIDTHS.get(key, "C")),
                                note=f"(data.feat_keys names '{key}')",
                                **FEATURE_RANGES.get(key, {}))
            widths.append((key, int(np.prod(value.shape[1:]))))
        in_channels = self.cfg.model.get("in_channels")
        total = sum(w for _, w in widths)
        if isinstance(in_channels, int) and total != in_channels:
            parts = " + ".join(f"{k} {w}" for k, w in widths)
            raise ValueError(f"{source}: feat: data.feat_keys give {parts} = {total} channels "
                             f"per point, model.in_channels expects {in_channels}")

    def _prediction_preprocess(self) -> PointPreprocess:
        """The dataset class's ``PointPreprocess`` with the config's ``grid_size``,
        ``normalize`` and ``feat_keys`` and the evaluation's ``full_resolution`` / ``votes``
        (no files are read)."""
        data = self.cfg.data
        settings = {k: data[k] for k in ("feat_keys", "grid_size", "normalize") if k in data}
        return self.dataset_class().build_preprocess({**settings, "num_points": None,
                                                      **self.full_resolution_settings()})

    def full_resolution_settings(self) -> dict[str, Any]:
        """``PointPreprocess`` settings of evaluation and ``predict``: ``full_resolution`` and
        ``votes`` from ``eval.full_resolution`` / ``eval.votes`` (segmentation only)."""
        return {}

    def load_input(self, path: str | os.PathLike) -> dict[str, Any]:
        """Read ``.npz`` / ``.npy`` / ``.ply`` (``coord`` plus optional ``label``, ``category``
        and the dataset's other arrays; columns of ``coord`` after the third are dropped),
        check it (``validate_input``) and ``preprocess`` it; a missing ``strength`` (LiDAR
        intensity) is zero."""
        raw = self.read_input(path)
        coord = raw.get("coord")
        if coord is not None and np.ndim(coord) == 2:
            raw["coord"] = coord[:, :3]
            if "strength" in self._prediction_preprocess().feat_keys and "strength" not in raw:
                raw["strength"] = np.zeros((len(coord), 1), dtype=np.float32)
        self.validate_input(raw, source=f"input file {path}")
        raw["coord"] = np.asarray(raw["coord"], dtype=np.float32)
        return self._prepare(raw)

    def read_input(self, path: str | os.PathLike) -> dict[str, Any]:
        """The raw arrays of an input file (``Task.load_input``'s formats)."""
        return super().load_input(path)

    def _prepare(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The evaluation preprocess of a checked raw sample; full-resolution samples also keep
        ``full_coord (N_orig, 3)`` for the written cloud."""
        prepared = self._prediction_preprocess()(raw)
        if "inverse" in prepared:
            prepared["full_coord"] = np.asarray(raw["coord"], dtype=np.float32)[:, :3]
        return prepared


def _sequence_and_frame(scan_id: str) -> tuple[str | None, str]:
    """``"08/000002"`` -> ``("08", "000002")``; ``"000002"`` -> ``(None, "000002")``."""
    sequence, _, frame = str(scan_id).rpartition("/")
    return sequence or None, frame


@TASKS.register
class SegmentationTask(_PointTask):
    """Per-point semantic or part segmentation (``best.pt`` by ``miou``)."""

    best_metric, best_mode = "miou", "max"

    def full_resolution_settings(self) -> dict[str, Any]:
        full = bool(self.cfg.eval.get("full_resolution", False))
        votes = self.cfg.eval.get("votes", 1)
        if not isinstance(votes, int) or isinstance(votes, bool) or votes < 1:
            raise ValueError(f"config key 'eval.votes' must be an int >= 1, got {votes!r}")
        if votes > 1 and not full:
            raise ValueError(f"config key 'eval.votes' = {votes} sums passes on the original "
                             "points: set eval.full_resolution=true too")
        return {"full_resolution": True, "votes": votes} if full else {}

    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        """The dataset of ``split``; with ``eval.full_resolution`` its evaluation samples keep
        the way back to every original point (training samples are unchanged)."""
        extra = self.full_resolution_settings()
        if not extra:
            return super().build_dataset(split)
        data = dict(to_container(self.cfg.data))
        data.update(split=split, **extra)
        return DATASETS.build(data)

    def collate(self, samples) -> dict[str, Any]:
        """``pack_collate``, then for full-resolution samples (``inverse``): ``inverse (M, V)``
        made rows of the packed batch, ``full_batch (M,)`` the sample of every original point,
        ``sample_category (B,)``, and one packed segment per pass (``cu_seqlens``, ``batch``,
        ``category`` per pass when ``V > 1``). Shapes: ``M`` original points of the batch."""
        batch = pack_collate(samples, stack_keys=self.stack_keys)
        if "inverse" not in batch:
            return self.with_neighbours(batch)
        for key in ("inverse_cu_seqlens", "full_label_cu_seqlens", "vote_lengths_cu_seqlens",
                    "full_coord_cu_seqlens"):
            batch.pop(key, None)
        full_counts = torch.tensor([len(s["inverse"]) for s in samples])
        full_batch = torch.repeat_interleave(torch.arange(len(samples)), full_counts)
        first_row = batch["cu_seqlens"][:-1].long()
        batch["inverse"] = batch["inverse"].long() + first_row[full_batch].unsqueeze(1)
        batch["full_batch"] = full_batch
        vote_lengths = batch.pop("vote_lengths").long()  # (B * V,) pass sizes, sample-major
        if "category" in batch:
            batch["sample_category"] = batch["category"]
            votes = torch.tensor([len(s["vote_lengths"]) for s in samples])
            batch["category"] = torch.repeat_interleave(batch["category"], votes)
        batch["cu_seqlens"] = cu_seqlens_from_lengths(vote_lengths.tolist(), "collate: passes")
        batch["batch"] = torch.repeat_interleave(torch.arange(len(vote_lengths)), vote_lengths)
        return self.with_neighbours(batch)   # per pass: the model sees one sample per pass

    def predict_step(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> Any:
        """Logits of the packed points; with full-resolution samples a dict of those
        (``logits``) and ``full_logits (M, C)``, every original point's sum over the passes of
        the logits of the point standing for it."""
        logits = self.forward(model, batch)
        if "inverse" not in batch:
            return logits
        inverse = batch["inverse"].to(logits.device)
        return {"logits": logits, "full_logits": logits.float()[inverse].sum(1)}

    def _parts(self):
        cls = self.dataset_class()
        return getattr(cls, "CATEGORY_PARTS", None), tuple(getattr(cls, "CATEGORY_NAMES", ()))

    def build_metrics(self) -> MetricCollection:
        n = self.num_classes()
        names = tuple(getattr(self.dataset_class(), "CLASS_NAMES", ()) or ())
        if isinstance(names, property) or len(names) != n:
            names = None
        ignore = int(_loss_cfg(self.cfg).get("ignore_index", -1))
        parts, cat_names = self._parts()
        conditioned = bool(parts) and int(self.cfg.model.get("num_categories", 0) or 0) > 0
        # Full resolution: scored on every original point (the benchmarks' rule).
        keys = (dict(logits_key="full_logits", target_key="full_label", batch_key="full_batch",
                     category_key="sample_category") if self.full_resolution_settings() else {})
        metrics = [SegmentationMetric(n, ignore_index=ignore, class_names=names,
                                      category_parts=parts if conditioned else None, **keys)]
        if conditioned:
            metrics.append(PartSegMetric(parts, cat_names or None, **keys))
        folder = self.cfg.eval.get("write_predictions")
        if folder:
            if not self._is_semantickitti():
                raise ValueError(f"config key 'eval.write_predictions' writes SemanticKITTI "
                                 f".label files; data.name is {self.cfg.data.name}")
            metrics.append(LabelFileWriter(lambda scan_id, pred: write_semantickitti_label(
                semantickitti_prediction_path(folder, *_sequence_and_frame(scan_id)), pred)))
        return MetricCollection(*metrics)

    def postprocess(self, outputs: torch.Tensor | Mapping[str, torch.Tensor],
                    batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``logits``, ``pred`` and ``probs`` (softmax; with categories, over each point's
        category's parts only, as ``pred``) per point: of every original point for
        full-resolution samples (``full_logits``), else of the packed points."""
        if isinstance(outputs, Mapping):
            logits = outputs["full_logits"].detach().float()
            category, point_batch = batch.get("sample_category"), batch["full_batch"]
        else:
            logits = outputs.detach().float()
            category, point_batch = batch.get("category"), batch["batch"]
        parts, _ = self._parts()
        scores = logits
        if parts and category is not None and int(self.cfg.model.get("num_categories", 0) or 0):
            mask = part_mask(parts, logits.shape[1], logits.device)
            category, point_batch = category.to(logits.device), point_batch.to(logits.device)
            pred = masked_prediction(logits, category, point_batch, mask)
            scores = logits.masked_fill(~mask[category.long()][point_batch.long()], float("-inf"))
        else:
            pred = logits.argmax(-1)
        return {"logits": logits.cpu().numpy(), "pred": pred.cpu().numpy().astype(np.int64),
                "probs": torch.softmax(scores, -1).cpu().numpy()}

    def read_input(self, path: str | os.PathLike) -> dict[str, Any]:
        """Besides ``Task.load_input``'s formats, a SemanticKITTI ``velodyne/<NNNNNN>.bin`` scan
        (with ``labels/<NNNNNN>.label`` beside its folder as ground truth when present) for a
        SemanticKITTI config; the sample then keeps ``scan_id`` ``"<XX>/<NNNNNN>"``."""
        path = Path(path)
        if path.suffix.lower() != ".bin" or not self._is_semantickitti():
            return super().read_input(path)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        coord, strength = read_semantickitti_scan(path)
        raw = {"coord": coord, "strength": strength}
        labels = path.parent.parent / "labels" / f"{path.stem}.label"
        if labels.is_file():
            raw["label"] = semantickitti_learning_map(np.fromfile(labels, dtype=np.uint32))
        sequence = path.parent.parent.name
        if path.parent.name == "velodyne" and sequence.isdigit() and path.stem.isdigit():
            raw["scan_id"] = f"{sequence}/{path.stem}"
        return raw

    def _is_semantickitti(self) -> bool:
        return issubclass(self.dataset_class(), SemanticKITTI)

    def _prepare(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        prepared = super()._prepare(raw)
        if "scan_id" in raw:
            prepared["scan_id"] = raw["scan_id"]
        return prepared

    def write_prediction(self, sample: Mapping[str, Any], result: Mapping[str, np.ndarray],
                         path: str | os.PathLike) -> list[Path]:
        """The ``.npz`` and ``.ply`` (of every original point for full-resolution samples);
        for SemanticKITTI also the ``.label`` file of the predictions in raw label ids: at
        ``<output folder>/sequences/<XX>/predictions/<NNNNNN>.label`` (the submission layout)
        for a scan read from ``sequences/<XX>/velodyne/``, else beside the ``.npz``."""
        if "full_coord" in sample:
            sample = {"coord": sample["full_coord"], "label": sample.get("full_label"),
                      "scan_id": sample.get("scan_id")}
        written = super().write_prediction(sample, result, path)
        if self._is_semantickitti():
            path = Path(path)
            scan_id = sample.get("scan_id")
            target = (semantickitti_prediction_path(path.parent, *_sequence_and_frame(scan_id))
                      if scan_id else path.with_suffix(".label"))
            written.append(write_semantickitti_label(target, result["pred"]))
        return written


@TASKS.register
class ClassificationTask(_PointTask):
    """Per-sample classification (``best.pt`` by overall accuracy ``oa``)."""

    best_metric, best_mode = "oa", "max"
    label_per_point = False

    def build_metrics(self) -> ClassificationMetric:
        return ClassificationMetric(self.num_classes())

    def postprocess(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``logits (1, C)``, ``pred (1,)`` and ``probs (1, C)`` (softmax)."""
        logits = outputs.detach().float().cpu()
        return {"logits": logits.numpy(), "pred": logits.argmax(-1).numpy().astype(np.int64),
                "probs": torch.softmax(logits, -1).numpy()}

    def write_prediction(self, sample: Mapping[str, Any], result: Mapping[str, np.ndarray],
                         path: str | os.PathLike) -> list[Path]:
        """The ``.npz`` of logits and the predicted class, and a ``.ply`` of the cloud with
        every point labelled by the predicted class (ground truth likewise when known)."""
        from geossm.viz import write_labeled_ply
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{k: np.asarray(v) for k, v in result.items()})
        coord = np.asarray(sample["coord"])
        n = len(coord)
        pred = np.full(n, int(np.asarray(result["pred"]).reshape(-1)[0]), dtype=np.int64)
        label = sample.get("label")
        label = None if label is None else np.full(n, int(np.asarray(label).reshape(-1)[0]))
        ply = path.with_suffix(".ply")
        write_labeled_ply(ply, coord[:, :3], pred=pred, label=label)
        return [path, ply]
