"""Depthwise causal convolution on the CPU with numba: forward and backward kernels.

Tokens are independent given their segment bounds, so the kernels run ``prange`` over token
chunks; the weight and bias gradients are summed per chunk and reduced afterwards (no races).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from ._numba_threads import threads_like_torch

TOKEN_CHUNK = 1024


@njit(parallel=True, fastmath=True, cache=True)
def _preactivation(x, weight, bias, start, end, has_bias, reverse, out):
    T, channels = x.shape
    width = weight.shape[1]
    for c in prange((T + TOKEN_CHUNK - 1) // TOKEN_CHUNK):
        for t in range(c * TOKEN_CHUNK, min((c + 1) * TOKEN_CHUNK, T)):
            for d in range(channels):
                acc = bias[d] if has_bias else np.float32(0.0)
                for k in range(width):
                    src = t + k if reverse else t - k
                    if (reverse and src < end[t]) or (not reverse and src >= start[t]):
                        acc += weight[d, width - 1 - k] * x[src, d]
                out[t, d] = acc


@njit(parallel=True, fastmath=True, cache=True)
def _apply_silu(pre, out):
    T, channels = pre.shape
    for t in prange(T):
        for d in range(channels):
            out[t, d] = pre[t, d] / (1.0 + math.exp(-pre[t, d]))


@njit(parallel=True, fastmath=True, cache=True)
def _backward(dout, pre, x, weight, start, end, silu, reverse, dx, dweight_part, dbias_part):
    T, channels = x.shape
    width = weight.shape[1]
    # gradient at the pre-activation (before silu)
    dpre = np.empty_like(dout)
    for t in prange(T):
        for d in range(channels):
            if silu:
                sig = 1.0 / (1.0 + math.exp(-pre[t, d]))
                dpre[t, d] = dout[t, d] * sig * (1.0 + pre[t, d] * (1.0 - sig))
            else:
                dpre[t, d] = dout[t, d]
    for c in prange((T + TOKEN_CHUNK - 1) // TOKEN_CHUNK):
        for t in range(c * TOKEN_CHUNK, min((c + 1) * TOKEN_CHUNK, T)):
            for d in range(channels):
                acc = np.float32(0.0)
                g = dpre[t, d]
                dbias_part[c, d] += g
                for k in range(width):
                    # token t feeds output t+k (causal) or t-k (reverse) inside its segment
                    dst = t - k if reverse else t + k
                    if (reverse and dst >= start[t]) or (not reverse and dst < end[t]):
                        acc += weight[d, width - 1 - k] * dpre[dst, d]
                    src = t + k if reverse else t - k
                    if (reverse and src < end[t]) or (not reverse and src >= start[t]):
                        dweight_part[c, d, width - 1 - k] += g * x[src, d]
                dx[t, d] = acc


def _bounds(cu_seqlens: torch.Tensor, total: int):
    cu = cu_seqlens.detach().cpu().numpy().astype(np.int64)
    lengths = np.diff(cu)
    return np.repeat(cu[:-1], lengths), np.repeat(cu[1:], lengths)


def causal_conv1d_fwd(x, weight, bias, cu_seqlens, silu: bool, reverse: bool):
    """Forward kernel: ``(T, D)`` output in x's dtype."""
    start, end = _bounds(cu_seqlens, x.shape[0])
    xs = x.detach().float().contiguous().numpy()
    pre = torch.empty(xs.shape, dtype=torch.float32).numpy()
    bias_np = (np.zeros(0, np.float32) if bias is None
               else bias.detach().float().contiguous().numpy())
    with threads_like_torch():
        _preactivation(xs, weight.detach().float().contiguous().numpy(), bias_np, start, end,
                       bias is not None, bool(reverse), pre)
        if silu:
            out = torch.empty(pre.shape, dtype=torch.float32).numpy()
            _apply_silu(pre, out)
            pre = out
    return torch.from_numpy(pre).to(x.dtype)


def causal_conv1d_bwd(dout, x, weight, bias, cu_seqlens, silu: bool, reverse: bool):
    """Backward kernel: ``(dx (T, D), dweight (D, W), dbias (D,) or None)`` in float32."""
    T, channels = x.shape
    start, end = _bounds(cu_seqlens, T)
    xs = x.detach().float().contiguous().numpy()
    w = weight.detach().float().contiguous().numpy()
    pre = np.empty_like(xs)
    num_chunks = max(1, (T + TOKEN_CHUNK - 1) // TOKEN_CHUNK)
    dx = torch.empty(xs.shape, dtype=torch.float32).numpy()
    dweight_part = np.zeros((num_chunks, channels, w.shape[1]), dtype=np.float32)
    dbias_part = np.zeros((num_chunks, channels), dtype=np.float32)
    with threads_like_torch():
        if silu:
            bias_np = (np.zeros(0, np.float32) if bias is None
                       else bias.detach().float().contiguous().numpy())
            _preactivation(xs, w, bias_np, start, end, bias is not None, bool(reverse), pre)
        _backward(dout.detach().float().contiguous().numpy(), pre, xs, w, start, end, bool(silu),
                  bool(reverse), dx, dweight_part, dbias_part)
    dbias = torch.from_numpy(dbias_part.sum(0)) if bias is not None else None
    return torch.from_numpy(dx), torch.from_numpy(dweight_part.sum(0)), dbias
