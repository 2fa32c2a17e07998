"""``selective_scan``: the grouped variable-length selective scan (Mamba-1 recurrence).

One public function validates and canonicalises its inputs, then dispatches to a backend:
``torch`` (reference, autograd through a vectorised loop), ``numba`` (CPU kernels) or
``triton`` (GPU kernels). The numba and triton backends run behind the custom op
``geossm::selective_scan`` (with a fake implementation and a registered backward), so modules that
call this function compile under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import importlib
import math
from typing import Optional

import torch

from geossm.packed import canonical_cu_seqlens

from ._common import check_same_device, check_shape, check_tensor, resolve_backend
from .selective_scan_torch import selective_scan_ref

_BACKEND_MODULES = {"numba": "geossm.kernels.selective_scan_numba",
                    "triton": "geossm.kernels.selective_scan_triton"}


def _backend_module(name: str):
    return importlib.import_module(_BACKEND_MODULES[name])


def _chunk_states_shape(backend: str, u: torch.Tensor, A: torch.Tensor) -> tuple[int, ...]:
    """Shape of the record the backend's forward keeps for its backward (chunk start/end states).

    Both kernel backends keep at most ``T // chunk`` states of ``(D, N)``; the shape depends on
    shapes and the device type only, so the fake implementation can give it too.
    """
    if backend == "numba":
        from .selective_scan_numba import chunk_states_shape

        return chunk_states_shape(u.shape[0], u.shape[1], A.shape[1])
    from .selective_scan_triton import chunk_states_shape

    return chunk_states_shape(u.shape[0], u.shape[1], A.shape[1], u.device)


@torch.library.custom_op("geossm::selective_scan", mutates_args=())
def _selective_scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                       delta_bias: Optional[torch.Tensor], cu_seqlens: torch.Tensor,
                       initial_state: Optional[torch.Tensor], delta_softplus: bool,
                       reverse: bool, backend: str
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(out, final_state, chunk_states)``; the last is the backend's own record of
    chunk states for its backward, so the backward does not rerun the forward recurrence."""
    out, final, saved = _backend_module(backend).selective_scan_fwd(
        u, delta, A, B, C, D, z, delta_bias, cu_seqlens, initial_state, delta_softplus, reverse)
    return out.to(u.device), final.to(u.device), saved.to(u.device)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, cu_seqlens, initial_state, delta_softplus, reverse,
      backend):
    num_segments = cu_seqlens.shape[0] - 1
    final = u.new_empty((num_segments, u.shape[1], A.shape[1]), dtype=torch.float32)
    shape = _chunk_states_shape(backend, u, A)
    if torch.compiler.is_exporting():
        # Under torch.export, a row count of T // chunk makes the program specialise on
        # T < chunk or not (a contiguity check on the fake guards on its size); the record is
        # never an output of an inference program, so its rows are just a new symbol there.
        shape = (torch.library.get_ctx().new_dynamic_size(), *shape[1:])
    saved = u.new_empty(shape, dtype=torch.float32)
    return torch.empty_like(u), final, saved


@torch.library.custom_op("geossm::selective_scan_backward", mutates_args=())
def _selective_scan_backward_op(
        dout: torch.Tensor, dfinal_state: Optional[torch.Tensor], u: torch.Tensor,
        delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
        cu_seqlens: torch.Tensor, initial_state: Optional[torch.Tensor], delta_softplus: bool,
        reverse: bool, backend: str, chunk_states: torch.Tensor) -> list[torch.Tensor]:
    grads = _backend_module(backend).selective_scan_bwd(
        dout.contiguous(), None if dfinal_state is None else dfinal_state.contiguous(),
        u, delta, A, B, C, D, z, delta_bias, cu_seqlens, initial_state, delta_softplus, reverse,
        chunk_states)
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    # An absent input gets an empty placeholder: custom ops cannot return None.
    return [u.new_empty(0) if x is None else g.to(device=x.device, dtype=x.dtype)
            for g, x in zip(grads, inputs)]


