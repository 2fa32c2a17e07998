"""Validation and canonicalisation shared by the public kernel functions.

Only the public functions validate; backends receive canonical tensors (packed, contiguous,
same device) and trust them.
"""

from __future__ import annotations

import torch

from geossm import _compat

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKENDS = ("torch", "numba", "triton")
# Probed once (find_spec imports nothing), so that torch.compile traces no import machinery.
HAS_TRITON = _compat.has_triton()
HAS_NUMBA = _compat.has_numba()


def check_tensor(name: str, value, *, ndims: tuple[int, ...], floating: bool = True) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is a tensor of one of ``ndims`` ranks."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float32, float16 or bfloat16, got dtype {value.dtype}")
    if value.dim() not in ndims:
        ranks = " or ".join(str(n) for n in ndims)
        raise ValueError(
            f"{name} must have {ranks} dimensions, got shape {tuple(value.shape)}")


def check_shape(name: str, value: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
    """Raise ``ValueError`` unless ``value.shape == expected``; ``what`` spells the expectation."""
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {what} = {tuple(expected)}, "
                         f"got {tuple(value.shape)}")


def check_same_device(reference: torch.Tensor, **tensors) -> None:
    """Raise ``ValueError`` if any given tensor is on another device than ``reference``."""
    for name, value in tensors.items():
        if value is not None and value.device != reference.device:
            raise ValueError(f"{name} must be on {reference.device} like the input, "
                             f"got {value.device}")


INT32_MAX = 2**31 - 1


def check_int32_tokens(total: int) -> None:
    """Raise ``ValueError`` when ``total`` tokens cannot be indexed by int32 ``cu_seqlens``."""
    if total > INT32_MAX:
        raise ValueError(f"T={total} tokens do not fit int32 cu_seqlens (max {INT32_MAX})")


def dense_cu_seqlens(batch: int, length: int, device: torch.device) -> torch.Tensor:
    """``(batch+1,) int32`` boundaries of a dense ``(batch, length, ...)`` input.

    Checked before the int32 product, which would otherwise wrap for ``batch*length >= 2^31``.
    """
    check_int32_tokens(batch * length)
    return torch.arange(0, batch + 1, device=device, dtype=torch.int32) * length


# cu_seqlens tensors whose values passed the checks: (id, in-place version, T) -> (the tensor,
# its int32 form). The layers of a model (and its backward) share one cu_seqlens per batch, so
# only the first call pays the host sync; an in-place change bumps the version and is checked
# again. Holding the tensor keeps its id from being reused while the entry lives.
_VALIDATED_CU: dict = {}
_VALIDATED_CU_SIZE = 16


def tensor_version(tensor: torch.Tensor):
    """In-place version counter of ``tensor``, or None for inference tensors (they have none)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def canonical_cu_seqlens(cu_seqlens, total: int, device: torch.device) -> torch.Tensor:
    """Validate ``cu_seqlens`` and return it as int32 on ``device``.

    ``None`` means one segment over all ``total`` tokens. Checking the values needs a host
    sync (skipped while ``torch.compile`` traces, where the values are not known), paid once
    per tensor: later calls with the same, unmodified tensor reuse the result (a change made
    in place through ``.data`` escapes the version counter and is not seen).
    """
    if cu_seqlens is None:
        return torch.tensor([0, total], dtype=torch.int32, device=device)
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 or int64, got dtype {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError("cu_seqlens must be 1-D with at least 2 entries (S+1,), "
                         f"got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens must be on {device} like the input, got {cu_seqlens.device}")
    if torch.compiler.is_compiling():
        return cu_seqlens.to(torch.int32).contiguous()
    key = (id(cu_seqlens), tensor_version(cu_seqlens), total)
    hit = _VALIDATED_CU.get(key)
    if hit is not None and hit[0] is cu_seqlens and key[1] is not None:
        return hit[1]
    values = cu_seqlens.detach().cpu()
    if int(values[0]) != 0:
        raise ValueError(f"cu_seqlens must start with 0, got {int(values[0])}")
    if int(values[-1]) != total:
        raise ValueError(f"cu_seqlens must end with the number of tokens T={total}, "
                         f"got {int(values[-1])}")
    steps = values[1:] - values[:-1]
    if bool((steps < 0).any()):
        where = int(torch.nonzero(steps < 0)[0])
        raise ValueError("cu_seqlens must be non-decreasing, got "
                         f"cu_seqlens[{where}]={int(values[where])} > "
                         f"cu_seqlens[{where + 1}]={int(values[where + 1])}")
    check_int32_tokens(total)
    canonical = cu_seqlens.to(torch.int32).contiguous()
    if key[1] is not None:
        if len(_VALIDATED_CU) >= _VALIDATED_CU_SIZE:
            _VALIDATED_CU.pop(next(iter(_VALIDATED_CU)))
        _VALIDATED_CU[key] = (cu_seqlens, canonical)
    return canonical


def resolve_backend(backend, device: torch.device) -> str:
    """Pick the backend: triton for CUDA tensors, numba for CPU; validate an explicit choice."""
    if backend is None:
        if device.type == "cuda" and HAS_TRITON:
            return "triton"
        if device.type == "cpu" and HAS_NUMBA:
            return "numba"
        return "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"backend='numba' needs CPU tensors, got tensors on {device}")
    if backend == "triton":
        interpret = _compat.triton_interpret()
        if device.type != "cuda" and not (interpret and device.type == "cpu"):
            raise ValueError(f"backend='triton' needs CUDA tensors (or CPU tensors with "
                             f"TRITON_INTERPRET=1), got tensors on {device}")
    missing = (backend == "triton" and not HAS_TRITON) or (backend == "numba" and not HAS_NUMBA)
    if missing:
        _compat.require(backend, f"backend={backend!r}")  # raises with the install hint
    return backend


def segment_bounds(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token first and one-past-last token index of its segment.

    Shapes: ``cu_seqlens: (S+1,)`` -> ``start, end: (T,)`` int64.
    """
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    start = torch.repeat_interleave(cu[:-1], lengths)
    end = torch.repeat_interleave(cu[1:], lengths)
    return start, end
