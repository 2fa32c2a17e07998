"""Packed sequences: the one home of the ``cu_seqlens`` contract.

Many variable-length sequences are packed one after another into ``(T, D)``, without padding;
their boundaries are ``cu_seqlens (S+1,) int32`` with a leading 0 and a last value ``T`` (the
FlashAttention / flash-linear-attention convention). Segment ``s`` is
``x[cu_seqlens[s]:cu_seqlens[s+1]]``; two equal boundaries make an empty segment. A dense
``(Bt, L, D)`` batch is the same as ``Bt`` segments of ``L`` tokens.

Every room of the library builds and checks boundaries through this module:

- the int32 limit: ``INT32_MAX``, ``check_int32_tokens`` (2^31 tokens or more are refused
  before anything that large is built, summed or cast, so boundaries never wrap);
- conversions: lengths -> ``cu_seqlens`` (``cu_seqlens_from_lengths``), dense shape ->
  ``cu_seqlens`` (``dense_cu_seqlens``), per-token segment index <-> ``cu_seqlens``
  (``batch_to_cu_seqlens``, ``cu_seqlens_to_batch``);
- validation: ``check_cu_seqlens`` under the rule of its caller (``KERNEL``, ``LAYER``,
  ``SERIALIZATION``, ``TOKENS``, ``INDEX``) and ``canonical_cu_seqlens``, the kernels' form;
- ``pack_collate``: per-sample dicts -> one packed batch with its ``cu_seqlens``.

It imports only torch and numpy, so ``geossm.kernels`` and ``geossm.serialization`` both use it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "INT32_MAX", "check_int32_tokens",
    "cu_seqlens_from_lengths", "dense_cu_seqlens", "batch_to_cu_seqlens", "cu_seqlens_to_batch",
    "CuSeqlensRule", "KERNEL", "LAYER", "SERIALIZATION", "TOKENS", "INDEX",
    "check_cu_seqlens", "check_none_for_dense", "canonical_cu_seqlens", "tensor_version",
    "mark_cu_seqlens_valid",
    "pack_collate",
]

# ------------------------------------------------------------------------- the int32 limit

# The largest token count int32 cu_seqlens can hold (the FlashAttention convention's dtype).
INT32_MAX = 2**31 - 1


def check_int32_tokens(total: int, name: str | None = None) -> None:
    """Raise ``ValueError`` when ``total`` tokens would wrap int32 ``cu_seqlens``.

    Call it with the count *before* anything of that size is allocated, summed or cast, so that
    a batch of 2^31 tokens or more is refused instead of producing negative boundaries.

    Args:
        total: the number of tokens.
        name: what is counted, for the message (``"pack_collate: 'coord'"``); default None =
            the packed tokens ``T`` of a kernel call.
    """
    if not isinstance(total, int):  # a symbolic size (torch.export): refuse at run time
        torch._check(total <= INT32_MAX, lambda: f"{name or 'T'}: more tokens than int32 "
                     "cu_seqlens hold")
        return
    if total > INT32_MAX:
        what = f"T={total}" if name is None else f"{name}: {total}"
        raise ValueError(f"{what} tokens do not fit int32 cu_seqlens (max {INT32_MAX} = "
                         "2^31 - 1); expected fewer tokens per batch")


# --------------------------------------------------------------------------- conversions

def _is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype}, device={value.device})"
    return f"{type(value).__name__} {value!r}"


def _check_tensor(name: str, value, ndim: int | None = None) -> None:
    """Raise ``TypeError`` unless ``value`` is a tensor, ``ValueError`` unless it has ``ndim``
    dims (None: any); ``geossm.serialization`` checks its arguments with it too."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {_describe(value)}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(value.shape)}")


