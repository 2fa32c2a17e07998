import pytest
import torch

from geossm.serialization import graph

numba_walks = pytest.importorskip("geossm.serialization._graph_numba", reason="numba is not installed")


def test_numba_walks_match_torch_rule():
    g = torch.Generator().manual_seed(0)
    n = 300
    src = torch.randint(0, n, (900,), generator=g)
    dst = torch.randint(0, n, (900,), generator=g)
    rowptr, col = graph.to_csr(torch.stack([src, dst]), n)  # directed: some nodes are sinks
    start = torch.randint(0, n, (5000,), generator=g)
    u = torch.rand(5000, 6, generator=g, dtype=torch.float64)
    u[0] = 1.0 - 2.0 ** -53  # the largest uniform still picks the last neighbour
    got = torch.from_numpy(numba_walks.walks(rowptr.numpy(), col.numpy(), start.numpy(), u.numpy()))
    ref = graph.random_walks(rowptr, col, start[:4000], 6, u=u[:4000])  # < 4096: torch path
    assert torch.equal(got[:4000], ref)
    assert torch.equal(graph.random_walks(rowptr, col, start, 6, u=u), got)
