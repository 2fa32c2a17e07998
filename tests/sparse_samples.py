"""Small random voxel sets for the tests of the sparse layers, in one place."""

from __future__ import annotations

import torch

from geossm.tasks.detection.sparse import SparseVoxels

#: the grid of the samples, ``(Z, Y, X)``
SHAPE = (3, 9, 10)


def random_voxels(n: int = 300, dim: int = 8, seed: int = 1, batch_size: int = 3
                  ) -> SparseVoxels:
    """Up to ``n`` distinct voxels of ``batch_size`` samples on ``SHAPE``, features ``(V, dim)``
    normal, all drawn from one generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.unique(torch.stack([torch.randint(0, batch_size, (n,), generator=g)] +
                                   [torch.randint(0, s, (n,), generator=g) for s in SHAPE],
                                   1), dim=0)
    return SparseVoxels(torch.randn(len(idx), dim, generator=g), idx, SHAPE, batch_size)
