"""Token plans: the graph structure a ``GraphMambaNetwork`` forward needs, built once per batch
in the data loader instead of inside the training step.

A forward of the Graph Mamba Network samples random-walk tokens, the edges inside every token
(``token_encoder="gine"``), a degree order with random tie-breaking (``global_mamba``) and the
sparse adjacencies of the ``gcn`` / ``sage`` and hop-token branches. Built on the GPU, that is
some hundred small operators and a dozen host syncs (data-dependent sizes) per step, and the
step waits on the host. ``GraphPlanner`` builds the same structure on the CPU, in the
``DataLoader`` workers (``collate`` of the graph tasks), and the batch carries it to the device
as ``batch.plan`` (a ``GraphPlan``); the model then only gathers and scatters::

    planner = model.planner()                              # what this model needs
    plan = planner(edge_index, num_nodes, batch, num_graphs, training=True)
    logits = model(x, edge_index, batch=batch, plan=plan.to(device))
    logits = model(x, edge_index, batch=batch)             # same, the plan built inside

Randomness: a training plan draws from the global torch RNG where it is built (a loader
worker's, seeded from the loader's generator every epoch: reproducible across a resume, fresh
walks every batch); an evaluation plan holds ``eval_samples`` draws from a generator seeded
with ``eval_seed``, the numbers the model draws itself at evaluation on the CPU. Given the same
random numbers, a planned forward is bitwise the in-model one (the model builds its plan with
this same code when none is given).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace

import torch
from torch import Tensor

from geossm.packed import mark_cu_seqlens_valid
from geossm.serialization import NeighbourhoodTokens, Serialization, random_walk_tokens
from geossm.serialization import degree_order as sample_degree_order
from geossm.serialization import dfs_order, index_order
from geossm.serialization.structure import _unchecked

__all__ = ["GraphPlanner", "GraphPlan", "PlanDraw", "SparseParts", "checked_plan", "data_plan"]


@dataclass(frozen=True, eq=False)
class SparseParts:
    """A sparse CSR matrix as its parts (picklable across loader workers, pinnable).

    Shapes: ``crow (n+1,) long``, ``col (nnz,) long``, ``values (nnz,) float``; ``size n``."""

    crow: Tensor
    col: Tensor
    values: Tensor
    size: int

    @classmethod
    def of(cls, matrix: Tensor) -> SparseParts:
        """The parts of a square sparse CSR ``matrix``."""
        return cls(matrix.crow_indices(), matrix.col_indices(), matrix.values(),
                   int(matrix.shape[0]))

    def matrix(self) -> Tensor:
        """The ``(n, n)`` sparse CSR tensor (no value checks: the parts came from one)."""
        return torch.sparse_csr_tensor(self.crow, self.col, self.values,
                                       (self.size, self.size))


@dataclass(frozen=True, eq=False)
class PlanDraw:
    """One draw of a plan's random structure (each field None where the model does not use it).

    ``tokens``: random-walk tokens (``random_walk_tokens``); ``token_edges``: edges between
    token members ``(member_edge_index (2, E') long, edge_id (E',) long)``
    (``models.induced_token_edges``); ``order``: the degree order's ``(order (n,), inverse
    (n,), cu_seqlens (G+1,) int32)`` (a tuple, not a ``Serialization``: it crosses process
    boundaries; ``serialization()`` rebuilds it); ``order_indices`` / ``token_indices``: the
    four gathers of the packed BiMamba path over the order / the token sequences
    (``models.order_gathers`` / ``models.token_gathers``, ``packed_gathers``)."""

    tokens: NeighbourhoodTokens | None = None
    token_edges: tuple[Tensor, Tensor] | None = None
    order: tuple[Tensor, Tensor, Tensor] | None = None
    order_indices: tuple[Tensor, ...] | None = None
    token_indices: tuple[Tensor, ...] | None = None

    def serialization(self) -> Serialization | None:
        """The degree order as the ``Serialization`` the global branch reads (valid by
        construction: its ``cu_seqlens`` is recorded as checked, no host read on use)."""
        if self.order is None:
            return None
        order, inverse, cu = self.order
        mark_cu_seqlens_valid(cu, order.numel())
        return _unchecked(order, inverse, cu)

    def checked_tokens(self) -> NeighbourhoodTokens | None:
        """``tokens`` with their ``cu_seqlens`` recorded as checked (built, not user input)."""
        if self.tokens is not None:
            mark_cu_seqlens_valid(self.tokens.cu_seqlens, self.tokens.num_tokens)
        return self.tokens


@dataclass(frozen=True)
class GraphPlanner:
    """What to precompute for one model (``GraphMambaNetwork.planner()``); picklable, compared
    by value (a plan records the planner that built it).

    Args (the defaults plan nothing but the graph count):
        walk_length, num_walks, repeats: the token settings ``m``, ``M``, ``s``, default 1.
        walk_tokens: sample random-walk tokens, default False.
        token_edges: also the edges inside every token (``token_encoder="gine"``), default
            False.
        degree_order: plan the global branch's node order (``global_mamba``; its kind is
            ``global_order``), default False.
        sparse_adjacency: the ``(N, N)`` adjacency of a ``gcn`` / ``sage`` layer, default
            False.
        hop_adjacency: the hop tokens' propagation matrix kind (``"gcn"`` / ``"mean"``),
            default None (no hop tokens).
        eval_samples: draws of an evaluation plan, default 1.
        eval_seed: seed of the evaluation draws, default 0.
        packed_gathers: also the gathers of the packed BiMamba path (``packed_bimamba``
            models) over the order and the tokens, default False.
        global_order: that order's kind, ``"degree"`` (degree ascending, ties broken at
            random: a fresh draw every batch), ``"index"`` (node ids ascending, the same
            every batch: ``serialization.index_order``) or ``"dfs"`` (a depth-first search:
            in random key order while training, a fresh traversal every batch, in node-id
            order at evaluation: ``serialization.dfs_order``), default ``"degree"``.
    """

    walk_length: int = 1
    num_walks: int = 1
    repeats: int = 1
    walk_tokens: bool = False
    token_edges: bool = False
    degree_order: bool = False
    sparse_adjacency: bool = False
    hop_adjacency: str | None = None
    eval_samples: int = 1
    eval_seed: int = 0
    packed_gathers: bool = False
    global_order: str = "degree"

    @property
    def random(self) -> bool:
        """Whether the plan holds per-batch draws (random ones, and the global order, which
        rides in the draws also when it is the deterministic ``"index"`` one); else the plan
        is the same for every call."""
        return self.walk_tokens or self.degree_order

    def __call__(self, edge_index: Tensor, num_nodes: int, batch: Tensor | None = None,
                 num_graphs: int | None = None, training: bool = True,
                 static: tuple[SparseParts | None, SparseParts | None] | None = None,
                 ) -> GraphPlan:
        """The plan of one batch.

        Args:
            edge_index: ``(2, E)`` long; num_nodes: ``N``.
            batch: ``(N,)`` graph of every node, default None (one graph).
            num_graphs: graphs in ``batch`` (``Batch.num_graphs``), default None (read from
                ``batch``).
            training: one draw from the global RNG (True, default) or ``eval_samples`` draws
                from a generator seeded with ``eval_seed`` (False).
            static: ``static_parts()`` of this graph computed before (node tasks: one graph
                every step), default None (computed here).
        """
        adjacency, hop = static if static is not None else self.static_parts(edge_index,
                                                                            num_nodes)
        draws = self.draws(edge_index, num_nodes, batch, num_graphs, training)
        return GraphPlan(self, training, num_nodes, int(edge_index.shape[1]), num_graphs,
                         draws, adjacency, hop)

    def static_parts(self, edge_index: Tensor, num_nodes: int,
                     ) -> tuple[SparseParts | None, SparseParts | None]:
        """The deterministic part: ``(adjacency, hop adjacency)`` (None where unused)."""
        from .models import hop_adjacency, sparse_adjacency
        adjacency = (SparseParts.of(sparse_adjacency(edge_index, num_nodes))
                     if self.sparse_adjacency else None)
        hop = (SparseParts.of(hop_adjacency(edge_index, num_nodes, self.hop_adjacency))
               if self.hop_adjacency is not None else None)
        return adjacency, hop

    def draws(self, edge_index: Tensor, num_nodes: int, batch: Tensor | None,
              num_graphs: int | None, training: bool) -> tuple[PlanDraw, ...]:
        """The random part: ``()`` without random branches, one draw from the global RNG while
        training, ``eval_samples`` draws from one generator seeded with ``eval_seed`` else."""
        if not self.random:
            return ()
        if training:
            return (self.draw(edge_index, num_nodes, batch, num_graphs, None, True),)
        gen = torch.Generator(device=edge_index.device).manual_seed(self.eval_seed)
        return tuple(self.draw(edge_index, num_nodes, batch, num_graphs, gen, False)
                     for _ in range(self.eval_samples))

    def draw(self, edge_index: Tensor, num_nodes: int, batch: Tensor | None,
             num_graphs: int | None, generator: torch.Generator | None,
             training: bool = True) -> PlanDraw:
        """One draw: walks first, then the order's noise (the in-model order of the draws).
        ``training``: a ``"dfs"`` order searches in random key order (else in node-id
        order, the same every call)."""
        from .models import induced_token_edges, order_gathers, token_gathers
        tokens = token_edges = order = order_indices = token_indices = None
        if self.walk_tokens:
            tokens = random_walk_tokens(edge_index, num_nodes, self.walk_length,
                                        self.num_walks, self.repeats, generator=generator)
            if self.token_edges:
                token_edges = induced_token_edges(tokens, edge_index, num_nodes)
        if self.degree_order:
            s = self._global_order(edge_index, num_nodes, batch, num_graphs, generator, training)
            order = (s.order, s.inverse, s.cu_seqlens)
        if self.packed_gathers:
            order_indices = order_gathers(*order) if order is not None else None
            token_indices = (token_gathers(tokens.cu_seqlens, tokens.num_tokens)
                             if tokens is not None else None)
        return PlanDraw(tokens, token_edges, order, order_indices, token_indices)

    def _global_order(self, edge_index: Tensor, num_nodes: int, batch: Tensor | None,
                      num_graphs: int | None, generator: torch.Generator | None,
                      training: bool) -> Serialization:
        """The global branch's order of one draw (``global_order``)."""
        if self.global_order == "index":
            return index_order(num_nodes, batch, num_graphs)
        if self.global_order == "dfs":
            return dfs_order(edge_index, num_nodes, batch, noise=training, generator=generator,
                             num_graphs=num_graphs)
        if self.global_order == "degree":
            return sample_degree_order(edge_index, num_nodes, batch, noise=True,
                                       generator=generator, num_graphs=num_graphs)
        raise ValueError(f"global_order: expected 'degree', 'index' or 'dfs', got "
                         f"{self.global_order!r}")


