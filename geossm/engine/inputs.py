"""Checks of the arrays a user hands to ``predict`` (and to a task's ``preprocess``).

Each task validates its input sample in one place (``validate_input`` or the task's
``preprocess``) with ``check_field``: one call per field states its shape, number kind, range
and finiteness, and a bad field raises one ``ValueError`` line naming where the sample came
from, the field, what was expected and what came::

    input file scan.npz: category: expected an integer in [0, 4) (model.num_categories=4), got 7
    input file scan.npz: coord: expected shape (N, 3), got (10, 2)

Shapes are checked before values and required fields before optional ones by the order of the
calls, so the first error names the first real problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

#: ``kind`` of ``check_field`` -> the numpy dtype kinds it accepts and how the message says it.
KINDS = {"int": ("iu", "integers"), "number": ("iuf", "numbers")}


def check_field(sample: Mapping[str, Any], key: str, *, source: str = "sample",
                shape: Sequence[int | str] | None = None, kind: str | None = None,
                low: float | None = None, high: float | None = None,
                ignore: int | None = None, finite: bool = False, required: bool = True,
                note: str = "") -> np.ndarray | None:
    """``sample[key]`` as a numpy array, after checking it; ``ValueError`` names what is wrong.

    Args:
        sample: the sample dict (``coord``, ``label``, ...).
        key: the field to check.
        source: where the sample came from, the start of every message (``"input file
            x.npz"``), default ``"sample"``.
        shape: expected shape, one entry per dimension: an int (that size), a name (``"N"``:
            any size) or ``">=k"`` (at least ``k``); ``()`` is a single value. Default None
            (any shape).
        kind: ``"int"`` (integer dtype, or whole floats) or ``"number"`` (integer or float);
            default None (any dtype).
        low, high: values must lie in ``[low, high)`` for ``kind="int"``, ``[low, high]``
            otherwise; either may be None (unbounded). Default None.
        ignore: one more value accepted outside the range (an ``ignore_index``), default None.
        finite: refuse NaN and inf, default False.
        required: a missing key raises (default); False returns None for it.
        note: appended to the range expectation and to the message of a missing key, e.g.
            ``"(model.num_categories=4)"``.

    Returns:
        ``as_array(sample[key])`` (no copy, no dtype change but bfloat16's), or None when absent
        and optional.
    """
    suffix = f" {note}" if note else ""
    if key not in sample or sample[key] is None:
        if required:
            of_shape = f" of {_describe_shape(shape)}" if shape else ""
            raise ValueError(f"{source}: expected '{key}'{of_shape}{suffix}, got {_keys(sample)}")
        return None
    value = as_array(sample[key])
    if shape is not None and not _shape_matches(value.shape, shape):
        raise ValueError(f"{source}: {key}: expected {_describe_shape(shape)}, got shape "
                         f"{tuple(value.shape)}")
    if kind is not None:
        _check_kind(value, key, source, kind)
    if finite and value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ValueError(f"{source}: {key}: expected finite values, got NaN or inf")
    if (low is not None or high is not None) and value.size:
        _check_range(value, key, source, kind, low, high, ignore, suffix)
    return value


def as_array(value: Any) -> np.ndarray:
    """``np.asarray(value)``, taking torch tensors on any device too: detached and moved to
    the CPU; bfloat16 (which NumPy has no dtype for) comes back as float32, exactly."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _keys(sample: Mapping[str, Any]) -> str:
    # a PyG Data lists its unset fields (x=None) among its keys: they are not there
    present = sorted(k for k, v in sample.items() if v is not None)
    return f"keys {present}" if present else "no arrays"


def _shape_matches(got: tuple[int, ...], expected: Sequence[int | str]) -> bool:
    if len(got) != len(expected):
        return False
    for size, want in zip(got, expected):
        if isinstance(want, int) and size != want:
            return False
        if isinstance(want, str) and want.startswith(">=") and size < int(want[2:]):
            return False
    return True


def _describe_shape(expected: Sequence[int | str]) -> str:
    if not len(expected):
        return "a single value (shape ())"
    dims = ", ".join(str(d) for d in expected)
    return f"shape ({dims},)" if len(expected) == 1 else f"shape ({dims})"


def _check_kind(value: np.ndarray, key: str, source: str, kind: str) -> None:
    accepted, words = KINDS[kind]
    if kind == "int" and value.dtype.kind == "f":
        # whole numbers stored as floats (a PLY property, a label saved as float) are fine
        flat = value.reshape(-1)
        whole = np.isfinite(flat) & (flat == np.round(flat))
        if whole.all():
            return
        raise ValueError(f"{source}: {key}: expected integers, got {_num(flat[~whole][0])} "
                         f"(dtype {value.dtype})")
    if value.dtype.kind not in accepted:
        raise ValueError(f"{source}: {key}: expected {words}, got dtype {value.dtype}")


def _check_range(value: np.ndarray, key: str, source: str, kind: str | None,
                 low: float | None, high: float | None, ignore: int | None,
                 suffix: str) -> None:
    counted = value if ignore is None else value[value != ignore]
    if not counted.size:
        return
    lo, hi = counted.min(), counted.max()
    below = low is not None and lo < low
    above = high is not None and (hi >= high if kind == "int" else hi > high)
    if not (below or above):
        return
    close = ")" if kind == "int" else "]"
    bounds = f"[{'-inf' if low is None else _num(low)}, {'inf' if high is None else _num(high)}"
    what = (f"an integer in {bounds}{close}" if value.ndim == 0 and kind == "int"
            else f"values in {bounds}{close}")
    if ignore is not None:
        what += f" or {ignore} (ignored)"
    got = _num(value.item()) if value.ndim == 0 else f"[{_num(lo)}, {_num(hi)}]"
    raise ValueError(f"{source}: {key}: expected {what}{suffix}, got {got}")


def _num(x: Any) -> str:
    """A number as a user wrote it: ``7``, ``0.5``, ``255`` (no ``np.int64(7)``)."""
    x = x.item() if hasattr(x, "item") else x
    return str(int(x)) if float(x).is_integer() else f"{float(x):g}"
