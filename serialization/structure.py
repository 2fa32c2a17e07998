"""The ``Serialization`` structure and the helpers that move tensors through it.

A serialization turns ``N`` irregular items (points, voxels, nodes, events) into ``S`` packed
sequences. Layers use it as ``y = scan(x[order], cu_seqlens)[inverse]``:

- ``order (N,) long``: position in the serialized sequence -> source index;
- ``inverse (N,) long``: source index -> position (``inverse[order] == arange(N)``);
- ``cu_seqlens (S+1,) int32``: segment boundaries over the serialized order, leading 0, last N
  (the packed-sequence contract of ``geossm.packed``);
- ``extras``: optional named tensors (``code``, ``batch``, ``group_batch`` ...).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

import torch
from torch import Tensor

from geossm.packed import (SERIALIZATION, TOKENS, _check_tensor, _describe, _is_integer,
                           check_cu_seqlens, check_int32_tokens, cu_seqlens_to_batch)

__all__ = [
    "Serialization",
    "apply",
    "undo",
    "insert_tokens",
    "InsertedTokens",
]


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
        if self.inverse.device != self.order.device:
            raise ValueError(f"inverse: expected device {self.order.device} (that of order), "
                             f"got {self.inverse.device}")
        check_cu_seqlens(self.cu_seqlens, SERIALIZATION, n, device=self.order.device,
                         like="order")
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

    def repeat(self, times: int) -> "Serialization":
        """The serialization of ``times`` copies of this one's items laid one after another
        (copy ``i`` holds source items ``i*N .. (i+1)*N - 1``), each copy ordered and split into
        segments as this one is: what serializing a batch of ``times`` identical layouts gives
        (e.g. the patch grid of every frame of a batch). Tensor ops only: no host sync, and
        ``times`` may be symbolic under ``torch.export``. The extras describe one sample and
        are not carried.

        Shapes: ``order``, ``inverse`` ``(times*N,)``; ``cu_seqlens`` ``(times*S+1,)``.
        """
        n = self.order.numel()
        offsets = torch.arange(times, device=self.order.device)[:, None] * n  # (times, 1)
        order = (self.order[None] + offsets).reshape(-1)
        inverse = (self.inverse[None] + offsets).reshape(-1)
        ends = (self.cu_seqlens[1:].long()[None] + offsets).reshape(-1)
        cu = torch.cat([self.cu_seqlens[:1].long(), ends]).to(self.cu_seqlens.dtype)
        return _unchecked(order, inverse, cu)

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


def _check_integer(name: str, value, ndim: int | None = None) -> None:
    """``TypeError`` unless ``value`` is a tensor, ``ValueError`` unless it has ``ndim`` dims
    (None: any) and an integer dtype: the check of the serializers' index arguments."""
    _check_tensor(name, value, ndim)
    if not _is_integer(value.dtype):
        raise ValueError(f"{name}: expected an integer tensor, got dtype {value.dtype}")


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
    check_cu_seqlens(cu_seqlens, TOKENS, device=x.device, like="x")
    pre = _as_tokens("prefix", prefix, x)
    suf = _as_tokens("suffix", suffix, x)
    n_pre, n_suf = pre.shape[0], suf.shape[0]
    per = n_pre + n_suf
    t = x.shape[0]
    s = cu_seqlens.numel() - 1
    check_int32_tokens(t + s * per, "insert_tokens")  # the new last boundary
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
