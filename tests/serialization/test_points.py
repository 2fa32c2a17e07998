import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geossm.serialization import (ORDERS, Serialization, encode, grid_coordinates, serialize,
                                  serialize_grid, serialize_multi, serialized_pooling)


def _cloud(n, samples, seed):
    g = torch.Generator().manual_seed(seed)
    coord = torch.rand(n, 3, generator=g) * torch.tensor([4.0, 2.0, 1.0]) - 1.0
    batch = torch.randint(0, samples, (n,), generator=g)
    return coord, batch


def _revalidate(s):
    return Serialization(s.order, s.inverse, s.cu_seqlens, s.extras)


def test_grid_coordinates():
    coord = torch.tensor([[0.0, 1.0, 2.0], [0.25, 1.49, 2.5], [1.0, 1.0, 2.0]])
    assert grid_coordinates(coord, 0.5).tolist() == [[0, 0, 0], [0, 0, 1], [2, 0, 0]]
    assert grid_coordinates(coord, [0.5, 0.1, 1.0]).tolist() == [[0, 0, 0], [0, 4, 0], [2, 0, 0]]
    assert grid_coordinates(torch.zeros(0, 3), 1.0).shape == (0, 3)
    assert grid_coordinates(torch.tensor([[1, 2, 3]]), 1.0).tolist() == [[0, 0, 0]]


@pytest.mark.parametrize("grid_size, match", [
    (0.0, r"grid_size: expected positive finite values, got \[0.0\]"),
    ([1.0, 2.0], r"grid_size: expected a float or 3 values, got 2 values"),
    (float("nan"), r"grid_size: expected positive finite values"),
])
def test_grid_size_errors(grid_size, match):
    with pytest.raises(ValueError, match=match):
        grid_coordinates(torch.zeros(2, 3), grid_size)


def test_coord_errors():
    with pytest.raises(ValueError, match=r"coord: expected shape \(N, 3\), got \(2, 2\)"):
        serialize(torch.zeros(2, 2), 1.0)
    with pytest.raises(TypeError, match=r"coord: expected a torch.Tensor, got list"):
        serialize([[0.0, 0.0, 0.0]], 1.0)
    with pytest.raises(ValueError, match=r"coord: expected finite coordinates, got NaN or inf"):
        serialize(torch.tensor([[0.0, float("nan"), 0.0]]), 1.0)
    with pytest.raises(ValueError, match=r"order: expected one of .*got 'morton'"):
        serialize(torch.zeros(2, 3), 1.0, "morton")
    with pytest.raises(ValueError, match=r"batch: expected shape \(2,\), got \(3,\)"):
        serialize(torch.zeros(2, 3), 1.0, batch=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"batch: expected a torch.Tensor or None, got list"):
        serialize(torch.zeros(2, 3), 1.0, batch=[0, 0])


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(ORDERS), st.integers(0, 300), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_serialize_properties(order, n, samples, seed):
    coord, batch = _cloud(n, samples, seed)
    s = _revalidate(serialize(coord, 0.1, order, batch))
    num = int(batch.max()) + 1 if n else 0
    assert s.num_segments == num
    # one segment per sample, holding exactly that sample's points
    seg = s.segment_ids()
    assert torch.equal(batch[s.order], seg) if n else True
    assert torch.equal(s.seqlens.long(), torch.bincount(batch, minlength=num))
    # curve order inside, ties broken by source index
    code = s.extras["code"]
    key = code[s.order] * (n + 1) + s.order
    assert bool((key[1:] > key[:-1]).all())
    grid = grid_coordinates(coord, 0.1)
    assert torch.equal(code, encode(grid, order, batch, int(s.extras["depth"])))


def test_serialize_without_batch_is_one_segment_and_deterministic():
    coord, _ = _cloud(200, 1, 3)
    coord = torch.cat([coord, coord[:50]])  # duplicated points tie
    a = serialize(coord, 0.2)
    b = serialize(coord, 0.2)
    assert a.cu_seqlens.tolist() == [0, 250]
    assert torch.equal(a.order, b.order)
    code = a.extras["code"][a.order]
    ties = code[1:] == code[:-1]
    assert bool((a.order[1:][ties] > a.order[:-1][ties]).all())


def test_serialize_multi_matches_serialize():
    coord, batch = _cloud(400, 3, 7)
    several = serialize_multi(coord, 0.05, ORDERS, batch)
    assert len(several) == len(ORDERS)
    for order, s in zip(ORDERS, several):
        one = serialize(coord, 0.05, order, batch)
        _revalidate(s)
        assert torch.equal(s.order, one.order) and torch.equal(s.cu_seqlens, one.cu_seqlens)
    with pytest.raises(ValueError, match=r"orders: expected a non-empty sequence"):
        serialize_multi(coord, 0.05, "z")
    with pytest.raises(ValueError, match=r"order: expected one of"):
        serialize_multi(coord, 0.05, ["z", "nope"])


