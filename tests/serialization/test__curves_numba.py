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


def test_public_encode_uses_the_same_codes_for_large_inputs():
    coord = torch.randint(0, 1 << 10, (10000, 3), generator=torch.Generator().manual_seed(0))
    big = curves.encode(coord, "hilbert", depth=10)
    small = torch.cat([curves.encode(c, "hilbert", depth=10) for c in coord.split(1000)])
    assert torch.equal(big, small)
    back, _ = curves.decode(big, "hilbert", 10)
    assert torch.equal(back, coord)
