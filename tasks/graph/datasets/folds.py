"""Cross-validation folds of graph classification sets (TU)."""

from __future__ import annotations

import numpy as np


def stratified_folds(labels: np.ndarray, num_folds: int = 10, seed: int = 0) -> np.ndarray:
    """Fold id of every sample: each class is shuffled and dealt round-robin into the folds.

    Shapes: ``labels (G,)`` int -> ``(G,)`` int64 in ``[0, num_folds)``.
    """
    labels = np.asarray(labels).reshape(len(labels), -1)[:, 0]
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        # Continue the deal where the last class stopped, so fold sizes differ by at most one.
        fold[idx] = (np.arange(len(idx)) + offset) % num_folds
        offset += len(idx)
    return fold
