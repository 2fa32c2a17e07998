import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geossm.serialization import ORDERS, coarsen, decode, encode, fit_depth, sample_depths

TRAVERSE = ("xyz", "xzy", "yxz", "yzx", "zxy", "zyx")
UNIT_STEP_ORDERS = ("hilbert", "hilbert-trans") + TRAVERSE


def full_grid(depth):
    side = torch.arange(1 << depth)
    return torch.stack(torch.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)


def test_ten_orders():
    assert len(ORDERS) == 10
    assert set(ORDERS) == {"z", "z-trans", "hilbert", "hilbert-trans", *TRAVERSE}


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(ORDERS), st.integers(1, 21), st.integers(0, 200), st.integers(0, 2**31 - 1))
def test_decode_encode_identity(order, depth, n, seed):
    g = torch.Generator().manual_seed(seed)
    coord = torch.randint(0, 1 << depth, (n, 3), generator=g)
    # the sample index may use every bit left above 3·depth (none at depth 21)
    batch = torch.randint(0, 1 << (63 - 3 * depth), (n,), generator=g)
    code = encode(coord, order, batch, depth)
    assert code.dtype == torch.int64 and code.shape == (n,)
    back, b = decode(code, order, depth)
    assert torch.equal(back, coord) and torch.equal(b, batch)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_bijective_on_full_grid(order, depth):
    code = encode(full_grid(depth), order, depth=depth)
    assert torch.equal(torch.sort(code).values, torch.arange(1 << (3 * depth)))


@pytest.mark.parametrize("order", UNIT_STEP_ORDERS)
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_unit_steps_on_full_grid(order, depth):
    grid = full_grid(depth)
    walk = grid[torch.argsort(encode(grid, order, depth=depth))]
    steps = (walk[1:] - walk[:-1]).abs().sum(1)
    assert bool((steps == 1).all()), f"{order} depth {depth}: max step {int(steps.max())}"


@pytest.mark.parametrize("order", TRAVERSE)
def test_traverse_first_axis_slowest_and_snake(order):
    depth = 3
    grid = full_grid(depth)
    walk = grid[torch.argsort(encode(grid, order, depth=depth))]
    slow, mid, _ = ("xyz".index(c) for c in order)
    side = 1 << depth
    # slowest axis runs 0,0,...,1,1,...: plane by plane
    assert torch.equal(walk[:, slow], torch.arange(side).repeat_interleave(side * side))
    # the middle axis flips direction with the parity of the slow coordinate
    planes = walk[:, mid].view(side, side, side)[:, :, 0]
    assert torch.equal(planes[0], torch.arange(side)) and torch.equal(planes[1], torch.arange(side).flip(0))
    # keys do not collapse onto the first axis: every cell has its own code
    assert torch.unique(encode(grid, order, depth=depth)).numel() == side ** 3


def test_z_order_bit_layout():
    # x is the most significant bit of every level, z the least
    c = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0]])
    assert encode(c, "z", depth=2).tolist() == [4, 2, 1, 32]


