import pytest
import torch

from geossm.serialization import curves

numba_kernels = pytest.importorskip("geossm.serialization._curves_numba",
                                    reason="numba is not installed")


@pytest.mark.parametrize("depth", [1, 2, 7, 16, 21])
def test_numba_hilbert_matches_torch(depth):
    g = torch.Generator().manual_seed(depth)
    coord = torch.randint(0, 1 << depth, (5000, 3), generator=g)
    ref = curves._hilbert_encode_torch(coord, depth)
    got = torch.from_numpy(numba_kernels.hilbert_encode(coord.numpy(), depth))
    assert torch.equal(got, ref)
    back = torch.from_numpy(numba_kernels.hilbert_decode(ref.numpy(), depth))
    assert torch.equal(back, coord)
    assert torch.equal(curves._hilbert_decode_torch(ref, depth), coord)


@pytest.mark.parametrize("order", curves.ORDERS)
def test_public_encode_uses_the_same_codes_for_large_inputs(order):
    coord = torch.randint(0, 1 << 10, (10000, 3), generator=torch.Generator().manual_seed(0))
    big = curves.encode(coord, order, depth=10)
    small = torch.cat([curves.encode(c, order, depth=10) for c in coord.split(1000)])
    assert torch.equal(big, small)
    back, _ = curves.decode(big, order, 10)
    assert torch.equal(back, coord)


@pytest.mark.parametrize("depth", [1, 5, 21])
def test_numba_morton_and_traverse_match_torch(depth):
    coord = torch.randint(0, 1 << depth, (5000, 3), generator=torch.Generator().manual_seed(depth))
    ref = curves._interleave(coord[:, 0], coord[:, 1], coord[:, 2])
    assert torch.equal(torch.from_numpy(numba_kernels.morton_encode(coord.numpy(), depth)), ref)
    for order, axes in curves._TRAVERSE_AXES.items():
        ref = curves._traverse_encode(coord, axes, depth)
        got = torch.from_numpy(numba_kernels.traverse_encode(coord.numpy(), *axes, depth))
        assert torch.equal(got, ref), order


def test_numba_per_point_depth_kernels_match_torch():
    g = torch.Generator().manual_seed(5)
    depths = torch.randint(1, 12, (5000,), generator=g)
    coord = (torch.rand(5000, 3, generator=g) * (1 << depths)[:, None]).long()
    ref = curves._hilbert_encode_torch(coord, 11, depths)
    got = torch.from_numpy(numba_kernels.hilbert_encode_depths(coord.numpy(), depths.numpy()))
    assert torch.equal(got, ref)
    for d in (1, 4, 11):  # every point at its own depth: its code at that depth
        sel = depths == d
        assert torch.equal(ref[sel], curves._hilbert_encode_torch(coord[sel], d))
    for order, axes in curves._TRAVERSE_AXES.items():
        ref = curves._traverse_encode(coord, axes, depths)
        got = numba_kernels.traverse_encode_depths(coord.numpy(), *axes, depths.numpy())
        assert torch.equal(torch.from_numpy(got), ref), order
