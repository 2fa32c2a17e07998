"""Graph Mamba Networks and Graph-Mamba as PyTorch Geometric style modules.

Both take PyG tensors (or a ``Data`` / ``Batch``) and return node or graph logits::

    model = GraphMambaNetwork(in_channels=1433, num_classes=7, task_level="node")
    logits = model(data.x, data.edge_index)                # (N, 7)
    logits = model(data)                                   # same, from a Data / Batch

``GraphMambaNetwork`` (Behrouz & Hashemi, KDD 2024): every node becomes a sequence of
neighbourhood tokens from random walks (``random_walk_tokens``: ``m`` walk lengths, ``M`` walks
per token, ``s`` tokens per length), ordered from the widest neighbourhood to the node itself.
A local encoder turns each token into a vector (``token_encoder="mean"``: the mean of its
members' features; ``"gine"``: PyG's ``GINEConv`` over the token's induced subgraph, then the
mean), and a bidirectional Mamba runs over every node's token sequence (all nodes packed in one
call, ``cu_seqlens`` per node); the node's output is read at its own (last) token. Optional
branches in each layer: a BiMamba over the degree-ordered nodes of every graph
(``global_mamba``), a message-passing layer (``mpnn``: ``gcn``, ``sage``, ``gine``,
``gatedgcn``), and positional / structural encodings added at the input (``pe_dim``: the
dataset's ``pe`` attribute, Laplacian eigenvectors with random sign flips while training, then
RWSE). ``GraphMamba`` (Wang et al., 2024) is the variant without tokens: nodes sorted by degree
with random tie-breaking, a BiMamba over that order plus a GatedGCN, averaged over several
orders at evaluation.

One layer (pre-norm, residual; ``x = norm(h)``)::

    h = h + dropout(tokens(x) + mpnn(x) + global(x))      # branches that are enabled
    h = h + dropout(ffn(norm2(h)))
    (residual=False: h = dropout(gelu(tokens(x) + mpnn(x) + global(x))), then the FFN)

Random walks and tie-breaking noise use the global RNG while training; at evaluation a
generator seeded with ``eval_seed`` makes outputs repeatable, and ``eval_samples`` draws are
averaged (logits). The generator is seeded once per batch, so a graph's draws (and its
logits, a little) depend on the graphs batched with it: repeatable for the same batches, not
for one graph alone against it in a batch; more ``eval_samples`` shrink that. The graph tasks draw them ahead, in the data loader (``plan.GraphPlan``,
``model(..., plan=plan)``): the step then has no host sync; without a plan the model builds
one itself with the same code.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import scatter, to_torch_csr_tensor

from geossm.nn import MLP, RMSNorm, SerializedBlock, build_mixer
from geossm.nn.packed_mixer import (bidirectional_indices, packed_backend, packed_bimamba,
                                    segment_reversal)
from geossm.nn.stacked_weights import bind_direction_weights, is_packed, pack_where_possible
from geossm.packed import mark_cu_seqlens_valid
from geossm.registry import MODELS
from geossm.serialization import NeighbourhoodTokens, Serialization
from geossm.serialization.graph import NUMBA_MIN_ROWS, numba_kernels
from geossm.serialization.windows import device_constant

from .fused_conv import can_fuse, can_fuse_gine, gated_gcn, gine_aggregate
from .plan import GraphPlan, GraphPlanner, PlanDraw, checked_plan, data_plan
from .static_batch import masked_batch_norm

__all__ = ["GraphMambaNetwork", "GraphMamba", "CategoricalEncoder", "induced_token_edges"]

TASK_LEVELS = ("node", "graph")
MPNNS = (None, "gcn", "gcne", "sage", "gine", "gatedgcn")
TOKEN_ENCODERS = ("mean", "gine")
TOKEN_SOURCES = ("walks", "hops")
HOP_ADJACENCIES = ("gcn", "mean")
GLOBAL_ORDERS = ("degree", "index", "dfs")
POOLS = ("mean", "sum", "max")


class CategoricalEncoder(nn.Module):
    """Sum of one embedding per integer column (OGB's atom / bond encoders).

    The tables are looked up as one: ``embedding(x + starts, cat(tables)).sum(1)``, one
    lookup and one embedding backward instead of one per column (9 atom columns: ~25 fewer
    operators per forward; the GPU step is bound by their dispatch). The same values: on the
    CPU the column sum runs in the order of the column-by-column adds (bitwise equal,
    ``tests/tasks/graph``), on the GPU it may round differently. Each column is checked
    against its own vocabulary on the device (``torch._assert_async``: no host sync), as an
    offset index out of its column would read the next column's table.

    Shapes: ``x (N, len(vocab)) long -> (N, dim)``; column ``j`` must lie in ``[0, vocab[j])``.
    """

    def __init__(self, vocab: Sequence[int], dim: int) -> None:
        super().__init__()
        self.vocab = [int(v) for v in vocab]
        self.embeddings = nn.ModuleList(nn.Embedding(v, dim) for v in self.vocab)
        for e in self.embeddings:
            nn.init.xavier_uniform_(e.weight)
        #: first row of every column's table in the concatenated tables
        self._starts = tuple(sum(self.vocab[:j]) for j in range(len(self.vocab)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != len(self.vocab):
            raise ValueError(f"x: expected integer features of shape (N, {len(self.vocab)}), got "
                             f"{tuple(x.shape)}")
        x = x.long()
        if len(self.vocab) == 1:
            return self.embeddings[0](x[:, 0])
        vocab = device_constant(tuple(self.vocab), x.device)
        torch._assert_async((x >= 0).logical_and_(x < vocab).all(),
                            f"x: column j must lie in [0, vocab[j]) with vocab {self.vocab}")
        table = torch.cat([e.weight for e in self.embeddings])
        rows = x + device_constant(self._starts, x.device)
        return F.embedding(rows, table).sum(1)


def induced_token_edges(tokens: NeighbourhoodTokens, edge_index: torch.Tensor,
                        num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges of every token's induced subgraph, between member rows.

    Member row ``r`` is node ``tokens.index[r]`` inside token ``tokens.token[r]``; an edge
    ``u -> v`` of the graph becomes ``r_u -> r_v`` in every token holding both ends.

    Returns ``(member_edge_index (2, E') long, edge_id (E',) long)`` (``edge_id`` indexes the
    input edges, for their attributes). Cost: ``O(Σ_r deg(index[r]))``. Host syncs (on a
    GPU): the number of candidate edges and of kept edges; ``GraphPlanner`` runs it on the CPU
    in the data loader instead.
    """
    n = num_nodes
    src, dst = edge_index[0].long(), edge_index[1].long()
    perm = torch.argsort(src * n + dst)
    col = dst[perm]
    rowptr = torch.zeros(n + 1, dtype=torch.long, device=src.device)
    rowptr[1:] = torch.cumsum(torch.bincount(src, minlength=n), 0)
    kernels = numba_kernels() if src.device.type == "cpu" else None
    if kernels is not None and tokens.index.numel() >= NUMBA_MIN_ROWS:  # same result, ~10x
        rows, hits, eids = kernels.induced_edges(
            rowptr.numpy(), col.numpy(), perm.numpy(), tokens.index.numpy(),
            tokens.token.numpy(), tokens.ptr.numpy())
        return (torch.stack([torch.from_numpy(rows), torch.from_numpy(hits)]),
                torch.from_numpy(eids))
    member_key = tokens.token * n + tokens.index  # sorted: tokens ascending, members sorted
    node = tokens.index
    deg = rowptr[node + 1] - rowptr[node]
    total = int(deg.sum())  # one read of the candidate count, shared by the three expansions
    rows = torch.repeat_interleave(torch.arange(node.numel(), device=node.device), deg,
                                   output_size=total)
    # Position of each candidate neighbour in the CSR: start of its row + rank inside the row.
    start = torch.repeat_interleave(rowptr[node], deg, output_size=total)
    first = torch.repeat_interleave(torch.cumsum(deg, 0) - deg, deg, output_size=total)
    pos = start + torch.arange(rows.numel(), device=node.device) - first
    cand = tokens.token[rows] * n + col[pos]
    hit = torch.searchsorted(member_key, cand).clamp_max(member_key.numel() - 1)
    keep = member_key[hit] == cand
    return torch.stack([rows[keep], hit[keep]]), perm[pos[keep]]


@dataclass
class _Context:
    """What every layer of one forward pass shares (built once per sample of the randomness)."""

    edge_index: torch.Tensor
    edge_attr: torch.Tensor | None
    tokens: NeighbourhoodTokens | None
    token_edges: tuple[torch.Tensor, torch.Tensor] | None
    order: Serialization | None
    adj_t: torch.Tensor | None = None  # sparse CSR (target, source), for gcn / sage
    hop_adj: torch.Tensor | None = None  # normalised sparse CSR, for hop tokens
    node_mask: torch.Tensor | None = None  # (N,): 0 for a static batch's padding nodes
    #: what every layer derives from the structure alone, computed by the first that asks
    #: (``shared``): not once per layer, a few operators each on a dispatch-bound GPU step
    cache: dict = field(default_factory=dict)


def shared(ctx: Any, key: Any, build: Callable[[], Any]) -> Any:
    """``build()`` the first time ``key`` is asked for in the forward of ``ctx`` (a
    ``_Context``), then its value; every time for a context without ``cache``."""
    cache = getattr(ctx, "cache", None)
    if cache is None:
        return build()
    if key not in cache:
        cache[key] = build()
    return cache[key]


def token_count(ctx: Any, dtype: torch.dtype) -> torch.Tensor:
    """``(K, 1)`` members of every token of ``ctx.tokens``, at least 1, in ``dtype``: the
    divisor of PyG's ``scatter(reduce="mean")`` over ``tokens.token`` (same values, so the
    same bits), shared by the layers."""
    tok = ctx.tokens

    def build() -> torch.Tensor:
        ones = torch.ones(tok.token.numel(), dtype=dtype, device=tok.token.device)
        count = ones.new_zeros(tok.num_tokens).scatter_add_(0, tok.token, ones)
        return count.clamp(min=1).unsqueeze(1)
    return shared(ctx, ("token_count", dtype), build)


def last_tokens(ctx: Any) -> torch.Tensor:
    """``(N,)`` long: every node's own token, the last of its sequence in ``ctx.tokens``."""
    cu = ctx.tokens.cu_seqlens
    return shared(ctx, "last_tokens", lambda: (cu[1:] - 1).long())


def order_indices(ctx: Any) -> tuple[torch.Tensor, ...]:
    """The gathers of ``packed_bimamba`` over ``ctx.order`` (``order_gathers``; the plan's
    when it holds them)."""
    s = ctx.order
    return shared(ctx, "order_indices", lambda: order_gathers(s.order, s.inverse, s.cu_seqlens))


def token_indices(ctx: Any) -> tuple[torch.Tensor, ...]:
    """The gathers of ``packed_bimamba`` over the token sequences of ``ctx.tokens``
    (``token_gathers``; the plan's when it holds them)."""
    tok = ctx.tokens
    return shared(ctx, "token_indices", lambda: token_gathers(tok.cu_seqlens, tok.num_tokens))


def order_gathers(order: torch.Tensor, inverse: torch.Tensor,
                  cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``packed_bimamba``'s four gathers (``bidirectional_indices``) of a serialization
    ``(order (T,), inverse (T,), cu_seqlens (S+1,))``."""
    return bidirectional_indices(order, inverse, segment_reversal(cu_seqlens, order.numel()))


def token_gathers(cu_seqlens: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, ...]:
    """``packed_bimamba``'s four gathers of token sequences run in place (no order): the
    segments of ``cu_seqlens`` over ``num_tokens`` rows."""
    rows = torch.arange(num_tokens, device=cu_seqlens.device)
    return bidirectional_indices(rows, rows, segment_reversal(cu_seqlens, num_tokens))


def residual_bimamba(x: torch.Tensor, norm: RMSNorm, mixer: nn.Module, cu: torch.Tensor,
                     indices: Callable[[], Sequence[torch.Tensor]],
                     serialization: Serialization | None = None,
                     recompute: bool = True) -> torch.Tensor:
    """``x + mixer(norm(x[order]), cu)[inverse]`` (no order: ``serialization`` None).

    A packed ``mixer`` (``pack_where_possible``) runs both directions as one Mamba of twice the width
    (``packed_bimamba``: one launch of every kernel and projection, ~80 fewer operators per
    call on a dispatch-bound GPU step; the same math, other float rounding); ``indices()``
    gives its gathers (``bidirectional_indices``, shared by the layers). ``recompute``
    (default True): the packed path keeps only its normalised input for the backward and
    recomputes the projections, convolution and gathers there; False keeps the scan inputs
    (the same values, so the same gradients; ~20 fewer operators per call for ~8E + 4N more
    values per row). Elsewhere (the ``torch`` backend, the unfused Mamba path,
    ``torch.compile``) the mixer's own two calls.
    Shapes: ``x (T, D) -> (T, D)``, ``cu (S+1,) int32``."""
    backend = packed_backend(mixer, x)
    if backend is not None:
        return packed_bimamba(x, norm.weight, mixer, indices(), cu, norm.eps, backend,
                              recompute)
    bind_direction_weights(mixer)  # views of stacked parameters (moved by .to()), if any
    if serialization is None:
        return x + mixer(norm(x), cu)
    h = x.index_select(0, serialization.order)
    return (h + mixer(norm(h), cu)).index_select(0, serialization.inverse)


def hop_adjacency(edge_index: torch.Tensor, n: int, kind: str = "gcn") -> torch.Tensor:
    """Normalised ``(N, N)`` sparse CSR propagation matrix (rows = targets) of the hop tokens.

    ``kind="gcn"``: ``D^-1/2 (A + I) D^-1/2`` (degrees with the self-loop; GCN's smoothing);
    ``"mean"``: ``D^-1 A`` without self-loops (the mean over the neighbours, so the ego features
    stay out of every hop: heterophilous graphs, where a node differs from its neighbours).
    Always float32 (the sparse product needs one dtype).
    """
    if kind not in HOP_ADJACENCIES:
        raise ValueError(f"hop_adjacency: expected one of {HOP_ADJACENCIES}, got {kind!r}")
    src, dst = edge_index[0].long(), edge_index[1].long()
    if kind == "gcn":
        loop = torch.arange(n, device=src.device)
        src, dst = torch.cat([src, loop]), torch.cat([dst, loop])
    deg = torch.bincount(dst, minlength=n).float()
    if kind == "gcn":
        weight = (deg[src] * deg[dst]).rsqrt()
    else:
        weight = 1.0 / deg[dst]  # every target of an edge has degree >= 1
    with warnings.catch_warnings():  # torch: "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return to_torch_csr_tensor(torch.stack([dst, src]), weight, size=(n, n))


def hop_tokens(x: torch.Tensor, hop_adj: torch.Tensor, hops: int) -> torch.Tensor:
    """Every node's hop sequence ``[P^K x, ..., P x, x]`` (widest first, the node itself last),
    packed node-major: ``x (N, D) -> (N * (K + 1), D)``, node ``i`` at rows
    ``[i (K+1), (i+1)(K+1))``. Deterministic, so it costs no sampling noise; each token is a
    smoothed average over a whole hop, not a few sampled walks."""
    seq = [x]
    h = x.float()
    for _ in range(hops):
        h = hop_adj @ h
        seq.append(h.to(x.dtype))
    return torch.stack(seq[::-1], 1).reshape(-1, x.shape[1])


#: readouts that weight each node's raw hop tokens by scores of its Mamba outputs
HOP_READOUTS = ("attention", "signed")


class _TokenBranch(nn.Module):
    """Token features -> BiMamba over each node's token sequence -> the node's own token.

    ``source="walks"``: random-walk tokens (``ctx.tokens``); ``"hops"``: the node's hop
    sequence ``[P^K x, ..., P x, x]`` (``hop_tokens``, ``K = walk_length``).
    ``readout="attention"`` (hops only): the Mamba outputs only score the hops, and the node's
    output is the softmax-weighted sum of its raw hop tokens (a per-node adaptive propagation
    filter, as DAGNN's hop gates): no per-node feature transform that could memorise labels.
    ``readout="signed"``: the same scores through ``tanh`` instead of a softmax, so a hop can
    also be subtracted (``h - P h``: the high-pass filters of FAGCN / ACM-GCN for heterophilous
    graphs, which a convex mix of the hops cannot form)."""

    def __init__(self, dim: int, walk_length: int, encoder: str, edge_dim: int | None,
                 readout: str, mamba_kwargs: dict, source: str = "walks") -> None:
        super().__init__()
        self.encoder, self.readout, self.source = encoder, readout, source
        self.hops = walk_length
        if encoder == "gine":
            from torch_geometric.nn import GINEConv
            mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
            self.local = GINEConv(mlp, train_eps=True, edge_dim=edge_dim)
        # The attention readout only scores hops: its Mamba runs on a quarter of the width
        # (4x cheaper; the scan's cost is linear in the channels).
        width = max(8, dim // 4) if readout in HOP_READOUTS else dim
        self.length_embedding = nn.Embedding(walk_length + 1, width)
        nn.init.zeros_(self.length_embedding.weight)
        self.narrow = nn.Linear(dim, width) if width != dim else nn.Identity()
        self.norm = RMSNorm(width)
        self.mixer = build_mixer(d_model=width, **mamba_kwargs)
        if readout in HOP_READOUTS:
            self.score = nn.Linear(width, 1)
            # equal scores at the start: the mean over the hops (signed: tanh(bias) x their sum)
            nn.init.zeros_(self.score.weight)
            self.out: nn.Module = nn.Identity()
        else:
            self.out = nn.Linear(dim, dim)
        #: the packed BiMamba keeps only its normalised input for the backward
        #: (``residual_bimamba(recompute=True)``); False keeps the scan inputs
        self.packed_recompute = True
        #: the GINE encoder's message passing as one autograd function
        #: (``fused_conv.gine_aggregate``; float rounding only), where it applies
        self.fused = False

    def forward(self, x: torch.Tensor, ctx: _Context) -> torch.Tensor:
        if self.source == "hops":
            return self._hops(x, ctx.hop_adj)
        tok = ctx.tokens
        if self.encoder == "gine":
            member = x.index_select(0, tok.index)  # (nnz, D)
            edges, eid = ctx.token_edges
            if self.fused and ctx.edge_attr is not None and not torch.compiler.is_compiling():
                member = self.local.nn(gine_aggregate(self.local, member, edges,
                                                      ctx.edge_attr, eid))
            else:
                ea = ctx.edge_attr.index_select(0, eid) if ctx.edge_attr is not None else \
                    member.new_zeros(eid.numel(), member.shape[1])
                member = self.local(member, edges, ea)
            # PyG's scatter mean, its member counts shared by the layers
            t = scatter(member, tok.token, 0, dim_size=tok.num_tokens, reduce="sum") \
                / token_count(ctx, member.dtype)
        else:
            t = tok.aggregate(x, "mean")  # (K, D)
        t = t + self.length_embedding(tok.length)
        cu = tok.cu_seqlens
        t = residual_bimamba(t, self.norm, self.mixer, cu, lambda: token_indices(ctx),
                             recompute=self.packed_recompute)
        if self.readout == "last":
            y = t.index_select(0, last_tokens(ctx))  # the node's own token closes its sequence
        else:
            y = scatter(t, tok.center, 0, dim_size=tok.num_nodes, reduce="mean")
        return self.out(y)

    def _hops(self, x: torch.Tensor, hop_adj: torch.Tensor) -> torch.Tensor:
        n, length = x.shape[0], self.hops + 1
        raw = hop_tokens(x, hop_adj, self.hops)  # (N * L, D)
        hop = torch.arange(length - 1, -1, -1, device=x.device)  # K .. 0
        t = self.narrow(raw).view(n, length, -1) + self.length_embedding(hop)
        t = t.reshape(n * length, -1)
        cu = torch.arange(0, (n + 1) * length, length, device=x.device, dtype=torch.int32)
        mark_cu_seqlens_valid(cu, n * length)  # built here: no host read of its values
        t = (t + self.mixer(self.norm(t), cu)).view(n, length, -1)
        if self.readout in HOP_READOUTS:
            score = self.score(t).squeeze(2)
            weight = torch.softmax(score, 1) if self.readout == "attention" else torch.tanh(score)
            return torch.einsum("nl,nld->nd", weight.to(raw.dtype), raw.view(n, length, -1))
        y = t[:, -1] if self.readout == "last" else t.mean(1)
        return self.out(y)


class _MPNN(nn.Module):
    def __init__(self, kind: str, dim: int, edge_dim: int | None) -> None:
        super().__init__()
        import torch_geometric.nn as pygnn
        self.kind = kind
        self.uses_edges = False
        if kind == "gcn":
            self.conv = pygnn.GCNConv(dim, dim, cached=False)
        elif kind == "sage":
            self.conv = pygnn.SAGEConv(dim, dim, root_weight=True)
        elif kind == "gine":
            mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
            self.conv = pygnn.GINEConv(mlp, train_eps=True, edge_dim=edge_dim)
            self.uses_edges = True
        else:  # gatedgcn
            self.conv = pygnn.ResGatedGraphConv(dim, dim, edge_dim=edge_dim)
            self.uses_edges = edge_dim is not None
        #: a GatedGCN with edge features as one autograd function (``fused_conv.gated_gcn``:
        #: ~17 fewer dispatched operators per layer and step; float rounding only); not under
        #: ``torch.compile``, which traces the conv itself
        self.fused = False

    def forward(self, x: torch.Tensor, ctx: _Context) -> torch.Tensor:
        if self.fused and ctx.edge_attr is not None and not torch.compiler.is_compiling():
            return gated_gcn(self.conv, x, ctx.edge_index, ctx.edge_attr)
        if self.kind == "gine":
            ea = ctx.edge_attr if ctx.edge_attr is not None else \
                x.new_zeros(ctx.edge_index.shape[1], x.shape[1])
            return self.conv(x, ctx.edge_index, ea)
        if self.uses_edges:
            return self.conv(x, ctx.edge_index, ctx.edge_attr)
        if ctx.adj_t is not None:
            # The sparse product needs one dtype: the float32 matrix and float32 features
            # (bf16 under autocast otherwise).
            return self.conv(x.float(), ctx.adj_t)
        return self.conv(x, ctx.edge_index)


class GMNLayer(nn.Module):
    """One Graph Mamba Network layer (see the module docstring); ``h: (N, D) -> (N, D)``."""

    def __init__(self, dim: int, walk_length: int, tokens: bool, token_encoder: str,
                 global_mamba: bool, mpnn: str | None, edge_dim: int | None, readout: str,
                 dropout: float, mlp_ratio: float, mamba_kwargs: dict,
                 residual: bool | str = True, mpnn_plus: bool = False, gate: bool = False,
                 mpnn_norm: str | None = "batch", branch_drop: float = 0.0,
                 token_source: str = "walks", pre_norm: bool = True,
                 local_in_dim: int | None = None, packed_bimamba: bool = False,
                 mpnn_act: str = "relu") -> None:
        super().__init__()
        self.branch_drop = branch_drop
        self.residual = residual
        self.norm = RMSNorm(dim) if pre_norm else nn.Identity()
        self.tokens = (_TokenBranch(dim, walk_length, token_encoder, edge_dim, readout,
                                    mamba_kwargs, token_source) if tokens else None)
        self.mpnn = _MPNN(mpnn, dim, edge_dim) if mpnn and not mpnn_plus else None
        self.local = None
        if mpnn and mpnn_plus:  # the GNN+ layer of baselines.py: the yardstick's own block
            from .baselines import GNNPlusLayer
            # local_in_dim: the first layer's GNN+ block may read the raw features (mpnn_raw).
            self.local = GNNPlusLayer(mpnn, local_in_dim or dim, dim, edge_dim, mpnn_norm,
                                      dropout, residual, act=mpnn_act)
        # Zero-initialised per-channel gate on the Mamba branches (ReZero): the layer starts as
        # its MPNN and the sequence branches grow only as far as the loss asks for them.
        self.gate = nn.Parameter(torch.zeros(dim)) if gate else None
        self.global_block = (SerializedBlock(dim, bidirectional=True, mlp_ratio=0, **mamba_kwargs)
                             if global_mamba else None)
        self.drop = nn.Dropout(dropout)
        self.norm2 = RMSNorm(dim) if mlp_ratio > 0 else None
        self.ffn = MLP(dim, int(mlp_ratio * dim), drop=dropout) if mlp_ratio > 0 else None
        if packed_bimamba:  # hop tokens keep their mixer's own calls
            for mixer in (getattr(self.global_block, "mixer", None),
                          self.tokens.mixer if tokens and token_source == "walks" else None):
                pack_where_possible(mixer)  # one parameter per direction pair
        #: as ``_TokenBranch.packed_recompute``, for the global branch
        self.packed_recompute = True

    def forward(self, h: torch.Tensor, ctx: _Context,
                raw: torch.Tensor | None = None) -> torch.Tensor:
        """``raw``: what the GNN+ block reads instead of ``h`` (the first layer with
        ``mpnn_raw``: the raw features, ``(N, F)``); the Mamba branches read ``h``."""
        x = self.norm(h)
        out = torch.zeros_like(h) if self.tokens is None else self.tokens(x, ctx)
        if self.global_block is not None:
            # SerializedBlock adds its input back: subtract it to keep only the mixer's output.
            out = out + self._global(x, ctx) - x
        if self.gate is not None:
            out = out * self.gate
        if self.training and self.branch_drop > 0:
            # Stochastic depth per node on the sequence branches: a node's token / order
            # features cannot be relied on alone to fit its label (Cora: 140 labels).
            keep = torch.rand(out.shape[0], 1, device=out.device) >= self.branch_drop
            out = out * keep / (1.0 - self.branch_drop)
        if self.local is not None:
            # GNN+ layer on h (conv -> BN -> ReLU -> dropout, residual); Mamba adds on top.
            local_in = h if raw is None else raw
            h = self.local(local_in, ctx.edge_index, ctx.edge_attr, ctx.adj_t,
                           ctx.node_mask) + self.drop(out)
        else:
            if self.mpnn is not None:
                out = out + self.mpnn(x, ctx)
            # Without the skip (small homophilous graphs: the raw self-features on the skip
            # path overfit 140 labels), the branches replace h, as in a GCN stack.
            h = h + self.drop(out) if self.residual else self.drop(F.gelu(out))
        if self.ffn is not None:
            h = h + self.ffn(self.norm2(h))
        return h

    def _global(self, x: torch.Tensor, ctx: _Context) -> torch.Tensor:
        """The global block on ``x`` (input added back), packed where its weights are."""
        block = self.global_block
        if not is_packed(block.mixer):
            return block(x, ctx.order)
        return residual_bimamba(x, block.norm1, block.mixer, ctx.order.cu_seqlens,
                                lambda: order_indices(ctx), ctx.order, self.packed_recompute)


class PooledNorm(nn.BatchNorm1d):
    """BatchNorm over pooled graph vectors ``(G, D) -> (G, D)``.

    Sum pooling scales a graph's vector with its node count (30-60 nodes: logits ~40x those of
    one node at initialisation, a first loss of ~14 for 6 classes), so the head starts saturated
    and training sinks into the class prior (loss ln C). Normalising the pooled vectors over the
    batch keeps the relative sizes (what sum pooling is for) at a unit scale. A training batch
    of one graph has no batch statistics: it is normalised with the running ones.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return super().forward(x)


def pooled_norm(pool_norm: bool | None, pool: str, task_level: str,
                dim: int) -> PooledNorm | None:
    """The ``PooledNorm(dim)`` of a graph-level model's ``pool_norm`` argument (None = only
    for ``pool="sum"``); None at node level."""
    if pool_norm is None:
        pool_norm = pool == "sum"
    return PooledNorm(dim) if task_level == "graph" and pool_norm else None


def example_graph_inputs() -> dict[str, torch.Tensor]:
    """Two path graphs of 5 and 4 nodes: random ``x`` (9, 3), ``edge_attr`` (14, 2) and
    ``pe`` (9, 2), for the models' ``example`` (the registry test)."""
    ei = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 6, 7, 7, 8],
                       [1, 0, 2, 1, 3, 2, 4, 3, 6, 5, 7, 6, 8, 7]])
    return {"x": torch.randn(9, 3), "edge_index": ei, "edge_attr": torch.randn(14, 2),
            "batch": torch.tensor([0] * 5 + [1] * 4), "pe": torch.randn(9, 2)}


