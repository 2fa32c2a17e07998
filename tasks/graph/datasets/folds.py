"""Cross-validation folds and stratified hold-outs of graph classification sets (TU)."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import numpy as np


def _dealt(labels: np.ndarray, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(idx, place)`` per class in sorted order: the class's sample ids shuffled and their
    places in one deal over all classes (the next class continues where the last stopped).

    Shapes: ``labels (G,)`` (or ``(G, ...)``, first column) -> ``idx (G_c,)``, ``place (G_c,)``.
    """
    labels = np.asarray(labels).reshape(len(labels), -1)[:, 0]
    rng = np.random.default_rng(seed)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        yield idx, np.arange(len(idx)) + offset
        offset += len(idx)


def stratified_folds(labels: np.ndarray, num_folds: int = 10, seed: int = 0) -> np.ndarray:
    """Fold id of every sample: each class is shuffled and dealt round-robin into the folds.

    Shapes: ``labels (G,)`` int -> ``(G,)`` int64 in ``[0, num_folds)``.
    """
    fold = np.empty(len(labels), dtype=np.int64)
    for idx, place in _dealt(labels, seed):
        # Continue the deal where the last class stopped, so fold sizes differ by at most one.
        fold[idx] = place % num_folds
    return fold


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Which samples are held out: ``fraction`` of each class, dealt as ``stratified_folds``
    deals (same shuffle, same places ``t``), place ``t`` held out when ``t * fraction`` reaches
    a new integer (``floor(t f) > floor((t - 1) f)``, in exact integers; ``f`` the simplest
    fraction within 1e-9 of ``fraction``, so that ``0.1`` is 1/10 and ``1 / 3`` is 1/3). A
    class of ``n`` samples gives ``f n`` of them, rounded up or down; ``f = 1/k`` holds out
    exactly fold 0 of ``stratified_folds(labels, k, seed)``.

    Shapes: ``labels (G,)`` int -> ``(G,)`` bool.
    """
    if not 0 <= float(fraction) < 1:
        raise ValueError(f"fraction: expected a value in [0, 1), got {fraction!r}")
    # 0.1 as 1/10, not as the binary double nearest to it; a tiny fraction stays above 0
    f = Fraction(float(fraction)).limit_denominator(10 ** 9) or Fraction(float(fraction))
    p, q = f.numerator, f.denominator
    held = np.zeros(len(labels), dtype=bool)
    for idx, place in _dealt(labels, seed):
        t = place.astype(object)  # Python ints: t * p may pass int64 for a long decimal
        held[idx] = (t * p // q > (t - 1) * p // q).astype(bool)
    return held
