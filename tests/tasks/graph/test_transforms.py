import pytest
import torch
from torch_geometric.data import Data

from geossm.tasks.graph.transforms import add_positional_encodings, batched_positional_encodings


def test_positional_encodings_small_graph():
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    from torch_geometric.data import Data
    g = add_positional_encodings(Data(edge_index=ei, num_nodes=3), laplacian=4, random_walk=3,
                                 degree=True)
    assert g.pe.shape == (3, 8)
    assert torch.allclose(g.pe[:, 2:4], torch.zeros(3, 2))  # only 2 non-trivial eigenvectors
    with pytest.raises(ValueError, match="pe.laplacian: expected an int >= 0, got -1"):
        add_positional_encodings(Data(edge_index=ei, num_nodes=3), laplacian=-1)


def test_batched_encodings_match_pyg_per_graph():
    # Graphs of mixed sizes (one smaller than k + 1, one with an isolated node), padded
    # together in one chunk and in several.
    gen = torch.Generator().manual_seed(0)
    graphs = []
    for n in (3, 7, 12, 12, 20):
        src = torch.randint(0, n - 1, (2 * n,), generator=gen)
        dst = torch.randint(0, n - 1, (2 * n,), generator=gen)
        keep = src != dst
        ei = torch.stack([torch.cat([src[keep], dst[keep]]), torch.cat([dst[keep], src[keep]])])
        graphs.append((torch.unique(ei, dim=1), n))  # node n - 1 stays isolated
    edge_index = torch.cat([e for e, _ in graphs], 1)
    num_nodes = torch.tensor([n for _, n in graphs])
    num_edges = torch.tensor([e.shape[1] for e, _ in graphs])
    k = 4
    for chunk in (1 << 20, 200):
        pe = batched_positional_encodings(edge_index, num_nodes, num_edges, laplacian=k,
                                          random_walk=5, degree=True, chunk_nodes=chunk)
        start = 0
        for e, n in graphs:
            mine = pe[start:start + n]
            start += n
            ref = add_positional_encodings(Data(edge_index=e, num_nodes=n), random_walk=5,
                                           degree=True).pe
            assert torch.allclose(mine[:, k:], ref, atol=1e-5)
            # Eigenvectors are defined up to sign / rotation: check L v = lambda v with the
            # eigenvalues 2..k+1 of the symmetric normalised Laplacian, unit norm.
            adj = torch.zeros(n, n, dtype=torch.float64)
            adj[e[0], e[1]] = 1.0
            deg = adj.sum(1)
            dinv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
            lap = torch.eye(n, dtype=torch.float64) - dinv[:, None] * adj * dinv[None, :]
            expected = torch.linalg.eigvalsh(lap)[1:k + 1]
            vec = mine[:, :k].double()[:, :len(expected)]
            lam = (vec * (lap @ vec)).sum(0)
            assert torch.allclose(lam, expected, atol=1e-4)
            assert torch.allclose(lap @ vec, vec * lam, atol=1e-4)
            assert torch.allclose(vec.norm(dim=0), torch.ones(len(expected), dtype=torch.float64),
                                  atol=1e-4)
            if n - 1 < k:
                assert torch.all(mine[:, n - 1:k] == 0)
