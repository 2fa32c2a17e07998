"""Tuned classic message-passing baselines (GCN+, GIN+, GatedGCN+, SAGE+) in the graph pipeline.

"Classic GNNs are Strong Baselines" (Luo et al., NeurIPS 2024) and GNN+ (Luo et al., ICML 2025)
show that GCN / GIN / GatedGCN with residual connections, normalisation, dropout, edge
features, a feed-forward block and positional encodings match graph transformers and graph
SSMs. ``GNNPlus`` is that recipe on PyG's layers (``GCNConv``, ``GINEConv`` / ``GINConv``,
``ResGatedGraphConv``, ``SAGEConv``); the registered names fix the convolution::

    model = GCNPlus(in_channels=1433, num_classes=7, task_level="node", dim=512, num_layers=3)
    logits = model(data.x, data.edge_index)                # (N, 7)
    logits = model(data)                                   # same, from a Data / Batch

One layer (``GNNPlusLayer``; ``conv`` reads edge features when the model has them)::

    y = dropout(act(norm(conv(h, edge_index, e))))
    h = h + y                 (residual=True and equal widths; else h = y)
    h = norm2(h + ffn(h))     (mlp_ratio > 0: the FFN block of GNN+)

``residual="linear"`` is the skip of the tuned heterophilous GCNs (Luo et al., NeurIPS 2024;
the "-sep" ego / neighbour split of Platonov et al., 2023): the node's own features enter
through their own weight matrix, before the norm, and the layer replaces ``h``::

    h = dropout(act(norm(conv(h, edge_index, e) + W_self h)))

GCN's self-loop mixes a node into its neighbours' mean with weight ``1 / d``; on heterophilous
graphs the separate ego term keeps it apart.

``GCNPlus`` with edge features adds GNN+'s edge term to ``GCNConv``: every edge's embedded
feature (projected when its width differs from the layer's), weighted by the same symmetric
normalisation ``1 / sqrt(d_u d_v)`` (degrees with the self-loop), summed into its target.

``conv="gcne"`` is the GCN of the GNN+ authors' own Peptides configs (``EdgeSumConv``): the
bond enters every message, ``out_v = b + Σ_{u->v} relu(W h_u + e_uv)``, with no self-loop and
no degree normalisation. With GELU (``act``), no residual, no FFN and a 4-layer head with a
dropout before every Linear (``head_input_dropout``) it is their Peptides-func recipe
(``configs/graph/peptides_func_gcnplus.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import scatter

from geossm.registry import MODELS

from .models import (CategoricalEncoder, _posint, activation, check_node_inputs,
                     check_padded_model, check_pool_and_node_features, encode_edges,
                     example_graph_inputs, graph_forward_inputs, graph_readout, mlp_head,
                     padded_readout, pooled_norm, sparse_adjacency)
from .plan import GraphPlan, GraphPlanner, checked_plan, data_plan
from .static_batch import masked_batch_norm

__all__ = ["EdgeSumConv", "GNNPlusLayer", "GNNPlus", "GCNPlus", "GINPlus", "GatedGCNPlus",
           "SAGEPlus"]

CONVS = ("gcn", "gcne", "gine", "gatedgcn", "sage")
NORMS = (None, "batch", "layer")


def edge_projection(edge_dim: int | None, dim: int) -> nn.Module | None:
    """What maps embedded edge features ``(E, edge_dim)`` to a layer's width ``dim``: None
    without edge features, the identity when they are already that wide (used as they are),
    else a bias-free Linear."""
    if not edge_dim:
        return None
    return nn.Identity() if edge_dim == dim else nn.Linear(edge_dim, dim, bias=False)


class EdgeSumConv(nn.Module):
    """GNN+'s GCN for molecules (its Peptides configs' ``gcne`` layer): every node sums the
    rectified messages of its in-neighbours, with no self-loop and no degree normalisation::

        out_v = b + Σ_{u->v} relu(W h_u + e_uv)

    Shapes: ``h (N, in_dim)``, ``edge_index (2, E)``, ``edge_attr (E, edge_dim)`` or None (the
    message is ``relu(W h_u)``), out ``(N, dim)``. Edge features wider or narrower than ``dim``
    go through their own bias-free projection."""

    def __init__(self, in_dim: int, dim: int, edge_dim: int | None = None) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, dim, bias=False)
        self.edge_proj = edge_projection(edge_dim, dim)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor,
                edge_attr: torch.Tensor | None = None) -> torch.Tensor:
        src, dst = edge_index
        message = self.lin(h)[src]
        if self.edge_proj is not None and edge_attr is not None:
            message = message + self.edge_proj(edge_attr)
        return scatter(F.relu(message), dst, 0, dim_size=h.shape[0], reduce="sum") + self.bias


def check_residual(residual: bool | str) -> None:
    """``residual`` is True, False or ``"linear"``; anything else raises ValueError."""
    if not (isinstance(residual, bool) or residual == "linear"):
        raise ValueError(f"residual: expected True, False or 'linear', got {residual!r}")


def _norm(kind: str | None, dim: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    return nn.Identity()


class GNNPlusLayer(nn.Module):
    """One GNN+ layer (see the module docstring): ``h (N, in_dim) -> (N, dim)``.

    Args:
        conv: ``"gcn"``, ``"gcne"`` (``EdgeSumConv``), ``"gine"``, ``"gatedgcn"`` or ``"sage"``.
        in_dim, dim: input and output widths (the residual needs them equal).
        edge_dim: width of the (embedded) edge features, None = the graph has none.
        norm: ``"batch"``, ``"layer"`` or None, default ``"batch"``.
        dropout: after the activation and inside the FFN, default 0.
        residual: True (identity skip after the activation), False, or ``"linear"`` (a
            learned ego term added before the norm, see the module docstring), default True.
        mlp_ratio: FFN width factor, 0 = no FFN, default 0.
        final: the output layer (node logits): the convolution alone, no norm, activation,
            dropout, residual or FFN, default False.
        act: ``"relu"`` or ``"gelu"``, after the norm and in the FFN, default ``"relu"``.
    """

    def __init__(self, conv: str, in_dim: int, dim: int, edge_dim: int | None = None,
                 norm: str | None = "batch", dropout: float = 0.0,
                 residual: bool | str = True, mlp_ratio: float = 0.0,
                 final: bool = False, act: str = "relu") -> None:
        super().__init__()
        import torch_geometric.nn as pygnn
        if conv not in CONVS:
            raise ValueError(f"conv: expected one of {CONVS}, got {conv!r}")
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
        check_residual(residual)
        self.kind, self.edge_dim, self.final = conv, edge_dim, final
        linear = residual == "linear"
        self.residual = bool(residual) and not linear and in_dim == dim and not final
        self.ego = nn.Linear(in_dim, dim) if linear else None
        self.edge_proj = None
        self.act = activation(act)
        if conv == "gcne":
            self.conv = EdgeSumConv(in_dim, dim, edge_dim)
        elif conv == "gcn":
            self.conv = pygnn.GCNConv(in_dim, dim)
            self.edge_proj = edge_projection(edge_dim, dim)
        elif conv == "sage":
            self.conv = pygnn.SAGEConv(in_dim, dim)
        elif conv == "gine":
            mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(),
                                nn.Linear(dim, dim))
            self.conv = (pygnn.GINEConv(mlp, train_eps=True, edge_dim=edge_dim) if edge_dim
                         else pygnn.GINConv(mlp, train_eps=True))
        else:
            self.conv = pygnn.ResGatedGraphConv(in_dim, dim, edge_dim=edge_dim)
        self.norm = _norm(norm, dim)
        self.drop = nn.Dropout(dropout)
        hidden = 0 if final else int(mlp_ratio * dim)
        self.ffn = (nn.Sequential(nn.Linear(dim, hidden), activation(act), nn.Dropout(dropout),
                                  nn.Linear(hidden, dim), nn.Dropout(dropout))
                    if hidden > 0 else None)
        self.norm2 = _norm(norm, dim) if hidden > 0 else None

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor,
                edge_attr: torch.Tensor | None = None,
                adj_t: torch.Tensor | None = None,
                node_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``adj_t``: optional sparse CSR (target, source) matrix for ``gcn`` / ``sage`` (the
        same product as ``edge_index``, faster on CPU); edge features need ``edge_index``.
        ``node_mask (N,)``: 1 for real nodes, 0 for the padding of a static batch (BatchNorm
        statistics over the real nodes only, ``static_batch.masked_batch_norm``)."""
        y = self._conv(h, edge_index, edge_attr, adj_t)
        if self.ego is not None:
            y = y + self.ego(h)
        if self.final:
            return y
        y = self.drop(self.act(masked_batch_norm(y, self.norm, node_mask)))
        h = h + y if self.residual else y
        if self.ffn is not None:
            h = masked_batch_norm(h + self.ffn(h), self.norm2, node_mask)
        return h

    def _conv(self, h, edge_index, edge_attr, adj_t) -> torch.Tensor:
        if self.kind == "gcne":
            return self.conv(h, edge_index, edge_attr)
        if self.kind in ("gine", "gatedgcn") and self.edge_dim:
            if edge_attr is None:
                raise ValueError(f"edge_attr: the {self.kind} layer was built with edge_dim="
                                 f"{self.edge_dim}, got None")
            return self.conv(h, edge_index, edge_attr)
        y = self.conv(h.float(), adj_t) if adj_t is not None else self.conv(h, edge_index)
        if self.edge_proj is not None and edge_attr is not None:
            y = y + self._edge_term(edge_attr, edge_index, h.shape[0])
        return y

    def _edge_term(self, edge_attr: torch.Tensor, edge_index: torch.Tensor,
                   n: int) -> torch.Tensor:
        """``Σ_{u->v} e_uv W_e / sqrt(d_u d_v)`` per target ``v`` (degrees with self-loops,
        GCN's normalisation): ``(N, dim)``."""
        src, dst = edge_index
        deg = torch.bincount(dst, minlength=n).to(edge_attr.dtype) + 1.0
        weight = (deg[src] * deg[dst]).rsqrt().unsqueeze(1)
        return scatter(self.edge_proj(edge_attr) * weight, dst, 0, dim_size=n, reduce="sum")


