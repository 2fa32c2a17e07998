"""Event-recognition datasets in their official on-disk layouts.

Every dataset yields one sample per recording as a dict: the recording in the representation
``data.representation`` (``"frames"``, ``"voxel"`` or ``"events"``; see
``transforms.EventPreprocess``, which ``predict`` shares) plus ``label`` (int). The training
split applies the transforms of ``augment`` first (the test and validation splits never do, so
one config serves every split), e.g. ``[{name: DropEvent, max_rate: 0.1}, {name: RandomAffine,
max_rotation: 15, max_scale: 0.15, max_shift: 3}]``.

Loading is lazy, as in tonic: construction indexes the files (and, for DVS128 Gesture's AEDAT
recordings, the labelled gesture segments from the small label files), and ``__getitem__`` reads
the one recording it needs, so full N-MNIST / DVS128 Gesture need no more memory than a sample.
``cache_recordings=True`` keeps every decoded recording in memory after its first read.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geossm.registry import DATASETS
from geossm.transforms import Compose, build_transforms

from .io import EVENT_DTYPE, make_events, read_events
from .transforms import EventPreprocess


class _Recordings(Sequence):
    """``dataset.recordings[i]``: recording ``i`` as ``(N,) EVENT_DTYPE``, read on access."""

    def __init__(self, dataset: "EventClassificationDataset"):
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> np.ndarray:
        return self._dataset.recording(index)


class EventClassificationDataset(torch.utils.data.Dataset):
    """Base: an index of recordings (``self.items``, one entry per sample, and ``self.labels``)
    read one at a time by ``read_recording`` -> samples (module docstring).

    Args:
        training: apply ``augment`` (the subclasses set it for the ``"train"`` split only),
            default False.
        augment: transform specs (``geossm.transforms``), default none.
        seed: base seed of the augmentation stream, default 0.
        cache_recordings: keep each decoded recording in memory after its first read, default
            False (every ``__getitem__`` reads its file).
        **preprocess: ``EventPreprocess`` settings: ``representation`` (default ``"frames"``),
            ``n_time_bins`` (3), ``max_events`` (1024).
    """

    sensor_size: tuple[int, int, int]
    num_classes: int

    def __init__(self, training: bool = False, augment: Sequence[Mapping[str, Any]] | None = None,
                 seed: int = 0, cache_recordings: bool = False, **preprocess: Any):
        self.preprocess = self.build_preprocess(preprocess)
        self.augment = build_transforms(augment) if training else Compose()
        self.seed = int(seed)
        if not isinstance(cache_recordings, bool):
            raise TypeError(f"cache_recordings: expected True or False, got "
                            f"{cache_recordings!r}")
        self._cache: dict[int, np.ndarray] | None = {} if cache_recordings else None
        self.items: list[Any] = []
        self.labels: list[int] = []
        self._calls = 0

    @property
    def recordings(self) -> Sequence[np.ndarray]:
        """The recordings as a sequence that reads each on access (nothing is held)."""
        return _Recordings(self)

    def read_recording(self, item: Any) -> np.ndarray:
        """Recording ``(N,) EVENT_DTYPE`` (sorted by ``t``) of one entry of ``self.items``."""
        raise NotImplementedError

    def recording(self, index: int) -> np.ndarray:
        """Recording ``index``, read now (or from the cache with ``cache_recordings``)."""
        if self._cache is None:
            return self.read_recording(self.items[index])
        if index not in self._cache:
            self._cache[index] = self.read_recording(self.items[index])
        return self._cache[index]

    @classmethod
    def build_preprocess(cls, settings: Mapping[str, Any]) -> EventPreprocess:
        """The ``EventPreprocess`` of this dataset class (its sensor size) with ``settings``
        (e.g. from ``data.*``). Needs no files, so ``predict`` builds it from the config."""
        return EventPreprocess(cls.sensor_size, **settings)

    def __len__(self) -> int:
        return len(self.items)

    def _rng(self, index: int) -> np.random.Generator:
        # A fresh stream per call: DataLoader workers and epochs see different augmentations,
        # and torch's per-epoch seeding (trainer) keeps them reproducible.
        self._calls += 1
        return np.random.default_rng([self.seed, index, self._calls,
                                      int(torch.randint(0, 2**31 - 1, ()).item())])

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = {"events": self.recording(index), "sensor_size": self.sensor_size,
                  "label": int(self.labels[index])}
        # augmented samples also draw their "events" subset from the stream (even stride else)
        rng = self._rng(index) if self.augment else None
        return self.preprocess(self.augment(sample, rng), rng)


#: What each reader expects in ``data.root``, for the message of a missing folder.
ROOT_LAYOUTS = {
    "NMNIST": "Train/<digit>/*.bin and Test/<digit>/*.bin (the unpacked official archives)",
    "DVSGesture": "trials_to_train.txt, trials_to_test.txt and user*_*.aedat with their "
                  "_labels.csv (the unpacked DvsGesture.tar.gz), or tonic's ibmGestureTrain/ "
                  "and ibmGestureTest/",
}


def _check_root(root: Any, cls: str) -> Path:
    if root is None:
        raise ValueError(f"{cls}: data.root is not set (the dataset folder in its official "
                         "layout)")
    root = Path(str(root)).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{cls}: data.root not found: {root}; set data.root=PATH to "
                                f"the folder holding {ROOT_LAYOUTS[cls]}")
    return root


@DATASETS.register
class NMNIST(EventClassificationDataset):
    """N-MNIST (Orchard et al. 2015) in the official layout ``root/{Train,Test}/<digit>/*.bin``.

    34 x 34 sensor, 10 classes, three saccades of about 100 ms each. ``split``: ``"train"``
    (``Train/``) or ``"test"`` (``Test/``; ``"val"`` reads it too, for configs that validate).
    Each ``.bin`` file is read when its sample is (about 20 kB each). ``augment`` applies to
    ``"train"`` only. Other arguments: see ``EventClassificationDataset``.
    """

    sensor_size = (34, 34, 2)
    num_classes = 10
    _FOLDERS = {"train": "Train", "test": "Test", "val": "Test"}

    def __init__(self, root: str | os.PathLike, split: str = "train", limit: int | None = None,
                 **kwargs: Any):
        super().__init__(training=split == "train", **kwargs)
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
            # (a digit with fewer recordings than its share gives what it has)
            files = [per[i % 10][i // 10] for i in range(int(limit))
                     if i // 10 < len(per[i % 10])]
        self.split, self.files = split, [f for f, _ in files]
        self.items, self.labels = list(self.files), [digit for _, digit in files]

    def read_recording(self, item: Path) -> np.ndarray:
        return read_events(item, "nmnist").events


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
    ``start <= t < end``. Construction reads the label files only; a sample reads its
    ``.aedat`` file (the last one read is kept, so consecutive gestures of one trial read it
    once).

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
        super().__init__(training=split == "train", **kwargs)
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
        self._last_trial: tuple[Path | None, np.ndarray | None] = (None, None)
        if layout == "tonic":
            self._read_tonic(root / self._TONIC[split])
        else:
            self._read_official(root, root / self._TRIALS[split])

    def _read_official(self, root: Path, listing: Path) -> None:
        if not listing.is_file():
            raise FileNotFoundError(f"DVSGesture: expected {listing} (official layout), or "
                                    f"{root}/ibmGestureTrain|ibmGestureTest (tonic's layout)")
        trials = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        for trial in trials:
            path = root / trial
            labels = path.with_name(path.stem + "_labels.csv")
            if not labels.is_file():
                raise FileNotFoundError(f"DVSGesture: labels file not found: {labels}")
            for cls, start, end in self._label_rows(labels):
                self.items.append(("aedat3", path, start, end))
                self.labels.append(cls - 1)

    def read_recording(self, item: tuple) -> np.ndarray:
        if item[0] == "npy":
            return self._read_npy(item[1])
        _, path, start, end = item
        if self._last_trial[0] != path:
            # consecutive gestures of one trial (the usual order) read its file once
            self._last_trial = (path, read_events(path, "aedat3").events)
        ev = self._last_trial[1]
        lo, hi = np.searchsorted(ev["t"], [start, end])
        return ev[lo:hi].copy()  # a copy: the sample must not pin the whole trial

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
        for path in files:
            if not path.stem.isdigit() or not 0 <= int(path.stem) < self.num_classes:
                raise ValueError(f"{path}: expected a file named <label>.npy with label in "
                                 f"0..{self.num_classes - 1}")
            # the shape is in the .npy header: a memory map checks it without reading the data
            self._check_shape(path, np.load(path, mmap_mode="r", allow_pickle=False))
            self.items.append(("npy", path))
            self.labels.append(int(path.stem))

    @staticmethod
    def _check_shape(path: Path, arr: np.ndarray) -> None:
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"{path}: expected an (N, 4) array x, y, p, t, got shape "
                             f"{arr.shape}")

    def _read_npy(self, path: Path) -> np.ndarray:
        w, h, _ = self.sensor_size
        arr = np.load(path, allow_pickle=False)  # shape checked when the index was built
        x, y = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
        if len(arr) and (x.min() < 0 or y.min() < 0 or x.max() >= w or y.max() >= h):
            raise ValueError(f"{path}: x, y outside the {w} x {h} sensor")
        # tonic stores milliseconds (float); the library's convention is integer µs.
        t = np.rint(arr[:, 3].astype(np.float64) * 1000.0).astype(np.int64)
        ev = make_events(x, y, t, arr[:, 2])
        return ev[np.argsort(t, kind="stable")]



__all__ = ["EventClassificationDataset", "NMNIST", "DVSGesture", "EVENT_DTYPE"]
