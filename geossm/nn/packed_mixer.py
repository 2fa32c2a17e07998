"""Both directions of a ``BiMamba`` in one scan launch (``packed_bimamba``): LION's group layers
and the graph model's BiMambas use it.

A ``LinearGroupLayer`` with a bidirectional Mamba-1 operator computes, for voxel features
``x (V, D)`` and a window-group ``Serialization`` (``order``, ``inverse``, ``cu_seqlens``)::

    h   = x[order];  u = rms_norm(h)
    out = x + (mamba_f(u, cu) + mamba_b(u, cu, reverse=True))[inverse]

with two sets of Mamba weights. Run as two ``Mamba`` calls that is two of every launch (in-,
x-, dt- and out-projections, convolution, scan, their backwards), each a few microseconds of
host dispatch: the LION step is bound by them, not by the GPU. Here the two directions are one
Mamba of twice the inner width ``2E``:

- the backward direction reads its tokens in the reversed order of every group (a scan
  forward over a reversed segment is the reversed scan of it), so both halves run forward in
  one ``causal_conv1d`` and one ``selective_scan`` launch, ``B``/``C`` as ``G = 2`` groups;
- the in-projection is one matmul over the source voxels with both weights stacked, and one
  gather (``bidirectional_indices``) puts each half's rows in its own order; the
  out-projection is one gather back and one matmul whose sum over the ``2E`` channels adds the
  two directions;
- x- and dt-projections are block-diagonal matmuls of the two directions' weights;
- the backward is written out (autograd's chain rule, no graph); the gathers' gradients are
  gathers again (the indices are permutations). By default it keeps only the normalised input
  and rebuilds the scan inputs there as ``geossm.nn.fused.mamba_inner`` does;
  ``recompute=False`` keeps them instead (~20 fewer operators per layer for ~8E + 4N more
  values per voxel: the LION step is bound by dispatch, not memory, 4.3 GiB at 8 KITTI frames).

The weights come as one parameter per pair, in this path's layout (``stacked_weights``: e.g.
``packed_in_proj_weight (4E, D)``), so the step neither concatenates them in the forward nor
splits their gradients in the backward.

The math is the same as the two calls; the result differs by float rounding (the direction
sum is accumulated in the out-projection's float32 accumulator instead of rounding each
direction's bf16 output first, and the reversed scan's chunk boundaries move).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from geossm.kernels._common import resolve_backend  # the kernels' own backend choice
from geossm.nn.stacked_weights import is_packed, stacked_weights
from geossm.serialization.windows import device_constant

__all__ = ["packed_bimamba", "packed_backend", "bidirectional_indices", "segment_reversal",
           "padded_serialization", "packed_forward", "packed_backward", "derived_weights",
           "weight_dtypes", "SAVED", "cast_if_needed", "compute_dtype"]


def segment_reversal(cu_seqlens: Tensor, total: int) -> Tensor:
    """``(T,)`` long: position ``t`` of every segment of ``cu_seqlens (S+1,)`` mapped to
    ``start + end - 1 - t`` (each segment read backwards; its own inverse). No host sync."""
    pos = torch.arange(total, device=cu_seqlens.device)
    cu = cu_seqlens.long()
    seg = torch.searchsorted(cu, pos, right=True) - 1
    return cu[seg] + cu[seg + 1] - 1 - pos


def padded_serialization(order: Tensor, inverse: Tensor, reversal: Tensor, cu_seqlens: Tensor,
                         tokens: int, segments: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(order, inverse, reversal, cu_seqlens)`` of ``V`` tokens in ``S`` segments grown to
    ``tokens`` tokens and ``segments`` segments, for a layer run on a fixed size (a CUDA graph
    replayed for every batch up to that size): the pad tokens ``V .. tokens-1`` stay in place
    and form one segment after the last (their scan never meets a real token's state), the
    segments after it are empty. Features of the pad tokens are zero and their output rows are
    dropped, so no gradient comes from them.

    Shapes: ``order, inverse (..., V)``, ``reversal (V,)``, ``cu_seqlens (S+1,)`` ->
    ``(..., tokens)``, ``(tokens,)``, ``(segments+1,)``; needs ``tokens >= V`` and
    ``segments >= S + (tokens > V)``."""
    v, s = order.shape[-1], cu_seqlens.numel() - 1
    if tokens < v or segments < s + (tokens > v):
        raise ValueError(f"padded_serialization: {v} tokens in {s} segments do not fit "
                         f"{tokens} tokens in {segments} segments (the pad tokens take one)")
    pad = torch.arange(v, tokens, device=order.device, dtype=order.dtype)
    grown = pad.expand(*order.shape[:-1], tokens - v)
    return (torch.cat([order, grown], -1), torch.cat([inverse, grown], -1),
            torch.cat([reversal, (v + tokens - 1) - pad]),
            torch.cat([cu_seqlens, cu_seqlens.new_full((segments - s,), tokens)]))


