"""Event-recognition datasets in their official on-disk layouts.

Every dataset yields one sample per recording as a dict, in one of three representations
(``representation``):

- ``"frames"``: ``frames (C, H, W) float32`` = ``log1p`` of event counts per polarity in
  ``n_time_bins`` equal time bins (``C = 2 * n_time_bins``, channel ``2 b + p``);
- ``"voxel"``: ``frames (n_time_bins, H, W) float32``, the bilinear event volume of Zhu et
  al. (``to_voxel_grid``), divided by its largest magnitude;
- ``"events"``: ``events (N, 4) int64`` columns ``x, y, t, p`` (t in µs from the first event),
  at most ``max_events`` of them (a random subset while training, an even stride otherwise).

plus ``label`` (int). The training split can augment (``augment: true``; the test and validation
splits never do, so one config serves every split), drawn per call: dropping
up to ``drop_rate`` of the events, a random rotation of up to ``max_rotation`` degrees and
scaling by a factor in ``[1 - max_scale, 1 + max_scale]`` about the sensor centre, and a random
translation of up to ``max_shift`` pixels (events leaving the sensor are dropped).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from geossm.registry import DATASETS
from geossm.serialization.events import to_frame, to_voxel_grid

from .io import EVENT_DTYPE, make_events, read_events

REPRESENTATIONS = ("frames", "voxel", "events")


class EventClassificationDataset(torch.utils.data.Dataset):
    """Base: a list of ``(events, label)`` recordings in memory -> samples (module docstring).

    Args:
        sensor_size: ``(W, H, 2)``.
        representation: ``"frames"`` (default), ``"voxel"`` or ``"events"``.
        n_time_bins: time bins of frames / voxel grids, default 3.
        max_events: cap of the ``"events"`` representation, default 1024.
        augment: random event dropping, rotation, scaling and translation, default False
            (the subclasses turn it off for every split but ``"train"``).
        max_shift: largest translation in pixels, default 2.
        drop_rate: largest fraction of events dropped, default 0.1.
        max_rotation: largest rotation in degrees, default 0 (none).
        max_scale: largest relative change of scale, default 0 (none).
        seed: base seed of the augmentation stream, default 0.
    """

    sensor_size: tuple[int, int, int]
    num_classes: int

    def __init__(self, representation: str = "frames", n_time_bins: int = 3,
                 max_events: int = 1024, augment: bool = False, max_shift: int = 2,
                 drop_rate: float = 0.1, max_rotation: float = 0.0, max_scale: float = 0.0,
                 seed: int = 0):
        if representation not in REPRESENTATIONS:
            raise ValueError(f"representation: expected one of {REPRESENTATIONS}, got "
                             f"{representation!r}")
        for name, value in (("n_time_bins", n_time_bins), ("max_events", max_events)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not 0.0 <= float(drop_rate) < 1.0:
            raise ValueError(f"drop_rate: expected a number in [0, 1), got {drop_rate!r}")
        if not 0.0 <= float(max_scale) < 1.0:
            raise ValueError(f"max_scale: expected a number in [0, 1), got {max_scale!r}")
        self.representation = representation
        self.n_time_bins = n_time_bins
        self.max_events = max_events
        self.augment = bool(augment)
        self.max_shift = int(max_shift)
        self.drop_rate = float(drop_rate)
        self.max_rotation = float(max_rotation)
        self.max_scale = float(max_scale)
        self.seed = int(seed)
        self.recordings: list[np.ndarray] = []
        self.labels: list[int] = []
        self._calls = 0

    def __len__(self) -> int:
        return len(self.recordings)

    def _rng(self, index: int) -> np.random.Generator:
        # A fresh stream per call: DataLoader workers and epochs see different augmentations,
        # and torch's per-epoch seeding (trainer) keeps them reproducible.
        self._calls += 1
        return np.random.default_rng([self.seed, index, self._calls,
                                      int(torch.randint(0, 2**31 - 1, ()).item())])

    def _augment(self, ev: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        w, h, _ = self.sensor_size
        if self.drop_rate > 0 and len(ev):
            keep = rng.random(len(ev)) >= rng.uniform(0, self.drop_rate)
            ev = ev[keep]
        if self.max_shift > 0 or self.max_rotation > 0 or self.max_scale > 0:
            x, y = self._warp(ev["x"].astype(np.float64), ev["y"].astype(np.float64), rng)
            inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            ev = ev[inside].copy()
            ev["x"], ev["y"] = x[inside], y[inside]
        return ev

    def _warp(self, x: np.ndarray, y: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Random rotation + scaling about the sensor centre, then an integer translation;
        ``x, y (N,) float64`` -> rounded ``(N,) int64`` pixel coordinates (may leave the sensor)."""
        w, h, _ = self.sensor_size
        angle = np.deg2rad(rng.uniform(-self.max_rotation, self.max_rotation))
        scale = rng.uniform(1.0 - self.max_scale, 1.0 + self.max_scale)
        dx, dy = rng.integers(-self.max_shift, self.max_shift + 1, size=2)
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        cos, sin = scale * np.cos(angle), scale * np.sin(angle)
        u, v = x - cx, y - cy
        return (np.rint(cos * u - sin * v + cx).astype(np.int64) + dx,
                np.rint(sin * u + cos * v + cy).astype(np.int64) + dy)

    def represent(self, ev: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """The representation of one recording ``ev (N,) EVENT_DTYPE`` (module docstring)."""
        if self.representation == "frames":
            fr = to_frame(ev, self.sensor_size, n_time_bins=self.n_time_bins)  # (B, 2, H, W)
            fr = np.log1p(fr.astype(np.float32))
            return {"frames": fr.reshape(-1, *fr.shape[2:])}
        if self.representation == "voxel":
            vox = to_voxel_grid(ev, self.sensor_size, self.n_time_bins)[:, 0]  # (B, H, W)
            scale = float(np.abs(vox).max()) if vox.size else 0.0
            return {"frames": (vox / scale if scale > 0 else vox).astype(np.float32)}
        n = len(ev)
        if n > self.max_events:
            if rng is not None:
                idx = np.sort(rng.choice(n, self.max_events, replace=False))
            else:
                idx = np.linspace(0, n - 1, self.max_events).round().astype(np.int64)
            ev = ev[idx]
        t0 = int(ev["t"][0]) if len(ev) else 0
        cols = np.stack([ev["x"].astype(np.int64), ev["y"].astype(np.int64),
                         ev["t"].astype(np.int64) - t0, ev["p"].astype(np.int64)], 1)
        return {"events": cols.reshape(-1, 4)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        ev = self.recordings[index]
        rng = None
        if self.augment:
            rng = self._rng(index)
            ev = self._augment(ev, rng)
        return {**self.represent(ev, rng), "label": int(self.labels[index])}


def _check_root(root: Any, cls: str) -> Path:
    if root is None:
        raise ValueError(f"{cls}: data.root is not set (the dataset folder in its official "
                         "layout)")
    root = Path(str(root)).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{cls}: data.root not found: {root}")
    return root


@DATASETS.register
class NMNIST(EventClassificationDataset):
    """N-MNIST (Orchard et al. 2015) in the official layout ``root/{Train,Test}/<digit>/*.bin``.

    34 x 34 sensor, 10 classes, three saccades of about 100 ms each. ``split``: ``"train"``
    (``Train/``) or ``"test"`` (``Test/``; ``"val"`` reads it too, for configs that validate).
    Recordings are read once into memory (about 20 kB each). Other arguments: see
    ``EventClassificationDataset``.
    """

    sensor_size = (34, 34, 2)
    num_classes = 10
    _FOLDERS = {"train": "Train", "test": "Test", "val": "Test"}

    def __init__(self, root: str | os.PathLike, split: str = "train", limit: int | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        root = _check_root(root, "NMNIST")
        if split not in self._FOLDERS:
            raise ValueError(f"NMNIST: split must be one of {sorted(self._FOLDERS)}, got "
                             f"{split!r}")
        folder = root / self._FOLDERS[split]
        if not folder.is_dir():
            raise FileNotFoundError(f"NMNIST: expected the folder {folder} (official layout "
                                    "Train|Test/<digit>/*.bin)")
        files = []
        for digit in range(10):
            files += [(p, digit) for p in sorted((folder / str(digit)).glob("*.bin"))]
        if not files:
            raise FileNotFoundError(f"NMNIST: no <digit>/*.bin recordings under {folder}")
        if limit is not None:
            # An even share of every digit, so tiny subsets stay balanced.
            per = {d: [f for f in files if f[1] == d] for d in range(10)}
            files = [f for i in range(int(limit)) for f in [per[i % 10][i // 10]]
                     if i // 10 < len(per[i % 10])]
        self.split, self.files = split, [f for f, _ in files]
        self.augment = self.augment and split == "train"
        for path, digit in tqdm(files, desc=f"NMNIST {split}", leave=False,
                                disable=len(files) < 200):
            self.recordings.append(read_events(path, "nmnist").events)
            self.labels.append(digit)


@DATASETS.register
class DVSGesture(EventClassificationDataset):
    """DVS128 Gesture (Amir et al. 2017), 128 x 128 sensor, 11 classes, in either of two layouts
    (``layout``: ``"official"``, ``"tonic"`` or ``"auto"``, the default, which picks by the files
    under ``root``).

    ``"official"``, the unpacked ``DvsGesture.tar.gz``::

        root/trials_to_train.txt, root/trials_to_test.txt      # one user*_*.aedat per line
        root/userNN_<lighting>.aedat                            # AEDAT 3.1 recordings
        root/userNN_<lighting>_labels.csv                      # class,startTime_usec,endTime_usec

    One sample per labelled gesture (classes 1-11 -> labels 0-10), events with
    ``start <= t < end``.

    ``"tonic"``, tonic's preprocessed release (``ibmGestureTrain.tar.gz`` /
    ``ibmGestureTest.tar.gz``, gestures already cut out)::

        root/ibmGestureTrain/userNN_<lighting>/<label>.npy     # (N, 4) columns x, y, p, t [ms]
        root/ibmGestureTest/...

    with ``<label>`` 0-10; times are converted to µs. Not tested on the real recordings here
    (not available offline): the tests write files in both layouts.
    """

    sensor_size = (128, 128, 2)
    num_classes = 11
    LAYOUTS = ("auto", "official", "tonic")
    _TRIALS = {"train": "trials_to_train.txt", "test": "trials_to_test.txt",
               "val": "trials_to_test.txt"}
    _TONIC = {"train": "ibmGestureTrain", "test": "ibmGestureTest", "val": "ibmGestureTest"}

    def __init__(self, root: str | os.PathLike, split: str = "train", layout: str = "auto",
                 **kwargs: Any):
        kwargs.setdefault("max_shift", 8)
        super().__init__(**kwargs)
        root = _check_root(root, "DVSGesture")
        if split not in self._TRIALS:
            raise ValueError(f"DVSGesture: split must be one of {sorted(self._TRIALS)}, got "
                             f"{split!r}")
        if layout not in self.LAYOUTS:
            raise ValueError(f"DVSGesture: layout must be one of {self.LAYOUTS}, got {layout!r}")
        if layout == "auto":
            layout = "tonic" if any((root / d).is_dir() for d in self._TONIC.values()) \
                else "official"
        self.split, self.layout = split, layout
        self.augment = self.augment and split == "train"
        if layout == "tonic":
            self._read_tonic(root / self._TONIC[split])
        else:
            self._read_official(root, root / self._TRIALS[split])

    def _read_official(self, root: Path, listing: Path) -> None:
        if not listing.is_file():
            raise FileNotFoundError(f"DVSGesture: expected {listing} (official layout), or "
                                    f"{root}/ibmGestureTrain|ibmGestureTest (tonic's layout)")
        trials = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        for trial in tqdm(trials, desc=f"DVSGesture {self.split}", leave=False):
            path = root / trial
            labels = path.with_name(path.stem + "_labels.csv")
            if not labels.is_file():
                raise FileNotFoundError(f"DVSGesture: labels file not found: {labels}")
            ev = read_events(path, "aedat3").events
            for cls, start, end in self._label_rows(labels):
                lo, hi = np.searchsorted(ev["t"], [start, end])
                self.recordings.append(np.ascontiguousarray(ev[lo:hi]))
                self.labels.append(cls - 1)

    def _label_rows(self, labels: Path) -> list[tuple[int, int, int]]:
        rows = []
        with open(labels, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    cls = int(row["class"])
                    start, end = int(row["startTime_usec"]), int(row["endTime_usec"])
                except (KeyError, TypeError, ValueError) as err:
                    raise ValueError(f"{labels}: expected columns class, startTime_usec, "
                                     f"endTime_usec with integers, got {row}") from err
                if not 1 <= cls <= self.num_classes:
                    raise ValueError(f"{labels}: class must be in 1..{self.num_classes}, "
                                     f"got {cls}")
                rows.append((cls, start, end))
        return rows

    def _read_tonic(self, folder: Path) -> None:
        if not folder.is_dir():
            raise FileNotFoundError(f"DVSGesture: expected the folder {folder} (tonic's layout "
                                    "ibmGestureTrain|ibmGestureTest/<user>/<label>.npy)")
        files = sorted(folder.glob("*/*.npy"))
        if not files:
            raise FileNotFoundError(f"DVSGesture: no <user>/<label>.npy files under {folder}")
        w, h, _ = self.sensor_size
        for path in tqdm(files, desc=f"DVSGesture {self.split}", leave=False):
            if not path.stem.isdigit() or not 0 <= int(path.stem) < self.num_classes:
                raise ValueError(f"{path}: expected a file named <label>.npy with label in "
                                 f"0..{self.num_classes - 1}")
            arr = np.load(path, allow_pickle=False)
            if arr.ndim != 2 or arr.shape[1] != 4:
                raise ValueError(f"{path}: expected an (N, 4) array x, y, p, t, got shape "
                                 f"{arr.shape}")
            x, y = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
            if len(arr) and (x.min() < 0 or y.min() < 0 or x.max() >= w or y.max() >= h):
                raise ValueError(f"{path}: x, y outside the {w} x {h} sensor")
            # tonic stores milliseconds (float); the library's convention is integer µs.
            t = np.rint(arr[:, 3].astype(np.float64) * 1000.0).astype(np.int64)
            ev = make_events(x, y, t, arr[:, 2])
            self.recordings.append(ev[np.argsort(t, kind="stable")])
            self.labels.append(int(path.stem))


__all__ = ["EventClassificationDataset", "NMNIST", "DVSGesture", "REPRESENTATIONS",
           "EVENT_DTYPE"]
