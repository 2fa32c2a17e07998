"""The fused inner Mamba path: keep the in-projection output and the scan's chunk states only.

``mamba_inner`` computes, for ``xz = in_proj(x)`` (what ``Mamba`` does between its two
projections)::

    x', z   = split(xz)                                         # (T, E) each
    h       = silu(causal_conv1d(x', conv_weight, conv_bias))   # per segment
    dt,B,C  = split(h @ x_proj_weight.T)                        # (T, R), (T, N), (T, N)
    delta   = dt @ dt_proj_weight.T                             # (T, E); bias in the scan
    y       = selective_scan(h, delta, -exp(A_log), B, C, D, z, dt_proj_bias, softplus)

with the same kernels, in the same order, as the unfused path, so outputs and gradients are
the same. What differs is what autograd keeps for the backward: the unfused path keeps the
convolution's input copy, ``h``, ``x_proj``'s output, ``delta``, contiguous copies of ``B``,
``C`` and ``z`` (about ``5E + 3N + R`` values per token); this path keeps ``xz`` (``2E``, in
its autocast dtype, bf16 under the trainer) and the scan kernel's compact chunk states
(``T / chunk`` states of ``(E, N)``), and recomputes ``h``, ``dt``, ``B``, ``C``, ``delta``
in the backward (a depthwise convolution and two thin matmuls: cheap next to the scan), the
idea of ``mamba_ssm``'s ``mamba_inner_fn``. The scan's forward is not rerun: its backward
kernel starts from the saved chunk states, as in the unfused path.

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
from geossm.packed import canonical_cu_seqlens

__all__ = ["mamba_inner"]


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def _projections(h, x_proj_weight, dt_proj_weight, dt_rank: int, d_state: int):
    """``(delta (T, E), B (T, N), C (T, N))`` from the convolution output ``h``."""
    dt, B, C = F.linear(h, x_proj_weight).split([dt_rank, d_state, d_state], dim=-1)
    return F.linear(dt, dt_proj_weight), B, C


class _MambaInner(torch.autograd.Function):
    """Autograd of ``mamba_inner`` (see the module docstring); packed ``(T, 2E)`` input."""

    @staticmethod
    def forward(ctx, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                A_log, D, cu, reverse: bool, backend: str, dt_rank: int, d_state: int):
        inner = conv_weight.shape[0]
        x, z = xz.split(inner, dim=-1)
        h = causal_conv1d(x, conv_weight, conv_bias, cu_seqlens=cu, activation="silu",
                          reverse=reverse, backend=backend)
        delta, B, C = _projections(h, x_proj_weight, dt_proj_weight, dt_rank, d_state)
        A = -torch.exp(A_log.float())
        if backend == "torch":
            y = selective_scan(h, delta, A, B, C, D=D.float(), z=z,
                               delta_bias=dt_proj_bias.float(), delta_softplus=True,
                               cu_seqlens=cu, reverse=reverse, backend=backend)
            chunk_states = None
        else:
            y, _, chunk_states = torch.ops.geossm.selective_scan(
                h, delta.contiguous(), A, B.unsqueeze(1).contiguous(),
                C.unsqueeze(1).contiguous(), D.float(), z.contiguous(), dt_proj_bias.float(),
                cu, None, True, bool(reverse), backend)
        ctx.save_for_backward(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                              dt_proj_bias, A_log, D, cu, chunk_states)
        ctx.flags = (reverse, backend, dt_rank, d_state, xz.device.type,
                     _autocast_state(xz.device.type))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        (xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, cu,
         chunk_states) = ctx.saved_tensors
        reverse, backend, dt_rank, d_state, device_type, (amp, amp_dtype) = ctx.flags
        leaves = [t.detach().requires_grad_() if t is not None else None
                  for t in (xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                            dt_proj_bias, A_log, D)]
        xz_, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log_, D_ = leaves
        with torch.enable_grad(), torch.autocast(device_type, dtype=amp_dtype, enabled=amp):
            inner = conv_w.shape[0]
            x, z = xz_.split(inner, dim=-1)
            h = causal_conv1d(x, conv_w, conv_b, cu_seqlens=cu, activation="silu",
                              reverse=reverse, backend=backend)
            delta, B, C = _projections(h, x_proj_w, dt_proj_w, dt_rank, d_state)
            A = -torch.exp(A_log_.float())
            if backend == "torch":
                y = selective_scan(h, delta, A, B, C, D=D_.float(), z=z,
                                   delta_bias=dt_bias.float(), delta_softplus=True,
                                   cu_seqlens=cu, reverse=reverse, backend=backend)
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
        found = torch.autograd.grad(outputs, wanted, grads, allow_unused=True)
        found = iter(found)
        return (*(next(found) if t is not None else None for t in leaves),
                None, None, None, None, None)


def mamba_inner(xz: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
                x_proj_weight: torch.Tensor, dt_proj_weight: torch.Tensor,
                dt_proj_bias: torch.Tensor, A_log: torch.Tensor, D: torch.Tensor,
                cu_seqlens: torch.Tensor | None = None, reverse: bool = False,
                backend: str | None = None) -> torch.Tensor:
    """The gated scan output ``y`` of a Mamba block from its in-projection ``xz`` (see the
    module docstring), keeping only ``xz`` and the scan's chunk states for the backward.

    Args:
        xz: packed ``(T, 2E)`` or dense ``(Bt, L, 2E)``: ``x'`` then ``z``.
        conv_weight: ``(E, W)`` depthwise filters; conv_bias ``(E,)`` or None.
        x_proj_weight: ``(R + 2N, E)``; dt_proj_weight ``(E, R)``; dt_proj_bias ``(E,)``.
        A_log: ``(E, N)`` (``A = -exp(A_log)``); D: ``(E,)``.
        cu_seqlens: ``(S+1,)`` int32/int64 boundaries of packed input, default None = one
            segment (dense: must be None).
        reverse: every segment from its end to its start, default False.
        backend: ``"torch"``, ``"numba"``, ``"triton"`` or None (the kernels' default).

    Shapes::

        xz:  (T, 2E) or (Bt, L, 2E)
        out: (T, E) or (Bt, L, E), in the dtype of the scan's input (xz's under autocast)

    Host sync: validating ``cu_seqlens`` once, as the kernels do.
    """
    inner = conv_weight.shape[0]
    if xz.dim() not in (2, 3) or xz.shape[-1] != 2 * inner:
        raise ValueError(f"xz must have shape (T, {2 * inner}) or (B, L, {2 * inner}), got "
                         f"{tuple(xz.shape)}")
    dt_rank, d_state = dt_proj_weight.shape[1], A_log.shape[1]
    cu = canonical_cu_seqlens(cu_seqlens, tuple(xz.shape[:-1]), xz.device)
    name = resolve_backend(backend, xz.device)
    y = _MambaInner.apply(xz.reshape(-1, 2 * inner), conv_weight, conv_bias, x_proj_weight,
                          dt_proj_weight, dt_proj_bias, A_log, D, cu, bool(reverse), name,
                          dt_rank, d_state)
    return y.reshape(*xz.shape[:-1], inner)