@_selective_scan_backward_op.register_fake
def _(dout, dfinal_state, u, delta, A, B, C, D, z, delta_bias, cu_seqlens, initial_state,
      delta_softplus, reverse, backend, chunk_states):
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return [u.new_empty(0) if x is None else torch.empty_like(x) for x in inputs]


def _setup_context(ctx, inputs, output):
    (u, delta, A, B, C, D, z, delta_bias, cu_seqlens, initial_state, delta_softplus, reverse,
     backend) = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, cu_seqlens, initial_state,
                          output[2])
    ctx.mark_non_differentiable(output[2])
    # an unused final state must reach the backward as None, not as an (S, D, N) tensor of zeros
    # that is filled and then read by the kernels (with many segments it is as large as u)
    ctx.set_materialize_grads(False)
    ctx.flags = (delta_softplus, reverse, backend)


def _backward(ctx, dout, dfinal_state, _dchunk_states):
    u, delta, A, B, C, D, z, delta_bias, cu_seqlens, initial_state, saved = ctx.saved_tensors
    delta_softplus, reverse, backend = ctx.flags
    if dout is None:                       # only the final state was used
        dout = torch.zeros_like(u)
    grads = torch.ops.geossm.selective_scan_backward(
        dout, dfinal_state, u, delta, A, B, C, D, z, delta_bias, cu_seqlens, initial_state,
        delta_softplus, reverse, backend, saved)
    present = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dinit = (
        None if x is None else g for g, x in zip(grads, present))
    return du, ddelta, dA, dB, dC, dD, dz, dbias, None, dinit, None, None, None


_selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


