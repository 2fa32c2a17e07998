"""Packed BiMamba layers replayed as CUDA graphs on a few padded sizes (``PackedGraphs``).

A LION step is bound by the host: the forward and backward of its 16 packed group layers
(``packed_mixer.packed_bimamba``) dispatch ~110 operators each, among them the Triton scan's and
convolution's launches and a dozen matmuls (H200 profile, README "Where LION's host time goes").
Their shapes follow the batch's voxel count, so no graph of a whole step is ever replayed.
Here each layer's forward and backward run on buffers of a padded size instead:

- ``V`` voxels in ``S`` groups grow to ``tokens >= V`` tokens in ``segments >= S + 1``
  segments (``padded_serialization``: the pad tokens are zero and form a segment of their own,
  so no gradient comes from them); the sizes are rounded up to 8 steps per octave, so a
  level's voxel counts, which move by tens of percent between batches, meet a handful of sizes;
- per size one forward and one backward graph (``packed_forward`` / ``packed_backward`` with
  their gathers, launch plans and weight casts inside), shared by every layer whose weights
  have the same shapes: a call copies the layer's weights, features and serialization into the
  size's buffers, replays, and copies the results out (a few copy kernels instead of ~110
  operators). The forward's activations (``rstd``, ``u16``, ``ys``, the scan's chunk states)
  are copied out for the layer's backward and back in there.

All graphs of one instance share one memory pool: every graph's outputs are copied out right
after its replay, so no graph's temporaries can overwrite a result still needed. The first call of a size runs
two eager warm-up passes (Triton compilation, cuBLAS workspaces) before the capture.

``capture=False`` runs the same buffers eagerly (no graph): the CPU check of the padding and
copying (tests), and the fallback past ``max_sizes``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from geossm.nn.packed_mixer import (SAVED, bidirectional_indices, compute_dtype,
                                    derived_weights, packed_backward, packed_bimamba,
                                    packed_forward, padded_serialization, weight_dtypes)
from geossm.nn.stacked_weights import stacked_weights

__all__ = ["PackedGraphs", "padded_size"]

#: the forward's activations a layer keeps for its backward (names of ``packed_mixer.SAVED``;
#: the rest of ``saved`` is weights, rebuilt from them, and indices, rebuilt from the buffers)
ACTS = ("rstd", "u16", "ys", "chunks")

#: ``packed_mixer.derived_weights``' results, by their names in ``SAVED``
DERIVED = ("w_in", "w_x", "w_dt", "A", "D", "bias", "w_out", "rows", "halves")

#: ``packed_bimamba``'s weights in ``_PackedBiMamba``'s order (``conv_bias`` may be absent)
WEIGHTS = ("in_proj.weight", "conv_weight", "conv_bias", "x_proj.weight", "dt_proj.weight",
           "dt_proj.bias", "A_log", "D", "out_proj.weight")


def padded_size(n: int, steps_per_octave: int = 8, least: int = 64) -> int:
    """The smallest size ``>= n`` of the form ``m * 2**k`` with ``steps_per_octave <= m <
    2 * steps_per_octave`` (at most ``1 / steps_per_octave`` larger than ``n``), at least
    ``least``."""
    n = max(int(n), least)
    k = max(0, math.ceil(math.log2(n / steps_per_octave)) - 1)
    while True:
        m = -(-n // (1 << k))
        if m < 2 * steps_per_octave:
            return m << k
        k += 1


class _Size:
    """The buffers and two graphs of one padded size and weight layout."""

    def __init__(self, tokens: int, segments: int, x: Tensor, weights: Sequence[Tensor | None],
                 cd: torch.dtype, eps: float, backend: str):
        dev = x.device
        self.tokens, self.segments, self.cd, self.eps, self.backend = (
            tokens, segments, cd, eps, backend)
        self.x = x.new_zeros(tokens, x.shape[1])
        self.dout = torch.zeros_like(self.x)
        # the serialization buffers (``load`` fills them with ``padded_serialization``)
        self.order = torch.arange(tokens, device=dev)
        self.inverse = self.order.clone()
        self.reversal = self.order.flip(0)
        self.cu = torch.full((segments + 1,), tokens, dtype=torch.int32, device=dev)
        self.cu[0] = 0
        self.weights = [None if w is None else w.detach().clone() for w in weights]
        self.dtypes = weight_dtypes(*self.weights[1:])
        # the forward's activations for the backward, filled from the first forward
        self.acts: list[Tensor] | None = None
        self.graphs: tuple | None = None
        self.results: tuple | None = None

    # ------------------------------------------------------------------ the two passes
    def _indices(self):
        return bidirectional_indices(self.order, self.inverse, self.reversal)

    def forward_pass(self) -> tuple[Tensor, list[Tensor]]:
        """``(out (tokens, D), [rstd, u16, ys, chunks])`` from the buffers."""
        into, scatter, _, _ = self._indices()
        out, saved = packed_forward(self.x, *self.weights, into, scatter, self.cu, self.eps,
                                    self.backend, True, self.cd)
        return out, [saved[SAVED.index(name)] for name in ACTS]

    def backward_pass(self) -> tuple:
        """``packed_backward``'s 11 gradients from the buffers (``acts`` and ``dout``)."""
        norm_w, in_w, conv_w, conv_b, x_w, dt_w, dt_b, A_log, D, out_w = self.weights
        into, _, gather, from_grad = self._indices()
        # packed_forward's ``saved`` by name (SAVED); its scan inputs are left None: recomputed
        named = dict(zip(DERIVED, derived_weights(in_w, x_w, dt_w, dt_b, A_log, D, out_w,
                                                  self.cd)),
                     x=self.x, norm_w=norm_w, conv_w=conv_w, conv_b=conv_b,
                     **dict(zip(ACTS, self.acts)))
        saved = tuple(named.get(name) for name in SAVED)
        return packed_backward(saved, self.dout, into, gather, from_grad, self.cu,
                               self.backend, self.cd, self.dtypes)

    # ------------------------------------------------------------------ buffers
    def load(self, x: Tensor, order: Tensor, inverse: Tensor, reversal: Tensor, cu: Tensor,
             weights: Sequence[Tensor | None]) -> None:
        """Copy a layer's call into the buffers: pad rows zero, the serialization grown to the
        size by ``padded_serialization``."""
        v = x.shape[0]
        self.x[:v].copy_(x)
        self.x[v:].zero_()
        grown = padded_serialization(order, inverse, reversal, cu, self.tokens, self.segments)
        torch._foreach_copy_([self.order, self.inverse, self.reversal, self.cu], list(grown))
        torch._foreach_copy_([b for b in self.weights if b is not None],
                             [w.detach() for w in weights if w is not None])

    def load_acts(self, acts: Sequence[Tensor]) -> None:
        torch._foreach_copy_(self.acts, list(acts))

    # ------------------------------------------------------------------ graphs
    def capture(self, pool, warmup: int = 2) -> None:
        """Eager warm-up passes on a side stream, then one graph per pass, both in ``pool``
        (a ``torch.cuda.graph_pool_handle()``)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self._eager_forward()
                self.backward_pass()
        torch.cuda.current_stream().wait_stream(stream)
        fwd, bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        # thread_local: the loader's pin-memory thread may call CUDA while this one records
        with torch.cuda.graph(fwd, pool=pool, capture_error_mode="thread_local"):
            out, acts = self.forward_pass()
        self.acts = [a.clone() for a in acts]     # the backward graph's own inputs
        with torch.cuda.graph(bwd, pool=pool, capture_error_mode="thread_local"):
            grads = self.backward_pass()
        self.graphs, self.results = (fwd, bwd), ((out, acts), grads)

    def _eager_forward(self) -> tuple[Tensor, list[Tensor]]:
        out, acts = self.forward_pass()
        if self.acts is None:
            self.acts = [a.clone() for a in acts]
        return out, acts

    def run_forward(self) -> tuple[Tensor, list[Tensor]]:
        if self.graphs is None:
            return self._eager_forward()
        self.graphs[0].replay()
        return self.results[0]

    def run_backward(self) -> tuple:
        if self.graphs is None:
            return self.backward_pass()
        self.graphs[1].replay()
        return self.results[1]


class PackedGraphs:
    """``packed_bimamba`` on padded sizes, one forward and one backward CUDA graph per size
    (module docstring). One instance serves every layer of a model (``LION(graph_layers=True)``
    gives its group layers one).

    Args:
        capture: record and replay CUDA graphs (default True; CUDA only). False runs the same
            padded buffers eagerly (the CPU check of this path).
        steps_per_octave: size steps per doubling of the token count (``padded_size``).
        max_sizes: sizes kept; calls past them run ``packed_bimamba`` eagerly (warned once).
    """

    def __init__(self, capture: bool = True, steps_per_octave: int = 8, max_sizes: int = 48):
        self.capture, self.steps, self.max_sizes = bool(capture), int(steps_per_octave), max_sizes
        self.sizes: dict = {}
        #: forward calls: replayed graphs, graphs recorded, padded buffers run eagerly
        #: (``capture=False``), unpadded ``packed_bimamba`` past ``max_sizes``
        self.stats = {"replayed": 0, "captured": 0, "padded_eager": 0, "eager": 0}
        self._warned = False
        # one pool per instance, never per class: a pool dies with the last graph recorded in
        # it, and recording into a handle whose graphs are gone fails inside the allocator
        # (an INTERNAL ASSERT in torch 2.11, seen when a second model was built after a first)
        self._pool = None

    def pool(self):
        """The memory pool this instance's graphs share (created on the first capture)."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    def size_for(self, x: Tensor, weights: Sequence[Tensor | None], segments: int,
                 cd: torch.dtype, eps: float, backend: str) -> _Size | None:
        tokens = padded_size(x.shape[0], self.steps)
        segs = padded_size(segments + 1, 2, least=8)
        key = (tokens, segs, x.shape[1], x.dtype, x.device, cd, float(eps), backend,
               tuple(None if w is None else (tuple(w.shape), w.dtype) for w in weights))
        size = self.sizes.get(key)
        if size is None:
            if len(self.sizes) >= self.max_sizes:
                if not self._warned:
                    warnings.warn(f"PackedGraphs: {self.max_sizes} padded sizes recorded; "
                                  "layers of further sizes run eagerly", stacklevel=3)
                    self._warned = True
                return None
            size = self.sizes[key] = _Size(tokens, segs, x, weights, cd, eps, backend)
        return size

    def __call__(self, x: Tensor, norm_weight: Tensor, bimamba, order: Tensor, inverse: Tensor,
                 reversal: Tensor, cu_seqlens: Tensor, eps: float, backend: str) -> Tensor:
        """``packed_bimamba(x, norm_weight, bimamba, bidirectional_indices(order, inverse,
        reversal), cu_seqlens, eps, backend)`` (recomputing its scan inputs in the backward),
        run on the padded size of ``x``. Shapes: ``x (V, D) -> (V, D)``; ``order, inverse,
        reversal (V,)`` long; ``cu_seqlens (S+1,)`` int32."""
        w = stacked_weights(bimamba)
        weights = [norm_weight] + [w.get(name) for name in WEIGHTS]
        cd = compute_dtype(x)
        size = self.size_for(x, weights, cu_seqlens.numel() - 1, cd, eps, backend)
        if size is None:
            self.stats["eager"] += 1
            return packed_bimamba(x, norm_weight, bimamba,
                                  bidirectional_indices(order, inverse, reversal), cu_seqlens,
                                  eps, backend)
        return _GraphedPacked.apply(self, size, x, order, inverse, reversal, cu_seqlens,
                                    *weights)


