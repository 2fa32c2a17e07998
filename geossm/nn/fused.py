"""The fused inner Mamba path: keep the block input and the scan's chunk states only.

``mamba_inner`` computes what ``Mamba`` does before its out-projection::

    x', z   = split(x @ in_proj_weight.T + in_proj_bias)        # (T, E) each
    h       = silu(causal_conv1d(x', conv_weight, conv_bias))   # per segment
    dt,B,C  = split(h @ x_proj_weight.T)                        # (T, R), (T, N), (T, N)
    delta   = dt @ dt_proj_weight.T                             # (T, E); bias in the scan
    y       = selective_scan(h, delta, -exp(A_log), B, C, D, z, dt_proj_bias, softplus)

with the same kernels, in the same order, as the unfused path, so outputs and gradients are
the same. What differs is what autograd keeps for the backward: the unfused path keeps
``in_proj``'s input, the convolution's input copy, ``h``, ``x_proj``'s output, ``delta``,
contiguous copies of ``B``, ``C`` and ``z`` (about ``D + 5E + 3N + R`` values per token); this
path keeps ``x`` (``D`` values, in the dtype ``in_proj`` computes in: bf16 under the
trainer's autocast) and the scan kernel's compact chunk states (``T / chunk`` states of
``(E, N)``), and recomputes ``xz``, ``h``, ``dt``, ``B``, ``C``, ``delta`` in the backward (a
depthwise convolution and three matmuls: cheap next to the scan), the idea of ``mamba_ssm``'s
``mamba_inner_fn`` (which keeps ``xz``; recomputing it from ``x`` halves what is kept again
for one more matmul). The scan's forward is not rerun: its backward kernel starts from the
saved chunk states, as in the unfused path.

The kernel backends (numba on CPU, triton on CUDA) run through the ``geossm::selective_scan``
and ``geossm::selective_scan_backward`` ops; the ``torch`` reference backend (autograd through
its loop, no chunk states) recomputes the scan too in the backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from geossm.kernels import causal_conv1d, selective_scan
from geossm.kernels._common import resolve_backend  # the kernels' own backend choice
from geossm.packed import canonical_cu_seqlens, check_none_for_dense

__all__ = ["gelu_linear", "mamba_inner", "rms_norm"]


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def _scan_inputs(u, in_proj_weight, in_proj_bias, conv_weight, conv_bias, x_proj_weight,
                 dt_proj_weight, A_log, cu, reverse: bool, backend: str, dt_rank: int,
                 d_state: int):
    """``(h, z, delta, B, C, A, x, dt)``: everything the selective scan reads, from the input
    ``u``, and the two intermediates the hand-written backward needs.

    ``h`` (the convolution output), ``z``, ``delta`` and ``x`` (the convolution's contiguous
    input) are ``(T, E)``, ``B``, ``C`` ``(T, N)``, ``dt`` ``(T, R)``, ``A = -exp(A_log)``
    ``(E, N)`` in float32. The forward runs it without autograd, the backward again (on
    leaves to differentiate it, or without autograd for the kernel backends).
    """
    xz = F.linear(u, in_proj_weight, in_proj_bias)
    x, z = xz.split(conv_weight.shape[0], dim=-1)
    x = x.contiguous()
    h = causal_conv1d(x, conv_weight, conv_bias, cu_seqlens=cu, activation="silu",
                      reverse=reverse, backend=backend)
    dt, B, C = F.linear(h, x_proj_weight).split([dt_rank, d_state, d_state], dim=-1)
    delta = F.linear(dt, dt_proj_weight)
    return h, z, delta, B, C, -torch.exp(A_log.float()), x, dt


def _torch_scan(h, delta, A, B, C, D, z, dt_proj_bias, cu, reverse: bool):
    """The ``torch`` backend's scan (autograd through its loop, no chunk states)."""
    return selective_scan(h, delta, A, B, C, D=D.float(), z=z, delta_bias=dt_proj_bias.float(),
                          delta_softplus=True, cu_seqlens=cu, reverse=reverse, backend="torch")