def bidirectional_indices(order: Tensor, inverse: Tensor, reversal: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gathers of ``packed_bimamba``: ``(into_scan (4T,), from_scan (2V,), into_scan_grad
    (2T,), from_scan_grad (4V,))``, for one serialization or a stack of them (leading dims of
    ``order`` and ``inverse``: one index set each, computed together).

    With ``src_f = order``, ``src_b = order[reversal]`` (the backward direction reads every
    group backwards) and ``pos_f = inverse``, ``pos_b = reversal[inverse]`` their inverses:

    - ``into_scan[k, t, d] = 4 src_d(t) + 2d + k``: rows of the in-projection ``(V, 4E)``
      (``x_f z_f x_b z_b``) viewed as ``(4V, E)``, into ``(x|z, T, 2E)`` scan order;
    - ``from_scan[i, d] = 2 pos_d(i) + d``: rows of the scan output ``(T, 2E)`` viewed as
      ``(2T, E)``, back to the source voxels ``(V, 2E)``;
    - ``into_scan_grad[t, d] = 2 src_d(t) + d`` and ``from_scan_grad`` are the inverse
      permutations of ``from_scan`` and ``into_scan``: the backward's gathers.

    Shapes: ``order, inverse (..., T)`` long (``V = T``), ``reversal (T,)`` long."""
    t = order.shape[-1]
    src_b = order.index_select(-1, reversal)
    pos_b = reversal[inverse]
    grad_gather = torch.stack([2 * order, 2 * src_b + 1], -1).flatten(-2)        # (..., 2T)
    scatter = torch.stack([2 * inverse, 2 * pos_b + 1], -1).flatten(-2)          # (..., 2V)
    into = torch.stack([2 * grad_gather, 2 * grad_gather + 1], -2).flatten(-2)   # (..., 4T)
    from_grad = torch.stack([scatter, scatter + 2 * t], -1).flatten(-2)          # (..., 4V)
    return into, scatter, grad_gather, from_grad


def cast_if_needed(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` where the dtype differs, else ``t`` itself: a no-op ``to`` is still an
    operator call (host time on the GPU, ~50 per packed layer and step)."""
    return t if t.dtype == dtype else t.to(dtype)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype ``x``'s matmuls run in: autocast's where it is on (float64 stays), else
    ``x``'s own."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _x_proj_rows(dt_rank: int, d_state: int, device) -> tuple[Tensor, Tensor]:
    """``(rows (2, K), halves (2, 1))``: where row ``k`` of direction ``d``'s x-projection
    ``(K = R + 2N, E)`` (rows ``dt, B, C``) lies in the block-diagonal weight ``(2K, 2, E)``,
    whose rows are ``B_f, B_b, C_f, C_b, dt_f, dt_b``: the scan's ``(T, 2, N)`` inputs are
    then its first ``2N`` and next ``2N`` output columns."""
    r, n = dt_rank, d_state
    rows = []
    for d in range(2):
        rows.append([4 * n + d * r + k for k in range(r)]
                    + [d * n + k for k in range(n)] + [2 * n + d * n + k for k in range(n)])
    return device_constant(rows, device), device_constant([[0], [1]], device)


def _block_diag_x(w: Tensor, rows: Tensor, halves: Tensor) -> Tensor:
    """``(2K, 2E)`` block-diagonal x-projection of the stacked ``w (2, K, E)`` (rows as
    ``_x_proj_rows`` lays them out)."""
    k, e = w.shape[1:]
    big = w.new_zeros(2 * k, 2, e)
    big[rows, halves] = w
    return big.view(2 * k, 2 * e)


def _block_diag_dt(w: Tensor) -> Tensor:
    """``(2E, 2R)`` block-diagonal dt-projection of the stacked ``w (2, E, R)``."""
    e, r = w.shape[1:]
    big = w.new_zeros(2, e, 2, r)
    both = device_constant([0, 1], w.device)
    big[both, :, both] = w
    return big.view(2 * e, 2 * r)


def _inner(u16, w_in, conv_w, conv_b, w_x, w_dt, cu, into_scan, backend, d_state):
    """``(xs, z, h, B, C, dt, delta)`` of both directions from the normalised input
    ``u16 (V, D)``: ``xs, z, h, delta (T, 2E)`` (channels ``f | b``), ``B, C (T, 2, N)``,
    ``dt (T, 2R)`` a view of the x-projection."""
    t = into_scan.shape[0] // 4
    e = conv_w.shape[0] // 2
    xz = u16.mm(w_in.t())                                             # (V, 4E): x_f z_f x_b z_b
    xs, z = xz.view(-1, e).index_select(0, into_scan).view(2, t, 2 * e).unbind(0)
    h = torch.ops.geossm.causal_conv1d(xs, conv_w, conv_b, cu, True, False, backend)
    dbl = h.mm(w_x.t())                                               # (T, 4N + 2R)
    n = d_state
    B = dbl[:, :2 * n].contiguous().view(t, 2, n)
    C = dbl[:, 2 * n:4 * n].contiguous().view(t, 2, n)
    dt = dbl[:, 4 * n:]
    delta = dt.mm(w_dt.t())
    return xs, z, h, B, C, dt, delta


def packed_forward(x, norm_w, in_w, conv_w, conv_b, x_w, dt_w, dt_b, A_log, D, out_w,
                   into_scan, from_scan, cu, eps: float, backend: str, recompute: bool,
                   cd: torch.dtype) -> tuple[Tensor, tuple]:
    """``(out (V, D), saved)``: ``packed_bimamba``'s forward without autograd, its matmuls in
    ``cd``; ``saved`` is what ``packed_backward`` reads (activations, the weights as the
    forward used them, indices; see ``SAVED``)."""
    dev = x.device.type
    n = A_log.shape[1]
    with torch.no_grad(), torch.autocast(dev, enabled=False):
        xf = cast_if_needed(x, torch.float32)
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        normed = cast_if_needed(xf * rstd * cast_if_needed(norm_w, torch.float32), x.dtype)
        u16 = cast_if_needed(normed, cd)
        w_in, w_x, w_dt, A, D, bias, w_out, rows, halves = derived_weights(
            in_w, x_w, dt_w, dt_b, A_log, D, out_w, cd)
        xs, z, h, B, C, dt, delta = _inner(u16, w_in, conv_w, conv_b, w_x, w_dt, cu,
                                           into_scan, backend, n)
        y, _, chunks = torch.ops.geossm.selective_scan(h, delta, A, B, C, D, z, bias, cu,
                                                       None, True, False, backend)
        e = conv_w.shape[0] // 2
        ys = y.view(-1, e).index_select(0, from_scan).view(x.shape[0], 2 * e)
        out = x + ys.mm(w_out.t())
    # the scan inputs (xs, z, h, B, C, dt, delta: about 8E + 4N values per voxel) or, with
    # recompute, nothing of them: the backward rebuilds them from u16 (D values per voxel)
    kept = (None,) * 7 if recompute else (xs, z, h, B, C, dt, delta)
    return out, (x, rstd, u16, norm_w, w_in, conv_w, conv_b, w_x, w_dt, A, D, bias, w_out, ys,
                 chunks, rows, halves, *kept)


def derived_weights(in_w, x_w, dt_w, dt_b, A_log, D, out_w, cd: torch.dtype) -> tuple:
    """``(w_in, w_x, w_dt, A, D, bias, w_out, rows, halves)``: the stacked weights as the
    packed forward uses them (matmul weights in ``cd``, the block-diagonal x-/dt-projections,
    ``A = -exp(A_log)`` and the scan's float32 ``D`` / dt bias) and ``_x_proj_rows``."""
    f32 = torch.float32
    rows, halves = _x_proj_rows(dt_w.shape[2], A_log.shape[1], in_w.device)
    # the stacked weights are both directions' in the packed layout already
    return (cast_if_needed(in_w, cd), cast_if_needed(_block_diag_x(x_w, rows, halves), cd),
            cast_if_needed(_block_diag_dt(dt_w), cd), -torch.exp(cast_if_needed(A_log, f32)),
            cast_if_needed(D, f32), cast_if_needed(dt_b, f32), cast_if_needed(out_w, cd),
            rows, halves)


#: the names of ``packed_forward``'s ``saved`` tuple, in order (the 7 scan inputs last)
SAVED = ("x", "rstd", "u16", "norm_w", "w_in", "conv_w", "conv_b", "w_x", "w_dt", "A", "D",
         "bias", "w_out", "ys", "chunks", "rows", "halves",
         "xs", "z", "h", "B", "C", "dt", "delta")


def packed_backward(saved: Sequence, dout: Tensor, into_scan, grad_gather, from_grad, cu,
                    backend: str, cd: torch.dtype, dtypes: Sequence[torch.dtype]) -> tuple:
    """The 11 gradients ``(dx, d_norm_w, d_in_w, d_conv_w, d_conv_b, d_x_w, d_dt_w, d_dt_b,
    d_A_log, d_D, d_out_w)`` of ``packed_forward`` for ``dout (V, D)``, each in its
    parameter's dtype (``dtypes``: of ``in_w, conv_w, x_w, dt_w, out_w, A_log, D, dt_b``;
    ``d_conv_b`` None without a conv bias)."""
    (x, rstd, u16, norm_w, w_in, conv_w, conv_b, w_x, w_dt, A, D, bias, w_out, ys,
     chunks, rows, halves, *kept) = saved
    t_in, t_conv, t_x, t_dt, t_out, t_alog, t_d, t_bias = dtypes
    n = A.shape[1]
    e = conv_w.shape[0] // 2
    v, t = x.shape[0], grad_gather.numel() // 2
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        if kept[0] is None:
            kept = _inner(u16, w_in, conv_w, conv_b, w_x, w_dt, cu, into_scan, backend, n)
        xs, z, h, B, C, dt, delta = kept
        # out = x + ys @ w_out.T
        dm = cast_if_needed(dout, cd)
        d_w_out = dm.t().mm(ys)                                           # (D, 2E)
        dy = dm.mm(w_out).view(2 * v, e).index_select(0, grad_gather).view(t, 2 * e)
        du, ddelta, dA, dB, dC, dD, dz, dbias, _ = torch.ops.geossm.selective_scan_backward(
            dy, None, h, delta, A, B, C, D, z, bias, cu, None, True, False, backend, chunks)
        ddelta = cast_if_needed(ddelta, delta.dtype)
        ddt, d_w_dt = ddelta.mm(w_dt), ddelta.t().mm(dt)
        d_dbl = torch.cat([cast_if_needed(dB, B.dtype).view(t, 2 * n),
                           cast_if_needed(dC, C.dtype).view(t, 2 * n), ddt], 1)
        dh = cast_if_needed(du, h.dtype) + d_dbl.mm(w_x)
        d_w_x = d_dbl.t().mm(h)                                           # (4N + 2R, 2E)
        dxs, d_conv_w, d_conv_b = torch.ops.geossm.causal_conv1d_backward(
            dh, xs, conv_w, conv_b, cu, True, False, backend)
        dxz = torch.stack([dxs, cast_if_needed(dz, z.dtype)]).view(4 * t, e)
        dxz = dxz.index_select(0, from_grad)
        dxz = dxz.view(v, 4 * e)
        du16 = dxz.mm(w_in)
        d_w_in = dxz.t().mm(u16)                                          # (4E, D)
        du16 = cast_if_needed(du16, x.dtype)
        dx = dout + _rms_norm_backward(du16, x, rstd, norm_w)
        d_norm_w = cast_if_needed(_rms_norm_weight_grad(du16, x, rstd), norm_w.dtype)
        # one gradient per stacked parameter, each contiguous in its layout
        d_in = cast_if_needed(d_w_in, t_in)                                         # (4E, D)
        d_conv = cast_if_needed(d_conv_w, t_conv)                                   # (2E, W)
        d_conv_bias = None if conv_b is None else cast_if_needed(d_conv_b, t_conv)
        d_x = cast_if_needed(d_w_x.view(-1, 2, e)[rows, halves], t_x)               # (2, K, E)
        both = device_constant([0, 1], x.device)
        d_dt = cast_if_needed(d_w_dt.view(2, e, 2, -1)[both, :, both], t_dt)       # (2, E, R)
        d_bias = cast_if_needed(dbias, t_bias)
        d_alog = cast_if_needed(dA * A, t_alog)                                     # (2E, N)
        d_d = cast_if_needed(dD, t_d)
        d_out = cast_if_needed(d_w_out, t_out)                                      # (D, 2E)
    return dx, d_norm_w, d_in, d_conv, d_conv_bias, d_x, d_dt, d_bias, d_alog, d_d, d_out


def weight_dtypes(in_w, conv_w, conv_b, x_w, dt_w, dt_b, A_log, D, out_w
                  ) -> tuple[torch.dtype, ...]:
    """``packed_backward``'s ``dtypes``: the parameters' own, for their gradients (arguments
    in ``packed_forward``'s order; ``conv_b`` shares ``conv_w``'s dtype)."""
    return tuple(p.dtype for p in (in_w, conv_w, x_w, dt_w, out_w, A_log, D, dt_b))


class _PackedBiMamba(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, norm_w, in_w, conv_w, conv_b, x_w, dt_w, dt_b, A_log, D, out_w,
                into_scan, from_scan, grad_gather, from_grad, cu, eps: float,
                backend: str, recompute: bool):
        cd = compute_dtype(x)
        out, saved = packed_forward(x, norm_w, in_w, conv_w, conv_b, x_w, dt_w, dt_b, A_log, D,
                                    out_w, into_scan, from_scan, cu, eps, backend, recompute, cd)
        ctx.save_for_backward(into_scan, grad_gather, from_grad, cu, *saved)
        ctx.flags = (backend, cd, weight_dtypes(in_w, conv_w, conv_b, x_w, dt_w, dt_b, A_log, D,
                                                out_w))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        into_scan, grad_gather, from_grad, cu, *saved = ctx.saved_tensors
        backend, cd, dtypes = ctx.flags
        return (*packed_backward(saved, dout, into_scan, grad_gather, from_grad, cu, backend,
                                 cd, dtypes),
                None, None, None, None, None, None, None, None)


def _rms_norm_backward(dy: Tensor, x: Tensor, rstd: Tensor, weight: Tensor) -> Tensor:
    """``d x`` of ``x * rstd * weight`` with ``rstd = rsqrt(mean(x^2) + eps)`` (float32):
    ``rstd * g - x * rstd^3 * mean(g * x)`` with ``g = dy * weight``."""
    f32 = torch.float32
    xf = cast_if_needed(x, f32)
    g = cast_if_needed(dy, f32) * cast_if_needed(weight, f32)
    proj = (g * xf).mean(-1, keepdim=True) * rstd.pow(3)
    return cast_if_needed(g * rstd - xf * proj, x.dtype)


def _rms_norm_weight_grad(dy: Tensor, x: Tensor, rstd: Tensor) -> Tensor:
    f32 = torch.float32
    return (cast_if_needed(dy, f32) * (cast_if_needed(x, f32) * rstd)).sum(0)


def packed_backend(bimamba, x: Tensor) -> str | None:
    """The kernel backend ``packed_bimamba`` runs ``bimamba`` on for inputs ``x``, or None where
    the mixer's own two calls run instead: weights not stacked (``pack_bimamba_weights``),
    under ``torch.compile``, an unfused direction, directions on different backends, or the
    ``torch`` reference backend."""
    if not is_packed(bimamba) or torch.compiler.is_compiling():
        return None
    f, b = bimamba.forward_mamba, bimamba.backward_mamba
    if not (f.fused and b.fused) or f.backend != b.backend:
        return None
    name = resolve_backend(f.backend, x.device)
    return None if name == "torch" else name


def packed_bimamba(x: Tensor, norm_weight: Tensor, bimamba, indices: Sequence[Tensor],
                   cu_seqlens: Tensor, eps: float = 1e-5, backend: str = "numba",
                   recompute: bool = True) -> Tensor:
    """``x + (mamba_f(u) + mamba_b(u, reverse=True))[inverse]`` with ``u = rms_norm(x[order])``
    (see the module docstring), both directions in one launch of each kernel.

    Args:
        x: ``(V, D)`` features in source order.
        norm_weight: ``(D,)`` of the RMS norm (epsilon ``eps``, default 1e-5).
        bimamba: a ``geossm.nn.BiMamba`` whose weights ``pack_bimamba_weights`` stacked (no
            biases in the in- and out-projections).
        indices: the four ``bidirectional_indices`` of the serialization.
        cu_seqlens: ``(S+1,)`` int32 groups, already validated.
        backend: a kernel backend, ``"numba"`` or ``"triton"`` (default ``"numba"``).
        recompute: keep only the normalised input for the backward and recompute the
            projections, convolution and gathers there (``mamba_inner``'s trade: ~D instead of
            ~8E + 4N values per voxel, ~20 more operators per layer), default True (the
            activation memory of the two-call path); False keeps the scan inputs.

    Shapes: ``x (V, D) -> (V, D)``; ``indices`` ``(4V,), (2V,), (2V,), (4V,)``.
    """
    if not is_packed(bimamba):
        raise ValueError("bimamba: expected a BiMamba whose weights pack_bimamba_weights "
                         f"stacked, got {type(bimamba).__name__} with separate weights")
    w = stacked_weights(bimamba)
    return _PackedBiMamba.apply(
        x, norm_weight, w["in_proj.weight"], w["conv_weight"], w.get("conv_bias"),
        w["x_proj.weight"], w["dt_proj.weight"], w["dt_proj.bias"], w["A_log"], w["D"],
        w["out_proj.weight"], *indices, cu_seqlens, float(eps), backend, bool(recompute))
