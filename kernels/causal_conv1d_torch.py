"""Reference depthwise causal convolution over packed segments, in plain torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import segment_bounds


def causal_conv1d_ref(x, weight, bias=None, cu_seqlens=None, silu=False, reverse=False):
    """Depthwise causal convolution that restarts with zero history at every segment start.

    ``out[t, d] = bias[d] + sum_{k=0}^{W-1} weight[d, W-1-k] * x[t-k, d]``, where a term whose
    token ``t-k`` lies before the start of t's segment is zero; ``reverse=True`` reads
    ``x[t+k]`` up to the segment's end instead (anti-causal); ``silu`` is applied last.

    Shapes: ``x: (T, D)``, ``weight: (D, W)``, ``bias: (D,)``, ``cu_seqlens: (S+1,)``.
    Returns ``(T, D)`` in x's dtype. One host sync (per-token segment bounds).
    """
    T, _ = x.shape
    width = weight.shape[1]
    start, end = segment_bounds(cu_seqlens)
    position = torch.arange(T, device=x.device)
    out = torch.zeros_like(x, dtype=torch.float32)
    for k in range(width):
        source = position + k if reverse else position - k
        inside = (source < end) if reverse else (source >= start)
        shifted = x.float()[source.clamp(0, max(T - 1, 0))] * inside[:, None]
        out = out + shifted * weight.float()[:, width - 1 - k]
    if bias is not None:
        out = out + bias.float()
    if silu:
        out = F.silu(out)
    return out.to(x.dtype)
