"""Checkpoints: atomic writes, ``weights_only`` loading, RNG states as plain data.

A checkpoint is a dict of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)`` (no arbitrary code runs on load)::

    {"format": "geossm-checkpoint", "version": 1,
     "model": state_dict, "optimizer": ..., "scheduler": ..., "epoch": int,
     "rng": [per-rank RNG state], "best": {"metric", "mode", "value", "epoch", "metrics"},
     "last_metrics": {...}, "config": {...}}
"""

from __future__ import annotations

import io
import os
import pickletools
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geossm.cache import atomic_write

FORMAT = "geossm-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is unsafe, corrupt or not a geossm checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (``geossm.cache.atomic_write``: a temporary file in
    the same folder, fsync'd, then ``os.replace``; a crash leaves either the old file or the new
    one, never half of one)."""
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, **state}
    with atomic_write(path) as f:
        torch.save(state, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    A bare ``state_dict`` (a mapping of tensors, e.g. from another project) is returned as
    ``{"model": state_dict}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is a pickle holding Python objects beyond tensors and plain
            types (it could run code: refused, the objects named), or it is not a valid
            checkpoint at all (truncated or corrupt: "cannot read checkpoint ...: not a valid
            checkpoint"), or it holds something other than a checkpoint dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt file makes torch.load raise anything
        raise _load_error(path, err) from err
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            return {"model": data}
        if "model" not in data:
            raise CheckpointError(
                f"checkpoint {path}: not a geossm checkpoint (keys {sorted(map(str, data))[:8]})")
    return data


def load_model_state(model: torch.nn.Module, checkpoint: dict[str, Any],
                     path: str | os.PathLike) -> None:
    """Load the ``model`` entry of a loaded ``checkpoint`` (read from ``path``) into ``model``,
    strict, with any DDP ``module.`` prefix dropped; ``CheckpointError`` naming the first
    mismatches when the weights do not fit the model."""
    state = {k.removeprefix("module."): v for k, v in checkpoint["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        raise CheckpointError(f"checkpoint {path} does not fit model "
                              f"{type(model).__name__}: {' '.join(lines[:3])[:400]}") from err


def _load_error(path: Path, err: Exception) -> CheckpointError:
    """What ``torch.load(weights_only=True)``'s failure ``err`` means for the user.

    Refused as unsafe only when the file really is a whole pickle naming globals that
    weights_only does not allow (a scan of its opcodes finds them; torch's own message is not
    enough: random bytes may start like a GLOBAL opcode, and a protocol-4 pickle fails on an
    opcode before torch reaches its globals); anything else that fails (random bytes, a cut
    archive, text) is a corrupt checkpoint.
    """
    lines = [ln.strip() for ln in str(err).strip().splitlines()]
    forbidden = _forbidden_globals(path)
    if forbidden:
        named = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported global" in ln), "")
        return _unsafe(path, named or "it names " + ", ".join(forbidden[:5])
                       + (f" and {len(forbidden) - 5} more" if len(forbidden) > 5 else ""))
    if path.stat().st_size == 0:
        reason = "the file is empty"
    else:
        # torch's own words, without its advice about weights_only=False (wrong here).
        reason = next((ln for key in ("Unsupported operand", "failed reading") for ln in lines
                       if key in ln), lines[0] if lines and lines[0] else type(err).__name__)
        reason = reason.split(". ")[0].rstrip(".")
        if isinstance(err, (KeyError, EOFError)):
            reason = f"{type(err).__name__} {reason}".strip()
    return CheckpointError(
        f"cannot read checkpoint {path}: not a valid checkpoint (truncated or corrupt; expected "
        f"a file written by torch.save): {reason}")


def _unsafe(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"refusing to load checkpoint {path}: it holds Python objects other than tensors and "
        f"plain data, which could run code when unpickled (loaded with weights_only=True); "
        f"{detail}")


#: Bytes of a non-archive file scanned for pickle globals (a legacy checkpoint's pickles come
#: first, its tensor bytes after them).
_SCAN_LIMIT = 64 << 20


def _forbidden_globals(path: Path) -> list[str]:
    """``module.name`` of every global outside weights_only's allowlist that the pickle(s) of
    ``path`` name; ``[]`` when it holds none or is not a well-formed pickle.

    Nothing is unpickled: ``pickletools.genops`` only decodes opcodes. A ``torch.save`` archive
    is scanned in its ``data.pkl``; another file from its start, pickle after pickle (the legacy
    format concatenates several), until one does not parse.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                stream = io.BytesIO(archive.read(member))
        else:
            with open(path, "rb") as fh:
                stream = io.BytesIO(fh.read(_SCAN_LIMIT))
    except (OSError, StopIteration, zipfile.BadZipFile, ValueError, RuntimeError):
        return []
    names: list[str] = []
    while stream.tell() < len(stream.getbuffer()):
        found = _pickle_globals(stream)
        if found is None:
            break
        names += found
    allowed = _allowed_globals()
    return [n for n in dict.fromkeys(names) if n not in allowed]


def _pickle_globals(stream: io.BytesIO) -> list[str] | None:
    """Globals one pickle of ``stream`` names (``GLOBAL`` and ``STACK_GLOBAL``), or None if no
    whole pickle starts at the stream's position."""
    # ``recent``: what the last two pushing opcodes pushed, a string or None (anything else);
    # STACK_GLOBAL takes those two. ``memo``: the memoized values, by index, the same way (every
    # MEMOIZE takes the next index, strings or not, as the unpickler's memo does).
    names: list[str] = []
    recent: list[str | None] = [None, None]
    memo: dict[int, str | None] = {}
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name == "MEMOIZE":
                memo[len(memo)] = recent[-1]
                continue
            if op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = recent[-1]
                continue
            pushed = None
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif isinstance(arg, str) and "UNICODE" in op.name:
                pushed = arg
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                pushed = memo.get(int(arg))
            elif op.name == "STACK_GLOBAL":
                module, name = recent
                names.append(f"{module}.{name}" if module is not None and name is not None
                             else "?")
            elif op.name == "STOP":
                return names
            recent = [recent[-1], pushed]
    except (ValueError, MemoryError, OverflowError, UnicodeDecodeError):
        return None
    return None  # the stream ended before STOP


def _allowed_globals() -> set[str]:
    """``module.name`` of the globals ``torch.load(weights_only=True)`` accepts."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        return set(_get_allowed_globals())
    except (ImportError, AttributeError):  # a private helper: without it, name every global
        return set()


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
