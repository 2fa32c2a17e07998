"""A training step replayed as one CUDA graph (``train.cuda_graph: true``).

A step of a small model is bound by the host: hundreds of operator dispatches and kernel
launches of a few microseconds of GPU work each (N-MNIST windowed: 700 kernels, 2.7 ms of GPU
work in a 42 ms step on an H200). ``GraphedStep`` records the forward, the loss, the backward
and the gradient clipping of a batch once (``torch.cuda.graph``) and replays that record for
every later batch of the same layout: one launch instead of hundreds. The optimizer step and
the schedule run after it, outside the graph, exactly as in an eager step (the fused AdamW is a
few launches and keeps its float learning rate).

Per batch layout (``batch_signature``: keys, tensor shapes / dtypes / devices, plain values):

1. the first ``warmup`` batches run as ordinary eager steps on a side stream (lazy
   initialisation, Triton autotuning, cached value checks: all the host syncs happen here);
2. the next batch is copied into static input tensors and the step is captured, then replayed;
3. later batches are copied into the static inputs and replayed.

A batch whose layout has no graph yet (and ``max_graphs`` are taken), or that is not a mapping
of tensors and plain values (a PyG ``Batch``), runs eagerly: results are those of the eager
step either way. What the step must satisfy to be captured (else ``torch.cuda.graph`` raises):
no host sync after the warm-up (``.item()``, ``nonzero``, boolean masks, value checks), no
shapes that depend on values, random numbers drawn on the GPU (the default CUDA generator is
advanced on every replay; numbers drawn on the CPU inside the step would be frozen into the
graph), one process (no DDP). Dropout masks differ from the eager run's (the generator's
offsets are consumed differently), so only a step without randomness gives the same numbers.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["GraphedStep", "batch_signature", "cuda_graph_wanted"]

#: Leaves of a batch kept in a signature by value.
PLAIN = (str, int, float, bool, type(None))


def cuda_graph_wanted(setting: Any, device: torch.device, distributed: bool) -> bool:
    """``train.cuda_graph`` resolved: true / false as set; ``auto``: on for one CUDA process
    (off on CPU and when ``distributed``: DDP's backward all-reduces through hooks a graph
    cannot hold). ``ValueError`` for any other value. Whether true is allowed is the
    trainer's check."""
    if setting == "auto":
        return device.type == "cuda" and not distributed
    if not isinstance(setting, bool):
        raise ValueError(f"train.cuda_graph: expected true, false or auto, got {setting!r}")
    return setting


def batch_signature(batch: Any) -> Any:
    """A hashable description of ``batch``'s layout, or None when it cannot be graphed.

    Tensors give ``(shape, dtype, device)``, plain values themselves, mappings their sorted
    items, lists / tuples their items; anything else (a PyG ``Batch``, custom objects) None.
    """
    if isinstance(batch, torch.Tensor):
        return ("tensor", tuple(batch.shape), batch.dtype, str(batch.device))
    if isinstance(batch, PLAIN):
        return ("value", batch)
    if isinstance(batch, Mapping):
        items = []
        for key in sorted(batch, key=str):
            sig = batch_signature(batch[key])
            if sig is None or not isinstance(key, PLAIN):
                return None
            items.append((key, sig))
        return ("mapping", tuple(items))
    if isinstance(batch, (list, tuple)):
        items = [batch_signature(v) for v in batch]
        return None if any(s is None for s in items) else (type(batch).__name__, tuple(items))
    return None