def check_pool_and_node_features(pool: str, in_channels: int | None,
                                 node_vocab: Sequence[int] | None) -> None:
    """``pool`` must be in ``POOLS``; exactly one of ``in_channels`` / ``node_vocab`` given."""
    if pool not in POOLS:
        raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")
    if (in_channels is None) == (node_vocab is None):
        raise ValueError(f"give exactly one of in_channels (float features) and node_vocab "
                         f"(integer features), got in_channels={in_channels!r}, "
                         f"node_vocab={node_vocab!r}")


def graph_forward_inputs(model: nn.Module, x: Any, edge_index: torch.Tensor | None,
                         extra: tuple, edge_attr: torch.Tensor | None,
                         batch: torch.Tensor | None, pe: torch.Tensor | None) -> tuple:
    """A graph model's ``forward`` arguments as ``(x, edge_index, edge_attr, batch, pe)``:
    ``x`` may be a PyG ``Data`` / ``Batch`` (its fields are taken); ``extra`` (positional
    arguments after ``edge_index``) raises ``TypeError``, as ``edge_attr``, ``batch`` and ``pe``
    are keyword-only."""
    if extra:
        raise TypeError(
            f"{type(model).__name__}.forward: edge_attr, batch and pe are keyword-only, got "
            f"{len(extra)} more positional argument(s) after edge_index; call "
            "model(x, edge_index, batch=batch) (or model(data))")
    if hasattr(x, "edge_index") and not isinstance(x, torch.Tensor):
        data = x
        x, edge_index = data.x, data.edge_index
        edge_attr = getattr(data, "edge_attr", None)
        batch = getattr(data, "batch", None)
        pe = getattr(data, "pe", None)
    return x, edge_index, edge_attr, batch, pe


