"""Checkpoints: atomic writes, ``weights_only`` loading, RNG states as plain data.

A checkpoint is a dict of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)`` (no arbitrary code runs on load)::

    {"format": "geossm-checkpoint", "version": 1,
     "model": state_dict, "optimizer": ..., "scheduler": ..., "epoch": int,
     "rng": [per-rank RNG state], "best": {"metric", "mode", "value", "epoch", "metrics"},
     "last_metrics": {...}, "config": {...}}
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "geossm-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is unsafe, corrupt or not a geossm checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync'd, then
    ``os.replace`` (a crash leaves either the old file or the new one, never half of one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    A bare ``state_dict`` (a mapping of tensors, e.g. from another project) is returned as
    ``{"model": state_dict}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file holds Python objects beyond tensors and plain types (a pickle
            that could run code: refused), or is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        detail = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it holds Python objects other than tensors and "
            f"plain data, which could run code when unpickled (loaded with weights_only=True)"
            + (f"; {detail}" if detail else "")) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            return {"model": data}
        if "model" not in data:
            raise CheckpointError(
                f"checkpoint {path}: not a geossm checkpoint (keys {sorted(map(str, data))[:8]})")
    return data


# ----------------------------------------------------------------------------- RNG states

def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states as tensors and plain values (weights_only-safe)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(py_version),
                   "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "numpy": {"name": str(np_name),
                  "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``get_rng_state`` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