def cu_seqlens_from_lengths(lengths, name: str = "lengths") -> Tensor:
    """``cu_seqlens (S+1,) int32`` with a leading 0 from per-segment lengths.

    The sum is taken in int64 and checked before the cast (``check_int32_tokens``), so it
    cannot wrap. One host sync for the checks.

    Args:
        lengths: ``(S,)`` non-negative integer tensor, or a sequence of ints (the result is then
            on the CPU).
        name: what the lengths are, for the error message, default ``"lengths"``.
    """
    if isinstance(lengths, Tensor):
        _check_tensor(name, lengths, 1)
        if not _is_integer(lengths.dtype):
            raise TypeError(f"{name}: expected an integer tensor, got dtype {lengths.dtype}")
        counts = lengths.long()
    else:
        counts = torch.as_tensor(list(lengths), dtype=torch.int64)
    cu = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    if counts.numel():
        if int(counts.min()) < 0:
            raise ValueError(f"{name}: expected non-negative lengths, got min {int(counts.min())}")
        torch.cumsum(counts, 0, out=cu[1:])
        check_int32_tokens(int(cu[-1]), name)
    return cu.to(torch.int32)


def dense_cu_seqlens(batch: int, length: int, device: torch.device) -> Tensor:
    """``(batch+1,) int32`` boundaries of a dense ``(batch, length, ...)`` input.

    Checked before the int32 product, which would otherwise wrap for ``batch*length >= 2^31``.
    """
    check_int32_tokens(batch * length)
    return torch.arange(0, batch + 1, device=device, dtype=torch.int32) * length


def batch_to_cu_seqlens(batch: Tensor, num_segments: int | None = None) -> Tensor:
    """Segment boundaries from per-token sample indices.

    ``cu_seqlens[s+1] - cu_seqlens[s] = #{i : batch[i] == s}``; the packed tensor must already be
    grouped by sample (as after ``serialize``). Empty samples give empty segments.

    Args:
        batch: ``(N,)`` integer sample index of every token, values in ``[0, S)``.
        num_segments: ``S`` (default ``batch.max() + 1``, one host sync; 0 when ``N == 0``).

    Returns:
        ``cu_seqlens: (S+1,) int32``.

    Raises ``ValueError`` for negative indices, indices ``>= num_segments`` and ``N >= 2^31``
    (int32 boundaries would wrap).
    """
    _check_tensor("batch", batch, 1)
    if not _is_integer(batch.dtype):
        raise TypeError(f"batch: expected an integer tensor, got dtype {batch.dtype}")
    check_int32_tokens(batch.numel(), "batch")
    if batch.numel() and int(batch.min()) < 0:
        raise ValueError(f"batch: expected non-negative sample indices, got min {int(batch.min())}")
    if num_segments is None:
        num_segments = int(batch.max()) + 1 if batch.numel() else 0
    elif batch.numel() and int(batch.max()) >= num_segments:
        raise ValueError(
            f"batch: expected values < num_segments = {num_segments}, got max {int(batch.max())}"
        )
    counts = torch.bincount(batch.long(), minlength=num_segments)
    cu = torch.zeros(num_segments + 1, dtype=torch.int32, device=batch.device)
    cu[1:] = torch.cumsum(counts, 0)  # <= N, checked above to fit int32
    return cu


def cu_seqlens_to_batch(cu_seqlens: Tensor, total: int | None = None) -> Tensor:
    """Segment index of every packed token: ``batch[i] = s`` for ``cu[s] <= i < cu[s+1]``.

    Args:
        cu_seqlens: ``(S+1,)`` int32 (or int64) with a leading 0 (``INDEX`` rule: the values are
            not checked).
        total: ``N = cu_seqlens[-1]``; pass it to avoid a host sync.

    Returns:
        ``batch: (N,) long``.
    """
    check_cu_seqlens(cu_seqlens, INDEX)
    seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    if total is None:
        total = int(cu_seqlens[-1])
    ids = torch.arange(seqlens.numel(), device=cu_seqlens.device)
    return torch.repeat_interleave(ids, seqlens, output_size=total)


# ---------------------------------------------------------------------------- validation

