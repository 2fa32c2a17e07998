"""The task interface: what a task supplies so the trainer, ``eval`` and ``predict`` can run it.

A task is a ``Task`` subclass registered in ``TASKS`` under its class name and named by the
config key ``task``. The trainer calls, in this order::

    task = TaskCls(cfg)
    train_set = task.build_dataset(cfg.data.split)      # DATASETS[cfg.data.name](root=, split=, ...)
    model = task.build_model()                          # MODELS[cfg.model.name](**cfg.model)
    metric, mode = task.selection_metric()              # selects best.pt ("miou", "max")
    loss_fn = task.build_loss(model)                    # default: task.loss
    batch = task.collate([train_set[i] for i in ...])   # packed, no padding
    outputs = task.forward(model, batch)                # model(**{k: batch[k] for k in input_keys})
    loss = loss_fn(outputs, batch)                      # scalar, or dict with "loss"
    outputs = task.predict_step(model, batch)           # evaluation (default: forward), then
    loss = loss_fn(outputs, batch)                      # unless task.evaluation_loss is False
    metrics = task.build_metrics(); metrics.update(outputs, batch); metrics.reduce(); metrics.compute()

and for ``geossm predict`` (``geossm.Predictor``; in memory ``task.preprocess(arrays)``
replaces ``load_input``)::

    sample = task.load_input(path); batch = task.collate(SplitSamples([sample], "predict"))
    result = task.postprocess(task.predict_step(model, batch), batch)  # dict of numpy arrays
    task.write_prediction(sample, result, out_npz)                     # .npz + .ply

Writing a task (``tasks/<name>/``)::

    @DATASETS.register
    class MyScans(torch.utils.data.Dataset):        # __init__(root, split, **data kwargs)
        def __getitem__(self, i):                    # one sample: arrays, first dim = points
            return {"coord": xyz (N, 3) float32, "feat": (N, C), "label": (N,) int64}

    @MODELS.register
    class MyNet(torch.nn.Module):
        @classmethod
        def example(cls):                            # tiny (init kwargs, forward kwargs)
            return {"dim": 8}, {"coord": torch.randn(5, 3), "cu_seqlens": ...}

    @TASKS.register
    class MySegTask(Task):
        input_keys = ("coord", "feat", "cu_seqlens")
        best_metric, best_mode = "miou", "max"
        def loss(self, outputs, batch):
            return F.cross_entropy(outputs.float(), batch["label"], ignore_index=-1)
        def build_metrics(self):
            return ConfusionMatrix(self.cfg.model.num_classes, ignore_index=-1)

and a config ``configs/<name>/<dataset>.yaml`` with ``task: MySegTask``, ``model: {name: MyNet,
...}``, ``data: {name: MyScans, root: ..., ...}`` (``_base_: ../_base_/runtime.yaml``).
"""

from __future__ import annotations

import functools
import inspect
import os
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from geossm.config import to_container
from geossm.engine.metrics import Metric, MetricCollection
from geossm.packed import pack_collate
from geossm.registry import DATASETS, MODELS, TASKS, import_modules


def _check_npy_header_length(path: Path) -> None:
    """Raise ``ValueError`` when a ``.npy`` header declares more bytes than the file has.

    numpy reads the declared header length before checking it (a flipped version byte turns
    the 2-byte length into a 4-byte one: ~660 MB read for a 12 KB file).
    """
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:6] != b"\x93NUMPY" or len(head) < 10:
        return  # numpy's own error names what is wrong
    wide = head[6] >= 2  # format 2.0 and 3.0 store the header length in 4 bytes
    length = int.from_bytes(head[8:12] if wide else head[8:10], "little")
    size = path.stat().st_size
    if (12 if wide else 10) + length > size:
        raise ValueError(f"the header declares {length} bytes, the file has {size}")


