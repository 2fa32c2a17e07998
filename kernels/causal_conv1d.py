"""``causal_conv1d``: depthwise causal convolution over packed variable-length sequences.

Backends as for ``selective_scan``; numba and triton run behind the custom op
``geossm::causal_conv1d`` (fake implementation + registered backward) so that callers compile
under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import importlib
from typing import Optional

import torch

from geossm.packed import canonical_cu_seqlens

from ._common import check_same_device, check_shape, check_tensor, resolve_backend
from .causal_conv1d_torch import causal_conv1d_ref

_BACKEND_MODULES = {"numba": "geossm.kernels.causal_conv1d_numba",
                    "triton": "geossm.kernels.causal_conv1d_triton"}
MIN_WIDTH, MAX_WIDTH = 2, 8
ACTIVATIONS = (None, "silu", "swish")


def _backend_module(name: str):
    return importlib.import_module(_BACKEND_MODULES[name])


@torch.library.custom_op("geossm::causal_conv1d", mutates_args=())
def _causal_conv1d_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      cu_seqlens: torch.Tensor, silu: bool, reverse: bool,
                      backend: str) -> torch.Tensor:
    out = _backend_module(backend).causal_conv1d_fwd(x, weight, bias, cu_seqlens, silu, reverse)
    return out.to(x.device)


@_causal_conv1d_op.register_fake
def _(x, weight, bias, cu_seqlens, silu, reverse, backend):
    return torch.empty_like(x)


@torch.library.custom_op("geossm::causal_conv1d_backward", mutates_args=())
def _causal_conv1d_backward_op(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                               bias: Optional[torch.Tensor], cu_seqlens: torch.Tensor,
                               silu: bool, reverse: bool, backend: str) -> list[torch.Tensor]:
    dx, dweight, dbias = _backend_module(backend).causal_conv1d_bwd(
        dout.contiguous(), x, weight, bias, cu_seqlens, silu, reverse)
    dbias = x.new_empty(0) if bias is None else dbias.to(device=x.device, dtype=bias.dtype)
    return [dx.to(device=x.device, dtype=x.dtype),
            dweight.to(device=x.device, dtype=weight.dtype), dbias]


@_causal_conv1d_backward_op.register_fake
def _(dout, x, weight, bias, cu_seqlens, silu, reverse, backend):
    dbias = x.new_empty(0) if bias is None else torch.empty_like(bias)
    return [torch.empty_like(x), torch.empty_like(weight), dbias]


def _setup_context(ctx, inputs, output):
    x, weight, bias, cu_seqlens, silu, reverse, backend = inputs
    ctx.save_for_backward(x, weight, bias, cu_seqlens)
    ctx.flags = (silu, reverse, backend)


def _backward(ctx, dout):
    x, weight, bias, cu_seqlens = ctx.saved_tensors
    silu, reverse, backend = ctx.flags
    dx, dweight, dbias = torch.ops.geossm.causal_conv1d_backward(
        dout, x, weight, bias, cu_seqlens, silu, reverse, backend)
    return dx, dweight, (None if bias is None else dbias), None, None, None, None


_causal_conv1d_op.register_autograd(_backward, setup_context=_setup_context)


def causal_conv1d(x, weight, bias=None, cu_seqlens=None, activation=None, reverse=False,
                  backend=None):
    """Depthwise causal 1-D convolution along packed sequences.

    ``out[t, d] = act(bias[d] + sum_{k=0}^{W-1} weight[d, W-1-k] * x[t-k, d])`` where tokens
    before the start of t's segment count as zero (zero history at every segment start; the
    kernel never reads across a boundary). ``reverse=True`` is the anti-causal version per
    segment (``x[t+k]``, zero past the segment's end) — equal to flipping every segment,
    convolving and flipping back.

    Args:
        x: packed ``(T, D)`` or dense ``(Bt, L, D)`` input.
        weight: ``(D, W)`` depthwise filters, 2 <= W <= 8 (``weight[:, -1]`` multiplies the
            current token).
        bias: ``(D,)``, default None.
        cu_seqlens: ``(S+1,)`` int32/int64 segment boundaries for packed input, default None =
            one segment.
        activation: None or ``"silu"`` (``"swish"`` is accepted as a synonym), default None.
        reverse: anti-causal, default False.
        backend: ``"torch"``, ``"numba"``, ``"triton"`` or None (triton on CUDA, numba on CPU).

    Returns ``(T, D)`` (or ``(Bt, L, D)``) in x's dtype. Validating ``cu_seqlens`` costs one
    host sync (skipped under ``torch.compile``).
    """
    check_tensor("x", x, ndims=(2, 3))
    check_tensor("weight", weight, ndims=(2,))
    channels = x.shape[-1]
    if weight.shape[0] != channels or not MIN_WIDTH <= weight.shape[1] <= MAX_WIDTH:
        raise ValueError(f"weight must have shape (D, W) with D={channels} and "
                         f"{MIN_WIDTH} <= W <= {MAX_WIDTH}, got {tuple(weight.shape)}")
    if bias is not None:
        check_tensor("bias", bias, ndims=(1,))
        check_shape("bias", bias, (channels,), "(D,)")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    check_same_device(x, weight=weight, bias=bias)
    shape = tuple(x.shape)
    cu = canonical_cu_seqlens(cu_seqlens, shape[:-1], x.device)
    packed = x.reshape(-1, channels).contiguous()
    silu = activation is not None
    name = resolve_backend(backend, x.device)
    if name == "torch":
        out = causal_conv1d_ref(packed, weight, bias, cu, silu=silu, reverse=reverse)
    else:
        out = torch.ops.geossm.causal_conv1d(packed, weight.contiguous(),
                                             None if bias is None else bias.contiguous(),
                                             cu, silu, bool(reverse), name)
    return out.reshape(shape)