class _GraphedPacked(torch.autograd.Function):

    @staticmethod
    def forward(ctx, graphs: PackedGraphs, size: _Size, x, order, inverse, reversal, cu,
                *weights):
        ctx.size = size
        size.load(x, order, inverse, reversal, cu, weights)
        if graphs.capture and size.graphs is None:
            size.capture(graphs.pool())
            graphs.stats["captured"] += 1
        out, acts = size.run_forward()
        graphs.stats["replayed" if size.graphs is not None else "padded_eager"] += 1
        if any(ctx.needs_input_grad):   # the activations of this call, for its backward
            ctx.save_for_backward(x, order, inverse, reversal, cu, *(a.clone() for a in acts),
                                  *(w for w in weights if w is not None))
            ctx.has_conv_bias = weights[3] is not None
        return out[:x.shape[0]].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        x, order, inverse, reversal, cu, *rest = ctx.saved_tensors
        acts, weights = rest[:4], list(rest[4:])
        if not ctx.has_conv_bias:
            weights.insert(3, None)
        size = ctx.size
        size.load(x, order, inverse, reversal, cu, weights)
        size.load_acts(acts)
        v = x.shape[0]
        size.dout[:v].copy_(dout)
        size.dout[v:].zero_()
        grads = size.run_backward()
        dx = grads[0][:v].clone()
        params = [None if g is None else g.clone() for g in grads[1:]]
        return (None, None, dx, None, None, None, None, *params)
