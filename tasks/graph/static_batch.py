"""Training batches of one fixed layout, for a graph step replayed as a CUDA graph.

A Peptides-func step at batch 16 is ~150 small kernels of GPU work behind ~1,300 operator
dispatches on the host: the GPU waits. ``train.cuda_graph`` (``geossm.engine.cuda_graph``)
records a step once and replays it, but only for batches of one layout, while every batch of
molecules has other node and edge counts. ``train.static_batch: {nodes: N, edges: E}`` pads each
training batch (graph-level tasks with multi-label targets; the GNN+ baselines, and Graph Mambas
whose plan is their global order) to ``N`` nodes, ``E`` edges and ``train.batch_size`` graphs::

    padding nodes   features 0, pe 0, graph id G (one extra graph, dropped after pooling),
                    node_mask 0
    padding edges   self-loops of the padding nodes, round-robin (real nodes receive nothing)
    missing graphs  (the epoch's last, smaller batch) no nodes, labels NaN (the loss skips them)

The model normalises with statistics of the real nodes only (``masked_batch_norm``) and pools
``G + 1`` graphs, keeping the first ``G``: the outputs, loss and gradients of the unpadded batch
(float rounding aside). A Graph Mamba's plan is built on the padded graph in the loader
(``plan_fields``): the padding graph is one more sequence, which the scan keeps apart from the
real ones. A batch larger than ``N`` nodes or ``E`` edges stays unpadded (a PyG
``Batch``, which the step runs eagerly: same results); the first one warns (once per loader
worker), and ``StaticBatch.oversized`` counts them in the process that pads.

The padded batch is a mapping (``train.cuda_graph`` keys its records by the tensors' shapes
and the plain values)::

    x (N, F), edge_index (2, E), edge_attr (E, ...), pe (N, P), batch (N,), node_mask (N,),
    y (G, L), num_graphs G, graphs (the real graph count; the last batch's differs),
    order (order (N,), inverse (N,), cu_seqlens (G+2,)) and order_indices (a Graph Mamba's)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch

from .plan import GraphPlan, GraphPlanner, PlanDraw

__all__ = ["StaticBatch", "masked_batch_norm", "is_static_batch", "plan_fields", "padded_plan",
           "check_flat_planner"]

#: ``train.static_batch: auto`` rounds its node and edge counts up to multiples of this.
ROUND = 64

#: Fields of a PyG batch padded per node / per edge (those the batch holds).
NODE_FIELDS = ("x", "pe")
EDGE_FIELDS = ("edge_attr",)


def is_static_batch(batch: Any) -> bool:
    """True for a padded training batch (``StaticBatch.pad``'s mapping)."""
    return isinstance(batch, Mapping) and "node_mask" in batch


@dataclass
class StaticBatch:
    """Pads PyG batches to ``nodes`` nodes, ``edges`` edges and ``graphs`` graphs (module
    docstring). ``oversized`` counts the batches left unpadded because they did not fit (in
    this process)."""

    nodes: int
    edges: int
    graphs: int
    oversized: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        for name in ("nodes", "edges", "graphs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"train.static_batch.{name}: expected an int >= 1, got "
                                 f"{value!r}")

    @classmethod
    def from_config(cls, spec: Any, graphs: int) -> StaticBatch | None:
        """``train.static_batch`` (``{nodes: N, edges: E}`` or null) for batches of ``graphs``
        graphs; None when unset."""
        if spec is None:
            return None
        if not isinstance(spec, Mapping) or set(spec) != {"nodes", "edges"}:
            raise ValueError("train.static_batch: expected {nodes: N, edges: E}, auto or null, "
                             f"got {spec!r}")
        return cls(int(spec["nodes"]), int(spec["edges"]), int(graphs))

    @classmethod
    def fitted(cls, nodes: Sequence[int], edges: Sequence[int], graphs: int, seed: int,
               epochs: int) -> StaticBatch:
        """``train.static_batch: auto``: the smallest layout (multiples of ``ROUND``) that holds
        every training batch of epochs ``1..epochs`` of a one-process run, one node more for
        the padding graph. The trainer's sampler (``DistributedSampler``, shuffled, one
        replica) orders epoch ``e`` by ``torch.randperm(len(nodes))`` seeded with ``seed + e``;
        the same permutations cut into batches of ``graphs`` give the exact batch sizes (under
        ``torchrun`` a rank's shard may not fit: that batch runs unpadded, with the warning).
        ``nodes`` / ``edges``: the counts of every training graph, ``(num_graphs,)``."""
        n, e = torch.as_tensor(nodes, dtype=torch.long), torch.as_tensor(edges, dtype=torch.long)
        if n.dim() != 1 or n.shape != e.shape or n.numel() == 0:
            raise ValueError(f"train.static_batch: auto needs the node and edge counts of every "
                             f"training graph, got shapes {tuple(n.shape)} / {tuple(e.shape)}")
        counts = torch.stack([n, e], 1)  # (num_graphs, 2)
        rest = (-n.numel()) % graphs  # the last, smaller batch: zero rows make it a full one
        most = torch.zeros(2, dtype=torch.long)
        gen = torch.Generator()
        for epoch in range(1, int(epochs) + 1):
            gen.manual_seed(int(seed) + epoch)
            order = torch.randperm(n.numel(), generator=gen)
            sums = F.pad(counts[order], (0, 0, 0, rest)).view(-1, graphs, 2).sum(1)
            most = torch.maximum(most, sums.amax(0))
        return cls(_round_up(int(most[0]) + 1), _round_up(max(int(most[1]), 1)), int(graphs))

    def pad(self, batch: Batch) -> dict[str, Any] | Batch:
        """``batch`` padded (module docstring), or ``batch`` itself when it does not fit.
        The last node is always padding, so a batch needs fewer than ``nodes`` nodes."""
        n, e, g = int(batch.num_nodes), int(batch.edge_index.shape[1]), int(batch.num_graphs)
        if n >= self.nodes or e > self.edges or g > self.graphs:
            if not self.oversized:
                warnings.warn(f"train.static_batch: a batch of {g} graphs, {n} nodes and {e} "
                              f"edges does not fit {self.nodes} nodes (one is padding) / "
                              f"{self.edges} edges / {self.graphs} graphs; such batches run "
                              "unpadded (same results, not replayed)", stacklevel=2)
            self.oversized += 1
            return batch
        out: dict[str, Any] = {}
        for key in NODE_FIELDS:
            if getattr(batch, key, None) is not None:
                out[key] = _pad_rows(batch[key], self.nodes, 0)
        for key in EDGE_FIELDS:
            if getattr(batch, key, None) is not None:
                out[key] = _pad_rows(batch[key], self.edges, 0)
        # padding edges are self-loops spread round-robin over the padding nodes: on one node
        # they would serialise every scatter-add on one row (~10x the GPU time of the step)
        loops = n + torch.arange(self.edges - e) % (self.nodes - n)
        # (2, E) rows stay contiguous: every layer indexes them
        out["edge_index"] = torch.cat([batch.edge_index, loops.expand(2, -1)], 1).contiguous()
        out["batch"] = _pad_rows(batch.batch, self.nodes, self.graphs)
        out["node_mask"] = (torch.arange(self.nodes) < n).float()
        out["y"] = _pad_rows(batch.y.float(), self.graphs, float("nan"))
        out["num_graphs"], out["graphs"] = self.graphs, g
        return out


def _round_up(count: int) -> int:
    return -(-count // ROUND) * ROUND


def _pad_rows(t: torch.Tensor, rows: int, value: float) -> torch.Tensor:
    """``t (R, ...)`` with rows ``R..rows-1`` filled with ``value``: ``(rows, ...)``."""
    out = t.new_full((rows, *t.shape[1:]), value)
    out[: t.shape[0]] = t
    return out.contiguous()


def masked_batch_norm(x: torch.Tensor, bn: nn.BatchNorm1d,
                      node_mask: torch.Tensor | None) -> torch.Tensor:
    """``bn(x)`` with the batch statistics of the rows where ``node_mask`` is 1 (training
    only; evaluation, a mask of None and other norms run the module as it is).

    The same normalisation (biased variance), running-statistics update (unbiased variance,
    ``momentum`` or the cumulative average) and affine map as ``nn.BatchNorm1d`` on the masked
    rows alone, in float32, with no host sync. Shapes: ``x (N, C)``, ``node_mask (N,)``."""
    if node_mask is None or not isinstance(bn, nn.BatchNorm1d) or not bn.training \
            or not bn.track_running_stats:
        return bn(x)
    w = node_mask.to(torch.float32).unsqueeze(1)
    xf = x.float()
    count = w.sum()
    mean = (xf * w).sum(0) / count
    var = ((xf - mean).square() * w).sum(0) / count
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = (1.0 / bn.num_batches_tracked.float() if bn.momentum is None
                    else bn.momentum)
        bn.running_mean.mul_(1 - momentum).add_(momentum * mean.to(bn.running_mean.dtype))
        unbiased = var * count / (count - 1).clamp(min=1)
        bn.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(bn.running_var.dtype))
    y = (xf - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        y = y * bn.weight + bn.bias
    return y.to(x.dtype)


def check_flat_planner(planner: GraphPlanner) -> None:
    """Raise ``ValueError`` unless ``planner``'s plans fit a padded batch's mapping: the global
    order and its gathers only (tokens and sparse adjacencies are not flattened)."""
    if planner.walk_tokens or planner.sparse_adjacency or planner.hop_adjacency is not None:
        raise ValueError("train.static_batch: padded batches carry the global order's plan "
                         "only; this model also plans tokens or sparse adjacencies (set "
                         "train.static_batch=null)")


def plan_fields(planner: GraphPlanner, padded: Mapping[str, Any]) -> dict[str, Any]:
    """The training plan of a padded batch (``StaticBatch.pad``) as mapping fields: ``order``
    ``(order (N,), inverse (N,), cu_seqlens (G+2,) int32)`` of its ``G + 1`` graphs (the
    padding graph is one more sequence) and ``order_indices`` (the packed BiMamba's gathers,
    or None); both None without a global order. ``padded_plan`` rebuilds the plan. The task
    checks ``planner`` once (``check_flat_planner``), not at every batch."""
    plan = planner(padded["edge_index"], int(padded["batch"].shape[0]), padded["batch"],
                   int(padded["num_graphs"]) + 1, training=True)
    draw = plan.draws[0] if plan.draws else PlanDraw()
    return {"order": draw.order, "order_indices": draw.order_indices}


def padded_plan(planner: GraphPlanner, batch: Mapping[str, Any]) -> GraphPlan:
    """The ``GraphPlan`` of a padded batch from its ``plan_fields`` (no copy, no host sync)."""
    draws = (PlanDraw(order=batch["order"], order_indices=batch["order_indices"]),) \
        if batch.get("order") is not None else ()
    return GraphPlan(planner, True, int(batch["batch"].shape[0]),
                     int(batch["edge_index"].shape[1]), int(batch["num_graphs"]) + 1, draws)
