"""Point and voxel serialization along space-filling curves, and serialized pooling (PTv3).

``serialize`` quantises coordinates to a grid, encodes each cell along a curve (``curves``) with
the sample index in the top bits, and sorts: one segment per sample, points of a sample in curve
order, ties (points in the same cell) by source index.

``serialized_pooling`` coarsens codes by ``3·k`` bits (``k`` levels of a ``2^k`` stride): points
with the same parent code form one cluster, and the parents come out already serialized, so a
U-Net goes down and up without kNN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from geossm.packed import batch_to_cu_seqlens

from .curves import (ORDERS, _check_order, _deinterleave, _encode_checked, _encode_curve,
                     _interleave, _point_depths, coarsen, decode, fit_depth)
from .structure import Serialization, _unchecked
from .traceable import grid_coordinates_op, grid_pooling_op, serialize_grid_op, tracing

__all__ = ["serialize", "serialize_multi", "serialize_grid", "grid_coordinates",
           "serialized_pooling", "pool_grid", "Pooling"]


def grid_coordinates(coord: Tensor, grid_size) -> Tensor:
    """Quantise coordinates: ``grid_coord = floor((coord - coord.min(0)) / grid_size)``.

    Args:
        coord: ``(N, 3)`` real coordinates (x, y, z).
        grid_size: cell edge, a positive float or a ``(3,)`` sequence / tensor (per axis).

    The arithmetic runs in float32 at least (float64 input and integer input in float64): in
    float16 / bfloat16 the differences and quotients round to a few significant bits, and
    most points would land in other cells than the same values give in float32.

    Returns:
        ``grid_coord: (N, 3) int64``, non-negative. Raises ``ValueError`` when the extent
        holds 2^62 cells or more along an axis (int64 would wrap). Host syncs: the grid_size,
        finiteness and extent checks. Under ``torch.export`` (scalar ``grid_size``) the custom
        op ``geossm::grid_coordinates`` (``serialization.traceable``).
    """
    if tracing() and isinstance(grid_size, (int, float)) and isinstance(coord, Tensor):
        return grid_coordinates_op(coord, float(grid_size))
    if not isinstance(coord, Tensor):
        raise TypeError(f"coord: expected a torch.Tensor, got {type(coord).__name__}")
    if coord.dim() != 2 or coord.shape[1] != 3:
        raise ValueError(f"coord: expected shape (N, 3), got {tuple(coord.shape)}")
    if coord.dtype.is_complex or coord.dtype == torch.bool:
        raise TypeError(f"coord: expected a real tensor, got dtype {coord.dtype}")
    if not coord.dtype.is_floating_point:
        dtype = torch.float64
    else:
        dtype = torch.promote_types(coord.dtype, torch.float32)
    gs = torch.as_tensor(grid_size, dtype=dtype, device=coord.device).reshape(-1)
    if gs.numel() not in (1, 3):
        raise ValueError(f"grid_size: expected a float or 3 values, got {gs.numel()} values")
    if not bool((gs > 0).all()) or not bool(torch.isfinite(gs).all()):
        raise ValueError(f"grid_size: expected positive finite values, got {gs.tolist()}")
    c = coord.to(dtype)
    if coord.shape[0] == 0:
        return torch.zeros((0, 3), dtype=torch.long, device=coord.device)
    if not bool(torch.isfinite(c).all()):
        raise ValueError("coord: expected finite coordinates, got NaN or inf")
    cells = torch.floor((c - c.min(0).values) / gs)
    # Casting a float past int64's range wraps (to a negative index on x86): refuse instead.
    top = float(cells.max())
    if not top < 2.0**62:
        extent = (c.max(0).values - c.min(0).values).tolist()
        raise ValueError(f"coord: the extent {extent} / grid_size {gs.tolist()} is {top:.3g} "
                         "cells per axis, more than int64 grid coordinates hold (2^62); "
                         "expected a larger grid_size")
    return cells.long()


def _resolve_batch(batch, n: int, device) -> Tensor | None:
    if batch is None:
        return None
    if not isinstance(batch, Tensor):
        raise TypeError(f"batch: expected a torch.Tensor or None, got {type(batch).__name__}")
    if batch.shape != (n,):
        raise ValueError(f"batch: expected shape ({n},), got {tuple(batch.shape)}")
    if batch.device != device:
        raise ValueError(f"batch: expected device {device}, got {batch.device}")
    return batch


def serialize_grid(grid_coord: Tensor, order: str = "hilbert", batch: Tensor | None = None,
                   depth: int | Tensor | None = None,
                   num_samples: int | None = None) -> Serialization:
    """Serialize integer grid cells along one curve, one segment per sample.

    ``order = stable argsort(encode(grid_coord, order, batch, depth))``: samples ascending
    (sample bits are on top), curve order inside, ties by source index.

    Args:
        grid_coord: ``(N, 3)`` non-negative integers (x, y, z).
        order: one of ``ORDERS``, default ``"hilbert"``.
        batch: ``(N,)`` sample index, default None (one sample).
        depth: bits per axis, default the fewest that fit the whole grid; or ``(S,)``
            per-sample depths (``sample_depths``): every sample then gets the order it gets
            alone (the Hilbert orders depend on the depth; the others do not).
        num_samples: number of segments ``S``, default ``batch.max() + 1`` (1 without batch).

    Returns:
        ``Serialization`` with extras ``code (N,)`` (source order), ``grid_coord (N, 3)``,
        ``batch (N,)`` and ``depth`` (0-D int64, or the ``(S,)`` per-sample depths). Host
        syncs: the input checks of ``encode``.
        Under ``torch.export`` the custom op ``geossm::serialize_grid`` (extras ``grid_coord``
        and ``batch`` only: code and depth are known at run time only).
    """
    if batch is not None and not isinstance(batch, Tensor):
        raise TypeError(f"batch: expected a torch.Tensor or None, got {type(batch).__name__}")
    if tracing():
        depths = depth if isinstance(depth, Tensor) else None
        order_, inverse, cu = serialize_grid_op(grid_coord, batch, order,
                                                None if depths is not None else depth,
                                                num_samples, depths)
        extras = {"grid_coord": grid_coord} if batch is None else {"grid_coord": grid_coord,
                                                                     "batch": batch}
        return _unchecked(order_, inverse, cu, extras)
    code, top = _encode_checked(grid_coord, order, batch, depth)
    return _from_code(code, grid_coord, batch, depth if isinstance(depth, Tensor) else top,
                      num_samples)


def _from_code(code: Tensor, grid_coord: Tensor, batch: Tensor | None, depth: int | Tensor,
               num_samples: int | None) -> Serialization:
    n = code.numel()
    dev = code.device
    order = torch.sort(code, stable=True).indices
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n, device=dev)
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=dev)
        if num_samples is None:
            num_samples = 1
    cu = batch_to_cu_seqlens(batch, num_samples)
    depth = depth.long() if isinstance(depth, Tensor) else torch.tensor(depth, dtype=torch.long)
    extras = {"code": code, "grid_coord": grid_coord.long(), "batch": batch.long(),
              "depth": depth}
    return _unchecked(order, inverse, cu, extras)


def serialize(coord: Tensor, grid_size, order: str = "hilbert", batch: Tensor | None = None,
              depth: int | Tensor | None = None) -> Serialization:
    """Serialize a (batched) point cloud along a space-filling curve.

    ``grid_coord = floor((coord - coord.min(0)) / grid_size)``, then ``serialize_grid``.

    Args:
        coord: ``(N, 3)`` coordinates (x, y, z).
        grid_size: cell edge (float or per-axis ``(3,)``).
        order: one of ``ORDERS`` (``"z"``, ``"z-trans"``, ``"hilbert"``, ``"hilbert-trans"``,
            ``"xyz"`` ... ``"zyx"``), default ``"hilbert"``.
        batch: ``(N,)`` sample index, default None (one sample). Need not be sorted.
        depth: bits per axis, default the fewest that fit; or ``(S,)`` per-sample depths
            (see ``serialize_grid``). The grid is anchored at the batch's minimum corner: for
            a sample's cells (and order) not to depend on the others, quantise each sample at
            its own minimum and use ``serialize_grid`` with ``sample_depths``.

    Returns:
        ``Serialization`` (``S = batch.max() + 1`` segments) with extras ``code``,
        ``grid_coord``, ``batch``, ``depth``. A few host syncs (input checks, depth, S).

    Shapes: ``coord: (N, 3)``, ``batch: (N,)`` -> ``order, inverse: (N,)``, ``cu_seqlens: (S+1,)``.
    """
    _check_order(order)
    return serialize_grid(grid_coordinates(coord, grid_size), order, batch, depth)


def serialize_multi(coord: Tensor, grid_size, orders: Sequence[str] = ("z", "z-trans", "hilbert",
                    "hilbert-trans"), batch: Tensor | None = None,
                    depth: int | Tensor | None = None) -> tuple[Serialization, ...]:
    """``serialize`` for several orders at once, sharing quantisation and checks.

    PTv3 shuffles four orders across its blocks; Point Cloud Mamba cycles traverse orders.

    Returns:
        one ``Serialization`` per entry of ``orders``, in that order.
    """
    if isinstance(orders, str) or not isinstance(orders, Sequence) or len(orders) == 0:
        raise ValueError(f"orders: expected a non-empty sequence of names from {ORDERS}, got {orders!r}")
    for o in orders:
        _check_order(o)
    grid = grid_coordinates(coord, grid_size)
    batch = _resolve_batch(batch, grid.shape[0], grid.device)
    if depth is None:
        depth = fit_depth(grid)
    num_samples = None
    if batch is not None and batch.numel():
        num_samples = int(batch.max()) + 1
    first = serialize_grid(grid, orders[0], batch, depth, num_samples)
    out = [first]
    point_depth, top = None, depth
    if isinstance(depth, Tensor):
        point_depth, top = _point_depths(grid, batch, depth)
    for o in orders[1:]:
        # Inputs were checked by the first encode; skip re-validation for the others.
        code = _encode_curve(grid, o, top, point_depth)
        if batch is not None:
            code = code | (batch.long() << (3 * top))
        out.append(_from_code(code, grid, batch, depth, num_samples))
    return tuple(out)


# eq=False: fields are tensors, so equality is identity (no ambiguous tensor bools).
@dataclass(frozen=True, eq=False)
class Pooling:
    """Parents of a serialized pooling step and the maps between children and parents.

    Shapes (``N`` children, ``M`` parents)::

        cluster:       (N,)   long  parent of every child (source index order)
        counts:        (M,)   long  children per parent
        code:          (M,)   int64 parent codes at depth ``depth``
        grid_coord:    (M, 3) int64 parent cells (child cell >> levels)
        batch:         (M,)   long  sample of every parent
        head:          (M,)   long  one child (the first in code order) of every parent
        serialization: Serialization over the parents (already in curve order: identity order)
    """

    cluster: Tensor
    counts: Tensor
    code: Tensor
    grid_coord: Tensor
    batch: Tensor
    head: Tensor
    depth: int | Tensor | None  # (S,) per sample, or None under torch.export (see pool_grid)
    order: str
    serialization: Serialization

    def pool(self, x: Tensor, reduce: str = "mean") -> Tensor:
        """Children features -> parent features: ``(N, *F) -> (M, *F)``.

        ``reduce`` in ``"mean"``, ``"sum"``, ``"max"``, ``"min"`` (torch ``scatter_reduce``).
        """
        if reduce not in ("mean", "sum", "max", "min"):
            raise ValueError(f"reduce: expected 'mean', 'sum', 'max' or 'min', got {reduce!r}")
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] != self.cluster.numel():
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape ({self.cluster.numel()}, ...), got {got}")
        m = self.counts.numel()
        idx = self.cluster.view(-1, *([1] * (x.dim() - 1))).expand_as(x)
        out = x.new_zeros((m, *x.shape[1:]))
        name = {"mean": "mean", "sum": "sum", "max": "amax", "min": "amin"}[reduce]
        return out.scatter_reduce(0, idx, x, name, include_self=False)

    def unpool(self, y: Tensor) -> Tensor:
        """Parent features -> children: ``y[cluster]``, ``(M, *F) -> (N, *F)``."""
        if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != self.counts.numel():
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y: expected shape ({self.counts.numel()}, ...), got {got}")
        return y.index_select(0, self.cluster)


def serialized_pooling(code: Tensor, order: str, depth: int, levels: int = 1,
                       num_samples: int | None = None) -> Pooling:
    """PTv3 serialized pooling: parents are the cells of the ``2^levels`` coarser grid.

    ``parent_code = coarsen(code, order, depth, levels)`` (``code >> 3·levels`` for z/hilbert),
    ``cluster = unique(parent_code, return_inverse)``; parents sorted by code, i.e. already in
    curve order, so their serialization has the identity order and one segment per sample.

    Args:
        code: ``(N,)`` int64 from ``encode`` / ``serialize`` (``ser.extras["code"]``).
        order: the order the codes were made with.
        depth: bits per axis of ``code`` (``int(ser.extras["depth"])`` of a serialization made
            with one depth; codes of per-sample depths, ``(S,)`` in ``extras["depth"]``, have
            no single depth to coarsen at: pool those with ``pool_grid``).
        levels: ``k``, default 1 (stride 2).
        num_samples: segments of the parents' serialization, default ``max sample + 1``.

    Returns:
        ``Pooling``. Host syncs: ``torch.unique`` (output size) and ``num_samples``.
    """
    _check_order(order)
    if not isinstance(code, Tensor) or code.dim() != 1:
        got = tuple(code.shape) if isinstance(code, Tensor) else type(code).__name__
        raise ValueError(f"code: expected a (N,) int64 tensor, got {got}")
    if not isinstance(depth, int) or not 1 <= depth <= 21:
        raise ValueError(f"depth: expected an int in [1, 21], got {depth!r}")
    parent = coarsen(code, order, depth, levels)
    pdepth = depth - levels
    return _pooling(code, parent, order, pdepth, lambda uniq: decode(uniq, order, pdepth),
                    num_samples)


def _pooling(code: Tensor, parent: Tensor, order: str, pdepth: int | Tensor, decode_parents,
             num_samples: int | None) -> Pooling:
    """The ``Pooling`` of children ``code (N,)`` into the distinct ``parent (N,)`` codes;
    ``decode_parents(uniq) -> (grid (M, 3), batch (M,))``."""
    uniq, cluster, counts = torch.unique(parent, sorted=True, return_inverse=True,
                                         return_counts=True)
    m = uniq.numel()
    grid, batch = decode_parents(uniq)
    # The first child in code order: smallest (code, index) among the cluster's members, found
    # with two scatter-min passes instead of another sort.
    n = code.numel()
    dev = code.device
    code = code.long()
    min_code = torch.full((m,), torch.iinfo(torch.long).max, dtype=torch.long, device=dev)
    min_code = min_code.scatter_reduce(0, cluster, code, "amin")
    is_min = code == min_code[cluster]
    head = torch.full((m,), n, dtype=torch.long, device=dev).scatter_reduce(
        0, cluster[is_min], torch.arange(n, device=dev)[is_min], "amin")
    if num_samples is None:
        num_samples = int(batch.max()) + 1 if m else 0
    cu = batch_to_cu_seqlens(batch, num_samples)
    ident = torch.arange(m, device=code.device)
    depth = pdepth if isinstance(pdepth, Tensor) else torch.tensor(pdepth, dtype=torch.long)
    ser = _unchecked(ident, ident.clone(), cu, {
        "code": uniq, "grid_coord": grid, "batch": batch, "depth": depth})
    return Pooling(cluster, counts, uniq, grid, batch, head, pdepth, order, ser)


def pool_grid(grid_coord: Tensor, batch: Tensor, depth: int | Tensor | None, levels: int,
              num_samples: int) -> Pooling:
    """Serialized pooling of grid cells along ``"z"`` by ``levels`` levels (a ``2^levels``
    stride), at most ``depth - 1`` levels (one cell per axis left); a grid of depth 1 (at most
    two cells per axis) pools by one level into one cell.

    ``encode(grid_coord, "z", batch, depth)``, then ``serialized_pooling``. Coarsening z codes is
    a shift (no decode) and the parents come out z-serialized.

    Args:
        grid_coord: ``(N, 3)`` non-negative cells.
        batch: ``(N,)`` sample index.
        depth: bits per axis of ``grid_coord``, None = the fewest that fit (``fit_depth``); or
            ``(S,)`` per-sample depths (``sample_depths``): the levels are then clipped per
            sample, so every sample is pooled as it would be alone.
        levels: wanted levels, an int >= 1 (clipped to ``depth - 1``, to 1 at depth 1).
        num_samples: ``S`` segments of the parents' serialization.

    Returns:
        ``Pooling`` (``M`` parents); its ``depth`` is the parents' (``depth - levels``, at
        least 1; ``(S,)`` for per-sample depths). Under ``torch.export`` the custom op
        ``geossm::grid_pooling`` (``M`` symbolic); for an int or None ``depth`` its ``depth`` is
        then None (the parents' depth is their ``fit_depth``, known at run time) and the
        serialization has extras ``grid_coord`` and ``batch`` only.
    """
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"levels: expected an int >= 1, got {levels!r}")
    depths = depth if isinstance(depth, Tensor) else None
    if tracing():
        cluster, counts, code, grid, pbatch, head, cu = grid_pooling_op(
            grid_coord, batch, None if depths is not None else depth, levels, num_samples,
            depths)
        ident = torch.arange(code.shape[0], device=code.device)
        ser = _unchecked(ident, ident.clone(), cu, {"grid_coord": grid, "batch": pbatch})
        pdepth = None if depths is None else _clip_levels(depths.long(), levels)[1]
        return Pooling(cluster, counts, code, grid, pbatch, head, pdepth, "z", ser)
    if depths is not None:
        return _pool_grid_per_sample(grid_coord, batch, depths, levels, num_samples)
    if depth is None:
        depth = fit_depth(grid_coord)
    if depth == 1:
        # At most two cells per axis: one level more leaves one cell, of depth 1 again (a
        # single point, or a cloud within one cell, then stays one cell at every stage). Its
        # code is cell 0 with the sample bits above 3 * 1, as every parent code is.
        code = _encode_checked(grid_coord, "z", batch, 1)[0]
        return _pooling(code, batch.long() << 3, "z", 1, lambda uniq: (
            torch.zeros((uniq.numel(), 3), dtype=torch.long, device=uniq.device), uniq >> 3),
            num_samples)
    levels = _clip_levels(depth, levels)[0]
    code = _encode_checked(grid_coord, "z", batch, depth)[0]
    return serialized_pooling(code, "z", depth, levels, num_samples)


def _clip_levels(depth, levels: int):
    """``(levels, parent depth)`` of a grid of ``depth`` bits (int or tensor): at most
    ``depth - 1`` levels, one at depth 1; the parents keep at least 1 bit."""
    if isinstance(depth, Tensor):
        lv = (depth - 1).clamp(min=1).clamp(max=levels)
        return lv, (depth - lv).clamp(min=1)
    lv = min(levels, max(depth - 1, 1))
    return lv, max(depth - lv, 1)


def _pool_grid_per_sample(grid_coord: Tensor, batch: Tensor, depth: Tensor, levels: int,
                          num_samples: int) -> Pooling:
    """``pool_grid`` with ``(S,)`` per-sample depths: sample s pooled by its own clipped
    levels. z codes do not depend on the depth, so the parent of a child is
    ``z(grid >> levels[s])`` with the sample bits above the deepest parent."""
    code, top = _encode_checked(grid_coord, "z", batch, depth)
    lv, pdepth = _clip_levels(depth.long(), levels)
    ptop = int(pdepth.max()) if pdepth.numel() else 1
    g = grid_coord.long() >> lv[batch.long()][:, None]
    parent = _interleave(g[:, 0], g[:, 1], g[:, 2]) | (batch.long() << (3 * ptop))

    def decode_parents(uniq):
        g = torch.stack(_deinterleave(uniq & ((1 << (3 * ptop)) - 1)), 1)
        return g, uniq >> (3 * ptop)

    return _pooling(code, parent, "z", pdepth, decode_parents, num_samples)
