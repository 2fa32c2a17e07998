import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geossm.serialization import (Serialization, window_groups, window_groups_multi,
                                  window_partition)

SPARSE = (5, 40, 30)  # (Z, Y, X)


def _voxels(n, samples, seed, sparse=SPARSE):
    g = torch.Generator().manual_seed(seed)
    zyx = torch.stack([torch.randint(0, s, (n,), generator=g) for s in sparse], 1)
    batch = torch.randint(0, samples, (n,), generator=g)
    coords = torch.cat([batch[:, None], zyx], 1)
    return coords


def _reference_order(coords, window, axis, shift):
    wx, wy, wz = window
    sx, sy, sz = (wx // 2, wy // 2, wz // 2) if shift else (0, 0, 0)
    keys = []
    for i, (b, z, y, x) in enumerate(coords.tolist()):
        x, y, z = x + sx, y + sy, z + sz
        w = (x // wx, y // wy, z // wz)
        r = (x % wx, y % wy, z % wz)
        if axis == "x":
            keys.append((b, w[0], w[1], w[2], r[0], r[1], r[2], i))
        else:
            keys.append((b, w[1], w[0], w[2], r[1], r[0], r[2], i))
    return [k[-1] for k in sorted(keys)]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 400), st.integers(1, 4), st.integers(1, 50), st.sampled_from(["x", "y"]),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_window_groups_properties(n, samples, group_size, axis, shift, seed):
    coords = _voxels(n, samples, seed)
    window = (7, 6, 3)
    s = window_groups(coords, SPARSE, window, group_size, axis=axis, shift=shift)
    s = Serialization(s.order, s.inverse, s.cu_seqlens, s.extras)
    assert s.order.tolist() == _reference_order(coords, window, axis, shift)
    lengths = s.seqlens.tolist()
    group_batch = s.extras["group_batch"]
    assert len(lengths) == group_batch.numel()
    batch_sorted = coords[s.order, 0]
    counts = torch.bincount(coords[:, 0], minlength=samples).tolist() if n else [0] * samples
    for g, (lo, hi) in enumerate(zip(s.cu_seqlens[:-1].tolist(), s.cu_seqlens[1:].tolist())):
        # never crosses samples, and names its sample
        assert bool((batch_sorted[lo:hi] == group_batch[g]).all())
        assert hi > lo
        last_of_sample = g == len(lengths) - 1 or int(group_batch[g + 1]) != int(group_batch[g])
        if not last_of_sample:
            assert hi - lo == group_size
        else:
            assert 1 <= hi - lo <= group_size
    for b in range(samples):
        expected_groups = -(-counts[b] // group_size)
        assert int((group_batch == b).sum()) == expected_groups
    # no padding, no duplicates
    assert sorted(s.order.tolist()) == list(range(n))


@pytest.mark.parametrize("samples, group_size", [(1, 7), (3, 5), (4, 400)])
def test_one_partition_serves_both_axes_and_shifts(samples, group_size):
    """The groups depend on the samples' counts only: x / y, shifted or not, with a shared
    partition and no range check give what window_groups computes on its own."""
    coords = _voxels(300, samples, seed=samples)
    coords = coords[coords[:, 0] != 1] if samples > 2 else coords   # an empty sample
    partition = window_partition(coords[:, 0], samples, group_size)
    for axis in ("x", "y"):
        for shift in (False, True):
            alone = window_groups(coords, SPARSE, (7, 6, 3), group_size, axis, shift)
            shared = window_groups(coords, SPARSE, (7, 6, 3), group_size, axis, shift,
                                   partition=partition, check=False)
            assert shared.cu_seqlens is partition[0]
            for name in ("order", "inverse", "cu_seqlens"):
                assert torch.equal(getattr(alone, name), getattr(shared, name))
            for name in ("group_batch", "window"):
                assert torch.equal(alone.extras[name], shared.extras[name])
    assert partition[0].dtype == torch.int32 and partition[1].dtype == torch.long


@pytest.mark.parametrize("n", [0, 1, 250])
def test_several_variants_at_once_equal_one_at_a_time(n):
    coords = _voxels(n, 3, seed=n)
    variants = [("x", False), ("y", True), ("y", False), ("x", True)]
    together = window_groups_multi(coords, SPARSE, (7, 6, 3), 16, variants)
    assert len(together) == len(variants)
    assert all(s.cu_seqlens is together[0].cu_seqlens for s in together)  # one partition
    for (axis, shift), got in zip(variants, together):
        alone = window_groups(coords, SPARSE, (7, 6, 3), 16, axis, shift)
        for name in ("order", "inverse", "cu_seqlens"):
            assert torch.equal(getattr(alone, name), getattr(got, name))
        for name in ("group_batch", "window"):
            assert torch.equal(alone.extras[name], got.extras[name])
    with pytest.raises(ValueError, match=r"axis: expected 'x' or 'y', got 'z'"):
        window_groups_multi(coords, SPARSE, (7, 6, 3), 16, [("x", False), ("z", True)])


def test_partition_of_no_voxels_and_trailing_empty_samples():
    cu, group_batch = window_partition(torch.zeros(0, dtype=torch.long), 2, 4)
    assert cu.tolist() == [0] and group_batch.numel() == 0
    cu, group_batch = window_partition(torch.tensor([0, 0, 0, 0, 0]), 3, 2)
    assert cu.tolist() == [0, 2, 4, 5] and group_batch.tolist() == [0, 0, 0]


def test_partition_from_host_counts_equals_the_counted_one():
    sample = torch.tensor([0, 0, 0, 2, 2, 2, 2, 2])
    cu, group_batch = window_partition(sample, 3, 2, counts=np.array([3, 0, 5]))
    ref_cu, ref_batch = window_partition(sample, 3, 2)
    assert torch.equal(cu, ref_cu) and torch.equal(group_batch, ref_batch)
    with pytest.raises(ValueError, match="counts: expected 3 voxel counts summing to 8"):
        window_partition(sample, 3, 2, counts=np.array([3, 5]))
    with pytest.raises(ValueError, match="summing to 8, got shape"):
        window_partition(sample, 3, 2, counts=np.array([3, 0, 4]))


def test_no_check_needs_a_partition():
    with pytest.raises(ValueError, match=r"partition: expected window_partition\(...\) when "
                                         r"check=False"):
        window_groups(torch.zeros(2, 4, dtype=torch.long), SPARSE, (4, 4, 2), 8, check=False)


def test_window_index_extra_and_shift_changes_windows():
    coords = torch.tensor([[0, 0, 0, 2], [0, 0, 0, 4], [1, 0, 0, 2]])
    plain = window_groups(coords, (1, 8, 8), (4, 4, 1), 2)
    shifted = window_groups(coords, (1, 8, 8), (4, 4, 1), 2, shift=True)
    w = plain.extras["window"]
    assert w[0] != w[1] and w[0] != w[2]
    ws = shifted.extras["window"]
    assert ws[0] == ws[1]  # x = 2, 4 -> 4, 6 share the shifted window [4, 8)
    assert plain.cu_seqlens.tolist() == [0, 2, 3]


def test_axis_y_orders_windows_along_y():
    # two windows side by side in x, two stacked in y
    coords = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 5], [0, 0, 5, 0], [0, 0, 5, 5]])
    sx = window_groups(coords, (1, 10, 10), (4, 4, 1), 10, axis="x")
    sy = window_groups(coords, (1, 10, 10), (4, 4, 1), 10, axis="y")
    assert sx.order.tolist() == [0, 2, 1, 3]
    assert sy.order.tolist() == [0, 1, 2, 3]


