"""Small building blocks around the mixers: ``RMSNorm``, ``DropPath`` (segment-aware), ``MLP``."""

from __future__ import annotations

import torch
from torch import nn

from geossm.packed import LAYER, check_cu_seqlens

from .fused import gelu_linear, rms_norm

__all__ = ["RMSNorm", "DropPath", "MLP"]


class RMSNorm(nn.Module):
    r"""Root-mean-square normalisation over the last dimension (Zhang & Sennrich, 2019).

    ``y = x / sqrt(mean(x², dim=-1) + eps) * weight``, computed in float32 and returned in x's
    dtype. Token-wise, so it needs no segment boundaries.

    Args:
        dim: size of the last dimension.
        eps: added to the mean square, default 1e-5.

    Shapes::

        x:   (..., dim)
        out: (..., dim)
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.dim, self.eps = dim, eps
        #: ``geossm.nn.fused.rms_norm``: keeps x and one float per row for the backward instead
        #: of also the normalised float32 copy. ``None`` (default): on for CUDA inputs, where
        #: activation memory bounds the scene size; off on the CPU, because its single gradient
        #: for x is added to x's other uses in another order than autograd's three terms of
        #: the plain ops, so CPU training results would move by float rounding (the default
        #: job's mIoU is kept bit for bit). True / False force it.
        self.fused: bool | None = None
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (..., {self.dim}), got {tuple(x.shape)}")
        if self.fused or (self.fused is None and x.is_cuda):
            return rms_norm(x, self.weight, self.eps)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class DropPath(nn.Module):
    r"""Stochastic depth: drop a residual branch for whole samples while training.

    ``y = x * m_s / (1 - p)`` with ``m_s ~ Bernoulli(1 - p)`` drawn once per sample ``s`` and
    shared by all its tokens; identity in eval mode or when ``p = 0``.

    A sample is one segment of ``cu_seqlens`` for packed input (the segment id of every token
    comes from ``cu_seqlens``), else one entry along dim 0 (dense ``(B, L, D)`` or ``(B, D)``).
    Passing packed ``(T, D)`` input without ``cu_seqlens`` therefore drops single tokens.

    Args:
        p: drop probability, ``0 <= p < 1``, default 0.

    Shapes::

        x:          (T, ...) packed with cu_seqlens (S+1,) int32, or (B, ...) dense
        out:        like x
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p < 1.0:
            raise ValueError(f"p must be a float in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        if cu_seqlens is None:
            if x.dim() == 0:
                raise ValueError("x must have at least 1 dimension (samples first), got a "
                                 "0-D tensor")
            mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
            return x * mask / keep
        check_cu_seqlens(cu_seqlens, LAYER)
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        sample_mask = x.new_empty(lengths.shape[0]).bernoulli_(keep)
        # (T,) per-token mask; output_size avoids a host sync.
        mask = torch.repeat_interleave(sample_mask, lengths, output_size=x.shape[0])
        return x * mask.view((-1,) + (1,) * (x.dim() - 1)) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Module):
    r"""Two-layer token-wise feed-forward network: ``fc2(drop(act(fc1(x))))`` then dropout.

    Args:
        dim: input width.
        hidden_dim: hidden width, default ``4 * dim``.
        out_dim: output width, default ``dim``.
        act: activation module class, default ``nn.GELU``.
        drop: dropout after the activation and after ``fc2``, default 0.
        bias: biases in both linear layers, default True.

    Shapes::

        x:   (..., dim)
        out: (..., out_dim)
    """

    def __init__(self, dim: int, hidden_dim: int | None = None, out_dim: int | None = None,
                 act=nn.GELU, drop: float = 0.0, bias: bool = True):
        super().__init__()
        hidden_dim = 4 * dim if hidden_dim is None else hidden_dim
        out_dim = dim if out_dim is None else out_dim
        for name, value in (("dim", dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = act()
        self.fc2 = nn.Linear(hidden_dim, out_dim, bias=bias)
        self.drop = nn.Dropout(drop)
        #: ``geossm.nn.fused.gelu_linear`` for ``fc2(act(h))``: keeps the hidden pre-activation
        #: only, not also the activation (4x the width per token), and recomputes the GELU in
        #: the backward. Used when ``act`` is ``nn.GELU`` and no dropout sits between act and
        #: fc2. ``None`` (default): on for CUDA inputs (results move by float rounding, so the
        #: CPU keeps the plain ops and its results bit for bit); True / False force it.
        self.fused: bool | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.fc1.in_features:
            raise ValueError(f"MLP: x must have {self.fc1.in_features} features in its last "
                             f"dimension, got shape {tuple(x.shape)}")
        h = self.fc1(x)
        if self._use_fused(h):
            out = gelu_linear(h, self.fc2.weight, self.fc2.bias, self.act.approximate)
        else:
            out = self.fc2(self.drop(self.act(h)))
        return self.drop(out)

    def _use_fused(self, h: torch.Tensor) -> bool:
        wanted = self.fused or (self.fused is None and h.is_cuda)
        return bool(wanted) and type(self.act) is nn.GELU and not (
            self.training and self.drop.p > 0)
