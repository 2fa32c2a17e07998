"""``SerializedBlock``: a pre-norm residual (Bi)Mamba block over a ``Serialization``."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from geossm.serialization import Serialization, insert_tokens

from .layers import MLP, DropPath, RMSNorm
from .mamba2 import build_mixer

__all__ = ["SerializedBlock"]


class SerializedBlock(nn.Module):
    r"""Pre-norm residual block that runs (Bi)Mamba along a serialization of irregular items.

    With ``order``, ``inverse`` and ``cu_seqlens`` from the ``Serialization``::

        x = x + drop_path(mixer(norm1(x)[order], cu_seqlens)[inverse])
        x = x + drop_path(mlp(norm2(x)))                 # when mlp_ratio > 0

    ``mixer`` is ``BiMamba`` (``bidirectional=True``) or ``Mamba`` (``BiMamba2`` / ``Mamba2``
    with ``mixer="mamba2"``); norms are ``RMSNorm``. The block works in the serialized layout internally (one gather in, one out; the norm and MLP
    are token-wise, so this equals the formula). Drop-path is per segment of the serialization:
    a sample for the point, graph and event serializers, a window group for ``window_groups``.

    With ``prompts=(prefix, suffix)`` the tokens are inserted at both ends of every segment of
    the normalised, serialized sequence before the mixer and stripped from its output (Point
    Cloud Mamba's point prompts; see ``PointPrompts.tokens``).

    Args:
        dim: feature width ``D``.
        bidirectional: ``BiMamba`` instead of ``Mamba``, default True.
        mlp_ratio: MLP hidden width ``= int(mlp_ratio * dim)``; 0 = no MLP, default 4.0.
        drop_path: stochastic-depth probability of both branches, default 0.
        norm_eps: ``RMSNorm`` epsilon, default 1e-5.
        grad_checkpoint: activation checkpointing while training with gradients: only the
            block's input is kept for backward and its activations are recomputed there
            (``torch.utils.checkpoint``, non-reentrant, RNG state preserved so drop-path draws
            the same masks). Saves memory on large scenes for about one extra forward; the
            attribute can be switched at any time. Default False.
        mixer: ``"mamba"`` (Mamba-1) or ``"mamba2"`` (Mamba-2 SSD), default ``"mamba"``.
        **mamba_kwargs: passed to the mixer class (``d_state``, ``d_conv``, ``expand``,
            ``backend``, ...).

    Shapes::

        x:              (N, D) items in source order
        serialization:  order (N,), inverse (N,), cu_seqlens (S+1,) int32
        prompts:        optional (prefix (P, D) or None, suffix (Q, D) or None)
        out:            (N, D) in source order
    """

    def __init__(self, dim: int, bidirectional: bool = True, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-5, grad_checkpoint: bool = False,
                 mixer: str = "mamba", **mamba_kwargs):
        super().__init__()
        self.grad_checkpoint = bool(grad_checkpoint)
        if not isinstance(mlp_ratio, (int, float)) or mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be a number >= 0 (0 = no MLP), got {mlp_ratio!r}")
        self.dim = dim
        self.norm1 = RMSNorm(dim, eps=norm_eps)
        self.mixer = build_mixer(mixer, dim, bidirectional, **mamba_kwargs)
        self.drop_path = DropPath(drop_path)
        hidden = int(mlp_ratio * dim)
        if mlp_ratio > 0 and hidden < 1:
            raise ValueError(f"mlp_ratio * dim must be >= 1 for an MLP, got mlp_ratio="
                             f"{mlp_ratio} and dim={dim}")
        self.norm2 = RMSNorm(dim, eps=norm_eps) if mlp_ratio > 0 else None
        self.mlp = MLP(dim, hidden) if mlp_ratio > 0 else None

    def forward(self, x: torch.Tensor, serialization: Serialization,
                prompts: tuple[torch.Tensor | None, torch.Tensor | None] | None = None
                ) -> torch.Tensor:
        if not isinstance(serialization, Serialization):
            raise TypeError(f"serialization must be a geossm.serialization.Serialization, got "
                            f"{type(serialization).__name__}")
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (N, {self.dim}), got {got}")
        if x.shape[0] != serialization.num_tokens:
            raise ValueError(f"x must have one row per serialized item: N="
                             f"{serialization.num_tokens} rows, got {x.shape[0]}")
        if prompts is not None and (not isinstance(prompts, (tuple, list)) or len(prompts) != 2):
            raise TypeError(f"prompts must be a (prefix, suffix) pair of tensors or None, "
                            f"got {type(prompts).__name__}")
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return _checkpoint(self._body, x, serialization, prompts, use_reentrant=False)
        return self._body(x, serialization, prompts)

    def _body(self, x: torch.Tensor, serialization: Serialization,
              prompts: tuple[torch.Tensor | None, torch.Tensor | None] | None) -> torch.Tensor:
        cu = serialization.cu_seqlens
        h = x.index_select(0, serialization.order)
        y = self.norm1(h)
        if prompts is None:
            y = self.mixer(y, cu)
        else:
            # Cast: under autocast the normalised tokens may be half while prompts are float32.
            prefix, suffix = (None if t is None else t.to(y.dtype) for t in prompts)
            ins = insert_tokens(y, cu, prefix=prefix, suffix=suffix)
            y = self.mixer(ins.x, ins.cu_seqlens).index_select(0, ins.keep)
        h = h + self.drop_path(y, cu)
        if self.mlp is not None:
            h = h + self.drop_path(self.mlp(self.norm2(h)), cu)
        return h.index_select(0, serialization.inverse)