# The messages, per check: (exception, the kernels' wording "cu_seqlens must ...", the
# serializers' wording "cu_seqlens: expected ..., got ..."); a refused dtype raises the rule's
# dtype_error instead. docs/errors.md quotes them and tests match them.
_MUST_SHAPE = "{name} must be 1-D with at least {entries} entries (S+1,), got shape {shape}"
_MESSAGES = {
    "type": (TypeError, "{name} must be a torch.Tensor, got {type}",
             "{name}: expected a torch.Tensor, got {described}"),
    "rank": (ValueError, _MUST_SHAPE, "{name}: expected a 1-D tensor, got shape {shape}"),
    "entries": (ValueError, _MUST_SHAPE,
                "{name}: expected shape (S+1,) with S >= {min_segments}, got shape {shape}"),
    "dtype": (None, "{name} must be {dtype_names}, got dtype {dtype}",
              "{name}: expected dtype {dtypes}, got {dtype}"),
    "device": (ValueError, "{name} must be on {device} like {like}, got {got}",
               "{name}: expected device {device} (that of {like}), got {got}"),
    "first": (ValueError, "{name} must start with 0, got {first}",
              "{name}: expected a leading 0, got {name}[0] = {first}"),
    "last": (ValueError, "{name} must end with the number of tokens T={total}, got {last}",
             "{name}: expected the last value to be N = {total}, got {last}"),
    "order": (ValueError, "{name} must be non-decreasing, got {name}[{i}]={a} > {name}[{j}]={b}",
              "{name}: expected non-decreasing values, got {name}[{i}] = {a} > "
              "{name}[{j}] = {b}"),
}
# The layers check the kind only and say so in one message; otherwise they word as the kernels.
_LAYER_KIND = ("{name} must be a 1-D int32 tensor (S+1,) with a leading 0, got shape {shape} "
               "and dtype {dtype}")
_LAYER_MESSAGES = {"type": "{name} must be a torch.Tensor or None, got {type}",
                   "rank": _LAYER_KIND, "entries": _LAYER_KIND, "dtype": _LAYER_KIND}


@dataclass(frozen=True)
class CuSeqlensRule:
    """What a kind of caller accepts as ``cu_seqlens``, and how it words a refusal.

    Attributes:
        dtypes: accepted dtypes: ``(torch.int32,)`` (the contract's), or int32 and int64 where
            the caller converts.
        min_segments: the fewest segments ``S`` (1 for the kernels; 0 allows an empty batch).
        values: also check the values (leading 0, non-decreasing, last = the token count, which
            must fit int32): a host sync, paid once per tensor and skipped while
            ``torch.compile`` traces. False checks the kind and shape only, with no host sync.
        wording: the error messages: ``"must"`` (kernels), ``"expected"`` (serialization) or
            ``"layer"`` (one message for any wrong kind of tensor; see ``_MESSAGES``).
        dtype_error: the exception a refused dtype raises.
    """

    dtypes: tuple[torch.dtype, ...]
    min_segments: int
    values: bool
    wording: str
    dtype_error: type[Exception]


_INT32_OR_64 = (torch.int32, torch.int64)
#: Kernel calls: int32 or int64, at least one segment, values checked.
KERNEL = CuSeqlensRule(_INT32_OR_64, 1, True, "must", TypeError)
#: Layers (``Mamba``, ``DropPath``): the kind only, no host sync; the kernels check the values.
LAYER = CuSeqlensRule(_INT32_OR_64, 0, False, "layer", ValueError)
#: ``Serialization``: int32 as stored, empty batches allowed, values checked.
SERIALIZATION = CuSeqlensRule((torch.int32,), 0, True, "expected", ValueError)
#: Helpers that build new boundaries without a host sync (``insert_tokens``): int32, kind only.
TOKENS = CuSeqlensRule((torch.int32,), 0, False, "expected", ValueError)
#: Helpers that only index with the boundaries (``cu_seqlens_to_batch``): int32 or int64.
INDEX = CuSeqlensRule(_INT32_OR_64, 0, False, "expected", TypeError)


def _fail(wording: str, check: str, name: str = "cu_seqlens",
          error: type[Exception] | None = None, **fields) -> NoReturn:
    """Raise the message of ``check`` in ``wording`` (``error`` overrides its exception)."""
    default, must, expected = _MESSAGES[check]
    template = {"must": must, "expected": expected,
                "layer": _LAYER_MESSAGES.get(check, must)}[wording]
    raise (error or default)(template.format(name=name, **fields))


