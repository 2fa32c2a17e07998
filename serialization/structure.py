"""The ``Serialization`` structure and the packed-sequence helpers around it.

A serialization turns ``N`` irregular items (points, voxels, nodes, events) into ``S`` packed
sequences. Layers use it as ``y = scan(x[order], cu_seqlens)[inverse]``:

- ``order (N,) long``: position in the serialized sequence -> source index;
- ``inverse (N,) long``: source index -> position (``inverse[order] == arange(N)``);
- ``cu_seqlens (S+1,) int32``: segment boundaries over the serialized order, leading 0, last N
  (the FlashAttention / flash-linear-attention convention);
- ``extras``: optional named tensors (``code``, ``batch``, ``group_batch`` ...).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Serialization",
    "INT32_MAX",
    "check_int32_total",
    "cu_seqlens_from_lengths",
    "batch_to_cu_seqlens",
    "cu_seqlens_to_batch",
    "apply",
    "undo",
    "insert_tokens",
    "InsertedTokens",
]


# The largest token count int32 cu_seqlens can hold (the FlashAttention convention's dtype).
INT32_MAX = 2**31 - 1


def check_int32_total(total: int, name: str) -> None:
    """Raise ``ValueError`` when ``total`` tokens would wrap int32 ``cu_seqlens``.

    Called with the number *before* anything of that size is allocated or cast, so that a
    batch of 2^31 tokens or more is refused instead of producing negative boundaries.
    """
    if total > INT32_MAX:
        raise ValueError(f"{name}: {total} tokens do not fit int32 cu_seqlens (max "
                         f"{INT32_MAX} = 2^31 - 1); expected fewer tokens per batch")


def _is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def cu_seqlens_from_lengths(lengths, name: str = "lengths") -> Tensor:
    """``cu_seqlens (S+1,) int32`` with a leading 0 from per-segment lengths.

    The sum is taken in int64 and checked before the cast (``check_int32_total``), so it
    cannot wrap. One host sync for the check.

    Args:
        lengths: ``(S,)`` non-negative integer tensor, or a sequence of ints.
        name: what the lengths are, for the error message.
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
        check_int32_total(int(cu[-1]), name)
    return cu.to(torch.int32)


def _describe(t) -> str:
    if isinstance(t, Tensor):
        return f"Tensor(shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device})"
    return f"{type(t).__name__} {t!r}"


def _check_tensor(name: str, t, ndim: int | None = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {_describe(t)}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(t.shape)}")


def _check_cu_seqlens(cu_seqlens, total: int | None, name: str = "cu_seqlens") -> None:
    """Validate a cu_seqlens tensor (one host sync for the value checks)."""
    _check_tensor(name, cu_seqlens, 1)
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"{name}: expected dtype torch.int32, got {cu_seqlens.dtype}")
    if cu_seqlens.numel() < 1:
        raise ValueError(f"{name}: expected shape (S+1,) with S >= 0, got shape (0,)")
    first = int(cu_seqlens[0])
    if first != 0:
        raise ValueError(f"{name}: expected a leading 0, got {name}[0] = {first}")
    if cu_seqlens.numel() > 1:
        steps = cu_seqlens[1:] - cu_seqlens[:-1]
        if bool((steps < 0).any()):
            bad = int(torch.nonzero(steps < 0)[0, 0])
            raise ValueError(
                f"{name}: expected non-decreasing values, got {name}[{bad}] = "
                f"{int(cu_seqlens[bad])} > {name}[{bad + 1}] = {int(cu_seqlens[bad + 1])}"
            )
    if total is not None:
        check_int32_total(total, name)
        last = int(cu_seqlens[-1])
        if last != total:
            raise ValueError(f"{name}: expected the last value to be N = {total}, got {last}")