def _canonical_inputs(u, delta, A, B, C, D, z, delta_bias, cu_seqlens, initial_state):
    """Validate every argument; return packed, contiguous tensors and the dense batch shape.

    Raises ``TypeError``/``ValueError`` naming the argument, the expectation and the value.
    """
    check_tensor("u", u, ndims=(2, 3))
    dense = u.dim() == 3
    shape = tuple(u.shape)
    channels = shape[-1]
    check_tensor("delta", delta, ndims=(u.dim(),))
    check_shape("delta", delta, shape, "like u")
    if z is not None:
        check_tensor("z", z, ndims=(u.dim(),))
        check_shape("z", z, shape, "like u")
    check_tensor("A", A, ndims=(2,))
    if A.shape[0] != channels:
        raise ValueError(f"A must have shape (D, N) with D={channels}, got {tuple(A.shape)}")
    N = A.shape[1]
    token_shape = shape[:-1]
    for name, value in (("B", B), ("C", C)):
        check_tensor(name, value, ndims=(u.dim(), u.dim() + 1))
        if tuple(value.shape[:len(token_shape)]) != token_shape or value.shape[-1] != N:
            raise ValueError(f"{name} must have shape {token_shape + (N,)} or "
                             f"{token_shape + ('G', N)} (tokens of u, N={N} of A), "
                             f"got {tuple(value.shape)}")
    groups_B = B.shape[-2] if B.dim() == u.dim() + 1 else 1
    groups_C = C.shape[-2] if C.dim() == u.dim() + 1 else 1
    if groups_B != groups_C:
        raise ValueError(f"B and C must have the same number of groups G, got {groups_B} and "
                         f"{groups_C}")
    if groups_B < 1 or channels % groups_B != 0:
        raise ValueError(f"the number of groups G={groups_B} of B/C must divide D={channels}")
    for name, value in (("D", D), ("delta_bias", delta_bias)):
        if value is not None:
            check_tensor(name, value, ndims=(1,))
            check_shape(name, value, (channels,), "(D,)")
    check_same_device(u, delta=delta, z=z, A=A, B=B, C=C, D=D, delta_bias=delta_bias,
                      initial_state=initial_state)

    tokens = math.prod(token_shape) if token_shape else 0  # SymInts too (torch.export)
    cu = canonical_cu_seqlens(cu_seqlens, token_shape, u.device)
    num_segments = cu.shape[0] - 1
    if initial_state is not None:
        check_tensor("initial_state", initial_state, ndims=(3,))
        check_shape("initial_state", initial_state, (num_segments, channels, N), "(S, D, N)")

    def packed(x):
        return x.reshape(tokens, channels).contiguous()

    def packed_groups(x, groups):
        return x.reshape(tokens, groups, N).contiguous()

    return dict(
        u=packed(u), delta=packed(delta), A=A.float().contiguous(),
        B=packed_groups(B, groups_B), C=packed_groups(C, groups_B),
        D=None if D is None else D.float().contiguous(),
        z=None if z is None else packed(z),
        delta_bias=None if delta_bias is None else delta_bias.float().contiguous(),
        cu_seqlens=cu,
        initial_state=None if initial_state is None else initial_state.float().contiguous(),
    ), (shape if dense else None)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   cu_seqlens=None, reverse=False, initial_state=None, return_final_state=False,
                   backend=None):
    """Selective scan over many variable-length sequences in one call.

    For every segment s and channel d (channel group g = d // (D / G))::

        dt_t  = softplus(delta_t + delta_bias)   if delta_softplus   else   delta_t + delta_bias
        h_t   = exp(dt_t * A[d]) ⊙ h_{t-1} + dt_t * B_t[g] * u_t,     h_0 = initial_state[s] or 0
        y_t   = <C_t[g], h_t> + D[d] * u_t
        out_t = y_t * silu(z_t)                  when z is given

    Args:
        u: inputs, packed ``(T, D)`` or dense ``(Bt, L, D)`` (= Bt segments of length L).
        delta: step sizes before the optional bias/softplus, shaped like ``u``.
        A: ``(D, N)`` state matrix (diagonal per channel; negative for a decaying state).
        B, C: input and output projections ``(T, N)`` or ``(T, G, N)`` (dense: ``(Bt, L, …)``).
        D: ``(D,)`` skip connection, default None (no skip).
        z: gate shaped like ``u``, default None (no gating).
        delta_bias: ``(D,)`` added to ``delta``, default None.
        delta_softplus: apply softplus to ``delta + delta_bias``, default False.
        cu_seqlens: ``(S+1,)`` int32/int64 segment boundaries for packed input (leading 0,
            non-decreasing, last = T; empty segments allowed), default None = one segment.
        reverse: scan every segment from its end to its start, default False.
        initial_state: ``(S, D, N)`` float32 state before each segment's first step, default
            None (zeros).
        return_final_state: also return the ``(S, D, N)`` float32 state after each segment.
        backend: ``"torch"``, ``"numba"``, ``"triton"`` or None (triton on CUDA, numba on CPU).

    Returns:
        ``out`` shaped and typed like ``u``; with ``return_final_state``, ``(out, final_state)``.

    Every floating input is differentiable. State and accumulation are float32. Validating
    ``cu_seqlens`` costs one host sync (skipped under ``torch.compile``).
    """
    args, dense_shape = _canonical_inputs(u, delta, A, B, C, D, z, delta_bias, cu_seqlens,
                                          initial_state)
    name = resolve_backend(backend, u.device)
    if name == "torch":
        out, final = selective_scan_ref(delta_softplus=delta_softplus, reverse=reverse, **args)
    else:
        out, final, _ = torch.ops.geossm.selective_scan(
            args["u"], args["delta"], args["A"], args["B"], args["C"], args["D"], args["z"],
            args["delta_bias"], args["cu_seqlens"], args["initial_state"],
            bool(delta_softplus), bool(reverse), name)
    if dense_shape is not None:
        out = out.reshape(dense_shape)
    return (out, final) if return_final_state else out