@pytest.mark.parametrize("base", ["z", "hilbert"])
@settings(max_examples=20, deadline=None)
@given(st.integers(1, 10), st.integers(0, 2**31 - 1))
def test_trans_is_swapped_axes(base, depth, seed):
    coord = torch.randint(0, 1 << depth, (50, 3), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(encode(coord, base + "-trans", depth=depth),
                       encode(coord[:, [1, 0, 2]], base, depth=depth))


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(ORDERS), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_batch_separation(order, depth, seed):
    g = torch.Generator().manual_seed(seed)
    coord = torch.randint(0, 1 << depth, (300, 3), generator=g)
    batch = torch.randint(0, 5, (300,), generator=g)
    code = encode(coord, order, batch, depth)
    assert torch.equal(code >> (3 * depth), batch)
    sorted_batch = batch[torch.argsort(code)]
    assert bool((sorted_batch[1:] >= sorted_batch[:-1]).all())
    # within a sample the curve part is the same as without batch
    assert torch.equal(code & ((1 << 3 * depth) - 1), encode(coord, order, depth=depth))


@pytest.mark.parametrize("order", ORDERS)
def test_coarsen_is_parent_cell_code(order):
    depth = 5
    g = torch.Generator().manual_seed(1)
    coord = torch.randint(0, 1 << depth, (500, 3), generator=g)
    batch = torch.randint(0, 3, (500,), generator=g)
    code = encode(coord, order, batch, depth)
    for levels in (0, 1, 2, 4):
        parent = coarsen(code, order, depth, levels)
        assert torch.equal(parent, encode(coord >> levels, order, batch, depth - levels))


def test_default_depth_is_the_fewest_that_fit():
    coord = torch.tensor([[0, 5, 2], [7, 1, 0]])
    assert fit_depth(coord) == 3
    assert fit_depth(torch.zeros(0, 3, dtype=torch.long)) == 1
    assert fit_depth(torch.zeros(4, 3, dtype=torch.long)) == 1
    assert torch.equal(encode(coord, "hilbert"), encode(coord, "hilbert", depth=3))


def test_sample_depths_are_each_samples_fit_depth():
    grid = torch.tensor([[0, 5, 2], [7, 1, 0], [1, 0, 0], [0, 0, 0], [40, 3, 9]])
    batch = torch.tensor([0, 0, 1, 2, 3])
    got = sample_depths(grid, batch, 5)  # sample 4 is empty
    assert got.tolist() == [3, 1, 1, 6, 1]
    assert got.tolist() == [fit_depth(grid[batch == s]) for s in range(4)] + [1]
    assert sample_depths(grid).tolist() == [6]
    # exact bit lengths at the powers of two (where a float log2 would round)
    big = torch.tensor([[(1 << 20) - 1, 0, 0], [1 << 20, 0, 0]])
    assert sample_depths(big, torch.tensor([0, 1])).tolist() == [20, 21]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("n", [300, 6000])  # torch, and the numba kernels from 4096 points
def test_per_sample_depth_gives_each_sample_its_own_codes(order, n):
    g = torch.Generator().manual_seed(n)
    batch = torch.randint(0, 3, (n,), generator=g)
    side = torch.tensor([2, 37, 1000])[batch]  # depths 1, 6, 10
    grid = (torch.rand(n, 3, generator=g) * side[:, None]).long()
    depths = sample_depths(grid, batch, 3)
    assert depths.tolist() == [1, 6, 10]
    code = encode(grid, order, batch, depths)
    top = 3 * int(depths.max())
    assert torch.equal(code >> top, batch)
    for s in range(3):
        alone = encode(grid[batch == s], order)  # at the sample's own fit_depth
        assert torch.equal(code[batch == s] & ((1 << top) - 1), alone), s
    if order.startswith("hilbert"):  # the curve depends on the depth: one depth would differ
        assert not torch.equal(encode(grid[batch == 1], order, depth=10),
                               encode(grid[batch == 1], order))


def test_per_sample_depth_of_equal_depths_is_the_int_depth():
    grid = torch.randint(0, 50, (200, 3), generator=torch.Generator().manual_seed(3))
    batch = torch.arange(200) % 2
    depths = sample_depths(grid, batch, 2)
    for order in ORDERS:
        assert torch.equal(encode(grid, order, batch, depths), encode(grid, order, batch))


def test_per_sample_depth_errors():
    grid = torch.tensor([[0, 5, 2], [7, 1, 0]])
    batch = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"depth: expected an int or a \(S,\) tensor with S >= 2"):
        encode(grid, "hilbert", batch, torch.tensor([3]))
    with pytest.raises(ValueError, match=r"depth: expected per-sample depths in \[1, 21\], got 0..3"):
        encode(grid, "hilbert", batch, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"grid_coord: expected the coordinates of sample s < 2\^depth\[s\]"):
        encode(grid, "hilbert", batch, torch.tensor([2, 3]))