def move_to(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor in nested dicts / lists / tuples to ``device``; other objects with a
    ``to`` method (a PyG ``Batch``, a task's plan) move themselves, with ``non_blocking`` where
    their ``to`` takes it."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: move_to(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device, non_blocking) for v in obj)
    if hasattr(obj, "to") and callable(obj.to) and not isinstance(obj, type):
        if non_blocking and _takes_non_blocking(type(obj)):
            # a PyG Batch or a task's plan: a blocking copy from the loader's pinned memory
            # would make the host wait for the GPU at every tensor of the batch
            return obj.to(device, non_blocking=True)
        return obj.to(device)
    return obj


@functools.lru_cache(maxsize=None)
def _takes_non_blocking(cls: type) -> bool:
    """Whether ``cls.to`` accepts a ``non_blocking`` keyword (named or through ``**kwargs``);
    asked once per class (``move_to`` runs for every batch)."""
    try:
        parameters = inspect.signature(cls.to).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(p.name == "non_blocking" or p.kind is inspect.Parameter.VAR_KEYWORD
               for p in parameters)


class SplitSamples(list):
    """The samples of one batch with the ``split`` they come from (``"train"``, ``"val"``,
    ``"test"``, or ``"predict"`` for ``Predictor``'s): a list, so every ``collate`` takes it;
    a task whose batches differ between training and evaluation reads ``split`` (the graph
    tasks: training plans with fresh random draws, padded static batches, only for
    ``"train"``; a plain list counts as training)."""

    def __init__(self, samples, split: str | None) -> None:
        super().__init__(samples)
        self.split = split


def build_task(cfg: DictConfig) -> "Task":
    """``TASKS[cfg.task](cfg)``, after importing the modules of ``cfg.imports`` (where a
    project's own tasks and models register); ``ValueError`` when ``task`` is not set."""
    import_modules(list(cfg.get("imports") or []))
    if not cfg.get("task"):
        raise ValueError("config key 'task' is not set (the task class name, e.g. "
                         "task: SegmentationTask)")
    return TASKS.get(str(cfg.task))(cfg)


class Task:
    """Base class of tasks. Subclass, set the class attributes, override what differs.

    Class attributes:
        input_keys: batch keys passed to the model by the default ``forward``.
        target_key: batch key of the targets (used by the default ``postprocess``/``write``).
        stack_keys: sample keys stacked (fixed shape) instead of concatenated by ``collate``.
        best_metric / best_mode: metric selecting ``best.pt`` (``"max"`` or ``"min"``);
            the config's ``eval.metric`` / ``eval.mode`` override them (``selection_metric``).
        evaluation_loss: whether evaluation scores ``predict_step``'s outputs with the loss and
            reports its mean ``loss`` (default True); False for a task whose evaluation output
            is not what its training loss takes (tracking: whole sequences, no loss).

    Args:
        cfg: the full run config (``cfg.data``, ``cfg.model``, ``cfg.train``, ... ).
    """

    input_keys: tuple[str, ...] = ()
    target_key: str = "label"
    stack_keys: tuple[str, ...] = ()
    best_metric: str = "loss"
    best_mode: str = "min"
    evaluation_loss: bool = True
    #: Suffixes of the files ``load_input`` reads (``geossm predict input=FOLDER`` takes these).
    input_suffixes: tuple[str, ...] = (".npz", ".npy", ".ply")

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    # ------------------------------------------------------------------ data
    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        """The dataset of ``split``: ``DATASETS[data.name](root=data.root, split=split, **rest)``.

        Every ``data.*`` key but ``name`` is passed to the constructor (``split`` replaced).
        The dataset should raise ``FileNotFoundError`` naming the missing path when ``root``
        lacks the official layout.
        """
        data = dict(to_container(self.cfg.data))
        if not data.get("name"):
            raise ValueError("config key 'data.name' is not set (the dataset class name)")
        data["split"] = split
        return DATASETS.build(data)

    def collate(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Samples -> one packed batch (``pack_collate`` with ``stack_keys``)."""
        return pack_collate(samples, stack_keys=self.stack_keys)

    def num_samples(self, batch: Mapping[str, Any]) -> int:
        """How many samples a batch holds (for throughput and loss averaging)."""
        if "cu_seqlens" in batch:
            return int(batch["cu_seqlens"].numel() - 1)
        for v in batch.values():
            if isinstance(v, (torch.Tensor, list)):
                return len(v)
        return 1

    # ----------------------------------------------------------------- model
    def build_model(self) -> torch.nn.Module:
        """``MODELS[model.name](**model)`` (all ``model.*`` keys but ``name`` as kwargs)."""
        if not self.cfg.model.get("name"):
            raise ValueError("config key 'model.name' is not set (the model class name)")
        return MODELS.build(to_container(self.cfg.model))

    def parameter_groups(self, model: torch.nn.Module, weight_decay: float) -> list[dict]:
        """The optimiser's parameter groups before ``train.param_groups`` overrides: weight
        decay on matrices/kernels (``ndim >= 2``) only, not on biases, norms, or parameters
        flagged ``p._no_weight_decay = True`` (e.g. Mamba's ``A_log``)."""
        decay, no_decay = [], []
        for p in model.parameters():
            if not p.requires_grad:
                continue
            if p.ndim < 2 or getattr(p, "_no_weight_decay", False):
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def selection_metric(self) -> tuple[str, str]:
        """``(metric, mode)`` selecting ``best.pt``, asked once by the trainer: ``eval.metric`` /
        ``eval.mode`` when set, else ``best_metric`` / ``best_mode``. Override when the choice
        depends on the data (the graph tasks take the dataset's published metric)."""
        return (str(self.cfg.eval.metric or self.best_metric),
                str(self.cfg.eval.mode or self.best_mode))

    def forward(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> Any:
        """Run the model on a batch (already on the device).

        During training ``model`` is the DDP wrapper under torchrun: call it (``model(...)``),
        not its other methods, so gradients are synchronised. It runs under bf16 autocast on
        CUDA; compute losses in float32 (``logits.float()``).
        """
        if not self.input_keys:
            raise NotImplementedError(
                f"{type(self).__name__}: set input_keys or override forward(model, batch)")
        return model(**{k: batch[k] for k in self.input_keys})

    def predict_step(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> Any:
        """Outputs of an evaluation or prediction batch (``geossm eval`` / ``predict``; no
        gradients). Default: ``forward``. A task whose inference is not its training step
        overrides it (tracking: trains on template / search pairs, tracks whole sequences)."""
        return self.forward(model, batch)

    # -------------------------------------------------------- loss & metrics
    def loss(self, outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor | dict[str, torch.Tensor]:
        """Scalar training loss, or a dict with ``"loss"`` (other entries are logged)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss(outputs, batch)")

    def build_loss(self, model: torch.nn.Module) -> Callable[[Any, Mapping[str, Any]], Any]:
        """The objective the trainer calls as ``loss_fn(outputs, batch)`` in training and
        evaluation, built once after the model (default: ``self.loss``).

        Override when a term needs the model itself (a penalty on some of its weights): the
        model comes here explicitly (unwrapped from DDP; the parameters are the same), so
        ``forward`` and ``loss`` keep no state between calls.
        """
        return self.loss

    def build_metrics(self) -> Metric:
        """A fresh metric accumulator for one evaluation (the trainer adds the mean ``loss``
        unless ``evaluation_loss`` is False)."""
        return MetricCollection()

    # ---------------------------------------------------------------- predict
    def validate_input(self, sample: Any, *, source: str = "sample") -> None:
        """Raise ``ValueError`` (naming ``source``, the field, the expectation and what came;
        ``geossm.engine.inputs.check_field``) unless the model can run on ``sample``.
        Default: accept anything."""

    def preprocess(self, sample: Any, *, source: str = "sample") -> Any:
        """An in-memory sample (the arrays ``load_input`` reads from a file) checked and
        prepared as one model input, as ``load_input`` prepares a file (``geossm.Predictor``
        calls it). Default: ``validate_input``, then a shallow copy."""
        self.validate_input(sample, source=source)
        return dict(sample)

    def load_input(self, path: str | os.PathLike) -> dict[str, Any]:
        """Read one input file into a sample dict like the dataset's (default: ``.npz`` arrays,
        ``.npy`` as ``{"coord": array}``, ``.ply`` vertex properties via
        ``geossm.io.ply.read_ply``).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        suffix = path.suffix.lower()
        try:
            if suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    return {k: z[k] for k in z.files}
            if suffix == ".npy":
                # Memory-mapping first checks the header's shape against the file size, so a
                # corrupt header cannot make numpy allocate more than the file holds.
                _check_npy_header_length(path)
                try:
                    mapped = np.load(path, allow_pickle=False, mmap_mode="r")
                except ValueError as err:
                    if "Python objects" in str(err):  # object arrays are pickles: refused
                        raise ValueError("object arrays are refused (loaded with "
                                         "allow_pickle=False)") from err
                    raise
                return {"coord": np.array(mapped)}
        except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error, SyntaxError,
                tokenize.TokenError) as err:
            # numpy reports truncated or corrupt files (and .npy headers) with these
            raise ValueError(f"input file {path}: not a readable {suffix} file ({err})") from err
        if suffix == ".ply":
            from geossm.io.ply import read_ply
            return dict(read_ply(path))
        raise ValueError(f"input file {path}: expected .npz, .npy or .ply, got '{suffix}'")

    def postprocess(self, outputs: Any, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Raw outputs of one sample as numpy arrays. Default: tensor outputs (or every tensor of
        a dict output) under their keys, plus ``pred`` = argmax and ``probs`` = softmax of
        ``logits (..., C)`` when present."""
        if isinstance(outputs, torch.Tensor):
            outputs = {"logits": outputs}
        result = {k: v.detach().float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
                  for k, v in outputs.items() if isinstance(v, torch.Tensor)}
        if "logits" in result and "pred" not in result and result["logits"].ndim >= 2:
            result["pred"] = result["logits"].argmax(-1).astype(np.int64)
            result["probs"] = torch.softmax(torch.from_numpy(result["logits"]), -1).numpy()
        return result

    def write_prediction(self, sample: Mapping[str, Any], result: Mapping[str, np.ndarray],
                         path: str | os.PathLike) -> list[Path]:
        """Write ``result`` to ``path`` (``.npz``) and, when the sample has ``coord (N, 3)``, a
        ``.ply`` beside it coloured by ``pred`` (with ``label`` as ground truth if present)."""
        from geossm.viz import write_labeled_ply

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{k: np.asarray(v) for k, v in result.items()})
        written = [path]
        coord = sample.get("coord")
        if coord is not None and np.asarray(coord).ndim == 2 and np.asarray(coord).shape[1] >= 3:
            ply = path.with_suffix(".ply")
            write_labeled_ply(ply, np.asarray(coord)[:, :3], pred=result.get("pred"),
                              label=sample.get(self.target_key))
            written.append(ply)
        return written
