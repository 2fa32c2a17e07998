"""Tracking sequences as training pairs or whole sequences: ``SyntheticTracking`` (the shipped
simulator), ``EventVOT`` and ``FE108`` (official layouts)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from geossm.cache import build_once, cache_root, is_whole_npz
from geossm.registry import DATASETS

from ..io import make_events, read_events
from ..simulator import simulate
from .crops import box_center_side, crop, event_frames


class _TrackingSequences(torch.utils.data.Dataset):
    """Sequences ``(events, boxes, times, sensor)`` -> training pairs or whole sequences.

    ``mode="pairs"`` (training): ``samples_per_sequence`` random items per sequence per epoch,
    each a template crop (a frame before the search frame, mostly the first), ``memory_size``
    memory crops from earlier frames, a search crop around the jittered target and the target
    cell / offset / size. ``mode="sequences"`` (evaluation): one item per sequence with
    ``frames (K, 2, H, W)`` and ``boxes (K, 4)``.
    """

    def __init__(self, mode: str = "pairs", window_us: int = 10_000,
                 samples_per_sequence: int = 16, template_size: int = 32, search_size: int = 64,
                 patch_size: int = 8, memory_size: int = 4, template_factor: float = 2.0,
                 search_factor: float = 4.0, center_jitter: float = 0.25,
                 scale_jitter: float = 0.15, seed: int = 0):
        if mode not in ("pairs", "sequences"):
            raise ValueError(f"mode: expected 'pairs' or 'sequences', got {mode!r}")
        self.mode, self.window_us = mode, int(window_us)
        self.samples_per_sequence = int(samples_per_sequence)
        self.template_size, self.search_size = template_size, search_size
        self.grid = search_size // patch_size
        self.memory_size = memory_size
        self.template_factor, self.search_factor = template_factor, search_factor
        self.center_jitter, self.scale_jitter = center_jitter, scale_jitter
        self.seed = seed
        self.frames: list[np.ndarray] = []
        self.boxes: list[np.ndarray] = []
        self.names: list[str] = []
        self._calls = 0

    def add(self, name: str, events: np.ndarray, boxes: np.ndarray, times: np.ndarray,
            sensor_size: Sequence[int]) -> None:
        self.names.append(name)
        self.frames.append(event_frames(events, times, sensor_size, self.window_us))
        self.boxes.append(np.asarray(boxes, np.float32))

    def __len__(self) -> int:
        n = len(self.frames)
        return n * self.samples_per_sequence if self.mode == "pairs" else n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.mode == "sequences":
            return {"frames": self.frames[index], "boxes": self.boxes[index]}
        seq = index // self.samples_per_sequence
        self._calls += 1
        rng = np.random.default_rng([self.seed, index, self._calls,
                                     int(torch.randint(0, 2**31 - 1, ()).item())])
        frames = torch.from_numpy(self.frames[seq])
        boxes = torch.from_numpy(self.boxes[seq])
        k = len(boxes)
        i = int(rng.integers(1, k))
        j = 0 if rng.random() < 0.5 else int(rng.integers(0, i))
        mem_idx = np.sort(rng.integers(0, i, self.memory_size)) if self.memory_size else []

        def jittered(idx: int, cj: float, sj: float, factor: float) -> tuple:
            c, s = box_center_side(boxes[idx:idx + 1], factor)
            s = s * float(np.exp(rng.uniform(-sj, sj)))
            c = c + torch.from_numpy(rng.uniform(-cj, cj, 2)).float() * s
            return c, s

        c, s = jittered(j, 0.05, 0.05, self.template_factor)
        template = crop(frames[j:j + 1], c, s, self.template_size)[0]
        memory = [crop(frames[m:m + 1], *jittered(int(m), 0.1, 0.1, self.template_factor),
                       self.template_size)[0] for m in mem_idx]
        c, s = jittered(i, self.center_jitter, self.scale_jitter, self.search_factor)
        search = crop(frames[i:i + 1], c, s, self.search_size)[0]
        box = boxes[i]
        # Target in search-crop units (0..1 over the crop side).
        u = (box[0] + box[2] / 2 - (c[0, 0] - s[0] / 2)) / s[0]
        v = (box[1] + box[3] / 2 - (c[0, 1] - s[0] / 2)) / s[0]
        g = self.grid
        col = int(np.clip(math.floor(float(u) * g), 0, g - 1))
        row = int(np.clip(math.floor(float(v) * g), 0, g - 1))
        offset = np.clip([float(u) * g - col, float(v) * g - row], 0, 1)
        size = np.clip([float(box[2] / s[0]), float(box[3] / s[0])], 0, 1)
        item = {"template": template.numpy(), "search": search.numpy(),
                "cell": row * g + col, "offset": np.asarray(offset, np.float32),
                "size": np.asarray(size, np.float32)}
        if self.memory_size:
            item["memory"] = torch.stack(memory).numpy()
        return item


@DATASETS.register
class SyntheticTracking(_TrackingSequences):
    """Sequences of the shipped event simulator (``geossm.tasks.events.simulator``).

    ``split="train"`` uses seeds ``seed .. seed + num_sequences - 1``; ``"val"`` / ``"test"``
    use ``num_test_sequences`` held-out seeds from ``seed + 100_000`` on. Training yields pairs,
    evaluation whole sequences. Simulated sequences are cached as ``.npz`` under ``cache_dir``
    (default: ``$GEOSSM_CACHE`` or ``~/.cache/geossm``, then ``synthetic_tracking/``), each
    simulated once by one of the processes started together and written whole
    (``geossm.cache.build_once``).

    Args:
        root: unused (the data is generated); accepted for the config convention.
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_sequences, num_test_sequences: default 32 and 8.
        sim: keyword arguments of ``simulate`` (sensor size, frames, speeds ...).
        Others: see ``_TrackingSequences``.
    """

    def __init__(self, root: str | None = None, split: str = "train", num_sequences: int = 32,
                 num_test_sequences: int = 8, sim: Mapping[str, Any] | None = None,
                 cache_dir: str | None = None, seed: int = 0, **kwargs: Any):
        if split not in ("train", "val", "test"):
            raise ValueError(f"SyntheticTracking: split must be train, val or test, got "
                             f"{split!r}")
        kwargs.setdefault("mode", "pairs" if split == "train" else "sequences")
        super().__init__(seed=seed, **kwargs)
        sim = dict(sim or {})
        seeds = (range(seed, seed + num_sequences) if split == "train"
                 else range(seed + 100_000, seed + 100_000 + num_test_sequences))
        cache = (Path(cache_dir) if cache_dir else cache_root()) / "synthetic_tracking"
        tag = "_".join(f"{k}{v}" for k, v in sorted(sim.items())) or "default"
        for s in tqdm(list(seeds), desc=f"simulate {split}", leave=False):
            seq = _cached_sequence(cache / f"{tag}_seed{s}.npz", s, sim)
            self.add(f"seed{s}", *seq)


_SEQUENCE_KEYS = ("events", "boxes", "times", "sensor_size")


def _cached_sequence(path: Path, seed: int, sim: Mapping[str, Any]) -> tuple:
    """``(events, boxes, times, sensor_size)`` of ``simulate(seed, **sim)``, simulated once
    into the ``.npz`` cache ``path`` by one of the processes that ask at once
    (``geossm.cache.build_once``); a broken file (an older version's, torn) is simulated again.
    A cache that cannot be written (read-only) only costs time: the sequence is simulated here.
    """
    def build(tmp: Path) -> None:
        r = simulate(seed, **sim)
        np.savez(tmp, events=r.events, boxes=r.boxes, times=r.times,
                 sensor_size=np.asarray(r.sensor_size))

    try:
        build_once(path, build, valid=lambda p: is_whole_npz(p, _SEQUENCE_KEYS))
    except OSError:
        r = simulate(seed, **sim)
        return r.events, r.boxes, r.times, r.sensor_size
    with np.load(path, allow_pickle=False) as z:
        return z["events"], z["boxes"], z["times"], tuple(z["sensor_size"])


def _read_boxes(path: Path) -> np.ndarray:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        vals = [v for v in re.split(r"[,\s]+", line.strip()) if v]
        try:
            rows.append([float(v) for v in vals[:4]])
        except ValueError as err:
            raise ValueError(f"{path}: line {n}: expected 4 numbers x, y, w, h, got "
                             f"{line!r}") from err
        if len(vals) < 4:
            raise ValueError(f"{path}: line {n}: expected 4 numbers x, y, w, h, got {line!r}")
    if not rows:
        raise ValueError(f"{path}: no boxes")
    return np.asarray(rows, np.float64)


def _frame_times(seq_dir: Path, events: np.ndarray, n: int) -> np.ndarray:
    """Frame timestamps: ``timestamps.txt`` (µs, one per box) when present, else ``n`` times
    evenly spaced over the recording, ending at its last event."""
    ts = seq_dir / "timestamps.txt"
    if ts.is_file():
        times = np.loadtxt(ts, dtype=np.float64, ndmin=1)
        if len(times) != n:
            raise ValueError(f"{ts}: expected {n} timestamps (one per box), got {len(times)}")
        return times.astype(np.int64)
    if not len(events):
        return np.zeros(n, np.int64)
    t0, t1 = int(events["t"][0]), int(events["t"][-1])
    return np.linspace(t0, t1, n + 1)[1:].round().astype(np.int64)


def _read_csv_events(path: Path) -> np.ndarray:
    """EventVOT ``<seq>.csv``: columns named x, y, t|timestamp, p|polarity (any order), or
    four unnamed columns t, x, y, p."""
    with open(path, newline="") as f:
        first = f.readline()
    names = [c.strip().lower() for c in first.split(",")]
    has_header = any(c and not re.fullmatch(r"[-+.\deE]+", c) for c in names)
    data = np.loadtxt(path, delimiter=",", skiprows=1 if has_header else 0, ndmin=2)
    if data.shape[1] < 4:
        raise ValueError(f"{path}: expected 4 columns of events, got {data.shape[1]}")
    if has_header:
        alias = {"x": ("x",), "y": ("y",), "t": ("t", "timestamp", "ts", "time"),
                 "p": ("p", "polarity", "pol", "on")}
        col = {}
        for key, options in alias.items():
            found = [i for i, n in enumerate(names) if n in options]
            if not found:
                raise ValueError(f"{path}: no column for '{key}' in header {names}")
            col[key] = found[0]
    else:
        col = {"t": 0, "x": 1, "y": 2, "p": 3}
    ev = make_events(data[:, col["x"]], data[:, col["y"]], data[:, col["t"]], data[:, col["p"]])
    return ev[np.argsort(ev["t"], kind="stable")]


class _RealTracking(_TrackingSequences):
    split_dirs: dict[str, tuple[str, ...]] = {}

    def _split_dir(self, root: Path, split: str) -> Path:
        if split not in self.split_dirs:
            raise ValueError(f"{type(self).__name__}: split must be one of "
                             f"{sorted(self.split_dirs)}, got {split!r}")
        for name in self.split_dirs[split]:
            if (root / name).is_dir():
                return root / name
        raise FileNotFoundError(f"{type(self).__name__}: none of "
                                f"{[str(root / n) for n in self.split_dirs[split]]} exists")

    def _files(self, sequence_dir: Path) -> tuple[Path, Path]:
        """``(ground-truth file, event file)`` of one sequence folder in the dataset's layout."""
        raise NotImplementedError

    def _sequence_dirs(self, root: str | os.PathLike, split: str,
                       sequences: Sequence[str] | None) -> Iterator[tuple[Path, Path, Path]]:
        """``(sequence folder, ground-truth file, event file)`` of every sequence of ``split``,
        with a progress bar; a missing folder or file raises naming it."""
        name = type(self).__name__
        folder = self._split_dir(Path(str(root)), split)
        dirs = sorted(d for d in folder.iterdir() if d.is_dir())
        if sequences is not None:
            dirs = [d for d in dirs if d.name in set(sequences)]
        if not dirs:
            raise FileNotFoundError(f"{name}: no sequence folders under {folder}")
        for d in tqdm(dirs, desc=f"{name} {split}", leave=False):
            gt, ev_file = self._files(d)
            for p in (gt, ev_file):
                if not p.is_file():
                    raise FileNotFoundError(f"{name}: expected {p} (official layout)")
            yield d, gt, ev_file


@DATASETS.register
class EventVOT(_RealTracking):
    """EventVOT (Wang et al. 2024) in its official layout::

        root/{train,test,val}/<sequence>/<sequence>.csv     raw events (x, y, t, p columns)
        root/{train,test,val}/<sequence>/groundtruth.txt    x,y,w,h per frame
        root/{train,test,val}/<sequence>/absent.txt         optional

    1280 x 720 sensor. Frame times come from ``timestamps.txt`` when present, else are spaced
    evenly over the recording. Untested on the real dataset (not available offline).
    """

    split_dirs = {"train": ("train", "Training Subset"), "test": ("test", "Testing Subset"),
                  "val": ("val", "validating Subset")}
    sensor_size = (1280, 720, 2)

    def _files(self, sequence_dir: Path) -> tuple[Path, Path]:
        return sequence_dir / "groundtruth.txt", sequence_dir / f"{sequence_dir.name}.csv"

    def __init__(self, root: str | os.PathLike, split: str = "test",
                 sequences: Sequence[str] | None = None, **kwargs: Any):
        kwargs.setdefault("mode", "pairs" if split == "train" else "sequences")
        super().__init__(**kwargs)
        for d, gt, ev_file in self._sequence_dirs(root, split, sequences):
            events = _read_csv_events(ev_file)
            boxes = _read_boxes(gt)
            self.add(d.name, events, boxes, _frame_times(d, events, len(boxes)),
                     self.sensor_size)


@DATASETS.register
class FE108(_RealTracking):
    """FE108 (Zhang et al. 2021) in its official layout::

        root/{train,test}/<sequence>/events.aedat4          DAVIS346 events (+ APS frames)
        root/{train,test}/<sequence>/groundtruth_rect.txt   x,y,w,h per APS frame

    346 x 260 sensor. Frame times come from ``timestamps.txt`` (µs, one per box) when present,
    else are spaced evenly over the recording (the APS frame stream is not decoded here).
    Untested on the real dataset (not available offline).
    """

    split_dirs = {"train": ("train",), "test": ("test",), "val": ("test",)}
    sensor_size = (346, 260, 2)

    def _files(self, sequence_dir: Path) -> tuple[Path, Path]:
        return sequence_dir / "groundtruth_rect.txt", sequence_dir / "events.aedat4"

    def __init__(self, root: str | os.PathLike, split: str = "test",
                 sequences: Sequence[str] | None = None, **kwargs: Any):
        kwargs.setdefault("mode", "pairs" if split == "train" else "sequences")
        super().__init__(**kwargs)
        for d, gt, ev_file in self._sequence_dirs(root, split, sequences):
            rec = read_events(ev_file, "aedat4")
            boxes = _read_boxes(gt)
            self.add(d.name, rec.events, boxes, _frame_times(d, rec.events, len(boxes)),
                     rec.sensor_size or self.sensor_size)
