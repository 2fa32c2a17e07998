"""From a checkpoint to predictions, in memory or on files: ``load`` and ``Predictor``.

A checkpoint stores its run's config, so it alone rebuilds the task and the model::

    import geossm
    model, cfg = geossm.load("best.pt")                 # eval mode, on the best device
    predictor = geossm.predictor("best.pt")             # = Predictor.from_checkpoint
    out = predictor(coord=xyz, color=rgb)               # {"logits", "pred", ...} numpy arrays
    out = predictor(data)                               # a PyG Data for the graph tasks

``Predictor`` runs the task's own steps, the ones ``geossm predict`` runs on files (one code
path for both)::

    sample = task.preprocess(arrays)     # or task.load_input(path): checked, prepared
    batch = task.collate(SplitSamples([sample], "predict"))   # collated as evaluation
    result = task.postprocess(task.predict_step(model, batch), batch)   # dict of numpy arrays

What ``result`` holds is the task's (``postprocess``): segmentation ``logits (N, C)`` and
``pred (N,)`` per prepared (grid-sampled) point; classification and event recognition
``logits (1, C)`` and ``pred (1,)``; detection ``pred_boxes (M, 7)``, ``pred_scores (M,)``,
``pred_labels (M,)`` (1-based) and ``pred_names``; graph tasks ``logits`` and ``pred`` per node
or per graph (regression targets, Peptides-struct: ``pred (1, K)`` values only); tracking
``tracks (1, K, 4)``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from geossm.config import DEFAULTS, apply_overrides, find_config, load_config
from geossm.engine import distributed as dist
from geossm.engine.checkpoint import load_checkpoint, load_model_state
from geossm.engine.inputs import as_array
from geossm.engine.task import SplitSamples, Task, build_task, move_to

__all__ = ["Predictor", "load", "load_model", "inference_config", "checkpoint_config",
           "prediction_path", "input_files"]


def checkpoint_config(checkpoint: Mapping[str, Any], source: str | os.PathLike,
                      overrides: Sequence[str] = ()) -> DictConfig:
    """The run config stored in a loaded ``checkpoint`` (over ``DEFAULTS``), with ``overrides``
    (``key=value`` strings) applied; ``ValueError`` when the checkpoint holds none (a bare
    state dict: pass a CONFIG then)."""
    stored = checkpoint.get("config")
    if not isinstance(stored, Mapping) or not stored.get("task"):
        raise ValueError(f"checkpoint {source}: holds no run config (a bare state dict?); "
                         "give the CONFIG it was trained with (geossm predict CONFIG "
                         "checkpoint=...; in Python config=PATH or name: geossm.load, "
                         "geossm.predictor, Predictor.from_checkpoint)")
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.create(dict(stored)))
    cfg = apply_overrides(cfg, overrides)
    OmegaConf.set_struct(cfg, True)
    return cfg


def load_model(checkpoint: str | os.PathLike, *, config: str | os.PathLike | None = None,
               overrides: Sequence[str] = (), device: str | torch.device | None = None
               ) -> tuple[torch.nn.Module, Task, DictConfig]:
    """``(model, task, cfg)`` of ``checkpoint``: the config stored in it (or ``config``, a path
    or name, when given: it then replaces the stored one), ``overrides`` applied, the task
    built from ``cfg.task``, the model from the task, the weights loaded (``weights_only``),
    the model in eval mode on ``device`` (default ``cfg.device``; ``auto``: CUDA if available).
    """
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    if config is not None:
        cfg = load_config(find_config(config), overrides)
    else:
        cfg = checkpoint_config(ckpt, checkpoint, overrides)
    task = build_task(inference_config(cfg))
    model = task.build_model()
    load_model_state(model, ckpt, checkpoint)
    target = dist.resolve_device(str(device) if device is not None else cfg.device)
    return model.to(target).eval(), task, cfg


def inference_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the options of the training step turned off, in place: evaluation and
    prediction run no training step, so a run trained with its step replayed as a CUDA graph
    (``train.cuda_graph``: CUDA only) or on padded batches (``train.static_batch``; ``auto``
    reads the training set) is evaluated and used on any device, without its training data."""
    cfg.train.cuda_graph = False
    cfg.train.static_batch = None
    return cfg


def load(checkpoint: str | os.PathLike, *, device: str | torch.device | None = None,
         config: str | os.PathLike | None = None,
         overrides: Sequence[str] = ()) -> tuple[torch.nn.Module, DictConfig]:
    """``model, cfg = load("best.pt")``: the model of a checkpoint in eval mode on ``device``
    (default ``auto``: CUDA if available, else CPU) and its run config (see ``load_model``;
    ``config``: the run config of a bare state dict)."""
    model, _, cfg = load_model(checkpoint, config=config, overrides=overrides,
                               device="auto" if device is None else device)
    return model, cfg


