"""Point Cloud Mamba's point prompts and coordinate encoding.

Point Cloud Mamba (Zhang et al., 2024) scans the same points in several serialization orders,
one order per layer. Two cheap additions tell each layer where it is:

- *point prompts*: a few learned tokens per order, placed at both ends of every sequence, so
  the scan starts from (and ends on) a state that identifies the order; the tokens are removed
  after the layer;
- *coordinate encoding*: a linear map of the xyz coordinates added to the features before each
  layer, since after the serialization shuffles the points the features alone do not say where
  a point is.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from geossm.serialization import insert_tokens

__all__ = ["PointPrompts", "PromptedSequence", "CoordinateEncoding"]


class PromptedSequence(NamedTuple):
    """Result of ``PointPrompts.insert``.

    x:          (T + S*2P, D) packed tokens with the prompts inserted
    cu_seqlens: (S+1,) int32 boundaries of the longer segments
    positions:  (T,) long position of every original token (``strip`` gathers them)
    """

    x: torch.Tensor
    cu_seqlens: torch.Tensor
    positions: torch.Tensor


class PointPrompts(nn.Module):
    r"""Learned prompt tokens per serialization order, inserted at both ends of every segment.

    For order ``k`` and every segment ``s``::

        insert:  [prefix[k, 0..P-1], x[cu[s]:cu[s+1]], suffix[k, 0..P-1]]
                 cu'[s] = cu[s] + 2P·s
        strip:   y' -> y'[positions]             (the T original tokens, in order)

    Empty segments get their 2P prompt tokens too. Prompts are initialised from
    ``N(0, 0.02²)``. ``insert`` and ``strip`` are differentiable and need no host sync.

    Args:
        num_orders: number of serialization orders ``K`` (one prompt set each).
        num_prompts: tokens ``P`` at each end of a segment.
        dim: feature width ``D``.

    Shapes::

        prefix, suffix:  (K, P, D) parameters
        insert:  x (T, D), cu_seqlens (S+1,) int32, order_index int in [0, K)
                 -> PromptedSequence(x (T + 2PS, D), cu_seqlens (S+1,), positions (T,))
        strip:   y (T + 2PS, ...), positions (T,) -> (T, ...)
        tokens:  order_index -> (prefix (P, D), suffix (P, D))   (for SerializedBlock)
    """

    def __init__(self, num_orders: int, num_prompts: int, dim: int):
        super().__init__()
        for name, value in (("num_orders", num_orders), ("num_prompts", num_prompts),
                            ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_orders, self.num_prompts, self.dim = num_orders, num_prompts, dim
        self.prefix = nn.Parameter(torch.empty(num_orders, num_prompts, dim))
        self.suffix = nn.Parameter(torch.empty(num_orders, num_prompts, dim))
        nn.init.normal_(self.prefix, std=0.02)
        nn.init.normal_(self.suffix, std=0.02)

    def tokens(self, order_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(prefix (P, D), suffix (P, D))`` prompts of order ``order_index``."""
        if (isinstance(order_index, bool) or not isinstance(order_index, int)
                or not 0 <= order_index < self.num_orders):
            raise ValueError(f"order_index must be an int in [0, {self.num_orders}), "
                             f"got {order_index!r}")
        return self.prefix[order_index], self.suffix[order_index]

    def insert(self, x: torch.Tensor, cu_seqlens: torch.Tensor,
               order_index: int) -> PromptedSequence:
        """Insert order ``order_index``'s prompts at both ends of every segment of ``x``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (T, {self.dim}), got {got}")
        prefix, suffix = self.tokens(order_index)
        ins = insert_tokens(x, cu_seqlens, prefix=prefix.to(x.dtype), suffix=suffix.to(x.dtype))
        return PromptedSequence(ins.x, ins.cu_seqlens, ins.keep)

    @staticmethod
    def strip(y: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Remove the prompt tokens: ``y[positions]`` (the original tokens, in order)."""
        return y.index_select(0, positions)

    def extra_repr(self) -> str:
        return (f"num_orders={self.num_orders}, num_prompts={self.num_prompts}, "
                f"dim={self.dim}")


class CoordinateEncoding(nn.Module):
    r"""Coordinates mapped linearly to the feature width and added to the features.

    ``out = x + W · coord + b``, applied before each layer (each order) in Point Cloud Mamba.
    Token-wise, so it works in any layout as long as ``x`` and ``coord`` are in the same one.

    Args:
        in_dim: coordinate width, default 3 (xyz).
        dim: feature width ``D`` (required).
        bias: bias ``b``, default True.

    Shapes::

        x:     (..., D)
        coord: (..., in_dim)
        out:   (..., D)
    """

    def __init__(self, in_dim: int = 3, dim: int | None = None, bias: bool = True):
        super().__init__()
        if dim is None:
            raise TypeError("CoordinateEncoding needs the feature width: "
                            "CoordinateEncoding(in_dim=3, dim=D)")
        for name, value in (("in_dim", in_dim), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_dim, self.dim = in_dim, dim
        self.proj = nn.Linear(in_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        if coord.shape[-1] != self.in_dim or coord.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"coord must have shape {tuple(x.shape[:-1]) + (self.in_dim,)} "
                             f"(tokens of x, in_dim={self.in_dim}), got {tuple(coord.shape)}")
        return x + self.proj(coord.to(self.proj.weight.dtype)).to(x.dtype)