def test_serialize_grid_with_empty_samples():
    grid = torch.tensor([[0, 0, 0], [1, 1, 1], [3, 2, 1]])
    s = _revalidate(serialize_grid(grid, "z", torch.tensor([2, 0, 2])))
    assert s.cu_seqlens.tolist() == [0, 1, 1, 3]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("levels", [1, 2])
def test_serialized_pooling(order, levels):
    coord, batch = _cloud(600, 3, 11)
    s = serialize(coord, 0.05, order, batch)
    depth = int(s.extras["depth"])
    pool = serialized_pooling(s.extras["code"], order, depth, levels)
    grid = s.extras["grid_coord"]
    # parents are the coarse cells: children with the same (batch, grid >> levels) share one
    parent_key = torch.cat([batch[:, None], grid >> levels], 1)
    uniq, inv = torch.unique(parent_key, dim=0, return_inverse=True)
    assert pool.counts.numel() == uniq.shape[0]
    assert torch.equal(pool.grid_coord[pool.cluster], grid >> levels)
    assert torch.equal(pool.batch[pool.cluster], batch)
    same = inv[:, None] == inv[None, :]
    assert torch.equal(same, pool.cluster[:, None] == pool.cluster[None, :])
    assert torch.equal(pool.counts, torch.bincount(pool.cluster))
    assert torch.equal(pool.cluster[pool.head], torch.arange(pool.counts.numel()))
    assert pool.depth == depth - levels
    # the parents' serialization is valid and already in curve order
    ps = _revalidate(pool.serialization)
    assert bool((pool.code[1:] > pool.code[:-1]).all())
    assert torch.equal(pool.code, encode(pool.grid_coord, order, pool.batch, depth - levels))
    assert torch.equal(ps.seqlens.long(), torch.bincount(pool.batch, minlength=3))
    # features: mean over the children, unpool broadcasts back
    x = torch.randn(600, 4)
    pooled = pool.pool(x)
    for j in (0, pool.counts.numel() // 2, pool.counts.numel() - 1):
        assert torch.allclose(pooled[j], x[pool.cluster == j].mean(0), atol=1e-6)
    assert torch.allclose(pool.pool(x, "max")[0], x[pool.cluster == 0].max(0).values)
    assert torch.equal(pool.unpool(pooled), pooled[pool.cluster])


def test_pooling_errors():
    code = torch.arange(10)
    with pytest.raises(ValueError, match=r"levels: expected an int in \[0, depth=2\), got 2"):
        serialized_pooling(code, "z", 2, 2)
    with pytest.raises(ValueError, match=r"depth: expected an int in \[1, 21\], got 0"):
        serialized_pooling(code, "z", 0)
    with pytest.raises(ValueError, match=r"code: expected a \(N,\) int64 tensor, got \(2, 5\)"):
        serialized_pooling(code.view(2, 5), "z", 3)
    pool = serialized_pooling(code, "z", 3)
    with pytest.raises(ValueError, match=r"reduce: expected 'mean', 'sum', 'max' or 'min', got 'median'"):
        pool.pool(torch.zeros(10), "median")
    with pytest.raises(ValueError, match=r"x: expected shape \(10, \.\.\.\), got \(3,\)"):
        pool.pool(torch.zeros(3))
    with pytest.raises(ValueError, match=r"y: expected shape \(2, \.\.\.\), got \(3,\)"):
        pool.unpool(torch.zeros(3))


def test_pool_grid_is_z_encoding_then_serialized_pooling():
    from geossm.serialization import fit_depth, pool_grid, serialized_pooling
    g = torch.Generator().manual_seed(4)
    grid = torch.randint(0, 13, (90, 3), generator=g)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([40, 20, 30]))
    depth = fit_depth(grid)
    for given_depth in (depth, None):  # None: the fewest bits that fit
        pooled = pool_grid(grid, batch, given_depth, 2, 3)
        want = serialized_pooling(encode(grid, "z", batch, depth), "z", depth, 2, 3)
        for name in ("cluster", "counts", "code", "grid_coord", "batch", "head"):
            assert torch.equal(getattr(pooled, name), getattr(want, name)), name
        assert pooled.depth == depth - 2 and pooled.order == "z"
        assert torch.equal(pooled.serialization.cu_seqlens, want.serialization.cu_seqlens)
    # more levels than the grid has are clipped to depth - 1 (one cell per axis)
    assert torch.equal(pool_grid(grid, batch, None, 10, 3).grid_coord,
                       pool_grid(grid, batch, None, depth - 1, 3).grid_coord)
    with pytest.raises(ValueError, match=r"levels: expected an int >= 1, got 0"):
        pool_grid(grid, batch, None, 0, 3)


