"""Graph serializations: random-walk neighbourhood tokens (Graph Mamba Networks) and degree
ordering (Graph-Mamba).

Graph Mamba Networks (Behrouz & Hashemi, KDD 2024) turn every node ``v`` into a sequence of
tokens: for each walk length ``m̂ = 1..m`` they sample ``M`` random walks of length ``m̂`` from
``v`` and take the set of visited nodes (the induced subgraph) as a token; tokens run from the
largest neighbourhood to ``v`` itself, so the SSM reads the node last. Graph-Mamba (Wang et al.,
2024) instead orders the nodes of every graph by degree with random tie-breaking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from geossm.packed import batch_to_cu_seqlens, check_int32_tokens, dense_cu_seqlens

from .structure import Serialization, _check_integer, _invert, _unchecked

__all__ = ["NeighbourhoodTokens", "random_walk_tokens", "degree_order", "index_order", "dfs_order",
           "to_csr", "random_walks"]


def _check_graph(edge_index, num_nodes) -> None:
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
        raise ValueError(f"num_nodes: expected a non-negative int, got {num_nodes!r}")
    _check_integer("edge_index", edge_index)
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index: expected shape (2, E), got {tuple(edge_index.shape)}")
    if edge_index.numel():
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= num_nodes:
            raise ValueError(
                f"edge_index: expected node ids in [0, num_nodes={num_nodes}), got [{lo}, {hi}]"
            )


def to_csr(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Out-neighbour lists: ``(rowptr (n+1,) long, col (E,) long)``, neighbours sorted by id.

    Edges go ``edge_index[0] -> edge_index[1]``; store both directions for undirected graphs
    (PyG's convention).
    """
    _check_graph(edge_index, num_nodes)
    return _csr(edge_index[0].long(), edge_index[1].long(), num_nodes)