# eq=False: fields are tensors, so equality is identity (no ambiguous tensor bools).
@dataclass(frozen=True, eq=False)
class Serialization:
    """Permutation of ``N`` items into ``S`` packed sequences (validated on construction).

    Shapes::

        order:      (N,)   long   position -> source index
        inverse:    (N,)   long   source index -> position
        cu_seqlens: (S+1,) int32  segment boundaries over the serialized order
        extras:     name -> Tensor (read-only mapping; e.g. code (N,), group_batch (S,))

    Construction checks dtypes, shapes, devices, that ``cu_seqlens`` starts at 0, never
    decreases and ends at ``N``, and that ``inverse[order] == arange(N)`` (which also proves
    ``order`` is a permutation). These value checks synchronise with the host once.
    """

    order: Tensor
    inverse: Tensor
    cu_seqlens: Tensor
    extras: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_tensor("order", self.order, 1)
        _check_tensor("inverse", self.inverse, 1)
        for name, t in (("order", self.order), ("inverse", self.inverse)):
            if t.dtype != torch.long:
                raise ValueError(f"{name}: expected dtype torch.int64 (long), got {t.dtype}")
        n = self.order.numel()
        if self.inverse.numel() != n:
            raise ValueError(
                f"inverse: expected shape ({n},) like order, got {tuple(self.inverse.shape)}"
            )
        _check_tensor("cu_seqlens", self.cu_seqlens, 1)
        for name, t in (("inverse", self.inverse), ("cu_seqlens", self.cu_seqlens)):
            if t.device != self.order.device:
                raise ValueError(
                    f"{name}: expected device {self.order.device} (that of order), got {t.device}"
                )
        _check_cu_seqlens(self.cu_seqlens, n)
        if n:
            lo, hi = int(self.order.min()), int(self.order.max())
            if lo < 0 or hi >= n:
                raise ValueError(
                    f"order: expected indices in [0, {n}), got values in [{lo}, {hi}]"
                )
            ok = bool((self.inverse[self.order] == torch.arange(n, device=self.order.device)).all())
            if not ok:
                raise ValueError(
                    "order/inverse: expected a permutation and its inverse "
                    "(inverse[order] == arange(N)), got tensors that are not"
                )
        if not isinstance(self.extras, Mapping):
            raise TypeError(f"extras: expected a mapping name -> Tensor, got {_describe(self.extras)}")
        for key, value in self.extras.items():
            if not isinstance(key, str):
                raise TypeError(f"extras: expected string keys, got {key!r}")
            if not isinstance(value, Tensor):
                raise TypeError(f"extras[{key!r}]: expected a torch.Tensor, got {_describe(value)}")
        object.__setattr__(self, "extras", types.MappingProxyType(dict(self.extras)))

    @classmethod
    def from_order(cls, order: Tensor, cu_seqlens: Tensor, **extras: Tensor) -> "Serialization":
        """Build from ``order`` alone; ``inverse`` is computed by a scatter (no host sync)."""
        _check_tensor("order", order, 1)
        return cls(order, _invert(order), cu_seqlens, extras)

    @property
    def num_tokens(self) -> int:
        return self.order.numel()

    @property
    def num_segments(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def seqlens(self) -> Tensor:
        """``(S,)`` int32 segment lengths."""
        return self.cu_seqlens[1:] - self.cu_seqlens[:-1]

    def segment_ids(self) -> Tensor:
        """``(N,)`` long: the segment of every serialized position."""
        return cu_seqlens_to_batch(self.cu_seqlens, self.num_tokens)

    def apply(self, x: Tensor, dim: int = 0) -> Tensor:
        """``x[order]`` along ``dim`` (source layout -> serialized layout)."""
        return apply(x, self, dim)

    def undo(self, y: Tensor, dim: int = 0) -> Tensor:
        """``y[inverse]`` along ``dim`` (serialized layout -> source layout)."""
        return undo(y, self, dim)

    def to(self, device) -> "Serialization":
        """A copy on ``device`` (extras moved too)."""
        return _unchecked(
            self.order.to(device), self.inverse.to(device), self.cu_seqlens.to(device),
            {k: v.to(device) for k, v in self.extras.items()},
        )


def _invert(order: Tensor) -> Tensor:
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return inverse


def _unchecked(order: Tensor, inverse: Tensor, cu_seqlens: Tensor,
               extras: Mapping[str, Tensor] | None = None) -> Serialization:
    """Build a ``Serialization`` that is correct by construction, skipping the value checks.

    Library constructors use it to avoid the host sync of ``__post_init__`` (GPU timings);
    tests re-validate every such result through the public constructor.
    """
    s = object.__new__(Serialization)
    object.__setattr__(s, "order", order)
    object.__setattr__(s, "inverse", inverse)
    object.__setattr__(s, "cu_seqlens", cu_seqlens)
    object.__setattr__(s, "extras", types.MappingProxyType(dict(extras or {})))
    return s


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
    if batch.dtype.is_floating_point or batch.dtype == torch.bool or batch.dtype.is_complex:
        raise TypeError(f"batch: expected an integer tensor, got dtype {batch.dtype}")
    check_int32_total(batch.numel(), "batch")
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
        cu_seqlens: ``(S+1,)`` int32 with a leading 0.
        total: ``N = cu_seqlens[-1]``; pass it to avoid a host sync.

    Returns:
        ``batch: (N,) long``.
    """
    _check_tensor("cu_seqlens", cu_seqlens, 1)
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens: expected dtype torch.int32 or torch.int64, "
                        f"got {cu_seqlens.dtype}")
    if cu_seqlens.numel() < 1:
        raise ValueError("cu_seqlens: expected shape (S+1,) with S >= 0, got shape (0,)")
    seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    if total is None:
        total = int(cu_seqlens[-1])
    ids = torch.arange(seqlens.numel(), device=cu_seqlens.device)
    return torch.repeat_interleave(ids, seqlens, output_size=total)


def _check_same_length(name: str, x: Tensor, dim: int, n: int) -> int:
    _check_tensor(name, x)
    if x.dim() == 0:
        raise ValueError(f"{name}: expected at least 1 dimension, got a 0-D tensor")
    d = dim % x.dim()
    if x.shape[d] != n:
        raise ValueError(
            f"{name}: expected size {n} (the serialization's N) along dim {dim}, "
            f"got shape {tuple(x.shape)}"
        )
    return d


def apply(x: Tensor, serialization: Serialization, dim: int = 0) -> Tensor:
    """Source layout -> serialized layout: ``x.index_select(dim, order)``.

    Shapes: ``x: (..., N, ...)`` with ``N`` at ``dim`` -> same shape.
    """
    d = _check_same_length("x", x, dim, serialization.num_tokens)
    return x.index_select(d, serialization.order)


def undo(y: Tensor, serialization: Serialization, dim: int = 0) -> Tensor:
    """Serialized layout -> source layout: ``y.index_select(dim, inverse)``.

    Shapes: ``y: (..., N, ...)`` with ``N`` at ``dim`` -> same shape.
    """
    d = _check_same_length("y", y, dim, serialization.num_tokens)
    return y.index_select(d, serialization.inverse)


class InsertedTokens(NamedTuple):
    """Result of ``insert_tokens``.

    x:            (T + S*(P+Q), *F) packed tensor with the tokens inserted
    cu_seqlens:   (S+1,) int32 boundaries of the new segments
    keep:         (T,) long position of every original token (``x_new[keep]`` strips them)
    prefix_index: (S, P) long positions of the prefix tokens
    suffix_index: (S, Q) long positions of the suffix tokens
    """

    x: Tensor
    cu_seqlens: Tensor
    keep: Tensor
    prefix_index: Tensor
    suffix_index: Tensor


def _as_tokens(name: str, tok, x: Tensor) -> Tensor:
    feat = tuple(x.shape[1:])
    if tok is None:
        return x.new_zeros((0, *feat))
    _check_tensor(name, tok)
    if tuple(tok.shape) == feat:
        tok = tok.unsqueeze(0)
    if tuple(tok.shape[1:]) != feat:
        raise ValueError(
            f"{name}: expected shape (P, {', '.join(map(str, feat))}) or "
            f"({', '.join(map(str, feat))}) to match x's features, got {tuple(tok.shape)}"
        )
    if tok.dtype != x.dtype:
        raise TypeError(f"{name}: expected dtype {x.dtype} (that of x), got {tok.dtype}")
    if tok.device != x.device:
        raise ValueError(f"{name}: expected device {x.device} (that of x), got {tok.device}")
    return tok


def insert_tokens(x: Tensor, cu_seqlens: Tensor, prefix: Tensor | None = None,
                  suffix: Tensor | None = None) -> InsertedTokens:
    """Insert the same tokens at the start (``prefix``) and end (``suffix``) of every segment.

    Segment ``s`` of the result is ``[prefix_0..prefix_{P-1}, x[cu[s]:cu[s+1]], suffix_0..]``,
    so ``cu_new[s] = cu[s] + s*(P+Q)``. Differentiable in ``x``, ``prefix`` and ``suffix``
    (learned point prompts). No host sync.

    Args:
        x: ``(T, *F)`` packed tokens.
        cu_seqlens: ``(S+1,)`` int32 segment boundaries of ``x``.
        prefix: ``(P, *F)`` or ``(*F)`` tokens to prepend, default None (P = 0).
        suffix: ``(Q, *F)`` or ``(*F)`` tokens to append, default None (Q = 0).

    Returns:
        ``InsertedTokens(x, cu_seqlens, keep, prefix_index, suffix_index)``; strip the tokens
        again with ``y[keep]``.
    """
    _check_tensor("x", x)
    if x.dim() == 0:
        raise ValueError("x: expected a packed (T, *F) tensor, got a 0-D tensor")
    _check_tensor("cu_seqlens", cu_seqlens, 1)
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"cu_seqlens: expected dtype torch.int32, got {cu_seqlens.dtype}")
    if cu_seqlens.numel() < 1:
        raise ValueError("cu_seqlens: expected shape (S+1,) with S >= 0, got shape (0,)")
    if cu_seqlens.device != x.device:
        raise ValueError(f"cu_seqlens: expected device {x.device} (that of x), got {cu_seqlens.device}")
    pre = _as_tokens("prefix", prefix, x)
    suf = _as_tokens("suffix", suffix, x)
    n_pre, n_suf = pre.shape[0], suf.shape[0]
    per = n_pre + n_suf
    t = x.shape[0]
    s = cu_seqlens.numel() - 1
    check_int32_total(t + s * per, "insert_tokens")  # the new last boundary
    dev = x.device
    cu = cu_seqlens.long()
    seg = torch.arange(s + 1, device=dev)
    new_cu = cu + seg * per
    try:
        token_seg = cu_seqlens_to_batch(cu_seqlens, t)
    except RuntimeError as err:  # CPU: the segment lengths do not add up to T (no sync before)
        raise ValueError(f"cu_seqlens: expected the last value to be T = {t} (the rows of x), "
                         f"got {int(cu_seqlens[-1])}") from err
    keep = torch.arange(t, device=dev) + token_seg * per + n_pre
    prefix_index = new_cu[:-1, None] + torch.arange(n_pre, device=dev)
    suffix_index = new_cu[1:, None] - n_suf + torch.arange(n_suf, device=dev)
    # Gather from [x; prefix; suffix]: the source row of every output position.
    src = torch.empty(t + s * per, dtype=torch.long, device=dev)
    src[keep] = torch.arange(t, device=dev)
    src[prefix_index.reshape(-1)] = (t + torch.arange(n_pre, device=dev)).repeat(s)
    src[suffix_index.reshape(-1)] = (t + n_pre + torch.arange(n_suf, device=dev)).repeat(s)
    out = torch.cat([x, pre, suf], 0).index_select(0, src)
    return InsertedTokens(out, new_cu.to(torch.int32), keep, prefix_index, suffix_index)
