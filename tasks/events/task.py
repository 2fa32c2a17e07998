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

from geossm.engine.inputs import check_field
from geossm.engine.metrics import ConfusionMatrix
from geossm.engine.task import Task
from geossm.packed import pack_collate
from geossm.registry import DATASETS, TASKS

from .io import _EXTENSIONS, read_events


@TASKS.register
class EventClassificationTask(Task):
    """Classify event recordings with ``EventMambaCls`` (either mode)."""

    stack_keys = ("frames",)
    best_metric, best_mode = "acc", "max"
    #: What ``read_events`` reads (``.raw``: Prophesee EVT 2.0 / 3.0) and ready ``.npz`` arrays.
    input_suffixes = (*sorted(_EXTENSIONS), ".raw")

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
        """An event file (any ``read_events`` format, a structured ``.npz`` recording included)
        in the dataset's evaluation representation; an ``.npz`` holding a ready ``frames``
        ``(C, H, W)`` or ``events`` ``(N, 4)`` array (and optional ``label``) is taken as is.
        Either way ``validate_input`` checks what the model will read."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        source = f"input file {path}"
        if path.suffix.lower() == ".npz":
            arrays = super().load_input(path)  # allow_pickle=False; corrupt files: one line
            ready = "frames" in arrays or ("events" in arrays and not arrays["events"].dtype.names)
            if ready:
                sample = {k: arrays[k] for k in ("frames", "events", "label") if k in arrays}
                self.validate_input(sample, source=source)
                return sample
        return self.preprocess({"events": read_events(path).events}, source=source)

    def preprocess(self, sample: Mapping[str, Any], *, source: str = "sample") -> dict[str, Any]:
        """A recording ``{"events": (N,) EVENT_DTYPE, ...}`` in the dataset's evaluation
        representation (``data.representation``, ``n_time_bins``, ``max_events`` over the
        dataset class's sensor size; no dataset folder is read). The recording's ``x`` and
        ``y`` must lie on the sensor; the result is checked by ``validate_input``."""
        events = check_field(sample, "events", source=source, shape=("N",))
        if events.dtype.names is None or not {"x", "y", "t", "p"} <= set(events.dtype.names):
            raise ValueError(f"{source}: events: expected a structured array with fields x, y, "
                             f"t, p (EVENT_DTYPE), got dtype {events.dtype}")
        t = events["t"]
        if len(t) > 1 and bool(np.any(t[1:] < t[:-1])):
            # checked before the preprocessing shifts t to start at 0 (which would turn an
            # unsorted recording into negative times)
            bad = int(np.flatnonzero(t[1:] < t[:-1])[0])
            raise ValueError(f"{source}: events['t']: expected timestamps sorted ascending (as "
                             f"the readers return them), got t[{bad}] = {t[bad]} > t[{bad + 1}] "
                             f"= {t[bad + 1]}")
        width, height = self._sensor_size()[:2]
        for axis, size in (("x", width), ("y", height)):
            key = f"events['{axis}']"
            check_field({key: events[axis]}, key, source=source, kind="int", low=0, high=size,
                        note=f"(sensor {width} x {height})")
        data = self.cfg.data
        settings = {k: data[k] for k in ("representation", "n_time_bins", "max_events")
                    if k in data}
        prepared = self._dataset_class().build_preprocess(settings)(sample)
        self.validate_input(prepared, source=source)
        return prepared

    def validate_input(self, sample: Mapping[str, Any], *, source: str = "sample") -> None:
        """Raise ``ValueError`` (naming ``source``, the field, the expectation and what came)
        unless ``sample`` holds what the model reads for ``data.representation``:

        - ``frames``/``voxel``: ``frames (C, H, W)`` finite numbers, ``C = model.in_channels``,
          ``(H, W)`` the sensor's;
        - ``events``: ``events (N, 4)`` integers ``x, y, t, p`` with ``N >= 1``, ``x``/``y`` on
          the sensor, ``t >= 0``, ``p`` in {0, 1};
        - ``label`` (optional ground truth): one integer in ``[0, model.num_classes)``.
        """
        width, height = self._sensor_size()[:2]
        if str(self.cfg.data.get("representation", "frames")) == "events":
            events = check_field(sample, "events", source=source, shape=("N", 4), kind="int",
                                 note="(data.representation=events: columns x, y, t, p)")
            if len(events) == 0:
                raise ValueError(f"{source}: events: expected at least one event, got shape "
                                 "(0, 4)")
            highs = {"x": width, "y": height, "t": None, "p": 2}  # t: µs from the first event
            for column, (name, high) in enumerate(highs.items()):
                key = f"events[:, {column}] ({name})"
                check_field({key: events[:, column]}, key, source=source, kind="int", low=0,
                            high=high, note=f"(sensor {width} x {height})" if name in "xy" else "")
        else:
            channels = self.cfg.model.get("in_channels")
            check_field(sample, "frames", source=source, kind="number", finite=True,
                        shape=(channels if isinstance(channels, int) else "C", height, width),
                        note="(data.representation=frames or voxel)")
        num_classes = self.cfg.model.get("num_classes")
        if isinstance(num_classes, int):
            check_field(sample, "label", source=source, shape=(), kind="int", low=0,
                        high=num_classes, required=False,
                        note=f"(model.num_classes={num_classes})")

    def _dataset_class(self) -> type:
        return DATASETS.get(str(self.cfg.data.name))

    def _sensor_size(self) -> tuple[int, int, int]:
        """``(W, H, P)`` of the dataset class (the representation's grid)."""
        return tuple(self._dataset_class().sensor_size)

    def write_prediction(self, sample, result, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{k: np.asarray(v) for k, v in result.items()})
        return [path]


__all__ = ["EventClassificationTask"]
