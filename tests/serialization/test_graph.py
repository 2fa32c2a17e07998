import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geossm.serialization import (Serialization, degree_order, dfs_order, index_order,
                                  random_walk_tokens,
                                  random_walks, to_csr)


def _random_graph(n, p, seed, undirected=True):
    g = torch.Generator().manual_seed(seed)
    adj = torch.rand(n, n, generator=g) < p
    adj.fill_diagonal_(False)
    if undirected:
        adj = adj | adj.T
    return adj.nonzero().T.contiguous()


def _neighbours(edge_index, n):
    nb = [[] for _ in range(n)]
    for s, d in edge_index.T.tolist():
        nb[s].append(d)
    return [sorted(x) for x in nb]


def test_to_csr():
    ei = torch.tensor([[2, 0, 0, 1], [1, 2, 1, 0]])
    rowptr, col = to_csr(ei, 4)
    assert rowptr.tolist() == [0, 2, 3, 4, 4]
    assert col.tolist() == [1, 2, 0, 1]


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 12), st.floats(0.0, 0.6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_random_walks_match_brute_force(n, p, length, seed):
    ei = _random_graph(n, p, seed, undirected=False)
    rowptr, col = to_csr(ei, n)
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, n, (30,), generator=g)
    u = torch.rand(30, length, generator=g, dtype=torch.float64)
    walk = random_walks(rowptr, col, start, length, u=u)
    nb = _neighbours(ei, n)
    for w in range(30):
        cur = int(start[w])
        ref = [cur]
        for i in range(length):
            if nb[cur]:
                cur = nb[cur][int(float(u[w, i]) * len(nb[cur]))]
            ref.append(cur)
        assert walk[w].tolist() == ref


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 10), st.floats(0.0, 0.7), st.integers(1, 4), st.integers(1, 3),
       st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_token_membership_matches_brute_force(n, p, m, big_m, s, seed):
    ei = _random_graph(n, p, seed)
    gen = torch.Generator().manual_seed(seed)
    tok = random_walk_tokens(ei, n, m, big_m, s, generator=gen, return_walks=True)
    per = m * s + 1
    assert tok.num_tokens == n * per
    assert tok.cu_seqlens.dtype == torch.int32
    assert tok.cu_seqlens.tolist() == [v * per for v in range(n + 1)]
    nb = _neighbours(ei, n)
    adj = {(a, b) for a, b in ei.T.tolist()}
    for v in range(n):
        for j in range(per):
            k = v * per + j
            members = tok.index[tok.ptr[k]:tok.ptr[k + 1]].tolist()
            assert tok.center[k] == v
            assert (tok.token[tok.ptr[k]:tok.ptr[k + 1]] == k).all()
            if j == per - 1:
                assert members == [v] and tok.length[k] == 0
                continue
            b, r = divmod(j, s)
            steps = m - b
            assert tok.length[k] == steps
            walks = tok.walks[v, b, r, :, : steps + 1]
            for w in walks.tolist():
                assert w[0] == v
                for a, c in zip(w[:-1], w[1:]):
                    assert (a, c) in adj or (a == c and not nb[a])
            assert members == sorted(set(walks.reshape(-1).tolist()))


def test_tokens_on_a_directed_cycle_are_deterministic():
    n = 7
    ei = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
    tok = random_walk_tokens(ei, n, walk_length=3, num_walks=2, repeats=2)
    per = 3 * 2 + 1
    for v in range(n):
        seq = [sorted(tok.index[tok.ptr[k]:tok.ptr[k + 1]].tolist()) for k in range(v * per, (v + 1) * per)]
        expected = [sorted({(v + i) % n for i in range(mh + 1)}) for mh in (3, 3, 2, 2, 1, 1, 0)]
        assert seq == expected
    # largest neighbourhood first, the node itself last
    assert tok.length[:per].tolist() == [3, 3, 2, 2, 1, 1, 0]


