"""A CPU stand-in for ``GraphedStep``'s CUDA graph (``RerunGraphedStep``), shared by the
engine's tests and the tasks' tests of graphed training."""

import contextlib

import torch

from geossm.engine.cuda_graph import GraphedStep


class RerunGraphedStep(GraphedStep):
    """CPU stand-in: the capture runs the step once (a CUDA capture only records it), a
    replay runs it again on the static inputs and writes its results into the buffers the
    capture returned, as a replayed graph writes into its static tensors."""

    def _new_graph(self):
        return object()

    def _capture_context(self, graph):
        return contextlib.nullcontext()

    def _replay(self, captured):
        fresh = captured.step(captured.inputs)
        for static, new in zip(_leaves(captured.outputs), _leaves(fresh)):
            static.copy_(new)
        for static, p in zip(captured.grads, self.params):
            if static is not None:
                static.copy_(p.grad)
                p.grad = torch.full_like(p.grad, float("nan"))  # stale: must be re-pointed


def _leaves(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _leaves(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _leaves(v)]
    return []