class _MambaInner(torch.autograd.Function):
    """Autograd of ``mamba_inner`` (see the module docstring) on packed ``(T, D)`` input."""

    @staticmethod
    def forward(ctx, u, in_proj_weight, in_proj_bias, conv_weight, conv_bias, x_proj_weight,
                dt_proj_weight, dt_proj_bias, A_log, D, cu, reverse: bool, backend: str,
                dt_rank: int, d_state: int):
        amp = _autocast_state(u.device.type)
        # Kept in the dtype in_proj computes in (bf16 under autocast): the copy F.linear would
        # cast to (autocast leaves float64 alone).
        cast = amp[0] and u.is_floating_point() and u.dtype != torch.float64
        kept = u.to(amp[1]) if cast else u
        h, z, delta, B, C, A, _, _ = _scan_inputs(kept, in_proj_weight, in_proj_bias, conv_weight,
                                            conv_bias, x_proj_weight, dt_proj_weight, A_log,
                                            cu, reverse, backend, dt_rank, d_state)
        if backend == "torch":
            y = _torch_scan(h, delta, A, B, C, D, z, dt_proj_bias, cu, reverse)
            chunk_states = None
        else:
            y, _, chunk_states = torch.ops.geossm.selective_scan(
                h, delta.contiguous(), A, B.unsqueeze(1).contiguous(),
                C.unsqueeze(1).contiguous(), D.float(), z.contiguous(), dt_proj_bias.float(),
                cu, None, True, bool(reverse), backend)
        ctx.save_for_backward(kept, in_proj_weight, in_proj_bias, conv_weight, conv_bias,
                              x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, cu,
                              chunk_states)
        ctx.flags = (reverse, backend, dt_rank, d_state, u.device.type, amp, u.dtype)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        if ctx.flags[1] == "torch":
            return _replay_backward(ctx, dy)
        return _kernel_backward(ctx, dy)


def _replay_backward(ctx, dy):
    """The backward of ``_MambaInner`` by autograd: rerun the forward on detached leaves under
    autograd and differentiate it. The ``torch`` backend's scan has no backward kernel, so its
    scan is rerun too; with a kernel backend this is the reference ``_kernel_backward`` is
    tested against bit for bit."""
    (kept, in_proj_weight, in_proj_bias, conv_weight, conv_bias, x_proj_weight,
     dt_proj_weight, dt_proj_bias, A_log, D, cu, chunk_states) = ctx.saved_tensors
    reverse, backend, dt_rank, d_state, device_type, (amp, amp_dtype), u_dtype = ctx.flags
    leaves = [t.detach().requires_grad_() if t is not None else None
              for t in (kept, in_proj_weight, in_proj_bias, conv_weight, conv_bias,
                        x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D)]
    u_, in_w, in_b, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log_, D_ = leaves
    with torch.enable_grad(), torch.autocast(device_type, dtype=amp_dtype, enabled=amp):
        h, z, delta, B, C, A, _, _ = _scan_inputs(u_, in_w, in_b, conv_w, conv_b, x_proj_w,
                                            dt_proj_w, A_log_, cu, reverse, backend,
                                            dt_rank, d_state)
        if backend == "torch":
            y = _torch_scan(h, delta, A, B, C, D_, z, dt_bias, cu, reverse)
            outputs, grads = [y], [dy]
        else:
            du, ddelta, dA, dB, dC, dD, dz, dbias, _ = \
                torch.ops.geossm.selective_scan_backward(
                    dy, None, h.detach(), delta.detach().contiguous(), A.detach(),
                    B.detach().unsqueeze(1).contiguous(),
                    C.detach().unsqueeze(1).contiguous(), D_.detach().float(),
                    z.detach().contiguous(), dt_bias.detach().float(), cu, None, True,
                    bool(reverse), backend, chunk_states)
            outputs = [h, delta, B, C, z, A, D_.float(), dt_bias.float()]
            grads = [du, ddelta, dB.squeeze(1), dC.squeeze(1), dz, dA, dD, dbias]
    wanted = [t for t in leaves if t is not None]
    found = iter(torch.autograd.grad(outputs, wanted, grads, allow_unused=True))
    du_, *rest = (next(found) if t is not None else None for t in leaves)
    return (du_.to(u_dtype), *rest, None, None, None, None, None)


def _linear_backward(grad, inp, weight):
    """``(d input, d weight)`` of ``F.linear(inp, weight)`` on 2-D tensors, as autograd's mm
    backward computes them for a contiguous weight (``weight.t()`` is column-major): the same
    products, so the same bits."""
    return grad.mm(weight), grad.t().mm(inp)


