"""``knn`` as the ``torch.library`` custom op ``geossm::knn``, for ``torch.export``.

``knn`` loops over the samples on the host (``cu_seqlens.tolist()``) and may use SciPy's
KD-tree: ``torch.export`` cannot trace it. While tracing, ``knn`` calls this op instead; the
op runs the eager ``knn`` at run time and its fake implementation gives the ``(N, k)`` shape.
Eager calls do not go through it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["knn_op"]


@torch.library.custom_op("geossm::knn", mutates_args=())
def knn_op(coord: Tensor, cu_seqlens: Tensor, k: int, max_elements: int, method: str) -> Tensor:
    """``knn(coord, cu_seqlens, k, max_elements, method)``: ``(N, k)`` long neighbour indices."""
    from .neighbours import knn
    return knn(coord, cu_seqlens, k, max_elements, method)


@knn_op.register_fake
def _(coord, cu_seqlens, k, max_elements, method):
    return coord.new_empty((coord.shape[0], k), dtype=torch.long)