def _csr(src: Tensor, dst: Tensor, num_nodes: int,
         rank: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``to_csr`` of checked long edges; neighbours in ascending ``rank[dst]`` (``(n,)``
    distinct ranks, default the ids)."""
    perm = torch.sort(src * num_nodes + (dst if rank is None else rank[dst]), stable=True).indices
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=src.device)
    rowptr[1:] = torch.cumsum(torch.bincount(src, minlength=num_nodes), 0)
    return rowptr, dst[perm]


_NUMBA: list = []
#: CPU inputs from this many walks / token rows / memberships on run the numba kernels.
NUMBA_MIN_ROWS = 4096


def numba_kernels():
    """The numba kernel module ``_graph_numba`` (compiled on first use), or None without
    numba."""
    if not _NUMBA:
        try:
            from . import _graph_numba as kernels
        except ImportError:
            kernels = None
        _NUMBA.append(kernels)
    return _NUMBA[0]


def random_walks(rowptr: Tensor, col: Tensor, start: Tensor, length: int,
                 generator: torch.Generator | None = None, u: Tensor | None = None) -> Tensor:
    """Uniform random walks, all advanced together (vectorised torch, CPU or CUDA).

    ``walk[:, 0] = start``; ``walk[:, i+1] = col[rowptr[c] + floor(u[:, i] · deg(c))]`` for the
    current node ``c``; a node without out-neighbours stays where it is. CPU inputs of 4096
    walks or more run a numba kernel with the same rule and the same uniforms.

    Args:
        rowptr, col: CSR from ``to_csr``.
        start: ``(W,)`` start nodes.
        length: number of steps.
        generator: torch generator for the uniforms (on ``start``'s device).
        u: ``(W, length)`` uniforms in [0, 1) to use instead of drawing (for tests).

    Returns:
        ``walk: (W, length + 1) long``.

    Raises ``TypeError``/``ValueError`` naming the argument for non-tensors, non-integer CSR
    or start nodes, wrong ranks or devices, start nodes outside ``[0, n)``, a negative
    ``length`` or ``u`` not shaped ``(W, length)``. One host sync for the range check.
    """
    _check_walk_inputs(rowptr, col, start, length, u)
    return _random_walks(rowptr, col, start, length, generator, u)


def _check_walk_inputs(rowptr, col, start, length, u) -> None:
    for name, t in (("rowptr", rowptr), ("col", col), ("start", start)):
        _check_integer(name, t, ndim=1)
        if t.device != start.device:
            raise ValueError(f"{name}: expected device {start.device} (that of start), "
                             f"got {t.device}")
    if rowptr.numel() < 1:
        raise ValueError("rowptr: expected shape (n+1,) with n >= 0, got shape (0,)")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"length: expected a non-negative int, got {length!r}")
    n = rowptr.numel() - 1
    if start.numel():
        lo, hi = int(start.min()), int(start.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"start: expected node ids in [0, n={n}), got [{lo}, {hi}]")
    if u is not None:
        if not isinstance(u, Tensor) or tuple(u.shape) != (start.numel(), length):
            got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
            raise ValueError(f"u: expected shape (W, length) = ({start.numel()}, {length}), "
                             f"got {got}")


def _random_walks(rowptr: Tensor, col: Tensor, start: Tensor, length: int,
                  generator: torch.Generator | None = None, u: Tensor | None = None) -> Tensor:
    """``random_walks`` without the input checks (callers pass a valid CSR and start nodes)."""
    w = start.numel()
    if u is None:
        u = torch.rand((w, length), generator=generator, device=start.device, dtype=torch.float64)
    if start.device.type == "cpu" and w >= NUMBA_MIN_ROWS:
        kernels = numba_kernels()
        if kernels is not None:
            return torch.from_numpy(kernels.walks(rowptr.long().numpy(), col.long().numpy(),
                                                  start.long().contiguous().numpy(),
                                                  u.to(torch.float64).contiguous().numpy()))
    out = torch.empty((w, length + 1), dtype=torch.long, device=start.device)
    col_ext = torch.cat([col.long(), col.new_zeros(1, dtype=torch.long)])
    cur = start.long()
    out[:, 0] = cur
    for i in range(length):
        lo = rowptr[cur]
        deg = rowptr[cur + 1] - lo
        # float rounding can make u·deg == deg; clamp keeps the pick inside the list.
        pick = torch.minimum((u[:, i] * deg).long(), (deg - 1).clamp_min(0))
        # col_ext's last entry is a dummy read by nodes without neighbours (then discarded).
        cur = torch.where(deg > 0, col_ext[lo + pick], cur)
        out[:, i + 1] = cur
    return out


# eq=False: fields are tensors, so equality is identity (no ambiguous tensor bools).
@dataclass(frozen=True, eq=False)
class NeighbourhoodTokens:
    """Random-walk neighbourhood tokens of every node, packed node by node.

    ``K = n·(m·s + 1)`` tokens; node ``v`` owns tokens ``v·(m·s+1) ... (v+1)·(m·s+1) - 1``:
    ``s`` tokens of walk length ``m``, then ``s`` of length ``m-1``, ..., ``s`` of length 1, and
    last the node itself (length 0).

    Shapes::

        ptr:        (K+1,) long   CSR row pointer: members of token k are index[ptr[k]:ptr[k+1]]
        index:      (nnz,) long   member node ids (sorted within a token)
        token:      (nnz,) long   token of every member (PyG ``scatter(x[index], token, ...)``)
        center:     (K,)   long   node whose sequence holds the token
        length:     (K,)   long   walk length m̂ of the token (0 = the node itself)
        cu_seqlens: (n+1,) int32  token sequences per node (all of length m·s + 1)
        walks:      (n, m, s, M, m+1) long or None: the sampled walks (``return_walks=True``);
                    walks of length m̂ = m - b are ``walks[:, b, :, :, :m̂+1]``
    """

    ptr: Tensor
    index: Tensor
    token: Tensor
    center: Tensor
    length: Tensor
    cu_seqlens: Tensor
    num_nodes: int
    walks: Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.center.numel()

    def aggregate(self, x: Tensor, reduce: str = "mean") -> Tensor:
        """Token features from node features: ``(n, *F) -> (K, *F)``, reduced over members.

        ``reduce`` in ``"mean"``, ``"sum"``, ``"max"``, ``"min"`` (torch ``scatter_reduce``;
        equal to ``torch_geometric.utils.scatter(x[index], token, 0, K, reduce)``).
        """
        if reduce not in ("mean", "sum", "max", "min"):
            raise ValueError(f"reduce: expected 'mean', 'sum', 'max' or 'min', got {reduce!r}")
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] != self.num_nodes:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape ({self.num_nodes}, ...), got {got}")
        src = x.index_select(0, self.index)
        idx = self.token.view(-1, *([1] * (x.dim() - 1))).expand_as(src)
        out = x.new_zeros((self.num_tokens, *x.shape[1:]))
        name = {"mean": "mean", "sum": "sum", "max": "amax", "min": "amin"}[reduce]
        return out.scatter_reduce(0, idx, src, name, include_self=False)

    def serialization(self) -> Serialization:
        """The tokens as packed sequences (identity order, one segment per node)."""
        ident = torch.arange(self.num_tokens, device=self.center.device)
        return _unchecked(ident, ident.clone(), self.cu_seqlens,
                          {"center": self.center, "length": self.length})


def random_walk_tokens(edge_index: Tensor, num_nodes: int, walk_length: int, num_walks: int,
                       repeats: int = 1, generator: torch.Generator | None = None,
                       return_walks: bool = False) -> NeighbourhoodTokens:
    """Graph Mamba Networks' neighbourhood tokens from uniform random walks.

    For node ``v``, walk length ``m̂ in 1..m`` and repeat ``r in 1..s``: sample ``M`` walks of
    ``m̂`` steps from ``v``; the token is the set of nodes they visit (``v`` included). The
    ``s`` repeats of one length are i.i.d., so their order is already a uniform shuffle. The
    sequence of ``v`` is ``[T_m^(1..s), ..., T_1^(1..s), {v}]`` (length ``m·s + 1``).

    Args:
        edge_index: ``(2, E)`` edges ``src -> dst`` (both directions for undirected graphs).
        num_nodes: ``n``.
        walk_length: ``m >= 1``.
        num_walks: ``M >= 1`` walks per token.
        repeats: ``s >= 1`` tokens per walk length, default 1.
        generator: torch generator on ``edge_index``'s device, default None (global RNG).
        return_walks: keep the sampled walks in the result, default False.

    Returns:
        ``NeighbourhoodTokens``. Host syncs: input checks and the deduplication size.
    """
    _check_graph(edge_index, num_nodes)
    for name, v in (("walk_length", walk_length), ("num_walks", num_walks), ("repeats", repeats)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    n, m, big_m, s = num_nodes, walk_length, num_walks, repeats
    dev = edge_index.device
    per = m * s + 1
    k = n * per
    check_int32_tokens(k, "random_walk_tokens")  # before any (n, per, ...) allocation
    rowptr, col = to_csr(edge_index, n)
    nodes = torch.arange(n, device=dev)
    width = big_m * (m + 1)
    # Visited nodes of every token in one padded row (pad = n, sorts last); sorting the short
    # rows and dropping repeats deduplicates without a global sort over all memberships.
    visited = torch.full((n, per, width), n, dtype=torch.long, device=dev)
    visited[:, per - 1, 0] = nodes
    walks_out = (torch.full((n, m, s, big_m, m + 1), -1, dtype=torch.long, device=dev)
                 if return_walks else None)
    for b in range(m):
        steps = m - b
        start = nodes.repeat_interleave(s * big_m)
        walk = _random_walks(rowptr, col, start, steps, generator)
        visited[:, b * s:(b + 1) * s, : big_m * (steps + 1)] = walk.view(n, s, big_m * (steps + 1))
        if walks_out is not None:
            walks_out[:, b, :, :, : steps + 1] = walk.view(n, s, big_m, steps + 1)
    index, counts = _unique_rows(visited.view(k, width), n)
    token = torch.repeat_interleave(torch.arange(k, device=dev), counts, output_size=index.numel())
    ptr = torch.zeros(k + 1, dtype=torch.long, device=dev)
    ptr[1:] = torch.cumsum(counts, 0)
    center = torch.arange(n, device=dev).repeat_interleave(per)
    slot_len = torch.cat([torch.arange(m, 0, -1, device=dev).repeat_interleave(s),
                          torch.zeros(1, dtype=torch.long, device=dev)])
    length = slot_len.repeat(n)
    cu = dense_cu_seqlens(n, per, dev)
    return NeighbourhoodTokens(ptr, index, token, center, length, cu, n, walks_out)


def _unique_rows(visited: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """Sorted distinct values below ``pad`` of every row: ``(members (nnz,), counts (K,))``
    (numba on large CPU inputs, torch's row sort otherwise; the same result)."""
    kernels = numba_kernels() if visited.device.type == "cpu" else None
    if kernels is not None and visited.shape[0] >= NUMBA_MIN_ROWS:
        index, counts = kernels.unique_rows(visited.contiguous().numpy(), pad)
        return torch.from_numpy(index), torch.from_numpy(counts)
    visited = torch.sort(visited, dim=1).values
    keep = visited < pad
    keep[:, 1:] &= visited[:, 1:] != visited[:, :-1]
    return visited[keep], keep.sum(1)


def degree_order(edge_index: Tensor, num_nodes: int, batch: Tensor | None = None,
                 noise: bool = True, generator: torch.Generator | None = None,
                 num_graphs: int | None = None) -> Serialization:
    """Nodes of every graph sorted by degree ascending (Graph-Mamba's node prioritisation).

    ``key = deg(v) + ε_v``, ``ε ~ U(0, 1)`` when ``noise`` (ties broken at random, degrees
    never reordered), else ties by node id; nodes sorted by ``(batch, key)``.
    ``deg(v)`` counts the edges with ``edge_index[0] == v`` (equal to the degree for undirected
    graphs stored in both directions).

    Args:
        edge_index: ``(2, E)``.
        num_nodes: ``n``.
        batch: ``(n,)`` graph of every node (PyG's ``batch``), default None (one graph).
        noise: add U(0,1) tie-breaking noise, default True.
        generator: torch generator for the noise, default None.
        num_graphs: number of graphs ``G`` in ``batch`` (PyG's ``Batch.num_graphs``), default
            None (read from ``batch``: one host sync).

    Returns:
        ``Serialization`` with one segment per graph and extras ``degree (n,)``, ``batch (n,)``.
        Host syncs: input checks and, without ``num_graphs``, the number of graphs.
    """
    _check_graph(edge_index, num_nodes)
    dev = edge_index.device
    batch, num_graphs = _graph_batch(batch, num_nodes, num_graphs, dev)
    deg = torch.bincount(edge_index[0].long(), minlength=num_nodes)
    key = deg.to(torch.float64)
    if noise:
        key = key + torch.rand(num_nodes, generator=generator, device=dev, dtype=torch.float64)
    return _per_graph(torch.sort(key, stable=True).indices, batch, num_graphs, {"degree": deg})


def _graph_batch(batch: Tensor | None, num_nodes: int, num_graphs: int | None,
                 device: torch.device | None) -> tuple[Tensor, int | None]:
    """``(batch, num_graphs)`` of the graph serializers: zeros and 1 for None, else ``batch``
    checked (a tensor of shape ``(num_nodes,)``) and ``num_graphs`` as given."""
    if batch is None:
        return torch.zeros(num_nodes, dtype=torch.long, device=device), 1
    if not isinstance(batch, Tensor):
        raise TypeError(f"batch: expected a torch.Tensor or None, got {type(batch).__name__}")
    if batch.shape != (num_nodes,):
        raise ValueError(f"batch: expected shape ({num_nodes},), got {tuple(batch.shape)}")
    return batch, num_graphs


def _per_graph(order: Tensor, batch: Tensor, num_graphs: int | None,
               extras: dict[str, Tensor]) -> Serialization:
    """The ``Serialization`` of a node sequence ``order (n,)`` grouped by graph (stable: its
    order kept inside every graph), with ``extras`` and ``batch`` as extras."""
    order = order[torch.sort(batch.long()[order], stable=True).indices]
    cu = batch_to_cu_seqlens(batch, num_graphs)
    return _unchecked(order, _invert(order), cu, {**extras, "batch": batch.long()})


def index_order(num_nodes: int, batch: Tensor | None = None,
                num_graphs: int | None = None) -> Serialization:
    """Nodes of every graph in their stored order (node id ascending within each graph).

    Molecules read from SMILES store their atoms in the string's depth-first order, which
    follows the backbone of a chain molecule (a peptide's residues one after the other): the
    sequence a long-range model should read, where a degree order (``degree_order``) mixes
    the backbone's atoms at random. Deterministic: no draws.

    Args:
        num_nodes: ``n``.
        batch: ``(n,)`` graph of every node (PyG's ``batch``), default None (one graph).
        num_graphs: number of graphs ``G`` in ``batch``, default None (read from ``batch``:
            one host sync).

    Returns:
        ``Serialization`` with one segment per graph and extra ``batch (n,)``; for a sorted
        ``batch`` (PyG's) ``order = inverse = arange(n)``.
    """
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
        raise ValueError(f"num_nodes: expected a non-negative int, got {num_nodes!r}")
    batch, num_graphs = _graph_batch(batch, num_nodes, num_graphs, None)
    return _per_graph(torch.arange(num_nodes, device=batch.device), batch, num_graphs, {})


def dfs_order(edge_index: Tensor, num_nodes: int, batch: Tensor | None = None,
              noise: bool = False, generator: torch.Generator | None = None,
              num_graphs: int | None = None) -> Serialization:
    """Nodes of every graph in the preorder of a depth-first search.

    Every node gets a key: its id, or with ``noise`` a uniform random number. The search of
    each graph starts at its node of smallest key and enters neighbours in ascending key
    order (a graph of several components: the next search starts at the unvisited node of
    smallest key). With id keys, a molecule read from SMILES comes out in the string's atom
    order (SMILES writes such a search; checked on Peptides-func molecules and a tripeptide
    in the tests); random keys give another valid traversal of the
    same molecule every call: the "randomised SMILES" augmentation of chemical sequence
    models, for a model that reads molecules as sequences without memorising one order.

    Args:
        edge_index: ``(2, E)``, both directions for undirected graphs (PyG's convention);
            the search follows ``edge_index[0] -> edge_index[1]``.
        num_nodes: ``n``.
        batch: ``(n,)`` graph of every node, default None (one graph).
        noise: random keys (True) or node ids (False, default).
        generator: torch generator of the random keys, default None.
        num_graphs: number of graphs ``G`` in ``batch``, default None (read from ``batch``:
            one host sync).

    Returns:
        ``Serialization`` with one segment per graph and extra ``batch (n,)``. The search
        runs on the CPU (a numba kernel): CUDA inputs are copied there and back (host syncs).
    """
    _check_graph(edge_index, num_nodes)
    dev = edge_index.device
    batch, num_graphs = _graph_batch(batch, num_nodes, num_graphs, dev)
    kernels = numba_kernels()
    if kernels is None:
        raise RuntimeError("dfs_order: needs numba (pip install numba)")
    src, dst = edge_index.long().cpu()
    key = (torch.rand(num_nodes, generator=generator, dtype=torch.float64) if noise
           else torch.arange(num_nodes, dtype=torch.float64))
    # Roots and every node's neighbours in ascending key order.
    roots = torch.sort(key).indices
    rowptr, col = _csr(src, dst, num_nodes, _invert(roots))
    pre = torch.from_numpy(kernels.dfs_preorder(rowptr.numpy(), col.contiguous().numpy(),
                                                roots.numpy()))
    return _per_graph(pre.to(dev), batch, num_graphs, {})
