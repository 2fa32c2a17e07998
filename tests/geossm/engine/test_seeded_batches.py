import random

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from geossm.engine.seeded_batches import (SeededBatchSampler, SeededFetch, SeededIndices,
                                          batch_seed)


class Noisy(Dataset):
    """Each sample draws from torch, NumPy and random: what augmentations read."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([float(i), torch.rand(()).item(), np.random.rand(), random.random()])


class Tagged(Noisy):
    """A dataset with its own batch read that tags the list (as the graph datasets do)."""

    def __getitems__(self, indices):
        assert type(indices) is list  # the plain indices, as from DataLoader's BatchSampler
        samples = [self[i] for i in indices]
        return [torch.cat([s, torch.tensor([1.0])]) for s in samples]


def test_batches_follow_the_samplers_order_and_carry_distinct_seeds():
    sampler = DistributedSampler(range(10), num_replicas=1, rank=0, shuffle=True, seed=3)
    ours = SeededBatchSampler(sampler, 4, key=(3, 0))
    for epoch in (1, 2):
        ours.set_epoch(epoch)
        assert sampler.epoch == epoch  # forwarded: the order is the sampler's
        theirs = list(BatchSampler(sampler, 4, drop_last=False))
        batches = list(ours)
        assert [list(b) for b in batches] == theirs and len(ours) == len(theirs) == 3
        assert [b.seed for b in batches] == [batch_seed((3, 0), epoch, i) for i in range(3)]
    seeds = {batch_seed((s, r), e, i) for s in (0, 1) for r in (0, 1) for e in (1, 2)
             for i in range(3)}
    assert len(seeds) == 24 and all(0 <= s < 2**64 for s in seeds)


def test_fetch_seeds_every_rng_from_the_batch_and_keeps_the_datasets_batch_read():
    for data in (Noisy(), Tagged()):
        fetch = SeededFetch(data)
        a = fetch.__getitems__(SeededIndices([1, 2], seed=7))
        torch.rand(5), np.random.rand(5), random.random()  # other draws in between
        b = fetch.__getitems__(SeededIndices([1, 2], seed=7))
        c = fetch.__getitems__(SeededIndices([1, 2], seed=8))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        for x, z in zip(a, c, strict=True):
            assert (x[1:4] != z[1:4]).all()  # every generator moved with the seed
        assert len(a[0]) == (5 if isinstance(data, Tagged) else 4)
    with pytest.raises(TypeError, match="SeededBatchSampler"):
        SeededFetch(Noisy()).__getitems__([1, 2])


def epochs_of(workers: int, epochs=(1, 2, 1)) -> tuple[list[torch.Tensor], set[int]]:
    """Batches of each epoch from one persistent-worker loader, and its workers' pids."""
    sampler = DistributedSampler(range(10), num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = DataLoader(SeededFetch(Noisy()), batch_sampler=SeededBatchSampler(sampler, 3, (0, 0)),
                        num_workers=workers, persistent_workers=True)
    out, pids = [], set()
    for epoch in epochs:
        loader.batch_sampler.set_epoch(epoch)
        out.append(torch.cat(list(loader)))
        pids |= {w.pid for w in loader._iterator._workers}
    return out, pids


def test_persistent_workers_draw_by_batch_not_by_worker_or_history():
    one, one_pids = epochs_of(1)
    two, two_pids = epochs_of(2)
    assert len(one_pids) == 1 and len(two_pids) == 2  # started once, kept for every epoch
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)  # the same draws whichever worker reads a batch
    assert torch.equal(one[0], one[2])  # epoch 1 again (a resume) draws as the first time
    assert not torch.equal(one[0][:, 1:], one[1][:, 1:])  # a new epoch, new draws