def test_aggregate_matches_pyg_scatter():
    pyg_utils = pytest.importorskip("torch_geometric.utils", reason="torch_geometric is not installed")
    ei = _random_graph(30, 0.15, 0)
    tok = random_walk_tokens(ei, 30, 3, 3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(30, 5)
    for reduce in ("mean", "sum", "max", "min"):
        ref = pyg_utils.scatter(x[tok.index], tok.token, 0, dim_size=tok.num_tokens, reduce=reduce)
        assert torch.allclose(tok.aggregate(x, reduce), ref, atol=1e-6)
    s = tok.serialization()
    Serialization(s.order, s.inverse, s.cu_seqlens, s.extras)
    with pytest.raises(ValueError, match=r"reduce: expected 'mean', 'sum', 'max' or 'min', got 'prod'"):
        tok.aggregate(x, "prod")
    with pytest.raises(ValueError, match=r"x: expected shape \(30, \.\.\.\), got \(3, 5\)"):
        tok.aggregate(x[:3])


def test_isolated_nodes_and_empty_graph():
    tok = random_walk_tokens(torch.zeros(2, 0, dtype=torch.long), 3, 2, 2)
    assert all(tok.index[tok.ptr[k]:tok.ptr[k + 1]].tolist() == [int(tok.center[k])]
               for k in range(tok.num_tokens))
    empty = random_walk_tokens(torch.zeros(2, 0, dtype=torch.long), 0, 2, 2)
    assert empty.num_tokens == 0 and empty.cu_seqlens.tolist() == [0]


def test_generator_reproducible():
    ei = _random_graph(20, 0.2, 4)
    a = random_walk_tokens(ei, 20, 3, 2, generator=torch.Generator().manual_seed(5))
    b = random_walk_tokens(ei, 20, 3, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.index, b.index) and torch.equal(a.ptr, b.ptr)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: random_walk_tokens(torch.tensor([[0], [5]]), 3, 2, 2), ValueError,
     r"edge_index: expected node ids in \[0, num_nodes=3\), got \[0, 5\]"),
    (lambda: random_walk_tokens(torch.zeros(3, 2, dtype=torch.long), 3, 2, 2), ValueError,
     r"edge_index: expected shape \(2, E\), got \(3, 2\)"),
    (lambda: random_walk_tokens(torch.zeros(2, 2), 3, 2, 2), ValueError,
     r"edge_index: expected an integer tensor, got dtype torch.float32"),
    (lambda: random_walk_tokens([[0], [1]], 3, 2, 2), TypeError, r"edge_index: expected a torch.Tensor, got list"),
    (lambda: random_walk_tokens(torch.zeros(2, 0, dtype=torch.long), -1, 2, 2), ValueError,
     r"num_nodes: expected a non-negative int, got -1"),
    (lambda: random_walk_tokens(torch.zeros(2, 0, dtype=torch.long), 3, 0, 2), ValueError,
     r"walk_length: expected a positive int, got 0"),
    (lambda: random_walk_tokens(torch.zeros(2, 0, dtype=torch.long), 3, 2, 2, repeats=1.5), ValueError,
     r"repeats: expected a positive int, got 1.5"),
    (lambda: degree_order(torch.zeros(2, 0, dtype=torch.long), 3, batch=torch.zeros(2, dtype=torch.long)),
     ValueError, r"batch: expected shape \(3,\), got \(2,\)"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 4), st.booleans(), st.integers(0, 2**31 - 1))
def test_degree_order(n, graphs, noise, seed):
    ei = _random_graph(n, 0.2, seed)
    g = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, graphs, (n,), generator=g)
    s = degree_order(ei, n, batch, noise=noise, generator=g)
    s = Serialization(s.order, s.inverse, s.cu_seqlens, s.extras)
    deg = torch.bincount(ei[0], minlength=n)
    assert torch.equal(s.extras["degree"], deg)
    assert torch.equal(s.seqlens.long(), torch.bincount(batch, minlength=int(batch.max()) + 1))
    seg = s.segment_ids()
    assert torch.equal(batch[s.order], seg)
    d = deg[s.order]
    same_graph = seg[1:] == seg[:-1]
    assert bool((d[1:][same_graph] >= d[:-1][same_graph]).all())
    if not noise:
        ties = same_graph & (d[1:] == d[:-1])
        assert bool((s.order[1:][ties] > s.order[:-1][ties]).all())


def test_degree_order_noise_breaks_ties_randomly():
    n = 12  # a cycle: every node has degree 2
    ei = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
    ei = torch.cat([ei, ei.flip(0)], 1)
    orders = {tuple(degree_order(ei, n, generator=torch.Generator().manual_seed(k)).order.tolist())
              for k in range(5)}
    assert len(orders) > 1
    assert degree_order(ei, n, noise=False).order.tolist() == list(range(n))
    assert degree_order(ei, n).cu_seqlens.tolist() == [0, n]