def _kernel_backward(ctx, dy):
    """The backward of ``_MambaInner`` for the kernel backends, written out: recompute the
    scan inputs without autograd, run the scan's backward kernel, then the chain rule through
    dt_proj, x_proj, the convolution and in_proj by hand.

    It performs autograd's own steps for these ops (the mm products in the same orientation,
    casts at the same places, the split backward as one concatenation), so the gradients are
    those of the autograd replay that the ``torch`` backend still uses, at a fraction of its
    operator count (no leaf detaching, no graph building, no zero-filled split grads).
    """
    (kept, in_proj_weight, in_proj_bias, conv_weight, conv_bias, x_proj_weight,
     dt_proj_weight, dt_proj_bias, A_log, D, cu, chunk_states) = ctx.saved_tensors
    reverse, backend, dt_rank, d_state, device_type, (amp, amp_dtype), u_dtype = ctx.flags
    # The dtype autocast computes the projections in (it leaves float64 alone).
    mm_dtype = amp_dtype if amp and kept.dtype != torch.float64 else kept.dtype
    w_in, w_x, w_dt = (w.to(mm_dtype) for w in (in_proj_weight, x_proj_weight,
                                                  dt_proj_weight))
    conv_w = conv_weight.contiguous()
    conv_b = None if conv_bias is None else conv_bias.contiguous()
    with torch.no_grad(), torch.autocast(device_type, dtype=amp_dtype, enabled=amp):
        h, z, delta, B, C, A, x, dt = _scan_inputs(kept, in_proj_weight, in_proj_bias,
                                                   conv_weight, conv_bias, x_proj_weight,
                                                   dt_proj_weight, A_log, cu, reverse,
                                                   backend, dt_rank, d_state)
    with torch.no_grad(), torch.autocast(device_type, enabled=False):
        du, ddelta, dA, dB, dC, dD, dz, dbias, _ = torch.ops.geossm.selective_scan_backward(
            dy, None, h, delta.contiguous(), A, B.unsqueeze(1).contiguous(),
            C.unsqueeze(1).contiguous(), D.float(), z.contiguous(), dt_proj_bias.float(), cu,
            None, True, bool(reverse), backend, chunk_states)
        # autograd hands every gradient over in its tensor's dtype
        ddt, d_w_dt = _linear_backward(ddelta.to(delta.dtype), dt, w_dt)
        dx_dbl = torch.cat([ddt, dB.squeeze(1).to(B.dtype), dC.squeeze(1).to(C.dtype)],
                           dim=-1)
        dh_proj, d_w_x = _linear_backward(dx_dbl, h, w_x)
        dh = du.to(h.dtype) + dh_proj
        dx, d_conv_w, d_conv_b = torch.ops.geossm.causal_conv1d_backward(
            dh, x, conv_w, conv_b, cu, True, bool(reverse), backend)
        dxz = torch.cat([dx, dz.to(z.dtype)], dim=-1)
        du_in, d_w_in = _linear_backward(dxz, kept, w_in)
        d_b_in = None if in_proj_bias is None else dxz.sum(0).to(in_proj_bias.dtype)
        dA_log = dA.neg() * A.neg()
    return (du_in.to(u_dtype), d_w_in.to(in_proj_weight.dtype), d_b_in,
            d_conv_w.to(conv_weight.dtype), None if conv_bias is None else d_conv_b,
            d_w_x.to(x_proj_weight.dtype), d_w_dt.to(dt_proj_weight.dtype),
            dbias.to(dt_proj_bias.dtype), dA_log.to(A_log.dtype), dD.to(D.dtype),
            None, None, None, None, None)


def mamba_inner(x: torch.Tensor, in_proj_weight: torch.Tensor,
                in_proj_bias: torch.Tensor | None, conv_weight: torch.Tensor,
                conv_bias: torch.Tensor | None, x_proj_weight: torch.Tensor,
                dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor, A_log: torch.Tensor,
                D: torch.Tensor, cu_seqlens: torch.Tensor | None = None, reverse: bool = False,
                backend: str | None = None) -> torch.Tensor:
    """The gated scan output ``y`` of a Mamba block from its input ``x`` (``in_proj`` through
    the scan; see the module docstring), keeping only ``x`` (in the dtype ``in_proj`` computes
    in) and the scan's chunk states for the backward.

    Args:
        x: packed ``(T, D)`` or dense ``(Bt, L, D)`` block input.
        in_proj_weight: ``(2E, D)``; in_proj_bias ``(2E,)`` or None.
        conv_weight: ``(E, W)`` depthwise filters; conv_bias ``(E,)`` or None.
        x_proj_weight: ``(R + 2N, E)``; dt_proj_weight ``(E, R)``; dt_proj_bias ``(E,)``.
        A_log: ``(E, N)`` (``A = -exp(A_log)``); D: ``(E,)``.
        cu_seqlens: ``(S+1,)`` int32/int64 boundaries of packed input, default None = one
            segment (dense: must be None).
        reverse: every segment from its end to its start, default False.
        backend: ``"torch"``, ``"numba"``, ``"triton"`` or None (the kernels' default).

    Shapes::

        x:   (T, D) or (Bt, L, D)
        out: (T, E) or (Bt, L, E), in in_proj's output dtype (bf16 under bf16 autocast)

    Host sync: validating ``cu_seqlens`` once, as the kernels do.
    """
    width = in_proj_weight.shape[1]
    if x.dim() not in (2, 3) or x.shape[-1] != width:
        raise ValueError(f"x must have shape (T, {width}) or (B, L, {width}), got "
                         f"{tuple(x.shape)}")
    inner, dt_rank, d_state = conv_weight.shape[0], dt_proj_weight.shape[1], A_log.shape[1]
    tokens = tuple(x.shape[:-1])
    if x.dim() == 3 and x.shape[0] == 0:
        # A dense batch of no sequences has no (S+1,) boundaries with S >= 1: run it as one
        # empty packed segment (its output is empty all the same).
        check_none_for_dense(cu_seqlens)
        tokens = (0,)
    cu = canonical_cu_seqlens(cu_seqlens, tokens, x.device)
    name = resolve_backend(backend, x.device)
    y = _MambaInner.apply(x.reshape(-1, width), in_proj_weight, in_proj_bias, conv_weight,
                          conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, cu,
                          bool(reverse), name, dt_rank, d_state)
    return y.reshape(*x.shape[:-1], inner)


