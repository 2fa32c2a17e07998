"""Events stored as arrays: ``.npy`` (structured or ``(N, 4)``), ``.npz`` (``events`` or
``x, y, t, p``) and HDF5 (``events/x, y, t, p`` datasets, read through h5py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .base import EventFileError, Reader, make_events


def _from_array(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.dtype.names:
        missing = [f for f in "xytp" if f not in arr.dtype.names]
        if missing:
            raise EventFileError(path, None, f"{what}: structured array lacks fields {missing} "
                                             f"(has {arr.dtype.names})")
        return make_events(arr["x"], arr["y"], arr["t"], arr["p"])
    if arr.ndim == 2 and arr.shape[1] == 4:
        return make_events(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])
    raise EventFileError(path, None, f"{what}: expected a structured array with fields x, y, "
                                     f"t, p or shape (N, 4), got dtype {arr.dtype} shape "
                                     f"{arr.shape}")


class NPYReader(Reader):
    """``.npy``: a structured array with fields x, y, t, p or an ``(N, 4)`` array, read
    memory-mapped."""

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            raise self.error(None, f"cannot read .npy ({err})") from err
        for i in range(0, len(arr), n):
            yield _from_array(np.asarray(arr[i:i + n]), self.path, ".npy")


class NPZReader(Reader):
    """``.npz``: an ``events`` array or ``x``, ``y``, ``t``, ``p`` arrays; an optional
    ``sensor_size``."""

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if "sensor_size" in z.files:
                    s = [int(v) for v in np.asarray(z["sensor_size"]).reshape(-1)]
                    self.sensor_size = (s[0], s[1], s[2] if len(s) > 2 else 2)
        except (ValueError, OSError, EOFError) as err:
            raise self.error(None, f"cannot read .npz ({err})") from err

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if "events" in z.files:
                    ev = _from_array(z["events"], self.path, ".npz 'events'")
                elif all(k in z.files for k in "xytp"):
                    ev = make_events(z["x"], z["y"], z["t"], z["p"])
                else:
                    raise self.error(None, f".npz: expected an 'events' array or 'x', 'y', 't', "
                                           f"'p' arrays, got {z.files}")
        except (OSError, EOFError, __import__("zipfile").BadZipFile) as err:
            raise self.error(None, f"cannot read .npz ({err})") from err
        for i in range(0, len(ev), n):
            yield ev[i:i + n]


class HDF5Reader(Reader):
    """HDF5: ``events/x, y, t, p`` datasets; the geometry from ``sensor_size`` or ``width`` /
    ``height`` attributes of the group or the file."""

    def __init__(self, path: Path):
        from geossm._compat import require
        super().__init__(path)
        self.h5py = require("h5py", "HDF5 event files")
        with self._file() as f:
            if "events" not in f:
                raise self.error(None, f"HDF5: expected a group 'events' with x, y, t, p "
                                       f"datasets, got keys {list(f.keys())}")
            g = f["events"]
            missing = [k for k in "xytp" if k not in g]
            if missing:
                raise self.error(None, f"HDF5: group 'events' lacks datasets {missing}")
            lengths = {k: g[k].shape[0] for k in "xytp"}
            if len(set(lengths.values())) != 1:
                raise self.error(None, f"HDF5: events/x, y, t, p differ in length {lengths}")
            self.length = lengths["t"]
            for node in (g, f):
                a = dict(node.attrs)
                if "sensor_size" in a:
                    s = [int(v) for v in np.asarray(a["sensor_size"]).reshape(-1)]
                    self.sensor_size = (s[0], s[1], s[2] if len(s) > 2 else 2)
                    break
                if "width" in a and "height" in a:
                    self.sensor_size = (int(a["width"]), int(a["height"]), 2)
                    break

    def _file(self):
        try:
            return self.h5py.File(self.path, "r")
        except OSError as err:
            raise self.error(None, f"cannot open HDF5 ({err})") from err

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        with self._file() as f:
            g = f["events"]
            for i in range(0, self.length, n):
                try:
                    cols = [g[k][i:i + n] for k in "xytp"]
                except OSError as err:
                    raise self.error(None, f"HDF5: cannot read events {i}..{i + n} ({err})"
                                     ) from err
                yield make_events(*cols)