def check_node_inputs(x: Any, pe: torch.Tensor | None, pe_dim: int) -> None:
    """``x`` must be ``(N, F)``; with ``pe_dim`` > 0, ``pe`` must be ``(N, pe_dim)``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected node features of shape (N, F), got {got}")
    if pe_dim and (pe is None or pe.shape != (x.shape[0], pe_dim)):
        got = None if pe is None else tuple(pe.shape)
        raise ValueError(f"pe: expected shape ({x.shape[0]}, {pe_dim}) (model pe_dim="
                         f"{pe_dim}; set data.pe in a config; in Python pass pe=, e.g. "
                         "AddPositionalEncodings(...)(data).pe with the run's data.pe "
                         f"settings, or call a geossm.predictor, which adds them), got {got}")


def encode_edges(edge_encoder: nn.Module | None,
                 edge_attr: torch.Tensor | None) -> torch.Tensor | None:
    """``(E, D)`` edge embeddings, or None without an encoder or edge features."""
    if edge_encoder is None or edge_attr is None:
        return None
    return edge_encoder(edge_attr if isinstance(edge_encoder, CategoricalEncoder)
                        else edge_attr.float())


def sparse_adjacency(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """``(N, N)`` sparse CSR matrix with rows = targets, columns = sources."""
    with warnings.catch_warnings():  # torch: "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return to_torch_csr_tensor(edge_index.flip(0), size=(n, n))


def graph_readout(h: torch.Tensor, batch: torch.Tensor | None, pool: str,
                  pool_norm: nn.Module | None, num_graphs: int | None = None) -> torch.Tensor:
    """Node states ``(N, D)`` pooled per graph (``pool`` in ``POOLS``; ``batch`` None = one
    graph) to ``(G, D)``, then ``pool_norm`` if given. ``num_graphs``: ``G`` when known
    (default None: read from ``batch``, one host sync)."""
    from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool
    if batch is None:
        batch, num_graphs = torch.zeros(h.shape[0], dtype=torch.long, device=h.device), 1
    pooled = {"mean": global_mean_pool, "sum": global_add_pool, "max": global_max_pool}[pool]
    h = pooled(h, batch, size=num_graphs)
    return pool_norm(h) if pool_norm is not None else h


def padded_readout(h: torch.Tensor, batch: torch.Tensor, pool: str,
                   num_graphs: int) -> torch.Tensor:
    """Graph readout of a padded static batch (``static_batch``): ``num_graphs`` graphs and one
    more holding the padding nodes, which is dropped. ``(N, D) -> (num_graphs, D)``."""
    return graph_readout(h, batch, pool, None, num_graphs + 1)[:num_graphs]


def check_padded_model(task_level: str, num_graphs: int | None, unmasked_norm: bool,
                       what: str) -> None:
    """Raise ``ValueError`` unless a model can take a padded static batch: graph level, the
    graph count given, and no BatchNorm the node mask does not reach (``unmasked_norm``;
    ``what`` names those parts in the message)."""
    if task_level != "graph" or not isinstance(num_graphs, int):
        raise ValueError("node_mask: padded static batches are graph-level and need "
                         f"num_graphs (an int), got task_level={task_level!r}, "
                         f"num_graphs={num_graphs!r}")
    if unmasked_norm:
        raise ValueError(f"node_mask: a static batch needs BatchNorm only where the mask "
                         f"reaches it; {what}")


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def activation(name: str) -> nn.Module:
    """``"relu"`` or ``"gelu"`` as a module; anything else raises ValueError."""
    if name not in ACTIVATIONS:
        raise ValueError(f"act: expected one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def mlp_head(dim: int, num_classes: int, layers: int, act: str, dropout: float,
             input_dropout: bool = False) -> nn.Module:
    """Graph-level head ``(G, dim) -> (G, num_classes)``: ``layers - 1`` blocks of Linear, act,
    Dropout, then a Linear. ``input_dropout``: one more Dropout on the pooled vectors first
    (GraphGPS's ``mlp_graph`` head, GNN+'s: a dropout before every Linear)."""
    blocks: list[nn.Module] = [nn.Dropout(dropout)] if input_dropout else []
    for _ in range(layers - 1):
        blocks += [nn.Linear(dim, dim), activation(act), nn.Dropout(dropout)]
    return nn.Sequential(*blocks, nn.Linear(dim, num_classes))


def _posint(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v!r}")
    return v


@MODELS.register
class GraphMambaNetwork(nn.Module):
    r"""Graph Mamba Network for node or graph prediction (see the module docstring).

    Args:
        in_channels: node feature width ``F`` (float features), default None (use
            ``node_vocab``).
        num_classes: output width ``C`` (classes, or labels for multi-label tasks).
        task_level: ``"node"`` (logits per node) or ``"graph"`` (pooled per graph), default
            ``"node"``.
        dim: hidden width ``D``, default 64.
        num_layers: default 2.
        walk_length: ``m``, longest random walk of a token, default 3.
        num_walks: ``M``, walks per token, default 4.
        repeats: ``s``, tokens per walk length, default 1.
        tokens: use the token branch, default True.
        token_source: the token sequences, ``"walks"`` (random-walk neighbourhood tokens,
            GMN's) or ``"hops"`` (every node's ``[P^K x, ..., P x, x]`` with ``K =
            walk_length`` and ``P`` from ``hop_adjacency``: deterministic hop averages, no
            sampling noise), default ``"walks"``.
        pre_norm: RMSNorm before every layer's branches and before the head, default True.
            False: no normalisation there, so the (coupled) L2 of ``loss.input_l2`` bounds
            the features' scale; a norm right after the input projection undoes any weight
            decay on it (the function is invariant to the weight's scale), and small labelled
            graphs (Cora: 140 labels) then overfit late in training. With ``mpnn_plus`` the
            GNN+ layers end in dropout, and an RMSNorm after dropout ``p`` sees vectors
            ``1/sqrt(1-p)`` larger in RMS while training than at evaluation: the evaluated
            logits come out sharper than the trained ones (dropout 0.7: 1.8x), which False
            avoids (the heterophilous family's config).
        hop_adjacency: ``P`` of the hop tokens, ``"gcn"`` (``D^-1/2 (A+I) D^-1/2``) or
            ``"mean"`` (``D^-1 A``, the ego features kept out of the hops), default ``"gcn"``.
        token_encoder: ``"mean"`` or ``"gine"`` (over the token's induced subgraph), default
            ``"mean"``.
        readout: node output from its sequence, ``"last"`` (its own token), ``"mean"`` or
            ``"attention"`` (hop tokens only: a softmax over the hops, scored by the Mamba
            outputs, weights the raw hop averages) or ``"signed"`` (the same with ``tanh``
            weights in (-1, 1): hops can be subtracted), default ``"last"``.
        global_mamba: BiMamba over the ordered nodes of each graph, default False.
        global_order: that order, ``"degree"`` (degree ascending, ties at random:
            Graph-Mamba's), ``"index"`` (node ids ascending: a molecule's SMILES atom
            order, which follows a peptide's backbone) or ``"dfs"`` (a depth-first search:
            a random one every training batch, the node-id one, i.e. the SMILES order of a
            SMILES molecule, at evaluation: randomised-SMILES augmentation), default
            ``"degree"``.
        mpnn: message-passing branch ``None``, ``"gcn"``, ``"sage"``, ``"gine"``, ``"gatedgcn"``,
            or ``"gcne"`` (GNN+'s Peptides layer, ``baselines.EdgeSumConv``; with ``mpnn_plus``
            only), default None.
        edge_dim: edge feature width (float ``edge_attr``), default None.
        node_vocab / edge_vocab: vocabulary sizes of integer node / edge features (embedded
            and summed, e.g. OGB atoms), default None.
        pe_dim: width of the input ``pe`` (``lap_dim`` Laplacian columns first), default 0.
        lap_dim: how many leading ``pe`` columns are Laplacian eigenvectors (random sign flip
            while training), default 0.
        pe_norm: batch-normalise the raw ``pe`` columns before their projection, default
            False. Random-walk and Laplacian encodings are small numbers (column std 0.007 to
            0.14 on Peptides-func): standardised, a step of the projection moves them as much
            as the atom embeddings (GraphGPS normalises RWSE the same way).
        dropout: after every branch and in the FFN, default 0.1.
        input_dropout: on the raw float input features, default 0.
        input_norm: batch-normalise the raw float input features, default False. Continuous
            TU attributes are raw measurements whose column scales differ by 1000x; without it
            the widest columns dominate the input projection.
        mlp_ratio: FFN width factor, 0 = no FFN, default 2.
        pool: graph readout ``"mean"``, ``"sum"``, ``"max"``, default ``"mean"``.
        mpnn_plus: the MPNN branch is a GNN+ layer (``baselines.GNNPlusLayer``: conv,
            BatchNorm, ReLU, dropout, its own residual) applied to ``h``, and the Mamba branches
            are added on top of it (``h = gnn_plus(h) + dropout(mamba(norm(h)))``), default
            False (the MPNN is one more branch on ``norm(h)``).
        mpnn_norm: the GNN+ layer's normalisation (``"batch"``, ``"layer"``, None), default
            ``"batch"``; its residual follows ``residual``.
        mpnn_act: the GNN+ layer's activation, ``"relu"`` or ``"gelu"``, default ``"relu"``.
        head_layers: depth of the graph-level head (``mlp_head``: Linear-GELU-Dropout ...
            Linear), default 2; the node-level head is one Linear.
        head_input_dropout: a dropout on the pooled vectors before the graph head (GNN+'s
            head), default False.
        gate: zero-initialised per-channel gate on the Mamba branches' sum, default False.
        mpnn_raw: the first layer's GNN+ block reads the raw float features (with ``pe``
            concatenated) through its own convolution and ego weights, as GCN+ with
            ``pre_linear=False``; the Mamba branches read the projected ones. Needs
            ``mpnn_plus``, default False.
        branch_drop: probability of dropping the Mamba branches' sum per node while training
            (stochastic depth; rescaled), default 0.
        pool_norm: batch-normalise the pooled graph vectors before the head (``PooledNorm``),
            default None = only for ``pool="sum"`` (whose scale grows with the graph size).
        eval_samples: random draws averaged at evaluation, default 1.
        eval_seed: seed of the evaluation draws, default 0.
        d_state, d_conv, expand, backend: Mamba settings, defaults 16, 4, 2, None.
        mixer: ``"mamba"`` (Mamba-1, default) or ``"mamba2"`` (Mamba-2 SSD) in every branch.
        residual: skip connections around the branches, default True (False: each layer
            replaces ``h``, as a GCN stack does; better on small homophilous graphs).
            ``"linear"`` (with ``mpnn_plus`` only): the GNN+ layer's learned ego term before
            its norm instead of the identity skip (``baselines.GNNPlusLayer``).
        sparse_adjacency: run a ``gcn`` / ``sage`` branch as a sparse CSR matrix product
            (built once per forward) instead of gather / scatter over the edge list, default
            False. Same result; ~5x faster fwd+bwd on CPU for large graphs (Tolokers, 1M
            edges: 0.88 -> 0.16 s per SAGE layer on one core).
        packed_bimamba: run each BiMamba (token and global branches; Mamba-1 without
            projection biases) as one Mamba of twice the width (``residual_bimamba``), its
            direction pairs stored as one parameter each (the state dict keeps the two-module
            keys; an optimizer state saved without it does not resume), default False. The
            same math in ~80 fewer operators per BiMamba and step (the GPU step is bound by
            their dispatch); float rounding differs from the two calls.
        fused_convs: run a ``gatedgcn`` branch with edge features as one autograd function
            (``fused_conv.gated_gcn``) and the message passing of a ``gine`` token encoder
            with edge features as another (``fused_conv.gine_aggregate``), with the convs'
            own parameters (the same state dict), default False; the same math in fewer
            operators per layer and step, other float rounding.
        packed_recompute: the packed BiMambas keep only their normalised input for the
            backward and recompute the scan inputs there, default True (the two-call path's
            activation memory); False keeps them (the same gradients; ~20 fewer operators
            per BiMamba and step for ~8E + 4N more values per token or node).
        jumping_knowledge: sum the normalised input embedding and every layer's output before
            the pooling / head (GIN's readout over all depths), default False (last layer).

    Shapes::

        x:          (N, F) float, or (N, len(node_vocab)) long
        edge_index: (2, E) long, both directions for undirected graphs
        edge_attr:  (E, edge_dim) float or (E, len(edge_vocab)) long, optional
        batch:      (N,) long graph of every node, optional (one graph)
        pe:         (N, pe_dim), optional
        out:        (N, C) for task_level="node", (G, C) for "graph"
    """

    def __init__(self, in_channels: int | None = None, num_classes: int = 2,
                 task_level: str = "node", dim: int = 64, num_layers: int = 2,
                 walk_length: int = 3, num_walks: int = 4, repeats: int = 1, tokens: bool = True,
                 token_encoder: str = "mean", readout: str = "last", global_mamba: bool = False,
                 mpnn: str | None = None, edge_dim: int | None = None,
                 node_vocab: Sequence[int] | None = None, edge_vocab: Sequence[int] | None = None,
                 pe_dim: int = 0, lap_dim: int = 0, dropout: float = 0.1,
                 input_dropout: float = 0.0, mlp_ratio: float = 2.0, pool: str = "mean",
                 eval_samples: int = 1, eval_seed: int = 0, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, backend: str | None = None, residual: bool | str = True,
                 sparse_adjacency: bool = False, pe_norm: bool = False,
                 jumping_knowledge: bool = False, mixer: str = "mamba",
                 pool_norm: bool | None = None, input_norm: bool = False,
                 mpnn_plus: bool = False, gate: bool = False, mpnn_norm: str | None = "batch",
                 branch_drop: float = 0.0, token_source: str = "walks",
                 hop_adjacency: str = "gcn", pre_norm: bool = True,
                 mpnn_raw: bool = False, packed_bimamba: bool = False,
                 packed_recompute: bool = True, fused_convs: bool = False,
                 global_order: str = "degree", mpnn_act: str = "relu", head_layers: int = 2,
                 head_input_dropout: bool = False) -> None:
        super().__init__()
        if task_level not in TASK_LEVELS:
            raise ValueError(f"task_level: expected one of {TASK_LEVELS}, got {task_level!r}")
        if mpnn not in MPNNS:
            raise ValueError(f"mpnn: expected one of {MPNNS}, got {mpnn!r}")
        if token_encoder not in TOKEN_ENCODERS:
            raise ValueError(f"token_encoder: expected one of {TOKEN_ENCODERS}, got "
                             f"{token_encoder!r}")
        if readout not in ("last", "mean", *HOP_READOUTS):
            raise ValueError(f"readout: expected 'last', 'mean', 'attention' or 'signed', "
                             f"got {readout!r}")
        if readout in HOP_READOUTS and token_source != "hops":
            raise ValueError(f"readout: {readout!r} weights hop tokens; needs "
                             f"token_source='hops', got {token_source!r}")
        if global_order not in GLOBAL_ORDERS:
            raise ValueError(f"global_order: expected one of {GLOBAL_ORDERS}, got "
                             f"{global_order!r}")
        if token_source not in TOKEN_SOURCES:
            raise ValueError(f"token_source: expected one of {TOKEN_SOURCES}, got "
                             f"{token_source!r}")
        if hop_adjacency not in HOP_ADJACENCIES:
            raise ValueError(f"hop_adjacency: expected one of {HOP_ADJACENCIES}, got "
                             f"{hop_adjacency!r}")
        if token_source == "hops" and token_encoder != "mean":
            raise ValueError(f"token_encoder: hop tokens are already averages; expected "
                             f"'mean' with token_source='hops', got {token_encoder!r}")
        check_pool_and_node_features(pool, in_channels, node_vocab)
        if not (tokens or global_mamba or mpnn):
            raise ValueError("enable at least one branch: tokens, global_mamba or mpnn")
        for name, v in (("dim", dim), ("num_layers", num_layers), ("walk_length", walk_length),
                        ("num_walks", num_walks), ("repeats", repeats),
                        ("num_classes", num_classes), ("eval_samples", eval_samples),
                        ("head_layers", head_layers)):
            _posint(name, v)
        activation(mpnn_act)  # raises on an unknown name before any layer is built
        _posint("pe_dim", pe_dim, 0)
        if not 0 <= lap_dim <= pe_dim:
            raise ValueError(f"lap_dim: expected an int in [0, pe_dim={pe_dim}], got {lap_dim!r}")
        for name, v in (("dropout", dropout), ("input_dropout", input_dropout),
                        ("branch_drop", branch_drop)):
            if not 0.0 <= float(v) < 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1), got {v!r}")
        self.task_level, self.pool = task_level, pool
        self.walk_length, self.num_walks, self.repeats = walk_length, num_walks, repeats
        self.use_tokens, self.token_encoder = tokens, token_encoder
        self.token_source, self.hop_kind = token_source, hop_adjacency
        self.global_mamba, self.global_order = global_mamba, global_order
        self.sparse_adjacency = bool(sparse_adjacency) and mpnn in ("gcn", "sage")
        if mpnn_plus and not mpnn:
            raise ValueError("mpnn_plus: needs an mpnn ('gcn', 'sage', 'gine', 'gatedgcn'), got "
                             "mpnn=None")
        if mpnn == "gcne" and not mpnn_plus:
            raise ValueError("mpnn: 'gcne' is a GNN+ layer and needs mpnn_plus=True, got "
                             f"mpnn_plus={mpnn_plus!r}")
        if mpnn_raw and (not mpnn_plus or node_vocab is not None):
            raise ValueError("mpnn_raw: the first GNN+ block reads raw float features; needs "
                             f"mpnn_plus=True and in_channels, got mpnn_plus={mpnn_plus!r}, "
                             f"node_vocab={node_vocab!r}")
        if residual == "linear" and not mpnn_plus:
            raise ValueError("residual: 'linear' is the GNN+ layer's ego term and needs "
                             f"mpnn_plus=True, got mpnn_plus={mpnn_plus!r}")
        self.jumping_knowledge = bool(jumping_knowledge)
        self.packed_bimamba = bool(packed_bimamba)
        self.pe_dim, self.lap_dim = pe_dim, lap_dim
        self.eval_samples, self.eval_seed = eval_samples, eval_seed
        self.input_encoder = (nn.Linear(in_channels, dim) if node_vocab is None
                              else CategoricalEncoder(node_vocab, dim))
        self.input_dropout = nn.Dropout(input_dropout)
        self.input_norm = (nn.BatchNorm1d(in_channels) if input_norm and node_vocab is None
                           else None)
        self.pe_encoder = nn.Linear(pe_dim, dim) if pe_dim else None
        self.pe_norm = nn.BatchNorm1d(pe_dim) if pe_dim and pe_norm else None
        # A GCN+ block reads edge features through its normalised edge term, a gcne block in
        # every message (baselines.py).
        uses_edges = (mpnn in ("gine", "gatedgcn") or (mpnn_plus and mpnn in ("gcn", "gcne"))
                      or (tokens and token_encoder == "gine"))
        self.edge_encoder: nn.Module | None = None
        hidden_edge_dim = None
        if uses_edges and edge_vocab is not None:
            self.edge_encoder = CategoricalEncoder(edge_vocab, dim)
            hidden_edge_dim = dim
        elif uses_edges and edge_dim:
            self.edge_encoder = nn.Linear(edge_dim, dim)
            hidden_edge_dim = dim
        mamba_kwargs = {"d_state": d_state, "d_conv": d_conv, "expand": expand,
                        "backend": backend, "mixer": mixer}
        self.mpnn_raw = bool(mpnn_raw)
        raw_width = (in_channels + pe_dim) if self.mpnn_raw else None
        self.layers = nn.ModuleList(
            GMNLayer(dim, walk_length, tokens, token_encoder, global_mamba, mpnn, hidden_edge_dim,
                     readout, dropout, mlp_ratio, mamba_kwargs, residual, mpnn_plus, gate,
                     mpnn_norm, branch_drop, token_source, pre_norm,
                     raw_width if i == 0 else None, packed_bimamba, mpnn_act)
            for i in range(num_layers))
        for module in self.layers.modules():
            if isinstance(module, (GMNLayer, _TokenBranch)):
                module.packed_recompute = bool(packed_recompute)
            if isinstance(module, _MPNN):  # decided once: the forward only reads the flag
                module.fused = bool(fused_convs) and can_fuse(module.conv)
            if isinstance(module, _TokenBranch):
                module.fused = bool(fused_convs) and can_fuse_gine(getattr(module, "local", None))
        self.norm = RMSNorm(dim) if pre_norm else nn.Identity()
        self.pool_norm = pooled_norm(pool_norm, pool, task_level, dim)
        self.head = (nn.Linear(dim, num_classes) if task_level == "node" else
                     mlp_head(dim, num_classes, head_layers, "gelu", dropout,
                              head_input_dropout))

    @classmethod
    def example(cls) -> tuple[dict, dict]:
        """A tiny model and input (two graphs of 5 and 4 nodes) for the registry test."""
        init = {"in_channels": 3, "num_classes": 2, "task_level": "graph", "dim": 8,
                "num_layers": 1, "walk_length": 2, "num_walks": 2, "global_mamba": True,
                "mpnn": "gine", "token_encoder": "gine", "edge_dim": 2, "d_state": 4,
                "pe_dim": 2, "lap_dim": 1}
        return init, example_graph_inputs()

    def planner(self) -> GraphPlanner:
        """What a ``GraphPlan`` of this model holds (the graph tasks' ``collate`` builds one
        per batch in the loader; ``plan.GraphPlanner``)."""
        walks = self.use_tokens and not self._hop_tokens()
        return GraphPlanner(self.walk_length, self.num_walks, self.repeats, walks,
                            walks and self.token_encoder == "gine", self.global_mamba,
                            self.sparse_adjacency,
                            self.hop_kind if self._hop_tokens() else None,
                            self.eval_samples, self.eval_seed, self.packed_bimamba,
                            self.global_order)

    def forward(self, x: Any, edge_index: torch.Tensor | None = None, *extra: Any,
                edge_attr: torch.Tensor | None = None, batch: torch.Tensor | None = None,
                pe: torch.Tensor | None = None, plan: GraphPlan | None = None,
                node_mask: torch.Tensor | None = None,
                num_graphs: int | None = None) -> torch.Tensor:
        """Logits ``(N, C)`` or ``(G, C)``; ``x`` may be a PyG ``Data`` / ``Batch``.

        ``edge_attr``, ``batch`` and ``pe`` are keyword-only: PyG models disagree on their third
        positional argument (``batch`` in many, ``edge_weight`` in ``BasicGNN``), and a batch
        vector taken for edge features would pool a whole batch into one row, so
        ``model(x, edge_index, batch)`` raises ``TypeError`` instead of guessing.

        ``plan``: the batch's tokens, orders and adjacencies built ahead (``self.planner()``;
        a ``Data`` / ``Batch`` input brings its ``plan`` attribute), default None (built here,
        with the same code). A plan whose draws are of the other kind (training / evaluation)
        than the model's mode gets fresh draws; one of another planner or graph size raises
        ``ValueError``.

        ``node_mask (N,)`` and ``num_graphs``: a padded static batch (``static_batch``; graph
        level, as ``GNNPlus``): padding nodes have mask 0 and graph id ``num_graphs``, BatchNorm
        takes the real nodes' statistics, ``plan`` (required) was built on the padded graph
        (``num_graphs + 1`` graphs), and the output keeps the first ``num_graphs`` rows.
        """
        if node_mask is not None:
            self._check_static(num_graphs, plan)
        plan = data_plan(x, plan)
        x, edge_index, edge_attr, batch, pe = graph_forward_inputs(
            self, x, edge_index, extra, edge_attr, batch, pe)
        check_node_inputs(x, None, 0)
        if not isinstance(edge_index, torch.Tensor) or edge_index.dim() != 2 \
                or edge_index.shape[0] != 2:
            got = tuple(edge_index.shape) if isinstance(edge_index, torch.Tensor) else edge_index
            raise ValueError(f"edge_index: expected shape (2, E), got {got}")
        check_node_inputs(x, pe, self.pe_dim)
        n = x.shape[0]
        if isinstance(self.input_encoder, CategoricalEncoder):
            h = self.input_encoder(x)
        else:
            # Dropout on the raw features (as GCN / GAT do on bag-of-words inputs), not on
            # their embedding: it regularises the first, largest matrix.
            x = x.float()
            if self.input_norm is not None:
                x = masked_batch_norm(x, self.input_norm, node_mask)
            x = self.input_dropout(x)
            h = self.input_encoder(x)
        if self.pe_encoder is not None:
            pe = pe.float()
            if self.training and self.lap_dim:
                sign = torch.randint(0, 2, (1, self.lap_dim), device=pe.device) * 2 - 1
                pe = torch.cat([pe[:, :self.lap_dim] * sign, pe[:, self.lap_dim:]], 1)
            if self.pe_norm is not None:
                pe = masked_batch_norm(pe, self.pe_norm, node_mask)
            h = h + self.pe_encoder(pe)
        raw = None
        if self.mpnn_raw:  # the first GNN+ block reads [x, pe] (GCN+ with pre_linear=False)
            raw = x if self.pe_encoder is None else torch.cat([x, pe.to(x.dtype)], 1)
        ea = encode_edges(self.edge_encoder, edge_attr)
        plan = self._plan(plan, edge_index, n, batch)
        # Once per forward, shared by every eval sample.
        adj_t = plan.adjacency.matrix() if plan.adjacency is not None else None
        hop_adj = plan.hop_adjacency.matrix() if plan.hop_adjacency is not None else None
        # One pass without random branches or while training; eval_samples averaged else.
        outs = [self._run(h, edge_index, ea, batch, plan, draw, adj_t, hop_adj, raw, node_mask)
                for draw in plan.draws or (PlanDraw(),)]
        return outs[0] if len(outs) == 1 else sum(outs) / len(outs)

    def _check_static(self, num_graphs: int | None, plan: GraphPlan | None) -> None:
        """What a padded batch needs: graph level, the graph count, a plan built on the padded
        graph, and BatchNorm only where the mask reaches it (not in GIN's inner MLP nor on the
        pooled graphs), no token branch (its encoders are not masked)."""
        local = self.layers[0].local
        check_padded_model(self.task_level, num_graphs,
                           self.use_tokens or self.pool_norm is not None
                           or (local is not None and local.kind == "gine"),
                           "tokens, pool_norm and GIN+ blocks do not take it")
        if plan is None or plan.num_graphs != num_graphs + 1:
            raise ValueError("node_mask: a padded batch needs the plan of the padded graph "
                             f"({num_graphs} graphs + 1 of padding), got "
                             f"{None if plan is None else plan.num_graphs} graphs")

    def _plan(self, plan: GraphPlan | None, edge_index: torch.Tensor, n: int,
              batch: torch.Tensor | None) -> GraphPlan:
        """``plan`` checked against this model and graph, with draws of the model's mode
        (training / evaluation); built here when None."""
        planner = self.planner()
        if plan is None:
            return planner(edge_index, n, batch, training=self.training)
        plan = checked_plan(plan, planner, n, int(edge_index.shape[1]))
        if plan.training != self.training and planner.random:
            draws = planner.draws(edge_index, n, batch, plan.num_graphs, self.training)
            plan = replace(plan, training=self.training, draws=draws)
        return plan

    def _hop_tokens(self) -> bool:
        return self.use_tokens and self.token_source == "hops"

    def _run(self, h, edge_index, edge_attr, batch, plan: GraphPlan, draw: PlanDraw,
             adj_t=None, hop_adj=None, raw=None, node_mask=None) -> torch.Tensor:
        ctx = _Context(edge_index, edge_attr, draw.checked_tokens(), draw.token_edges,
                       draw.serialization(), adj_t, hop_adj, node_mask)
        for key in ("order_indices", "token_indices"):  # built in the loader
            if getattr(draw, key) is not None:
                ctx.cache[key] = getattr(draw, key)
        depths = [h] if self.jumping_knowledge else None
        for i, layer in enumerate(self.layers):
            h = layer(h, ctx, raw if i == 0 else None)
            if depths is not None:
                depths.append(h)
        if depths is not None:
            h = torch.stack([self.norm(d) for d in depths]).sum(0)  # every depth contributes
        else:
            h = self.norm(h)
        if node_mask is not None:
            h = padded_readout(h, batch, self.pool, plan.num_graphs - 1)
        elif self.task_level == "graph":
            h = graph_readout(h, batch, self.pool, self.pool_norm, plan.num_graphs)
        return self.head(h)


@MODELS.register
class GraphMamba(GraphMambaNetwork):
    """Graph-Mamba (Wang et al., 2024): nodes of each graph in degree order with random
    tie-breaking, a BiMamba over that sequence next to a GatedGCN, no neighbourhood tokens;
    ``eval_samples`` orders averaged at evaluation. Arguments as ``GraphMambaNetwork`` (whose
    ``tokens``, ``global_mamba`` and ``mpnn`` default here to False, True, ``"gatedgcn"``)."""

    def __init__(self, in_channels: int | None = None, num_classes: int = 2,
                 tokens: bool = False, global_mamba: bool = True, mpnn: str | None = "gatedgcn",
                 eval_samples: int = 4, **kwargs: Any) -> None:
        super().__init__(in_channels=in_channels, num_classes=num_classes, tokens=tokens,
                         global_mamba=global_mamba, mpnn=mpnn, eval_samples=eval_samples,
                         **kwargs)

    @classmethod
    def example(cls) -> tuple[dict, dict]:
        ei = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]])
        init = {"in_channels": 3, "num_classes": 3, "dim": 8, "num_layers": 1, "d_state": 4}
        return init, {"x": torch.randn(5, 3), "edge_index": ei}
