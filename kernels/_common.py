"""Validation and canonicalisation shared by the public kernel functions.

Only the public functions validate; backends receive canonical tensors (packed, contiguous,
same device) and trust them. The segment boundaries are checked and canonicalised by
``geossm.packed`` (the ``cu_seqlens`` contract).
"""

from __future__ import annotations

import sys

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


def check_triton_device(device: torch.device) -> None:
    """Triton runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``."""
    interpret = _compat.triton_interpret()
    if device.type != "cuda" and not (interpret and device.type == "cpu"):
        raise ValueError(f"backend='triton' needs CUDA tensors (or CPU tensors with "
                         f"TRITON_INTERPRET=1), got tensors on {device}")


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
        check_triton_device(device)
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


def jit_functions(module) -> list:
    """The Triton JIT functions a module holds at its top level (through the ``fn`` of an
    autotuner or heuristics wrapper)."""
    found = []
    for obj in list(vars(module).values()):
        for _ in range(4):  # unwrap Autotuner / Heuristics (each keeps the next in ``fn``)
            if type(obj).__name__ == "JITFunction" or "device_caches" in getattr(
                    obj, "__dict__", {}):
                found.append(obj)
                break
            # the instance's own attributes only: a lazy module's __getattr__ could import
            obj = getattr(obj, "__dict__", {}).get("fn")
            if obj is None:
                break
    return found


def compiled_variants(fn) -> int:
    """Compiled variants a Triton JIT function holds over all devices (one per new
    specialisation of its arguments: dtypes, constexprs, an int that is or is not 1 or a
    multiple of 16, unless listed in ``do_not_specialize``); 0 under the interpreter."""
    caches = getattr(fn, "device_caches", None) or {}
    # Triton >= 3.2: per device (kernel_cache, ...); the first item maps key -> kernel
    return sum(len(c[0]) if isinstance(c, tuple) else len(c) for c in caches.values())


def loaded_kernels(prefix: str = "geossm") -> dict:
    """``{module.kernel: JIT function}`` of every Triton kernel held by the loaded modules named
    ``prefix...``; a kernel imported into several modules is listed once."""
    found, seen = {}, set()
    for name, module in list(sys.modules.items()):
        if name.startswith(prefix) and module is not None:
            for fn in jit_functions(module):
                if id(fn) not in seen:
                    seen.add(id(fn))
                    found[f"{name}.{getattr(fn, '__name__', id(fn))}"] = fn
    return found


def triton_variants(prefix: str = "geossm") -> int:
    """Compiled Triton kernel variants held now by the JIT functions of the loaded modules
    named ``prefix...``: the difference over some steps counts the compiles they caused. 0
    where nothing compiled (the CPU, the Triton interpreter)."""
    return sum(compiled_variants(fn) for fn in loaded_kernels(prefix).values())
