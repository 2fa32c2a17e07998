"""Triton backend of the grouped variable-length selective scan (forward and backward).

Recurrence, per segment ``s`` of ``cu_seqlens`` and channel ``d`` (``g = d // (D // G)``)::

    dt_t = softplus(delta_t[d] + delta_bias[d])        (or delta_t[d] + delta_bias[d])
    h_t  = exp(dt_t * A[d]) * h_{t-1} + dt_t * B_t[g] * u_t[d]          h_t: (N,) float32
    y_t  = <C_t[g], h_t> + D[d] * u_t[d];  out_t = y_t * silu(z_t[d])   (gate only if z given)
    h_{-1} = initial_state[s] (zeros if None); reverse=True walks each segment end -> start;
    final_state[s] = h after the segment's last step (the initial state for an empty segment).

Shapes::

    u, delta, z, dout: (T, D)      float32 / float16 / bfloat16 (each may differ)
    A: (D, N) float32              B, C: (T, G, N) any float dtype, G divides D
    D, delta_bias: (D,) float32    cu_seqlens: (S+1,) int32, leading 0, last == T
    initial_state, final_state, dfinal_state: (S, D, N) float32

Time is cut into chunks of at most ``L`` steps that never cross a segment boundary. One module
per pass; every pass is one launch for all segments:

- forward, ``LaunchConfig.forward == "chunked"``: ``fwd_chunk_state`` (local end state of every
  non-last chunk) -> ``carry.fwd_carry`` (true end states) -> ``fwd_output`` (rescan, outputs);
- forward, ``"serial"`` / ``"pieces"``: ``fwd_serial`` (one program per (segment or piece,
  channel block) walks it once: one exponential per element, outputs and the chunk record;
  pieces get their start states from ``fwd_chunk_state`` + ``carry.fwd_carry`` over pieces);
- backward: ``bwd_h_pass`` (forward order, recomputes h) -> ``carry.bwd_carry`` ->
  ``bwd_dh_pass`` (reverse order, dh); both passes are loops over a per-chunk function
  (``h_chunk``, ``dh_chunk``). With ``LaunchConfig.fuse_backward``, ``bwd_h_pass`` runs
  ``h_chunk`` on every chunk and ``dh_chunk`` right after it where the chunk is its segment's
  only one; the carry and the dh-pass then take the longer segments.

Launch settings are a :class:`LaunchConfig` passed to the host functions (``DEFAULT_CONFIG``
when None). The derivation of the backward (the E identity for dA), the layout choices and the
tuning history are in ``benchmarks/NOTES_scan_gpu.md`` ("Kernel design").

Determinism: no atomics; per-program partial sums reduced with ``torch.sum`` in a fixed order,
so results are bitwise reproducible on one GPU for one launch configuration. Host syncs: none
(grids from shapes; chunk metadata built on the device, cached per ``cu_seqlens`` tensor, never
during CUDA-graph capture). Float32 state and accumulation throughout. Kernels also run under
``TRITON_INTERPRET=1`` on CPU tensors.
"""

from .config import DEFAULT_CONFIG, V1_CONFIG, LaunchConfig
from .launch import chunk_states_shape, selective_scan_bwd, selective_scan_fwd

__all__ = ["LaunchConfig", "DEFAULT_CONFIG", "V1_CONFIG", "chunk_states_shape",
           "selective_scan_fwd", "selective_scan_bwd"]