@dataclass(frozen=True, eq=False)
class GraphPlan:
    """The precomputed structure of one batch (``GraphPlanner.__call__``); ``to`` and
    ``pin_memory`` move every tensor, so a PyG ``Batch`` carries it (``batch.plan``).

    Fields: ``planner``, ``training`` (kind of the draws), ``num_nodes``, ``num_edges``,
    ``num_graphs`` (None: read from ``batch`` when needed), ``draws`` (``PlanDraw``s),
    ``adjacency`` / ``hop_adjacency`` (``SparseParts`` or None)."""

    planner: GraphPlanner
    training: bool
    num_nodes: int
    num_edges: int
    num_graphs: int | None
    draws: tuple[PlanDraw, ...]
    adjacency: SparseParts | None = None
    hop_adjacency: SparseParts | None = None

    def to(self, device: torch.device | str | None = None, non_blocking: bool = False,
           **kwargs) -> GraphPlan:
        """Every tensor moved to ``device`` (``kwargs``: as ``Tensor.to``)."""
        return self.apply(lambda t: t.to(device, non_blocking=non_blocking, **kwargs))

    def pin_memory(self) -> GraphPlan:
        """Every tensor in pinned host memory (the loader's ``pin_memory``)."""
        return self.apply(lambda t: t.pin_memory())

    def apply(self, fn: Callable[[Tensor], Tensor]) -> GraphPlan:
        """A copy with ``fn`` applied to every tensor."""
        return replace(self, draws=tuple(_map_tensors(d, fn) for d in self.draws),
                       adjacency=_map_tensors(self.adjacency, fn),
                       hop_adjacency=_map_tensors(self.hop_adjacency, fn))

    def check(self, planner: GraphPlanner, num_nodes: int, num_edges: int) -> None:
        """Raise ``ValueError`` unless this plan was built by ``planner`` for a graph of
        ``num_nodes`` nodes and ``num_edges`` edges (metadata only: no host sync)."""
        if self.planner != planner:
            raise ValueError(f"plan: built for {self.planner}, the model needs {planner}; "
                             "build it with model.planner()")
        if (self.num_nodes, self.num_edges) != (num_nodes, num_edges):
            raise ValueError(f"plan: built for {self.num_nodes} nodes and {self.num_edges} "
                             f"edges, got {num_nodes} nodes and {num_edges} edges (a plan of "
                             "another batch?)")


