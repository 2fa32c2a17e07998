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


def _multigraph(n: int, e: int, seed: int) -> torch.Tensor:
    """Random directed edges with repeats and self-loops (the kernels' corner cases)."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    return torch.cat([ei, ei[:, :50], torch.arange(5).repeat(2, 1)], 1)


def test_numba_token_members_and_induced_edges_match_the_torch_path(monkeypatch):
    from geossm.tasks.graph.models import induced_token_edges
    n, ei = 2000, _multigraph(2000, 6000, 1)
    g = torch.Generator().manual_seed(2)
    big = graph.random_walk_tokens(ei, n, 3, 4, generator=g)  # 8000 token rows: numba
    assert big.index.numel() >= graph.NUMBA_MIN_ROWS
    fast_edges = induced_token_edges(big, ei, n)
    monkeypatch.setattr(graph, "NUMBA_MIN_ROWS", 10 ** 9)  # the torch path everywhere
    import geossm.tasks.graph.models as models
    monkeypatch.setattr(models, "NUMBA_MIN_ROWS", 10 ** 9)
    ref = graph.random_walk_tokens(ei, n, 3, 4, generator=torch.Generator().manual_seed(2))
    for name in ("ptr", "index", "token", "center", "length", "cu_seqlens"):
        assert torch.equal(getattr(big, name), getattr(ref, name)), name
    ref_edges = induced_token_edges(ref, ei, n)
    assert torch.equal(fast_edges[0], ref_edges[0]) and torch.equal(fast_edges[1], ref_edges[1])
    assert fast_edges[0].shape[1] > 1000


def test_unique_rows_drops_padding_and_repeats():
    visited = torch.tensor([[3, 1, 3, 9, 9], [9, 9, 9, 9, 9], [0, 2, 1, 0, 2]])
    members, counts = numba_walks.unique_rows(visited.numpy(), 9)
    assert members.tolist() == [1, 3, 0, 1, 2] and counts.tolist() == [2, 0, 3]