def _static_copy(batch: Any) -> Any:
    """A copy of ``batch`` whose tensors are new buffers (the graph's inputs)."""
    if isinstance(batch, torch.Tensor):
        return batch.clone()
    if isinstance(batch, Mapping):
        return {k: _static_copy(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_static_copy(v) for v in batch)
    return batch


def _copy_into(static: Any, batch: Any) -> None:
    """Copy ``batch``'s tensors into the matching buffers of ``static`` (same layout)."""
    if isinstance(static, torch.Tensor):
        static.copy_(batch, non_blocking=True)
    elif isinstance(static, Mapping):
        for key, value in static.items():
            _copy_into(value, batch[key])
    elif isinstance(static, (list, tuple)):
        for s, b in zip(static, batch):
            _copy_into(s, b)


def _clone_outputs(out: Any) -> Any:
    """Outputs of a replay, cloned: the static buffers are overwritten by the next replay."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, Mapping):
        return {k: _clone_outputs(v) for k, v in out.items()}
    if isinstance(out, tuple):
        return tuple(_clone_outputs(v) for v in out)
    return out


class _Captured:
    """One recorded step: its graph, the step function, static inputs and outputs, and the
    gradient buffers its backward writes."""

    def __init__(self, graph: Any, step: Callable[[Any], Any], inputs: Any, outputs: Any,
                 grads: list[torch.Tensor | None]) -> None:
        self.graph, self.step = graph, step
        self.inputs, self.outputs, self.grads = inputs, outputs, grads


class GraphedStep:
    """Runs ``step(batch)`` (forward, loss, backward, clipping; module docstring) eagerly for
    the first ``warmup`` batches of a layout, then as a replayed CUDA graph.

    Args:
        params: the parameters whose ``.grad`` the step writes (the optimizer's); after a
            replay every ``p.grad`` is the graph's gradient buffer again (an eager step in
            between may have replaced it).
        warmup: eager steps per layout before its capture, default 3 (PyTorch's advice).
        max_graphs: layouts recorded at most (each holds its own memory pool), default 4;
            others run eagerly.
        device: the CUDA device (None or CPU: the warm-up runs on the current stream).

    ``__call__(batch, step)`` returns what ``step`` returns (tensors cloned after a replay).
    The CUDA calls sit in ``_new_graph``, ``_capture_context`` and ``_replay`` (CPU tests
    override them with stand-ins that re-run the recorded step).
    """

    def __init__(self, params: list[torch.nn.Parameter], warmup: int = 3, max_graphs: int = 4,
                 device: torch.device | str | None = None) -> None:
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup: expected an int >= 1 (eager steps before the capture), "
                             f"got {warmup!r}")
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs: expected an int >= 1, got {max_graphs!r}")
        self.params = list(params)
        self.warmup, self.max_graphs = warmup, max_graphs
        self.device = torch.device(device) if device is not None else None
        self._graphs: dict[Any, _Captured] = {}
        self._seen: collections.Counter = collections.Counter()
        #: Counts of what ran: ``eager``, ``captured`` and ``replayed`` steps.
        self.stats: collections.Counter = collections.Counter()

    def __call__(self, batch: Any, step: Callable[[Any], Any]) -> Any:
        sig = batch_signature(batch)
        captured = self._graphs.get(sig) if sig is not None else None
        if captured is None:
            if sig is None or len(self._graphs) >= self.max_graphs \
                    or self._seen[sig] < self.warmup:
                if sig is not None and len(self._graphs) < self.max_graphs:
                    self._seen[sig] += 1
                self.stats["eager"] += 1
                return self._on_side_stream(step, batch)
            captured = self._capture(sig, batch, step)
        _copy_into(captured.inputs, batch)
        self._replay(captured)
        self.stats["replayed"] += 1
        for p, g in zip(self.params, captured.grads):
            p.grad = g
        return _clone_outputs(captured.outputs)

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def _on_side_stream(self, step: Callable[[Any], Any], batch: Any) -> Any:
        """An eager step, on a side stream on CUDA (the warm-up PyTorch asks for before a
        capture: its allocations stay out of the capture stream's pool)."""
        if self.device is None or self.device.type != "cuda":
            return step(batch)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = step(batch)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, sig: Any, batch: Any, step: Callable[[Any], Any]) -> _Captured:
        inputs = _static_copy(batch)
        for p in self.params:
            p.grad = None  # the backward inside the capture allocates the graph's own buffers
        graph = self._new_graph()
        try:
            with self._capture_context(graph):
                outputs = step(inputs)
        except RuntimeError as err:
            raise RuntimeError(
                f"train.cuda_graph: the training step could not be captured as a CUDA graph "
                f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); a host "
                "sync or a shape that depends on values in the step? Set "
                "train.cuda_graph=false") from err
        captured = _Captured(graph, step, inputs, outputs, [p.grad for p in self.params])
        self._graphs[sig] = captured
        self.stats["captured"] += 1
        return captured

    def _new_graph(self) -> Any:
        return torch.cuda.CUDAGraph()

    def _capture_context(self, graph: Any) -> Any:
        # thread_local: the DataLoader's pin-memory thread may allocate pinned memory while
        # this thread captures (the default "global" mode would fail the capture then).
        return torch.cuda.graph(graph, capture_error_mode="thread_local")

    def _replay(self, captured: _Captured) -> None:
        captured.graph.replay()
