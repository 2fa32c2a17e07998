"""Triton backend of the grouped variable-length depthwise causal conv1d (forward and backward).

Formula, per segment of ``cu_seqlens`` and channel ``d``::

    pre[t, d] = bias[d] + sum_{k=0}^{W-1} weight[d, W-1-k] * x[t-k, d]    (causal)
    pre[t, d] = bias[d] + sum_{k=0}^{W-1} weight[d, W-1-k] * x[t+k, d]    (reverse=True)
    out = silu(pre) if silu else pre

Terms whose source token lies outside the token's own segment are zero: the kernel never reads
across a boundary (each token knows its segment from a device-side ``searchsorted``).

Shapes::

    x, out, dout, dx: (T, D)  float32 / float16 / bfloat16 (out, dx in x.dtype)
    weight: (D, W), 2 <= W <= 8;  bias: (D,) or None;  cu_seqlens: (S+1,) int32, last == T
    dweight: (D, W) float32;  dbias: (D,) float32 or None

Tiles of (BT tokens, BD channels); the backward recomputes ``pre`` at the W shifted rows it
needs instead of storing it. dweight/dbias are reduced per program (a persistent grid over the
token tiles) into partial buffers summed by ``torch.sum``: deterministic, no atomics.
No host sync. Runs under ``TRITON_INTERPRET=1`` on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# tl.sum / tl.sigmoid are jit functions: under TRITON_INTERPRET=1 every call re-patches the
# language (milliseconds each), so kernels call tl.reduce with the combine function the
# interpreter recognises and spell out the sigmoid.
_SUM = tl.standard._sum_combine
LOG2E = tl.constexpr(1.4426950408889634)

BT = 32


@triton.jit
def _bounds(seg_of, cu_seq, rows, mrow):
    s = tl.load(seg_of + rows, mask=mrow, other=0)
    start = tl.load(cu_seq + s, mask=mrow, other=0)
    end = tl.load(cu_seq + s + 1, mask=mrow, other=0)
    return start, end


@triton.jit
def _pre_at(x, w, bias, rows, start, end, offs_d, md, D, W: tl.constexpr, BT: tl.constexpr,
            BD: tl.constexpr, HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr):
    """pre-activation at ``rows`` (BT,) x channels (BD,); rows outside [start, end) give junk
    that callers mask."""
    if HAS_BIAS:
        acc = tl.zeros([BT, BD], dtype=tl.float32) + \
            tl.load(bias + offs_d, mask=md, other=0.0).to(tl.float32)[None, :]
    else:
        acc = tl.zeros([BT, BD], dtype=tl.float32)
    for k in tl.static_range(W):
        if REVERSE:
            src = rows + k
        else:
            src = rows - k
        ok = (src >= start) & (src < end)
        wk = tl.load(w + offs_d * W + (W - 1 - k), mask=md, other=0.0).to(tl.float32)
        xv = tl.load(x + src.to(tl.int64)[:, None] * D + offs_d[None, :],
                     mask=ok[:, None] & md[None, :], other=0.0).to(tl.float32)
        acc += xv * wk[None, :]
    return acc


@triton.jit(do_not_specialize=("T",))
def _conv_fwd(x, w, bias, seg_of, cu_seq, out, T, D,
              W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
              HAS_BIAS: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr):
    pt = tl.program_id(0)
    pd = tl.program_id(1)
    rows = pt * BT + tl.arange(0, BT)
    mrow = rows < T
    offs_d = pd * BD + tl.arange(0, BD)
    md = offs_d < D
    start, end = _bounds(seg_of, cu_seq, rows, mrow)
    acc = _pre_at(x, w, bias, rows, start, end, offs_d, md, D, W, BT, BD, HAS_BIAS, REVERSE)
    if SILU:
        acc = acc * (1.0 / (1.0 + tl.exp2(-acc * LOG2E)))
    tl.store(out + rows.to(tl.int64)[:, None] * D + offs_d[None, :],
             acc.to(out.dtype.element_ty), mask=mrow[:, None] & md[None, :])


@triton.jit(do_not_specialize=("T", "nprog"))
def _conv_bwd(x, w, bias, seg_of, cu_seq, dout, dx, dw_part, db_part, T, D, nprog,
              W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, WP: tl.constexpr,
              HAS_BIAS: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr):
    pid = tl.program_id(0)
    pd = tl.program_id(1)
    offs_d = pd * BD + tl.arange(0, BD)
    md = offs_d < D
    kk = tl.arange(0, WP)
    dw_acc = tl.zeros([BD, WP], dtype=tl.float32)      # dw_acc[d, k] -> weight[d, W-1-k]
    db_acc = tl.zeros([BD], dtype=tl.float32)
    n_tiles = tl.cdiv(T, BT)
    for tile in range(pid, n_tiles, nprog):
        rows = tile * BT + tl.arange(0, BT)
        mrow = rows < T
        start, end = _bounds(seg_of, cu_seq, rows, mrow)
        dxa = tl.zeros([BT, BD], dtype=tl.float32)
        for k in tl.static_range(W):
            # rows r that read x[rows] through tap k: r = rows + k (causal) / rows - k (reverse)
            if REVERSE:
                r = rows - k
                ok = (r >= start) & mrow
            else:
                r = rows + k
                ok = (r < end) & mrow
            go = tl.load(dout + r.to(tl.int64)[:, None] * D + offs_d[None, :],
                         mask=ok[:, None] & md[None, :], other=0.0).to(tl.float32)
            if SILU:
                pre = _pre_at(x, w, bias, r, start, end, offs_d, md, D, W, BT, BD, HAS_BIAS,
                              REVERSE)
                sg = (1.0 / (1.0 + tl.exp2(-pre * LOG2E)))
                go = go * sg * (1.0 + pre * (1.0 - sg))
            wk = tl.load(w + offs_d * W + (W - 1 - k), mask=md, other=0.0).to(tl.float32)
            dxa += go * wk[None, :]
            if k == 0:
                db_acc += tl.reduce(go, 0, _SUM)
            # dweight[d, W-1-k] += sum_rows go[r] * x[rows]  (== sum_t g[t] x[t -/+ k])
            xv = tl.load(x + rows.to(tl.int64)[:, None] * D + offs_d[None, :],
                         mask=mrow[:, None] & md[None, :], other=0.0).to(tl.float32)
            contrib = tl.reduce(go * xv, 0, _SUM)                            # (BD,)
            dw_acc += tl.where(kk[None, :] == k, contrib[:, None], 0.0)
        tl.store(dx + rows.to(tl.int64)[:, None] * D + offs_d[None, :],
                 dxa.to(dx.dtype.element_ty), mask=mrow[:, None] & md[None, :])
    base = pid.to(tl.int64) * D * W
    tl.store(dw_part + base + offs_d[:, None] * W + (W - 1 - kk)[None, :], dw_acc,
             mask=md[:, None] & (kk < W)[None, :])
    if HAS_BIAS:
        tl.store(db_part + pid.to(tl.int64) * D + offs_d, db_acc, mask=md)


def _segment_of_token(cu_seqlens: torch.Tensor, T: int) -> torch.Tensor:
    ar = torch.arange(T, device=cu_seqlens.device, dtype=torch.int32)
    return torch.searchsorted(cu_seqlens[1:], ar, right=True, out_int32=True)


def _geometry(D: int):
    BD = min(64, triton.next_power_of_2(max(D, 1)))
    return BD, max(1, min(4, (BT * BD) // 256))


def causal_conv1d_fwd(x, weight, bias, cu_seqlens, silu: bool, reverse: bool) -> torch.Tensor:
    """Forward (formula and shapes in the module docstring). Returns out (T, D) in x.dtype.

    No host sync; no atomics.
    """
    T, D = x.shape
    W = weight.shape[1]
    out = torch.empty_like(x)
    if T == 0 or D == 0:
        return out
    seg_of = _segment_of_token(cu_seqlens, T)
    BD, nw = _geometry(D)
    dm = torch.empty(1, dtype=torch.float32, device=x.device)
    _conv_fwd[(triton.cdiv(T, BT), triton.cdiv(D, BD))](
        x, weight, bias if bias is not None else dm, seg_of, cu_seqlens, out, T, D,
        W=W, BT=BT, BD=BD, HAS_BIAS=bias is not None, SILU=silu, REVERSE=reverse,
        num_warps=nw)
    return out


def causal_conv1d_bwd(dout, x, weight, bias, cu_seqlens, silu: bool, reverse: bool):
    """Backward. Returns ``(dx, dweight, dbias)``: dx (T, D) in x.dtype, dweight (D, W) float32,
    dbias (D,) float32 or None. No host sync; deterministic (partials summed by torch.sum).
    """
    T, D = x.shape
    W = weight.shape[1]
    dev = x.device
    dx = torch.empty_like(x)
    if T == 0 or D == 0:
        return (dx, torch.zeros(D, W, dtype=torch.float32, device=dev),
                torch.zeros(D, dtype=torch.float32, device=dev) if bias is not None else None)
    dout = dout.contiguous()
    seg_of = _segment_of_token(cu_seqlens, T)
    BD, nw = _geometry(D)
    n_dblk = triton.cdiv(D, BD)
    n_tiles = triton.cdiv(T, BT)
    if dev.type == "cuda":
        sms = torch.cuda.get_device_properties(dev).multi_processor_count
        nprog = max(1, min(n_tiles, (sms * 8) // n_dblk))
    else:
        nprog = min(n_tiles, 4)
    dw_part = torch.empty(nprog, D, W, dtype=torch.float32, device=dev)
    db_part = torch.empty(nprog, D, dtype=torch.float32, device=dev)
    dm = torch.empty(1, dtype=torch.float32, device=dev)
    _conv_bwd[(nprog, n_dblk)](
        x, weight, bias if bias is not None else dm, seg_of, cu_seqlens, dout, dx, dw_part,
        db_part, T, D, nprog, W=W, BT=BT, BD=BD, WP=triton.next_power_of_2(W),
        HAS_BIAS=bias is not None, SILU=silu, REVERSE=reverse, num_warps=nw)
    return dx, dw_part.sum(0), (db_part.sum(0) if bias is not None else None)
