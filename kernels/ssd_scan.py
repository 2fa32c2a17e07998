"""``ssd_scan``: the Mamba-2 state-space-duality (SSD) scan over packed variable-length sequences.

One public function validates and canonicalises its inputs, then dispatches to a backend:
``reference`` (sequential, autograd; float64 for float64 inputs), ``chunked`` (the vectorised
chunked form in torch, autograd; the CPU backend) or ``triton`` (GPU kernels). The Triton
forward runs behind the custom op ``geossm::ssd_scan`` (with a fake implementation), its backward
(initial states and final-state gradients included) behind ``geossm::ssd_scan_backward``.
"""

from __future__ import annotations

import importlib
import math
from typing import Optional

import torch

from geossm import _compat
from geossm.packed import canonical_cu_seqlens

from ._common import HAS_TRITON, check_same_device, check_shape, check_tensor, check_triton_device
from .ssd_scan_torch import ssd_scan_chunked, ssd_scan_ref

BACKENDS = ("reference", "chunked", "triton")


@torch.library.custom_op("geossm::ssd_scan", mutates_args=())
def _ssd_scan_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                 dt_bias: Optional[torch.Tensor], cu_seqlens: torch.Tensor,
                 initial_states: Optional[torch.Tensor], dt_softplus: bool, reverse: bool,
                 final_states: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward; returns ``(out like x, final_states (S, H, P, N) float32)``, the
    latter empty ``(0,)`` unless ``final_states``."""
    return _triton().ssd_scan_fwd(x, dt, A, B, C, D, z, dt_bias, cu_seqlens, initial_states,
                                  dt_softplus, reverse, final_states)


def _triton():
    return importlib.import_module("geossm.kernels.ssd_scan_triton")


@_ssd_scan_op.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, cu_seqlens, initial_states, dt_softplus, reverse,
      final_states):
    S = cu_seqlens.shape[0] - 1
    shape = (S, x.shape[1], x.shape[2], B.shape[2]) if final_states else (0,)
    final = x.new_empty(shape, dtype=torch.float32)
    return torch.empty_like(x), final


@torch.library.custom_op("geossm::ssd_scan_backward", mutates_args=())
def _ssd_scan_backward_op(dout: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                          A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                          D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                          dt_bias: Optional[torch.Tensor], cu_seqlens: torch.Tensor,
                          initial_states: Optional[torch.Tensor],
                          dfinal: Optional[torch.Tensor], dt_softplus: bool,
                          reverse: bool) -> list[torch.Tensor]:
    """Triton backward: the gradients of ``x, dt, A, B, C, D, z, dt_bias, initial_states``
    from the output gradient and (``dfinal``, else None) the final-state gradient; an absent
    input gets an empty placeholder (custom ops cannot return None)."""
    grads = _triton().ssd_scan_bwd(dout.contiguous(), x, dt, A, B, C, D, z, dt_bias,
                                   cu_seqlens, dt_softplus, reverse, initial_states,
                                   None if dfinal is None else dfinal.contiguous())
    return [x.new_empty(0) if g is None else g for g in grads]


@_ssd_scan_backward_op.register_fake
def _(dout, x, dt, A, B, C, D, z, dt_bias, cu_seqlens, initial_states, dfinal, dt_softplus,
      reverse):
    return [x.new_empty(0) if v is None else torch.empty_like(v)
            for v in (x, dt, A, B, C, D, z, dt_bias, initial_states)]


def _setup_context(ctx, inputs, output):
    (x, dt, A, B, C, D, z, dt_bias, cu_seqlens, initial_states, dt_softplus, reverse,
     final_states) = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, cu_seqlens, initial_states)
    ctx.flags = (dt_softplus, reverse, final_states)


def _backward(ctx, dout, dfinal):
    x, dt, A, B, C, D, z, dt_bias, cu_seqlens, initial_states = ctx.saved_tensors
    dt_softplus, reverse, final_states = ctx.flags
    if not final_states:
        dfinal = None
    grads = torch.ops.geossm.ssd_scan_backward(dout, x, dt, A, B, C, D, z, dt_bias,
                                               cu_seqlens, initial_states, dfinal,
                                               dt_softplus, reverse)
    present = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    dx, ddt, dA, dB, dC, dD, dz, dbias, dinit = (
        None if v is None else g for g, v in zip(grads, present))
    return dx, ddt, dA, dB, dC, dD, dz, dbias, None, dinit, None, None, None


_ssd_scan_op.register_autograd(_backward, setup_context=_setup_context)


def resolve_ssd_backend(backend, device: torch.device) -> str:
    """``None`` -> triton on CUDA (when installed), else chunked; validate an explicit name."""
    if backend is None:
        return "triton" if device.type == "cuda" and HAS_TRITON else "chunked"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "triton":
        check_triton_device(device)
        if not HAS_TRITON:
            _compat.require("triton", "backend='triton'")
    return backend


def _canonical_inputs(x, dt, A, B, C, D, z, dt_bias, cu_seqlens, initial_states):
    """Validate every argument; return packed, contiguous tensors and the dense shape (or None).

    Raises ``TypeError``/``ValueError`` naming the argument, the expectation and the value.
    """
    check_tensor("x", x, ndims=(3, 4))
    dense = x.dim() == 4
    shape = tuple(x.shape)
    H, P = shape[-2], shape[-1]
    token_shape = shape[:-2]
    check_tensor("dt", dt, ndims=(x.dim() - 1,))
    check_shape("dt", dt, token_shape + (H,), "tokens of x by heads H")
    if z is not None:
        check_tensor("z", z, ndims=(x.dim(),))
        check_shape("z", z, shape, "like x")
    check_tensor("A", A, ndims=(1,))
    check_shape("A", A, (H,), "(H,)")
    check_tensor("B", B, ndims=(x.dim(),))
    G, N = B.shape[-2], B.shape[-1]
    if tuple(B.shape[:-2]) != token_shape:
        raise ValueError(f"B must have shape {token_shape + ('G', 'N')} (tokens of x), got "
                         f"{tuple(B.shape)}")
    check_tensor("C", C, ndims=(x.dim(),))
    check_shape("C", C, tuple(B.shape), "like B")
    if G < 1 or H % G != 0:
        raise ValueError(f"the number of groups G={G} of B/C must divide the heads H={H}")
    if D is not None:
        check_tensor("D", D, ndims=(1, 2))
        if tuple(D.shape) not in ((H,), (H, P)):
            raise ValueError(f"D must have shape (H,) = ({H},) or (H, P) = ({H}, {P}), got "
                             f"{tuple(D.shape)}")
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, ndims=(1,))
        check_shape("dt_bias", dt_bias, (H,), "(H,)")
    check_same_device(x, dt=dt, z=z, A=A, B=B, C=C, D=D, dt_bias=dt_bias,
                      initial_states=initial_states)
    tokens = math.prod(token_shape)
    cu = canonical_cu_seqlens(cu_seqlens, token_shape, x.device)
    S = cu.shape[0] - 1
    if initial_states is not None:
        check_tensor("initial_states", initial_states, ndims=(4,))
        check_shape("initial_states", initial_states, (S, H, P, N), "(S, H, P, N)")
    if D is not None and D.dim() == 1:
        D = D[:, None].expand(H, P)
    return dict(
        x=x.reshape(tokens, H, P).contiguous(), dt=dt.reshape(tokens, H).contiguous(),
        A=A.float().contiguous(), B=B.reshape(tokens, G, N).contiguous(),
        C=C.reshape(tokens, G, N).contiguous(),
        D=None if D is None else D.float().contiguous(),
        z=None if z is None else z.reshape(tokens, H, P).contiguous(),
        dt_bias=None if dt_bias is None else dt_bias.float().contiguous(),
        cu_seqlens=cu,
        initial_states=None if initial_states is None else initial_states.float().contiguous(),
    ), (shape if dense else None)


def ssd_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, cu_seqlens=None,
             reverse=False, initial_states=None, return_final_states=False, backend=None):
    """Mamba-2 SSD (scalar decay per head) over many variable-length sequences in one call.

    For every segment s, head h (group g = h // (H / G)) and token t of the segment::

        dt_t  = softplus(dt_t + dt_bias[h])      if dt_softplus   else   dt_t + dt_bias[h]
        h_t   = exp(dt_t A[h]) h_{t-1} + dt_t x_t B_t[g]^T    (P x N),  h_0 = initial_states[s]
        y_t   = h_t C_t[g] + D[h] x_t
        out_t = y_t * silu(z_t)                  when z is given

    The state never crosses a segment boundary; ``reverse=True`` runs every segment from its
    end to its start.

    Args:
        x: inputs, packed ``(T, H, P)`` or dense ``(Bt, L, H, P)`` (= Bt segments of length L).
        dt: step sizes ``(T, H)`` (dense ``(Bt, L, H)``) before bias and softplus.
        A: ``(H,)`` decay rate per head (negative for a decaying state).
        B, C: ``(T, G, N)`` input / output projections of ``G`` groups (G divides H).
        D: ``(H,)`` or ``(H, P)`` skip connection, default None.
        z: gate shaped like ``x``, default None.
        dt_bias: ``(H,)`` added to ``dt``, default None.
        dt_softplus: apply softplus to ``dt + dt_bias``, default False.
        cu_seqlens: ``(S+1,)`` int32/int64 segment boundaries for packed input (leading 0,
            non-decreasing, last = T; empty segments allowed), default None = one segment.
        reverse: scan every segment from its end to its start, default False.
        initial_states: ``(S, H, P, N)`` state before each segment, default None (zeros).
        return_final_states: also return the ``(S, H, P, N)`` float32 state after each segment.
        backend: ``"reference"``, ``"chunked"``, ``"triton"`` or None (triton on CUDA, chunked
            elsewhere).

    Returns:
        ``out`` shaped and typed like ``x``; with ``return_final_states``, ``(out, final)``.

    Every floating input is differentiable; state and accumulation are float32 (float64 for
    float64 inputs on the torch backends). Validating ``cu_seqlens`` costs one host sync.
    """
    args, dense_shape = _canonical_inputs(x, dt, A, B, C, D, z, dt_bias, cu_seqlens,
                                          initial_states)
    name = resolve_ssd_backend(backend, x.device)
    if name == "reference":
        out, final = ssd_scan_ref(dt_softplus=bool(dt_softplus), reverse=bool(reverse), **args)
    elif name == "chunked":
        out, final = ssd_scan_chunked(dt_softplus=bool(dt_softplus), reverse=bool(reverse),
                                      final_states=bool(return_final_states), **args)
    else:
        out, final = torch.ops.geossm.ssd_scan(
            args["x"], args["dt"], args["A"], args["B"], args["C"], args["D"], args["z"],
            args["dt_bias"], args["cu_seqlens"], args["initial_states"], bool(dt_softplus),
            bool(reverse), bool(return_final_states))
    if dense_shape is not None:
        out = out.reshape(dense_shape)
    return (out, final) if return_final_states else out