def test_empty_input():
    s = window_groups(torch.zeros(0, 4, dtype=torch.long), SPARSE, (4, 4, 2), 8)
    assert s.cu_seqlens.tolist() == [0] and s.num_tokens == 0


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(coords=torch.zeros(3, 3, dtype=torch.long)), ValueError,
     r"coords: expected shape \(N, 4\) = \(batch, z, y, x\), got \(3, 3\)"),
    (dict(coords=torch.zeros(3, 4)), ValueError, r"coords: expected an integer tensor, got dtype torch.float32"),
    (dict(coords=[[0, 0, 0, 0]]), TypeError, r"coords: expected a torch.Tensor, got list"),
    (dict(coords=torch.tensor([[0, 0, 0, -1]])), ValueError,
     r"coords: expected non-negative \(batch, z, y, x\), got minima \[0, 0, 0, -1\]"),
    (dict(coords=torch.tensor([[0, 0, 40, 0]])), ValueError,
     r"coords: expected \(z, y, x\) < sparse_shape \(5, 40, 30\), got maxima \[0, 40, 0\]"),
    (dict(sparse_shape=(5, 40)), ValueError, r"sparse_shape: expected 3 positive ints \(Z, Y, X\), got \(5, 40\)"),
    (dict(window_shape=(4, 0, 2)), ValueError, r"window_shape: expected 3 positive ints \(wx, wy, wz\), got \(4, 0, 2\)"),
    (dict(group_size=0), ValueError, r"group_size: expected a positive int, got 0"),
    (dict(axis="z"), ValueError, r"axis: expected 'x' or 'y', got 'z'"),
])
def test_errors(kwargs, exc, match):
    args = dict(coords=torch.zeros(2, 4, dtype=torch.long), sparse_shape=SPARSE,
                window_shape=(4, 4, 2), group_size=8)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        window_groups(**args)
