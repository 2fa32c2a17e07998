"""The data-dependent serialization steps as ``torch.library`` custom ops, for ``torch.export``.

Quantising, serializing and pooling points read values on the host: the grid's extent sets the
curve depth (``int(grid.max())``), ``torch.unique`` sets the number of parents, the numba curve
kernels run on NumPy arrays. ``torch.export`` cannot trace such code, so while it traces
(``torch.compiler.is_compiling()``) the public functions of ``geossm.serialization`` that models
call inside their forward hand the whole step to one of the ops below, which run the eager
code at run time. Their fake (meta) implementations give the output shapes from the input
shapes, and a fresh symbolic size (``new_dynamic_size``) where the size depends on the values
(the number of pooled cells). Eager calls never go through them: eager results, checks and
speed are those of the plain functions.

Ops (``N`` points, ``S`` samples, ``M`` parent cells)::

    geossm::grid_coordinates(coord (N, 3), grid_size)           -> grid (N, 3) int64
    geossm::serialize_grid(grid (N, 3), batch (N,)?, order, depth?, num_samples?, depths (S,)?)
                                                                 -> order (N,), inverse (N,),
                                                                    cu_seqlens (S+1,) int32
    geossm::grid_pooling(grid (N, 3), batch (N,), depth?, levels, num_samples, depths (S,)?)
                                                                 -> cluster (N,), counts (M,),
                                                                    code (M,), grid (M, 3),
                                                                    batch (M,), head (M,),
                                                                    cu_seqlens (S+1,) int32
    geossm::serialize_events(x, y, t, p (N,), batch (N,)?, sensor_size, time_scale, order,
                             depth?)                              -> order (N,), inverse (N,),
                                                                    cu_seqlens (S+1,) int32

Where ``S`` is not given (``num_samples`` None with a ``batch``), ``S + 1`` is symbolic too.
A depth of None (``depth?``) is the fewest bits that fit the grid (``fit_depth``), computed at
run time. ``depths`` (given instead of ``depth``) are per-sample depths (``sample_depths``, tensor
ops that trace): a model passes them so that every sample is serialized and pooled as it would be
alone (see ``PCMEncoder``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["tracing", "grid_coordinates_op", "serialize_grid_op", "grid_pooling_op",
           "serialize_events_op"]


def tracing() -> bool:
    """Whether ``torch.export`` / ``torch.compile`` is tracing the caller (then values are
    symbolic and data-dependent steps must go through the custom ops)."""
    return torch.compiler.is_compiling()


def _boundaries(batch: Optional[Tensor], num_samples: Optional[int]):
    """Length ``S + 1`` of the ``cu_seqlens`` of a fake serialization: known from
    ``num_samples``, 2 without a batch, else a new symbol (the size itself must be the symbol:
    torch cannot bind ``u + 1`` to a new ``u``)."""
    if num_samples is not None:
        return num_samples + 1
    if batch is None:
        return 2
    return torch.library.get_ctx().new_dynamic_size(min=2)


@torch.library.custom_op("geossm::grid_coordinates", mutates_args=())
def grid_coordinates_op(coord: Tensor, grid_size: float) -> Tensor:
    """``geossm.serialization.grid_coordinates(coord, grid_size)`` (scalar ``grid_size``)."""
    from .points import grid_coordinates
    return grid_coordinates(coord, grid_size)


@grid_coordinates_op.register_fake
def _(coord, grid_size):
    return coord.new_empty((coord.shape[0], 3), dtype=torch.long)


@torch.library.custom_op("geossm::serialize_grid", mutates_args=())
def serialize_grid_op(grid: Tensor, batch: Optional[Tensor], order: str, depth: Optional[int],
                      num_samples: Optional[int], depths: Optional[Tensor] = None
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """``(order, inverse, cu_seqlens)`` of ``serialize_grid(grid, order, batch, depth,
    num_samples)`` (``depth = depths`` where given)."""
    from .points import serialize_grid
    ser = serialize_grid(grid, order, batch, depths if depths is not None else depth,
                         num_samples)
    return ser.order, ser.inverse, ser.cu_seqlens


@serialize_grid_op.register_fake
def _(grid, batch, order, depth, num_samples, depths=None):
    n = grid.shape[0]
    return (grid.new_empty((n,), dtype=torch.long), grid.new_empty((n,), dtype=torch.long),
            grid.new_empty((_boundaries(batch, num_samples),), dtype=torch.int32))


@torch.library.custom_op("geossm::grid_pooling", mutates_args=())
def grid_pooling_op(grid: Tensor, batch: Tensor, depth: Optional[int], levels: int,
                    num_samples: int, depths: Optional[Tensor] = None
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The tensors of ``pool_grid(grid, batch, depth, levels, num_samples)`` (``depth =
    depths`` where given): ``(cluster, counts, code, grid, batch, head, cu_seqlens)``."""
    from .points import pool_grid
    p = pool_grid(grid, batch, depths if depths is not None else depth, levels, num_samples)
    # outputs of a custom op must not alias each other: the serialization's cu_seqlens is new
    return (p.cluster, p.counts, p.code, p.grid_coord, p.batch, p.head,
            p.serialization.cu_seqlens)


@grid_pooling_op.register_fake
def _(grid, batch, depth, levels, num_samples, depths=None):
    n = grid.shape[0]
    m = torch.library.get_ctx().new_dynamic_size()
    long = torch.long
    return (grid.new_empty((n,), dtype=long), grid.new_empty((m,), dtype=long),
            grid.new_empty((m,), dtype=long), grid.new_empty((m, 3), dtype=long),
            grid.new_empty((m,), dtype=long), grid.new_empty((m,), dtype=long),
            grid.new_empty((num_samples + 1,), dtype=torch.int32))


@torch.library.custom_op("geossm::serialize_events", mutates_args=())
def serialize_events_op(x: Tensor, y: Tensor, t: Tensor, p: Tensor, batch: Optional[Tensor],
                        sensor_size: list[int], time_scale: float, order: str,
                        depth: Optional[int], per_sample: bool = False
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """``(order, inverse, cu_seqlens)`` of ``serialize_events({"x": x, "y": y, "t": t, "p": p},
    sensor_size, time_scale, order, batch, depth, per_sample)``."""
    from .events import serialize_events
    ser = serialize_events({"x": x, "y": y, "t": t, "p": p}, tuple(sensor_size), time_scale,
                           order, batch, depth, per_sample)
    return ser.order, ser.inverse, ser.cu_seqlens


@serialize_events_op.register_fake
def _(x, y, t, p, batch, sensor_size, time_scale, order, depth, per_sample=False):
    n = x.shape[0]
    return (x.new_empty((n,), dtype=torch.long), x.new_empty((n,), dtype=torch.long),
            x.new_empty((_boundaries(batch, None),), dtype=torch.int32))