@MODELS.register
class GNNPlus(nn.Module):
    r"""Classic GNN with the GNN+ recipe for node or graph prediction (module docstring).

    Args:
        in_channels: float node feature width ``F``, default None (use ``node_vocab``).
        num_classes: output width ``C``, default 2.
        task_level: ``"node"`` or ``"graph"``, default ``"node"``.
        conv: ``"gcn"``, ``"gcne"`` (``EdgeSumConv``: GNN+'s Peptides layer), ``"gine"``
            (``GINConv`` without edge features), ``"gatedgcn"``, ``"sage"``, default ``"gcn"``.
        dim: hidden width, default 256.
        num_layers: default 3.
        norm: ``"batch"``, ``"layer"`` or None, default ``"batch"``.
        dropout: after every layer and in the FFN / head, default 0.2.
        input_dropout: on the raw float features, default 0.
        input_norm: batch-normalise the raw float features, default False.
        residual: True (identity skip), False, or ``"linear"`` (the tuned heterophilous GCN's
            learned ego term before the norm; ``GNNPlusLayer``), default True.
        mlp_ratio: FFN width factor per layer, 0 = none, default 0.
        pre_linear: project the input to ``dim`` before the first layer, default True (False:
            the first convolution reads the raw features, as GCN does; it has no residual).
        edge_dim / edge_vocab: float edge feature width / integer edge vocabularies, default
            None (no edge features).
        node_vocab: integer node feature vocabularies (OGB atoms), default None.
        pe_dim: width of the input ``pe`` (RWSE / LapPE / degree), default 0; concatenated to
            float features (batch-normalised first: the columns are tiny), or projected and
            added to embedded categorical ones.
        pool: graph readout ``"mean"``, ``"sum"``, ``"max"``, default ``"mean"``.
        pool_norm: ``PooledNorm`` after pooling, default None = only for ``pool="sum"``.
        head_layers: head depth after the layers (Linear-act-Dropout ... Linear, ``mlp_head``;
            one Linear at node level), default 2. ``0`` (node level only): the last of the
            ``num_layers`` convolutions outputs the logits (Kipf & Welling's GCN).
        sparse_adjacency: ``gcn`` / ``sage`` as one sparse CSR product, default False.
        act: ``"relu"`` or ``"gelu"`` in the layers, FFN and head, default ``"relu"``.
        head_input_dropout: a dropout on the pooled vectors before the graph head's first
            Linear (GNN+'s head), default False.

    Shapes::

        x: (N, F) float or (N, len(node_vocab)) long;  edge_index: (2, E)
        edge_attr: (E, edge_dim) float or (E, len(edge_vocab)) long, optional
        batch: (N,), optional;  pe: (N, pe_dim), optional
        out: (N, C) node level, (G, C) graph level
    """

    default_conv = "gcn"

    def __init__(self, in_channels: int | None = None, num_classes: int = 2,
                 task_level: str = "node", conv: str | None = None, dim: int = 256,
                 num_layers: int = 3, norm: str | None = "batch", dropout: float = 0.2,
                 input_dropout: float = 0.0, input_norm: bool = False, residual: bool | str = True,
                 mlp_ratio: float = 0.0, pre_linear: bool = True, edge_dim: int | None = None,
                 edge_vocab: Sequence[int] | None = None,
                 node_vocab: Sequence[int] | None = None, pe_dim: int = 0, pool: str = "mean",
                 pool_norm: bool | None = None, head_layers: int = 2,
                 sparse_adjacency: bool = False, act: str = "relu",
                 head_input_dropout: bool = False) -> None:
        super().__init__()
        conv = conv or self.default_conv
        if task_level not in ("node", "graph"):
            raise ValueError(f"task_level: expected 'node' or 'graph', got {task_level!r}")
        check_pool_and_node_features(pool, in_channels, node_vocab)
        for name, v, low in (("dim", dim, 1), ("num_layers", num_layers, 1),
                             ("num_classes", num_classes, 1), ("pe_dim", pe_dim, 0),
                             ("head_layers", head_layers, 0)):
            _posint(name, v, low)
        for name, v in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= float(v) < 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1), got {v!r}")
        if head_layers == 0 and task_level != "node":
            raise ValueError("head_layers: 0 (a convolution outputs the logits) is for "
                             f"task_level='node', got task_level={task_level!r}")
        self.task_level, self.pool, self.pe_dim = task_level, pool, pe_dim
        self.sparse_adjacency = bool(sparse_adjacency) and conv in ("gcn", "sage")
        self.categorical = node_vocab is not None
        self.input_norm = (nn.BatchNorm1d(in_channels) if input_norm and not self.categorical
                           else None)
        self.pe_norm = nn.BatchNorm1d(pe_dim) if pe_dim else None
        self.input_dropout = nn.Dropout(input_dropout)
        if self.categorical:
            self.input_encoder: nn.Module = CategoricalEncoder(node_vocab, dim)
            self.pe_encoder = nn.Linear(pe_dim, dim) if pe_dim else None
            width = dim
        else:
            self.pe_encoder = None
            width = in_channels + pe_dim
            self.input_encoder = nn.Linear(width, dim) if pre_linear else nn.Identity()
            width = dim if pre_linear else width
        self.edge_encoder: nn.Module | None = None
        hidden_edge_dim = None
        if edge_vocab is not None:
            self.edge_encoder, hidden_edge_dim = CategoricalEncoder(edge_vocab, dim), dim
        elif edge_dim:
            self.edge_encoder, hidden_edge_dim = nn.Linear(edge_dim, dim), dim
        layers = []
        for i in range(num_layers):
            final = head_layers == 0 and i == num_layers - 1
            layers.append(GNNPlusLayer(conv, width, num_classes if final else dim,
                                       hidden_edge_dim, norm, dropout, residual, mlp_ratio,
                                       final, act))
            width = dim
        self.layers = nn.ModuleList(layers)
        self.pool_norm = pooled_norm(pool_norm, pool, task_level, dim)
        if task_level == "graph":
            self.head = mlp_head(dim, num_classes, head_layers, act, dropout,
                                 head_input_dropout)
        else:
            # (a Sequential, as the graph head: the state dict's keys are head.0.*)
            self.head = (nn.Sequential(nn.Linear(dim, num_classes)) if head_layers
                         else nn.Identity())

    @classmethod
    def example(cls) -> tuple[dict, dict]:
        """A tiny model and input (two graphs of 5 and 4 nodes) for the registry test."""
        init = {"in_channels": 3, "num_classes": 2, "task_level": "graph", "dim": 8,
                "num_layers": 2, "edge_dim": 2, "pe_dim": 2, "mlp_ratio": 2}
        return init, example_graph_inputs()

    def planner(self) -> GraphPlanner:
        """What a ``GraphPlan`` of this model holds: the graph count and, with
        ``sparse_adjacency``, the adjacency (the graph tasks' ``collate`` builds it)."""
        return GraphPlanner(sparse_adjacency=self.sparse_adjacency)

    def forward(self, x: Any, edge_index: torch.Tensor | None = None, *extra: Any,
                edge_attr: torch.Tensor | None = None, batch: torch.Tensor | None = None,
                pe: torch.Tensor | None = None, plan: GraphPlan | None = None,
                node_mask: torch.Tensor | None = None,
                num_graphs: int | None = None) -> torch.Tensor:
        """Logits ``(N, C)`` or ``(G, C)``; ``x`` may be a PyG ``Data`` / ``Batch``.
        ``edge_attr``, ``batch``, ``pe`` and ``plan`` are keyword-only (as
        ``GraphMambaNetwork``; ``plan`` from ``self.planner()``, default None: the adjacency
        and graph count are found here). ``node_mask (N,)`` and ``num_graphs``: a padded
        static batch (``static_batch.StaticBatch``; graph level): padding nodes have mask 0
        and graph id ``num_graphs``, and the output keeps the first ``num_graphs`` rows."""
        if node_mask is not None:
            self._check_static(num_graphs)
        plan = data_plan(x, plan)
        x, edge_index, edge_attr, batch, pe = graph_forward_inputs(
            self, x, edge_index, extra, edge_attr, batch, pe)
        check_node_inputs(x, pe, self.pe_dim)
        if plan is not None:
            plan = checked_plan(plan, self.planner(), x.shape[0], int(edge_index.shape[1]))
        h = self._embed(x, pe, node_mask)
        ea = encode_edges(self.edge_encoder, edge_attr)
        if plan is not None and plan.adjacency is not None:
            adj_t = plan.adjacency.matrix()
        else:
            adj_t = sparse_adjacency(edge_index, x.shape[0]) if self.sparse_adjacency else None
        for layer in self.layers:
            h = layer(h, edge_index, ea, adj_t, node_mask)
        if node_mask is not None:
            h = padded_readout(h, batch, self.pool, num_graphs)
        elif self.task_level == "graph":
            h = graph_readout(h, batch, self.pool, self.pool_norm,
                              plan.num_graphs if plan is not None else None)
        return self.head(h)

    def _check_static(self, num_graphs: int | None) -> None:
        """What a padded batch needs: graph level, the graph count, no norm that mixes rows
        without the mask (GIN's inner BatchNorm, the pooled-graph norm)."""
        check_padded_model(self.task_level, num_graphs,
                           self.pool_norm is not None or self.layers[0].kind == "gine",
                           "GIN's inner BatchNorm and pool_norm do not take it")

    def _embed(self, x: torch.Tensor, pe: torch.Tensor | None,
               node_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pe_norm is not None:
            pe = masked_batch_norm(pe.float(), self.pe_norm, node_mask)
        if self.categorical:
            h = self.input_encoder(x)
            return h + self.pe_encoder(pe) if self.pe_encoder is not None else h
        x = x.float()
        if self.input_norm is not None:
            x = masked_batch_norm(x, self.input_norm, node_mask)
        if pe is not None and self.pe_norm is not None:
            x = torch.cat([x, pe], 1)
        return self.input_encoder(self.input_dropout(x))


@MODELS.register
class GCNPlus(GNNPlus):
    """``GNNPlus`` with ``conv="gcn"`` (GCN+; edge features through GNN+'s normalised edge
    term)."""

    default_conv = "gcn"


@MODELS.register
class GINPlus(GNNPlus):
    """``GNNPlus`` with ``conv="gine"`` (GIN+: ``GINEConv`` with edge features, ``GINConv``
    without)."""

    default_conv = "gine"


@MODELS.register
class GatedGCNPlus(GNNPlus):
    """``GNNPlus`` with ``conv="gatedgcn"`` (GatedGCN+ on PyG's ``ResGatedGraphConv``; edges
    gate the messages but are not updated per layer, unlike the original GatedGCN)."""

    default_conv = "gatedgcn"


@MODELS.register
class SAGEPlus(GNNPlus):
    """``GNNPlus`` with ``conv="sage"``."""

    default_conv = "sage"