def test_63_bit_limit():
    coord = torch.tensor([[(1 << 21) - 1, 0, 0]])
    assert encode(coord, "z", depth=21).item() == 0b100 * sum(8 ** k for k in range(21))
    with pytest.raises(ValueError, match=r"3\*21 \+ 1 = 64 bits, expected at most 63"):
        encode(coord, "z", torch.tensor([1]), depth=21)
    with pytest.raises(ValueError, match=r"3\*22 \+ 0 = 66 bits, expected at most 63"):
        encode(coord, "z", depth=22)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: encode(torch.zeros(2, 3, dtype=torch.long), "peano"), ValueError,
     r"order: expected one of .*'hilbert'.*got 'peano'"),
    (lambda: encode(torch.zeros(2, 3), "z"), ValueError,
     r"grid_coord: expected an integer tensor, got dtype torch.float32"),
    (lambda: encode(torch.tensor([[0, -3, 1]]), "z"), ValueError,
     r"grid_coord: expected non-negative coordinates, got min -3"),
    (lambda: encode(torch.tensor([[0, 8, 1]]), "z", depth=3), ValueError,
     r"grid_coord: expected coordinates < 2\^depth = 8, got max 8"),
    (lambda: encode(torch.zeros(2, 2, dtype=torch.long), "z"), ValueError,
     r"grid_coord: expected shape \(N, 3\), got \(2, 2\)"),
    (lambda: encode(torch.zeros(2, 3, dtype=torch.long), "z", torch.tensor([0, -1])), ValueError,
     r"batch: expected non-negative sample indices, got min -1"),
    (lambda: encode(torch.zeros(2, 3, dtype=torch.long), "z", torch.tensor([0])), ValueError,
     r"batch: expected shape \(2,\), got \(1,\)"),
    (lambda: encode(torch.zeros(2, 3, dtype=torch.long), "z", torch.zeros(2)), ValueError,
     r"batch: expected an integer tensor, got dtype torch.float32"),
    (lambda: encode(torch.zeros(2, 3, dtype=torch.long), "z", depth=0), ValueError,
     r"depth: expected a positive int, got 0"),
    (lambda: encode([[0, 0, 0]], "z"), TypeError, r"grid_coord: expected a torch.Tensor, got list"),
    (lambda: decode(torch.tensor([1]), "z", 22), ValueError, r"depth: expected an int in \[1, 21\], got 22"),
    (lambda: decode(torch.tensor([-1]), "z", 2), ValueError, r"code: expected non-negative codes, got min -1"),
    (lambda: decode(torch.tensor([1.0]), "z", 2), ValueError, r"code: expected an integer tensor"),
    (lambda: decode(torch.tensor([[1]]), "z", 2), ValueError, r"code: expected shape \(N,\), got \(1, 1\)"),
    (lambda: coarsen(torch.tensor([1]), "z", 3, 3), ValueError, r"levels: expected an int in \[0, depth=3\), got 3"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_empty_input():
    code = encode(torch.zeros(0, 3, dtype=torch.long), "hilbert")
    assert code.shape == (0,)
    coord, batch = decode(code, "hilbert", 1)
    assert coord.shape == (0, 3) and batch.shape == (0,)


def test_per_sample_depths_put_the_sample_bits_above_the_largest_depth():
    """``encode``'s docstring: the sample bits sit above ``3 * depth.max()``, also where the
    deepest sample has no point."""
    g = torch.tensor([[1, 0, 1]])
    code = encode(g, "z", torch.tensor([1]), torch.tensor([5, 2]))
    assert int(code) >> 15 == 1 and int(code) & ((1 << 15) - 1) == int(encode(g, "z", depth=2))


def test_sample_depths_refuse_misshapen_input_naming_the_argument():
    from geossm.serialization import sample_depths
    with pytest.raises(ValueError, match=r"grid_coord: expected shape \(N, 3\), got \(4,\)"):
        sample_depths(torch.arange(4))
    with pytest.raises(ValueError, match=r"batch: expected shape \(2,\), got \(3,\)"):
        sample_depths(torch.zeros((2, 3), dtype=torch.long), torch.zeros(3, dtype=torch.long))