def checked_plan(plan, planner: GraphPlanner, num_nodes: int, num_edges: int) -> GraphPlan:
    """``plan`` after ``GraphPlan.check`` (skipped under ``torch.compile``: metadata the
    compiled code guards on anyway); ``TypeError`` for anything but a ``GraphPlan``."""
    if not isinstance(plan, GraphPlan):
        raise TypeError(f"plan: expected a GraphPlan (model.planner()(...)) or None, got "
                        f"{type(plan).__name__}")
    if not torch.compiler.is_compiling():
        plan.check(planner, num_nodes, num_edges)
    return plan


def data_plan(x, plan: GraphPlan | None) -> GraphPlan | None:
    """``plan``, or the ``plan`` attribute of a PyG ``Data`` / ``Batch`` input ``x``."""
    if plan is None and hasattr(x, "edge_index") and not isinstance(x, Tensor):
        return getattr(x, "plan", None)
    return plan


def _map_tensors(obj, fn: Callable[[Tensor], Tensor]):
    """``obj`` (a tensor, tuple, None or dataclass of those) with ``fn`` on every tensor."""
    if obj is None:
        return None
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map_tensors(v, fn) for v in obj)
    changes = {f.name: _map_tensors(getattr(obj, f.name), fn) for f in fields(obj)
               if isinstance(getattr(obj, f.name), (Tensor, tuple))
               or is_dataclass(getattr(obj, f.name))}
    return replace(obj, **changes)