def check_cu_seqlens(cu_seqlens, rule: CuSeqlensRule, total: int | None = None, *,
                     device: torch.device | None = None, like: str = "the input") -> None:
    """Raise ``TypeError``/``ValueError`` unless ``cu_seqlens`` follows ``rule``.

    Checks in this order: a tensor, 1-D, a dtype of ``rule.dtypes``, at least
    ``rule.min_segments + 1`` entries, on ``device``; then, for a rule with ``values``, that
    ``total`` fits int32, ``cu_seqlens[0] == 0``, ``cu_seqlens[-1] == total`` and no value is
    below the one before it.

    Args:
        cu_seqlens: ``(S+1,)`` boundaries.
        rule: the caller's rule: ``KERNEL``, ``LAYER``, ``SERIALIZATION``, ``TOKENS`` or ``INDEX``.
        total: the number of packed tokens ``T``; needed when ``rule.values``.
        device: the device ``cu_seqlens`` must be on, default None (not checked).
        like: what sets ``device``, for the message (``"the input"``, ``"order"``).

    Host sync: with ``rule.values``, one per tensor: a tensor that passed keeps passing, without
    a sync, until it is changed in place (a change through ``.data`` escapes the version counter
    and is not seen). None while ``torch.compile`` traces (the values are not known then).
    """
    _check_kind(cu_seqlens, rule, device, like)
    if rule.values:
        if total is None:
            raise TypeError("check_cu_seqlens: a rule that checks values needs total")
        _validated_int32(cu_seqlens, rule, total)


def check_none_for_dense(cu_seqlens) -> None:
    """Raise ``ValueError`` when ``cu_seqlens`` comes with a dense ``(Bt, L, D)`` input.

    A dense batch has its own boundaries (``Bt`` segments of ``L`` tokens).
    """
    if cu_seqlens is not None:
        raise ValueError("cu_seqlens must be None for dense (Bt, L, D) input, got a tensor; "
                         "pass packed (T, D) input to give segment boundaries")


def canonical_cu_seqlens(cu_seqlens, token_shape: tuple[int, ...],
                         device: torch.device) -> Tensor:
    """The boundaries a kernel runs on: ``(S+1,)`` int32, contiguous, on ``device``.

    Args:
        cu_seqlens: the caller's boundaries (``KERNEL`` rule) or None.
        token_shape: ``(T,)`` for packed input (None = one segment of ``T`` tokens), or
            ``(Bt, L)`` for dense input (``Bt`` segments of ``L``; ``cu_seqlens`` must be None).
        device: the input's device.

    Host sync: as ``check_cu_seqlens``; the int32 copy of an int64 tensor is kept with its
    check, so the layers of a model (and its backward) share one.
    """
    if len(token_shape) == 2:
        check_none_for_dense(cu_seqlens)
        return dense_cu_seqlens(token_shape[0], token_shape[1], device)
    (total,) = token_shape
    if cu_seqlens is None:
        check_int32_tokens(total)
        return torch.tensor([0, total], dtype=torch.int32, device=device)
    _check_kind(cu_seqlens, KERNEL, device, "the input")
    return _validated_int32(cu_seqlens, KERNEL, total)


def _check_kind(cu_seqlens, rule: CuSeqlensRule, device, like: str) -> None:
    """The checks that need no host sync: type, rank, dtype, size and device."""
    if not isinstance(cu_seqlens, Tensor):
        _fail(rule.wording, "type", type=type(cu_seqlens).__name__,
              described=_describe(cu_seqlens))
    if cu_seqlens.dim() != 1:
        failed = "rank"
    elif cu_seqlens.dtype not in rule.dtypes:
        failed = "dtype"
    elif cu_seqlens.numel() < rule.min_segments + 1:
        failed = "entries"
    elif device is not None and cu_seqlens.device != device:
        _fail(rule.wording, "device", device=device, like=like, got=cu_seqlens.device)
    else:
        return
    _fail(rule.wording, failed, error=rule.dtype_error if failed == "dtype" else None,
          shape=tuple(cu_seqlens.shape), dtype=cu_seqlens.dtype,
          dtypes=" or ".join(map(str, rule.dtypes)),
          dtype_names=" or ".join(str(d).removeprefix("torch.") for d in rule.dtypes),
          entries=rule.min_segments + 1, min_segments=rule.min_segments)