class _RMSNorm(torch.autograd.Function):
    """``y = (x * rsqrt(mean(x², -1) + eps) * weight)`` in float32, keeping ``x`` and the
    ``(..., 1)`` reciprocal root only; the backward repeats autograd's own steps for that
    formula (mul, rsqrt, mean, pow) in the same order, so its gradients are bitwise those of
    the unfused ops."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return (xf * rstd * weight.float()).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        xf, wf, dyf = x.float(), weight.float(), dy.float()
        normed = xf * rstd
        dnormed = dyf * wf
        dweight = (dyf * normed).sum(tuple(range(x.dim() - 1)))
        drstd = (dnormed * xf).sum(-1, keepdim=True)
        dmean = -0.5 * drstd * rstd.pow(3)
        dsquare = dmean.expand_as(xf) / x.shape[-1]
        dx = dnormed * rstd + dsquare * (2 * xf.pow(1))
        return dx.to(x.dtype), dweight.to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``x / sqrt(mean(x², dim=-1) + eps) * weight`` in float32, returned in x's dtype, keeping
    for the backward ``x`` and one float per row (not also the normalised float32 copy).

    Without gradients or under ``torch.compile`` / ``torch.export`` the plain ops run (nothing
    is kept then; the compiler plans its own saving).

    Shapes: ``x (..., D)``, ``weight (D,)`` -> ``(..., D)``.
    """
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _RMSNorm.apply(x, weight, float(eps))
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast would compute a matmul in on ``device_type``, or None when off."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h), weight, bias)`` keeping ``h`` only: the activation ``gelu(h)`` (what
    ``linear`` would keep, as wide as ``h``) is recomputed in the backward, one elementwise op.
    Casts are explicit (the matmul dtype is fixed in the forward from autocast), so the
    backward does not depend on the autocast state it runs under."""

    @staticmethod
    def forward(ctx, h, weight, bias, approximate: str, dtype):
        with torch.autocast(h.device.type, enabled=False):
            a = F.gelu(h, approximate=approximate).to(dtype)
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            out = F.linear(a, w, b)
        ctx.save_for_backward(h, weight, bias)
        ctx.approximate, ctx.dtype = approximate, dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        h, weight, bias = ctx.saved_tensors
        with torch.autocast(h.device.type, enabled=False):
            dout2 = dout.reshape(-1, dout.shape[-1]).to(ctx.dtype)
            a = F.gelu(h, approximate=ctx.approximate).to(ctx.dtype).reshape(-1, h.shape[-1])
            da = dout2.mm(weight.to(ctx.dtype))
            dweight = dout2.t().mm(a).to(weight.dtype)
            dbias = None if bias is None else dout2.sum(0).to(bias.dtype)
            dh = torch.ops.aten.gelu_backward(da.to(h.dtype).reshape(h.shape), h,
                                              approximate=ctx.approximate)
        return dh, dweight, dbias, None, None


def gelu_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                approximate: str = "none") -> torch.Tensor:
    """``F.linear(F.gelu(h), weight, bias)`` keeping only ``h`` for the backward.

    The plain ops keep ``h`` (for the GELU's gradient) and ``gelu(h)`` (for the weight's
    gradient): two tensors as wide as the MLP's hidden layer (4x the model width). This keeps
    ``h`` and recomputes ``gelu(h)`` in the backward. The matmul runs in autocast's dtype when
    autocast is on (as ``F.linear`` would), else in ``h``'s dtype; gradients equal the plain
    ops' to float rounding (their sums run in another order).

    Without gradients or under ``torch.compile`` / ``torch.export`` the plain ops run.

    Shapes: ``h (..., H)``, ``weight (O, H)``, ``bias (O,)`` -> ``(..., O)``.
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return F.linear(F.gelu(h, approximate=approximate), weight, bias)
    if h.dim() == 0 or h.shape[-1] != weight.shape[1]:
        raise ValueError(f"h must have shape (..., {weight.shape[1]}), got {tuple(h.shape)}")
    dtype = _autocast_dtype(h.device.type) or torch.promote_types(h.dtype, weight.dtype)
    return _GeluLinear.apply(h, weight, bias, approximate, dtype)