@pytest.mark.parametrize("sorted_batch", [True, False])
def test_index_order_keeps_node_ids_ascending_per_graph(sorted_batch):
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 4, (30,), generator=g)
    batch = torch.sort(batch).values if sorted_batch else batch
    s = index_order(30, batch, 5)  # graph 4 is empty: an empty segment
    s = Serialization(s.order, s.inverse, s.cu_seqlens, s.extras)  # validates the structure
    assert torch.equal(s.seqlens.long(), torch.bincount(batch, minlength=5))
    seg = s.segment_ids()
    assert torch.equal(batch[s.order], seg)
    same = seg[1:] == seg[:-1]
    assert bool((s.order[1:][same] > s.order[:-1][same]).all())
    if sorted_batch:
        assert torch.equal(s.order, torch.arange(30))
    assert index_order(4).order.tolist() == [0, 1, 2, 3]
    assert index_order(4).cu_seqlens.tolist() == [0, 4]


def test_index_order_rejects_bad_input():
    with pytest.raises(ValueError, match="num_nodes: expected a non-negative int"):
        index_order(-1)
    with pytest.raises(ValueError, match=r"batch: expected shape \(3,\)"):
        index_order(3, torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="batch: expected a torch.Tensor"):
        index_order(3, [0, 0, 0])


def _is_dfs_preorder(order: list[int], edges: set[tuple[int, int]]) -> bool:
    """Whether ``order`` (one connected graph) is a depth-first preorder: every node after
    the first is a neighbour of a node still on the search path (the path is the prefix's
    nodes whose neighbours are not all visited yet, deepest last)."""
    path = [order[0]]
    nbrs: dict[int, set[int]] = {}
    for a, b in edges:
        nbrs.setdefault(a, set()).add(b)
    seen = {order[0]}
    for v in order[1:]:
        while path and v not in nbrs.get(path[-1], set()):
            if not nbrs.get(path[-1], set()) <= seen:
                return False  # backtracked from a node with an unvisited neighbour
            path.pop()
        if not path:
            return False
        seen.add(v)
        path.append(v)
    return True


def test_dfs_order_with_id_keys_is_the_id_ordered_preorder_per_graph():
    # graph 0: the tree 0-1, 0-3, 1-2 (preorder 0, 1, 2, 3); graph 1: the path 4-6-5
    und = [(0, 1), (0, 3), (1, 2), (4, 6), (6, 5)]
    ei = torch.tensor(und + [(b, a) for a, b in und]).T
    s = dfs_order(ei, 7, torch.tensor([0, 0, 0, 0, 1, 1, 1]))
    s = Serialization(s.order, s.inverse, s.cu_seqlens, s.extras)
    assert s.order.tolist() == [0, 1, 2, 3, 4, 6, 5]
    assert s.cu_seqlens.tolist() == [0, 4, 7]
    # two components in one graph: the second search starts at its smallest id
    assert dfs_order(ei, 7).order.tolist() == [0, 1, 2, 3, 4, 6, 5]
    tree = {e for e in map(tuple, ei.T.tolist()) if max(e) < 4}
    assert _is_dfs_preorder([0, 1, 2, 3], tree) and not _is_dfs_preorder([0, 1, 3, 2], tree)


@pytest.mark.parametrize("seed", range(4))
def test_dfs_order_with_noise_is_a_random_valid_traversal(seed):
    n = 20
    a = torch.arange(n - 1)
    g = torch.Generator().manual_seed(seed)
    chords = torch.randint(0, n, (2, 5), generator=g)
    ei = torch.cat([torch.stack([a, a + 1]), chords], 1)
    ei = torch.cat([ei, ei.flip(0)], 1)
    ei = ei[:, ei[0] != ei[1]]
    edges = {tuple(e) for e in ei.T.tolist()}
    orders = [dfs_order(ei, n, noise=True, generator=torch.Generator().manual_seed(seed * 10 + k))
              .order.tolist() for k in range(3)]
    for order in orders:
        assert sorted(order) == list(range(n)) and _is_dfs_preorder(order, edges)
    assert len({tuple(o) for o in orders}) > 1
    assert _is_dfs_preorder(dfs_order(ei, n).order.tolist(), edges)


def test_dfs_order_of_a_smiles_molecule_is_its_atom_order():
    smiles2graph = pytest.importorskip("ogb.utils", reason="needs ogb + rdkit (the molecules "
                                       "extra) to read SMILES").smiles2graph
    g = smiles2graph("CC(C)C[C@H](NC(=O)[C@@H](N)Cc1ccccc1)C(=O)NCC(=O)O")  # Phe-Leu-Gly
    ei, n = torch.as_tensor(g["edge_index"]), int(g["num_nodes"])
    assert dfs_order(ei, n).order.tolist() == list(range(n))
    assert degree_order(ei, n, noise=False).order.tolist() != list(range(n))


def test_dfs_order_rejects_bad_input():
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"batch: expected shape \(2,\)"):
        dfs_order(ei, 2, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="edge_index"):
        dfs_order(torch.tensor([[0, 5], [5, 0]]), 2)