def prediction_path(input_path: Path, output: str | os.PathLike | None = None,
                    root: Path | None = None) -> Path:
    """Where the prediction of ``input_path`` goes: ``output`` (suffix made ``.npz``) for one
    file; for a file of folder ``root``, ``<output or root>/<relative path>.pred.npz``; by
    default ``<input without suffix>.pred.npz`` beside it."""
    name = input_path.with_suffix("").name + ".pred.npz"
    if root is not None:
        base = Path(output) if output else root
        return base / input_path.relative_to(root).parent / name
    if output:
        out = Path(output)
        return out if out.suffix == ".npz" else out.with_suffix(".npz")
    return input_path.with_name(name)


def input_files(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    """The files of ``folder`` (not its subfolders) whose suffix is one of ``suffixes``, sorted;
    earlier predictions (``*.pred.npz`` / ``*.pred.ply``) are left out. ``ValueError`` when none."""
    wanted = {s.lower() for s in suffixes}
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted
                   and not p.stem.endswith(".pred"))
    if not files:
        raise ValueError(f"input folder {folder}: expected files ending in "
                         f"{', '.join(sorted(wanted))}, found none")
    return files


class Predictor:
    """A model and its task, run on one sample at a time with no gradients.

    Args:
        model: the task's model (put in eval mode here).
        task: the task the model was trained for (its ``preprocess``, ``collate``,
            ``predict_step``, ``postprocess``).
        device: where batches go, default the model's device.
        amp: bf16 autocast on CUDA (as training used with ``train.amp``), default False.
    """

    def __init__(self, model: torch.nn.Module, task: Task,
                 device: str | torch.device | None = None, amp: bool = False) -> None:
        self.model = model.eval()
        self.task = task
        first = next(model.parameters(), None)
        self.device = torch.device(device) if device is not None else (
            first.device if first is not None else torch.device("cpu"))
        self.amp = amp and self.device.type == "cuda"

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, *,
                        device: str | torch.device | None = "auto",
                        config: str | os.PathLike | None = None,
                        overrides: Sequence[str] = ()) -> Predictor:
        """The predictor of ``checkpoint``: config from the checkpoint unless ``config``;
        ``device`` default ``auto`` (CUDA if available), None: the config's ``device``; see
        ``load_model``."""
        model, task, cfg = load_model(checkpoint, config=config, overrides=overrides,
                                      device=device)
        return cls(model, task, amp=bool(cfg.train.amp))

    @property
    def cfg(self) -> DictConfig:
        """The run config."""
        return self.task.cfg

    def __call__(self, sample: Any = None, /, **fields: Any) -> dict[str, np.ndarray]:
        """Predict one in-memory sample: a mapping of arrays (or the arrays as keywords, e.g.
        ``coord=``, ``feat`` keys, ``events=``, ``frames=``, ``points=``) or a PyG ``Data``.
        It is checked and prepared by ``task.preprocess`` as ``geossm predict`` prepares a
        file; returns ``task.postprocess``'s dict of numpy arrays."""
        if sample is None:
            sample = fields
        elif fields:
            if not isinstance(sample, Mapping):
                raise TypeError(f"Predictor: give a {type(sample).__name__} alone or keyword "
                                f"arrays, not both (got keywords {sorted(fields)})")
            sample = {**sample, **fields}
        if isinstance(sample, Mapping):
            # tensors on any device and in any dtype (bfloat16 too) read as numpy arrays
            sample = {k: as_array(v) if isinstance(v, torch.Tensor) else v
                      for k, v in sample.items()}
        return self.run(self.task.preprocess(sample, source="sample"))

    @torch.no_grad()
    def run(self, prepared: Any) -> dict[str, np.ndarray]:
        """The task's outputs on one prepared sample (``preprocess`` / ``load_input``'s)."""
        # marked as prediction: a task whose training batches differ (random plans, padding)
        # collates it as it collates evaluation batches
        batch = move_to(self.task.collate(SplitSamples([prepared], "predict")), self.device)
        autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if self.amp
                    else contextlib.nullcontext())
        with autocast:
            outputs = self.task.predict_step(self.model, batch)
        return self.task.postprocess(outputs, batch)

    def predict_file(self, path: str | os.PathLike,
                     output: str | os.PathLike | None = None) -> list[Path]:
        """Predict one input file (``task.load_input``) and write what ``task.write_prediction``
        writes to ``output`` (default ``<input>.pred.npz``); returns the written paths."""
        path = Path(path)
        sample = self.task.load_input(path)
        return self.task.write_prediction(sample, self.run(sample), prediction_path(path, output))

    def predict_path(self, path: str | os.PathLike, output: str | os.PathLike | None = None,
                     progress: bool | None = None) -> list[Path]:
        """``predict_file`` on a file, or on every file of a folder that the task reads
        (``task.input_suffixes``), each written to ``<output or folder>/<name>.pred.npz``,
        with a tqdm progress bar (``progress`` None: shown on a terminal only)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        if not path.is_dir():
            return self.predict_file(path, output)
        from tqdm.auto import tqdm
        written: list[Path] = []
        files = input_files(path, self.task.input_suffixes)
        for file in tqdm(files, desc="predict", unit="file", dynamic_ncols=True,
                         disable=None if progress is None else not progress):
            written += self.predict_file(file, prediction_path(file, output, root=path))
        return written