# cu_seqlens tensors whose values passed the checks: (id, in-place version, T) -> (the tensor,
# its int32 form). The layers of a model (and its backward) share one cu_seqlens per batch, so
# only the first call pays the host sync; an in-place change bumps the version and is checked
# again. Holding the tensor keeps its id from being reused while the entry lives.
_VALIDATED_CU: dict = {}
_VALIDATED_CU_SIZE = 16


def tensor_version(tensor: Tensor):
    """In-place version counter of ``tensor``, or None for inference tensors (they have none)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def _validated_int32(cu_seqlens: Tensor, rule: CuSeqlensRule, total: int) -> Tensor:
    """Check the values of ``cu_seqlens`` (once per tensor); return it as contiguous int32."""
    if torch.compiler.is_compiling():
        return cu_seqlens.to(torch.int32).contiguous()
    # The kernels' message counts T; the serializers' names the tensor.
    check_int32_tokens(total, "cu_seqlens" if rule.wording == "expected" else None)
    key = (id(cu_seqlens), tensor_version(cu_seqlens), total)
    hit = _VALIDATED_CU.get(key)
    if hit is not None and hit[0] is cu_seqlens and key[1] is not None:
        return hit[1]
    values = cu_seqlens.detach().cpu()
    first, last = int(values[0]), int(values[-1])
    if first != 0:
        _fail(rule.wording, "first", first=first)
    if last != total:
        _fail(rule.wording, "last", total=total, last=last)
    falls = torch.nonzero(values[1:] < values[:-1])  # compared: int32 differences could wrap
    if falls.numel():
        i = int(falls[0, 0])
        _fail(rule.wording, "order", i=i, a=int(values[i]), j=i + 1, b=int(values[i + 1]))
    canonical = cu_seqlens.to(torch.int32).contiguous()
    if key[1] is not None:
        if len(_VALIDATED_CU) >= _VALIDATED_CU_SIZE:
            _VALIDATED_CU.pop(next(iter(_VALIDATED_CU)))
        _VALIDATED_CU[key] = (cu_seqlens, canonical)
    return canonical


# ------------------------------------------------------------------------------- collate

def mark_cu_seqlens_valid(cu_seqlens: Tensor, total: int) -> None:
    """Record that ``cu_seqlens`` (int32, contiguous) is valid for ``total`` tokens: the
    kernels' check of its values (a host copy: a sync on the GPU) is skipped until it changes.
    For constructors that lay the boundaries out on the host from numbers they already hold.
    Raises ``ValueError`` for another dtype or layout. A no-op under ``torch.compile``, where
    the check it skips is not run either (and a traced tensor has no identity to record)."""
    if torch.compiler.is_compiling():
        return
    if cu_seqlens.dtype != torch.int32 or not cu_seqlens.is_contiguous():
        raise ValueError(f"cu_seqlens: expected a contiguous int32 tensor, got "
                         f"{cu_seqlens.dtype}{'' if cu_seqlens.is_contiguous() else ' strided'}")
    key = (id(cu_seqlens), tensor_version(cu_seqlens), int(total))
    if key[1] is None:
        return
    if len(_VALIDATED_CU) >= _VALIDATED_CU_SIZE:
        _VALIDATED_CU.pop(next(iter(_VALIDATED_CU)))
    _VALIDATED_CU[key] = (cu_seqlens, cu_seqlens)


def pack_collate(samples: Sequence[Mapping[str, Any]], *, stack_keys: Sequence[str] = (),
                 length_key: str | None = None) -> dict[str, Any]:
    """Pack per-sample dicts into one batch without padding.

    For every key:

    - arrays / tensors with ``ndim >= 1`` are concatenated along dim 0 (variable length);
    - keys in ``stack_keys`` are stacked into a new leading batch dim (fixed per-sample shape);
    - numbers and 0-d arrays become a ``(B,)`` tensor; strings and other objects a list.

    Added keys:

    - ``cu_seqlens (B+1,) int32``: boundaries of the packed sequences along ``length_key``
      (default: the first concatenated key), with a leading 0;
    - ``batch (N,) int64``: sample index of every row of ``length_key``;
    - ``<key>_cu_seqlens (B+1,) int32`` for each other concatenated key whose per-sample lengths
      differ from those of ``length_key`` (e.g. boxes next to points).

    Shapes: sample ``x: (N_i, ...)`` -> batch ``x: (sum N_i, ...)``.

    A sample with zero rows gives an empty segment (``cu_seqlens = [0, 2, 2, 5]``); a batch whose
    every sample has zero rows of ``length_key`` is refused, since no model output can be
    computed from it (a loss over it would be NaN, a pooled feature undefined).

    Raises ``ValueError`` for an empty list, samples with different keys, a batch whose samples
    are all empty, and concatenated totals of 2^31 rows or more (int32 ``cu_seqlens`` would
    wrap); all checked before anything is concatenated.
    """
    if not samples:
        raise ValueError("pack_collate: expected at least one sample, got an empty list")
    keys = list(samples[0].keys())
    for i, s in enumerate(samples):
        if list(s.keys()) != keys:
            raise ValueError(f"pack_collate: sample {i} has keys {sorted(s)}, sample 0 has "
                             f"{sorted(keys)}")
    for reserved in ("cu_seqlens", "batch"):
        if reserved in keys:
            raise ValueError(f"pack_collate: samples may not carry the key '{reserved}' "
                             "(it is added by the collate)")
    lengths = {key: [_rows(s[key], key, i) for i, s in enumerate(samples)]
               for key in keys if _is_sequence(samples[0][key]) and key not in stack_keys}
    ref = None
    if lengths:
        ref = length_key or next(iter(lengths))
        if ref not in lengths:
            raise ValueError(f"pack_collate: length_key '{ref}' is not a concatenated key "
                             f"(those are {sorted(lengths)})")
        for key, ls in lengths.items():
            check_int32_tokens(sum(ls), f"pack_collate: '{key}'")
        if not any(lengths[ref]):
            raise ValueError(
                f"pack_collate: every sample of the batch has zero rows of '{ref}' "
                f"({len(samples)} empty samples); expected at least one sample with data "
                "(drop empty samples in the dataset; one empty sample among others is fine)")
    out: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]
        first = values[0]
        if _is_sequence(first):
            tensors = [torch.as_tensor(v) for v in values]
            out[key] = torch.stack(tensors) if key in stack_keys else torch.cat(tensors)
        elif isinstance(first, (bool, int, float, np.number, np.ndarray, torch.Tensor)):
            out[key] = torch.as_tensor(np.asarray([np.asarray(v).item() if hasattr(v, "item")
                                                   else v for v in values]))
        else:
            out[key] = list(values)
    if ref is not None:
        counts = torch.tensor(lengths[ref], dtype=torch.int64)
        out["cu_seqlens"] = cu_seqlens_from_lengths(lengths[ref], "pack_collate: lengths")
        out["batch"] = torch.repeat_interleave(torch.arange(len(samples)), counts)
        for key, ls in lengths.items():
            if ls != lengths[ref]:
                out[f"{key}_cu_seqlens"] = cu_seqlens_from_lengths(ls, "pack_collate: lengths")
    return out


def _is_sequence(value: Any) -> bool:
    """An array or tensor with rows (concatenated or stacked by ``pack_collate``)."""
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim >= 1


def _rows(value: Any, key: str, index: int) -> int:
    """Number of rows of sample ``index``'s ``key`` (its length along dim 0)."""
    if isinstance(value, (list, tuple)):
        return len(value)
    if not _is_sequence(value):
        raise ValueError(f"pack_collate: sample {index} '{key}' must be an array with rows like "
                         f"sample 0's, got {type(value).__name__} "
                         f"{tuple(getattr(value, 'shape', ()))}")
    return int(value.shape[0])
