"""Helpers shared by the graph dataset tests."""

import torch


def _undirected(ei: torch.Tensor) -> bool:
    fwd = set(map(tuple, ei.t().tolist()))
    return all((b, a) in fwd for a, b in fwd)