@pytest.mark.parametrize("cells", [[[0, 0, 0]], [[0, 0, 0], [1, 0, 1], [1, 1, 1]]])
@pytest.mark.parametrize("per_sample", [False, True])
def test_pool_grid_of_depth_one_gives_one_cell(cells, per_sample):
    # a single point, or a cloud within two cells per axis: one parent cell per sample, depth 1
    from geossm.serialization import pool_grid, sample_depths
    grid = torch.tensor(cells * 2)
    batch = torch.repeat_interleave(torch.arange(2), len(cells))
    depth = sample_depths(grid, batch, 2) if per_sample else None
    pooled = pool_grid(grid, batch, depth, 3, 2)
    assert pooled.grid_coord.tolist() == [[0, 0, 0], [0, 0, 0]]
    assert pooled.batch.tolist() == [0, 1] and pooled.counts.tolist() == [len(cells)] * 2
    assert torch.equal(pooled.cluster, batch)
    assert pooled.head.tolist() == [0, len(cells)]
    assert pooled.serialization.cu_seqlens.tolist() == [0, 1, 2]
    assert (pooled.depth.tolist() if per_sample else pooled.depth) == ([1, 1] if per_sample else 1)
    again = pool_grid(pooled.grid_coord, pooled.batch, pooled.depth, 1, 2)
    assert again.counts.tolist() == [1, 1]


def test_per_sample_depths_serialize_and_pool_every_sample_as_alone():
    from geossm.serialization import pool_grid, sample_depths
    g = torch.Generator().manual_seed(8)
    lengths = [70, 0, 120, 5, 1]
    batch = torch.repeat_interleave(torch.arange(5), torch.tensor(lengths))
    side = torch.tensor([3, 1, 900, 40, 1])[batch]  # depths 2, -, 10, 6, 1
    grid = (torch.rand(batch.numel(), 3, generator=g) * side[:, None]).long()
    depths = sample_depths(grid, batch, 5)
    starts = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    for order in ORDERS:
        ser = serialize_grid(grid, order, batch, depths, 5)
        assert torch.equal(ser.extras["depth"], depths)
        for s in range(5):
            alone = serialize_grid(grid[batch == s], order)
            seg = ser.order[ser.cu_seqlens[s]:ser.cu_seqlens[s + 1]]
            assert torch.equal(seg - starts[s], alone.order), (order, s)
        multi = serialize_multi(grid.float(), 1.0, ("z", order), batch, depths)
        assert torch.equal(multi[1].order, ser.order)
        assert torch.equal(multi[1].extras["code"], ser.extras["code"])
    for levels in (1, 3, 12):
        pooled = pool_grid(grid, batch, depths, levels, 5)
        cu = pooled.serialization.cu_seqlens
        for s in range(5):
            if lengths[s] == 0:
                assert cu[s + 1] == cu[s]
                continue
            alone = pool_grid(grid[batch == s], torch.zeros(lengths[s], dtype=torch.long), None,
                              levels, 1)
            assert torch.equal(pooled.grid_coord[cu[s]:cu[s + 1]], alone.grid_coord), (levels, s)
            assert torch.equal(pooled.counts[cu[s]:cu[s + 1]], alone.counts)
            assert torch.equal(pooled.cluster[batch == s] - cu[s], alone.cluster)
            assert torch.equal(pooled.head[cu[s]:cu[s + 1]] - starts[s], alone.head)
            assert int(pooled.depth[s]) == alone.depth
    # one sample: per-sample depths pool exactly as an int depth does
    one = batch == 2
    a = pool_grid(grid[one], batch[one] * 0, depths[2:3], 3, 1)
    b = pool_grid(grid[one], batch[one] * 0, int(depths[2]), 3, 1)
    for name in ("cluster", "counts", "code", "grid_coord", "batch", "head"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_grid_coordinates_of_half_precision_are_those_of_the_same_values_in_float32(dtype):
    g = torch.Generator().manual_seed(0)
    coord = (torch.rand(5000, 3, generator=g) * 4 - 2).to(dtype)
    got = grid_coordinates(coord, 0.02)
    assert torch.equal(got, grid_coordinates(coord.float(), 0.02))
    c64 = torch.rand(100, 3, generator=g, dtype=torch.float64) * 1e3
    assert torch.equal(grid_coordinates(c64, 1e-3),
                       torch.floor((c64 - c64.min(0).values) / 1e-3).long())


def test_pooling_a_depth_one_grid_gives_parent_codes_with_the_sample_bits_above_one_level():
    """The int-depth path of a depth-1 grid and the per-sample path agree on the parent codes
    (cell 0, sample bits above 3 * 1), and the codes decode to the parents' samples."""
    from geossm.serialization import decode, pool_grid
    g = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 0, 0], [1, 0, 1]])
    b = torch.tensor([0, 0, 1, 1])
    by_int = pool_grid(g, b, 1, 1, 2)
    by_sample = pool_grid(g, b, torch.tensor([1, 1]), 1, 2)
    assert by_int.code.tolist() == by_sample.code.tolist() == [0, 8]
    grid, batch = decode(by_int.code, "z", 1)
    assert batch.tolist() == [0, 1] and grid.tolist() == [[0, 0, 0], [0, 0, 0]]
