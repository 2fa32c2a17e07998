"""Batches that carry their own random seed, for DataLoader workers that live across epochs.

Loader workers that are started afresh every epoch (``persistent_workers=False``, the
default) cost a fork per worker and per loader each epoch; on Peptides-func (12 workers, one
train and one validation loader) that start-up is a visible share of a ~5 s epoch. Kept alive,
a worker's random stream would run on from epoch to epoch, so epoch ``e`` would depend on the
epochs before it in the same process and a resumed run would draw other augmentations than an
uninterrupted one. Here every batch brings its seed instead:

- ``SeededBatchSampler`` cuts a sampler's indices into batches (as DataLoader's own
  ``BatchSampler`` does, same order) and tags batch ``i`` of epoch ``e`` with a seed drawn
  from ``(key, e, i)`` (``batch_seed``; ``key`` holds the run's seed and the rank).
- ``SeededFetch`` wraps the dataset: before a worker reads a batch's samples it seeds torch,
  NumPy and ``random`` from the tag, so the samples' augmentations and the collate's draws
  (e.g. a Graph Mamba's random walks and orders) depend on ``(key, e, i)`` alone: not on
  the worker count, nor on which worker reads the batch, nor on earlier epochs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import BatchSampler, Dataset, Sampler

from geossm.engine.checkpoint import seed_everything


def batch_seed(key: Sequence[int], epoch: int, index: int) -> int:
    """A 64-bit seed for batch ``index`` of ``epoch`` (NumPy's ``SeedSequence`` mixes the
    entropy, so neighbouring batches get unrelated streams)."""
    words = np.random.SeedSequence([*map(int, key), int(epoch), int(index)]).generate_state(2)
    return int(words[0]) << 32 | int(words[1])


class SeededIndices(list):
    """One batch's dataset indices, with the ``seed`` its worker draws from."""

    def __init__(self, indices: Sequence[int], seed: int) -> None:
        super().__init__(indices)
        self.seed = seed


class SeededBatchSampler(BatchSampler):
    """DataLoader's ``BatchSampler`` over ``sampler`` (``batch_size`` consecutive indices, the
    last batch shorter), each batch a ``SeededIndices``.

    Args:
        sampler: yields dataset indices; its ``set_epoch`` (if any) is called by ours.
        batch_size: samples per batch, >= 1.
        key: integers the seeds derive from (e.g. ``(seed, rank)``).
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, key: Sequence[int]) -> None:
        super().__init__(sampler, batch_size, drop_last=False)
        self.key, self.epoch = tuple(key), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[SeededIndices]:
        for index, batch in enumerate(super().__iter__()):
            yield SeededIndices(batch, batch_seed(self.key, self.epoch, index))


class SeededFetch(Dataset):
    """``dataset`` read in batches whose random state is seeded from ``SeededIndices.seed``
    (DataLoader's workers call ``__getitems__`` with the batch sampler's lists)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> Any:
        seed = getattr(indices, "seed", None)
        if seed is None:
            raise TypeError("SeededFetch reads batches of SeededBatchSampler (lists with a "
                            f"'seed'), got {type(indices).__name__}")
        seed_everything(seed)
        getitems = getattr(self.dataset, "__getitems__", None)
        # The dataset's own batch read keeps what it adds (e.g. the graph datasets tag their
        # samples with the split); it gets a plain list, as from DataLoader's BatchSampler.
        return getitems(list(indices)) if getitems else [self.dataset[i] for i in indices]
