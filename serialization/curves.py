"""Space-filling curve codes for integer grid coordinates (ten orders).

``encode(grid_coord, order, batch, depth)`` maps ``(x, y, z)`` cells of a ``2^depth`` grid to
``int64`` codes whose sort order is the curve's order; the sample index sits in the bits above
``3·depth`` so sorting keeps samples contiguous::

    code = batch << (3·depth) | curve(x, y, z)          curve(...) in [0, 2^(3·depth))

Orders:

- ``"z"``: Morton order, bits interleaved ``x_k y_k z_k`` from the top level down;
- ``"hilbert"``: 3-D Hilbert curve (Skilling's transpose algorithm, 2004);
- ``"z-trans"``, ``"hilbert-trans"``: the same with x and y swapped;
- ``"xyz"``, ``"xzy"``, ``"yxz"``, ``"yzx"``, ``"zxy"``, ``"zyx"``: consistent traverse, a
  boustrophedon (snake) with the first named axis slowest. With ``L = 2^depth`` and the axes
  ``(a, b, c)`` slowest to fastest::

      b' = b        if a even else L-1-b
      c' = c        if b' even else L-1-c          (parity of the row a·L + b', L even)
      curve = (a·L + b')·L + c'

  so on a full grid consecutive codes are neighbouring cells (Manhattan distance 1), as they are
  for the Hilbert orders.

All functions are vectorised torch (CPU or CUDA); encoding CPU tensors of 4096 points or more
uses numba kernels (the same formulas in one serial loop) when numba is importable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .structure import _check_integer

__all__ = ["ORDERS", "encode", "decode", "fit_depth", "sample_depths", "coarsen"]

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans",
          "xyz", "xzy", "yxz", "yzx", "zxy", "zyx")
_TRAVERSE_AXES = {name: tuple("xyz".index(c) for c in name) for name in ORDERS[4:]}
MAX_BITS = 63


def _check_order(order) -> str:
    if not isinstance(order, str) or order not in ORDERS:
        raise ValueError(f"order: expected one of {ORDERS}, got {order!r}")
    return order


def fit_depth(grid_coord: Tensor) -> int:
    """Fewest bits per axis that hold every coordinate (at least 1). One host sync."""
    _check_integer("grid_coord", grid_coord)
    if grid_coord.numel() == 0:
        return 1
    return max(1, int(grid_coord.max()).bit_length())


def sample_depths(grid_coord: Tensor, batch: Tensor | None = None,
                  num_samples: int | None = None) -> Tensor:
    """``fit_depth`` of every sample on its own: the fewest bits per axis that hold the sample's
    coordinates (at least 1; 1 for an empty sample).

    Pass the result as ``depth`` to ``encode`` / ``serialize_grid`` / ``pool_grid`` to give each
    sample of a packed batch the codes (hence the order) it gets alone: the Hilbert curve of a
    ``2^d`` grid is not the restriction of the ``2^(d+1)`` one, so one depth for the whole batch
    would make a sample's order depend on the others.

    Args:
        grid_coord: ``(N, 3)`` non-negative integers.
        batch: ``(N,)`` sample index, default None (one sample).
        num_samples: ``S``, default ``batch.max() + 1`` (one host sync; 1 without batch).

    Returns:
        ``(S,) int64``. Tensor ops only when ``num_samples`` is given (no host sync, traceable).
    """
    _check_integer("grid_coord", grid_coord)
    if grid_coord.dim() != 2 or grid_coord.shape[1] != 3:
        raise ValueError(f"grid_coord: expected shape (N, 3), got {tuple(grid_coord.shape)}")
    if batch is not None and batch.shape != grid_coord.shape[:1]:
        raise ValueError(f"batch: expected shape ({grid_coord.shape[0]},), got "
                         f"{tuple(batch.shape)}")
    if num_samples is None:
        num_samples = 1 if batch is None or batch.numel() == 0 else int(batch.max()) + 1
    dev = grid_coord.device
    top = grid_coord.long().amax(1)  # (N,)
    if batch is None:
        batch = torch.zeros_like(top)
    per = torch.zeros(num_samples, dtype=torch.long, device=dev).scatter_reduce(
        0, batch.long(), top, "amax", include_self=True)
    # bit_length, exactly (a float log2 rounds up just below powers of two)
    shifts = torch.arange(MAX_BITS, device=dev)
    return ((per[:, None] >> shifts) > 0).sum(1).clamp(min=1)


def _batch_bits(batch: Tensor | None) -> int:
    if batch is None or batch.numel() == 0:
        return 0
    return int(batch.max()).bit_length()


def encode(grid_coord: Tensor, order: str = "hilbert", batch: Tensor | None = None,
           depth: int | None = None) -> Tensor:
    """Curve codes of integer grid cells.

    Args:
        grid_coord: ``(N, 3)`` non-negative integers in x, y, z order, each ``< 2^depth``.
        order: one of ``ORDERS`` (default ``"hilbert"``).
        batch: ``(N,)`` non-negative sample index, default None (all in sample 0).
        depth: bits per axis, default the fewest that fit (one host sync); or an ``(S,)``
            integer tensor of per-sample depths (``sample_depths``): sample ``s`` is coded on
            its own ``2^depth[s]`` grid (the codes it gets alone) and the sample bits sit above
            ``3·depth.max()``.

    Returns:
        ``code: (N,) int64``; ``3·depth`` + bits of ``batch.max()`` must be ``<= 63``.

    Raises ValueError for an unknown order, float, negative or out-of-range coordinates, a bad
    batch, or codes wider than 63 bits. Host syncs: the min/max value checks (a few scalars).
    """
    return _encode_checked(grid_coord, order, batch, depth)[0]


def _encode_checked(grid_coord, order, batch, depth) -> tuple[Tensor, int]:
    """``encode`` returning ``(code, depth)`` with the depth it resolved."""
    order = _check_order(order)
    _check_integer("grid_coord", grid_coord)
    if grid_coord.dim() != 2 or grid_coord.shape[1] != 3:
        raise ValueError(f"grid_coord: expected shape (N, 3), got {tuple(grid_coord.shape)}")
    n = grid_coord.shape[0]
    if batch is not None:
        _check_integer("batch", batch)
        if batch.shape != (n,):
            raise ValueError(f"batch: expected shape ({n},), got {tuple(batch.shape)}")
        if batch.device != grid_coord.device:
            raise ValueError(f"batch: expected device {grid_coord.device}, got {batch.device}")
        if n and int(batch.min()) < 0:
            raise ValueError(f"batch: expected non-negative sample indices, got min {int(batch.min())}")
    if n and int(grid_coord.min()) < 0:
        raise ValueError(
            f"grid_coord: expected non-negative coordinates, got min {int(grid_coord.min())}"
        )
    point_depth = None
    if isinstance(depth, Tensor):
        point_depth, depth = _point_depths(grid_coord, batch, depth)
    elif depth is None:
        depth = fit_depth(grid_coord)
    elif not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth: expected a positive int, got {depth!r}")
    elif n and int(grid_coord.max()) >= (1 << min(depth, 62)):
        raise ValueError(
            f"grid_coord: expected coordinates < 2^depth = {1 << depth}, "
            f"got max {int(grid_coord.max())}"
        )
    bbits = _batch_bits(batch)
    if 3 * depth + bbits > MAX_BITS:
        raise ValueError(
            f"depth: codes need 3*depth + batch bits = 3*{depth} + {bbits} = "
            f"{3 * depth + bbits} bits, expected at most {MAX_BITS}"
        )
    g = grid_coord.long()
    code = _encode_curve(g, order, depth, point_depth)
    if batch is not None:
        code = code | (batch.long() << (3 * depth))
    return code, depth


def _point_depths(grid_coord: Tensor, batch: Tensor | None,
                  depth: Tensor) -> tuple[Tensor | None, int]:
    """Checks per-sample depths ``(S,)``; returns ``(depth of every point (N,), or None when
    every point has the largest depth, the largest depth (where the sample bits go))``. Two
    host syncs: the checks read their numbers together."""
    _check_integer("depth", depth)
    n = grid_coord.shape[0]
    if depth.dim() == 1 and depth.numel() == 0 and n == 0:
        return None, 1  # no samples, no points
    if depth.dim() != 1 or depth.numel() == 0:
        raise ValueError(f"depth: expected an int or a (S,) tensor (one depth per sample), got "
                         f"shape {tuple(depth.shape)}")
    if depth.device != grid_coord.device:
        raise ValueError(f"depth: expected device {grid_coord.device}, got {depth.device}")
    top_batch = batch.max() if batch is not None and n else depth.new_zeros(())
    lo, hi, last = torch.stack([depth.min(), depth.max(), top_batch.to(depth.dtype)]).tolist()
    if depth.numel() <= last:
        raise ValueError(f"depth: expected an int or a (S,) tensor with S >= {last + 1} (one "
                         f"depth per sample), got shape {tuple(depth.shape)}")
    if lo < 1 or hi > MAX_BITS // 3:
        raise ValueError(f"depth: expected per-sample depths in [1, {MAX_BITS // 3}], got "
                         f"{lo}..{hi}")
    if n == 0:
        return None, hi
    point = depth.long()[batch.long()] if batch is not None else depth.long()[:1].expand(n)
    beyond = ((grid_coord.long() >> point[:, None]) != 0).any()
    shallowest, too_large = torch.stack([point.min(), beyond.long()]).tolist()
    if too_large:
        raise ValueError("grid_coord: expected the coordinates of sample s < 2^depth[s], got "
                         "larger ones (use sample_depths for the fewest that fit)")
    return (None if shallowest == hi else point), hi


def decode(code: Tensor, order: str, depth: int) -> tuple[Tensor, Tensor]:
    """Inverse of ``encode``.

    Args:
        code: ``(N,)`` int64 codes from ``encode`` with the same ``order`` and ``depth``.
        order: one of ``ORDERS``.
        depth: bits per axis used to encode.

    Returns:
        ``(grid_coord (N, 3) int64, batch (N,) int64)``.
    """
    order = _check_order(order)
    _check_integer("code", code)
    if code.dim() != 1:
        raise ValueError(f"code: expected shape (N,), got {tuple(code.shape)}")
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= MAX_BITS // 3:
        raise ValueError(f"depth: expected an int in [1, {MAX_BITS // 3}], got {depth!r}")
    code = code.long()
    if code.numel() and int(code.min()) < 0:
        raise ValueError(f"code: expected non-negative codes, got min {int(code.min())}")
    batch = code >> (3 * depth)
    local = code & ((1 << (3 * depth)) - 1)
    return _decode_curve(local, order, depth), batch


def coarsen(code: Tensor, order: str, depth: int, levels: int = 1) -> Tensor:
    """Codes of the parent cells ``grid_coord >> levels`` at depth ``depth - levels``.

    For ``"z"`` and ``"hilbert"`` (and their trans) this is ``code >> 3·levels`` (both curves
    visit every parent cell contiguously and nest across depths); the traverse orders are
    decoded, shifted and encoded again. The sample bits follow along.

    Shapes: ``code: (N,)`` -> ``(N,)`` int64.
    """
    order = _check_order(order)
    if not isinstance(levels, int) or isinstance(levels, bool) or not 0 <= levels < depth:
        raise ValueError(f"levels: expected an int in [0, depth={depth}), got {levels!r}")
    if order in ("z", "z-trans", "hilbert", "hilbert-trans"):
        _check_integer("code", code)
        return code.long() >> (3 * levels)
    coord, batch = decode(code, order, depth)
    parent = _encode_curve(coord >> levels, order, depth - levels)
    return parent | (batch << (3 * (depth - levels)))


def _encode_curve(g: Tensor, order: str, depth: int, point_depth: Tensor | None = None) -> Tensor:
    """Curve codes (no sample bits) of cells ``g (N, 3)`` at ``depth``, or where
    ``point_depth (N,)`` is given, of every point at its own depth (``<= depth``)."""
    if order.endswith("-trans"):
        g = g[:, [1, 0, 2]]
        order = order[: -len("-trans")]
    kernels = _numba_kernels() if g.device.type == "cpu" and g.shape[0] >= 4096 else None
    if kernels is not None:
        # One pass per point instead of tens of full-array torch passes (CPU only).
        g = g.contiguous().numpy()
        if order == "z":  # Morton codes do not depend on the depth
            return torch.from_numpy(kernels.morton_encode(g, depth))
        if point_depth is not None:
            pd = point_depth.contiguous().numpy()
            if order == "hilbert":
                return torch.from_numpy(kernels.hilbert_encode_depths(g, pd))
            return torch.from_numpy(kernels.traverse_encode_depths(g, *_TRAVERSE_AXES[order], pd))
        if order == "hilbert":
            return torch.from_numpy(kernels.hilbert_encode(g, depth))
        return torch.from_numpy(kernels.traverse_encode(g, *_TRAVERSE_AXES[order], depth))
    if order == "z":
        return _interleave(g[:, 0], g[:, 1], g[:, 2])
    if order == "hilbert":
        return _hilbert_encode_torch(g, depth, point_depth)
    return _traverse_encode(g, _TRAVERSE_AXES[order], depth if point_depth is None else point_depth)


def _decode_curve(local: Tensor, order: str, depth: int) -> Tensor:
    trans = order.endswith("-trans")
    base = order[: -len("-trans")] if trans else order
    if base == "z":
        g = torch.stack(_deinterleave(local), 1)
    elif base == "hilbert":
        g = _hilbert_decode(local, depth)
    else:
        g = _traverse_decode(local, _TRAVERSE_AXES[base], depth)
    return g[:, [1, 0, 2]] if trans else g


# Spreading 21 bits to every third bit position with shift-and-mask steps (5 ops instead of 21).
_SPREAD = ((32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F),
           (4, 0x10C30C30C30C30C3), (2, 0x1249249249249249))


def _spread3(v: Tensor) -> Tensor:
    v = v & 0x1FFFFF
    for shift, mask in _SPREAD:
        v = (v | (v << shift)) & mask
    return v


def _compact3(v: Tensor) -> Tensor:
    v = v & _SPREAD[-1][1]
    masks = [mask for _, mask in _SPREAD[:-1]][::-1] + [0x1FFFFF]
    for (shift, _), mask in zip(reversed(_SPREAD), masks):
        v = (v | (v >> shift)) & mask
    return v


def _interleave(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Bit k of a/b/c -> bit 3k+2 / 3k+1 / 3k (a most significant within each level)."""
    return (_spread3(a) << 2) | (_spread3(b) << 1) | _spread3(c)


def _deinterleave(v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _compact3(v >> 2), _compact3(v >> 1), _compact3(v)


def _traverse_encode(g: Tensor, axes: tuple[int, int, int], depth: int | Tensor) -> Tensor:
    """Snake codes at ``depth``: an int, or ``(N,)`` per point."""
    top = (1 << depth) - 1
    a, b, c = g[:, axes[0]], g[:, axes[1]], g[:, axes[2]]
    b2 = torch.where((a & 1).bool(), top - b, b)
    c2 = torch.where((b2 & 1).bool(), top - c, c)
    return (((a << depth) | b2) << depth) | c2


def _traverse_decode(local: Tensor, axes: tuple[int, int, int], depth: int) -> Tensor:
    top = (1 << depth) - 1
    a = local >> (2 * depth)
    b2 = (local >> depth) & top
    c2 = local & top
    b = torch.where((a & 1).bool(), top - b2, b2)
    c = torch.where((b2 & 1).bool(), top - c2, c2)
    out = torch.empty((local.shape[0], 3), dtype=torch.long, device=local.device)
    out[:, axes[0]], out[:, axes[1]], out[:, axes[2]] = a, b, c
    return out


def _hilbert_decode(local: Tensor, depth: int) -> Tensor:
    if local.device.type == "cpu" and local.shape[0] >= 4096:
        kernels = _numba_kernels()
        if kernels is not None:
            return torch.from_numpy(kernels.hilbert_decode(local.contiguous().numpy(), depth))
    return _hilbert_decode_torch(local, depth)


def _hilbert_invert_or_exchange(x: list[Tensor], i: int, q: int, p: int,
                                active: Tensor | None = None) -> None:
    """Skilling's per-bit step, shared by encode and decode: where bit ``q`` of axis ``i`` is
    set, invert the low bits ``p`` of axis 0; elsewhere exchange them between axes 0 and i.
    ``active (N,)`` bool, default all: points where the step runs (the others keep ``x``)."""
    bit = (x[i] & q).bool()
    if active is None:
        inv, keep = bit, bit
    else:
        inv, keep = bit & active, bit | ~active
    if i == 0:
        x[0] = torch.where(inv, x[0] ^ p, x[0])
    else:
        t = torch.where(keep, 0, (x[0] ^ x[i]) & p)
        x[0] = torch.where(inv, x[0] ^ p, x[0] ^ t)
        x[i] = x[i] ^ t


def _hilbert_encode_torch(g: Tensor, depth: int, point_depth: Tensor | None = None) -> Tensor:
    """Skilling's AxesToTranspose, vectorised over points; then bit interleaving.

    Per level ``q`` (top down): a set bit of axis i inverts the lower bits of axis 0,
    a clear bit exchanges the lower bits of axes 0 and i; then Gray-code the transpose.
    ``point_depth (N,)``, default all ``depth``: a point's own depth; its levels at and above
    it are skipped, which gives its code on its own ``2^point_depth`` grid (the levels above
    would exchange all-zero top bits, and that changes the lower ones: the curve depends on
    the depth). The Gray-code pass needs no mask: those top bits stay zero.
    """
    x = [g[:, 0].clone(), g[:, 1].clone(), g[:, 2].clone()]
    q = 1 << (depth - 1)
    level = depth - 1
    while q > 1:
        p = q - 1
        active = None if point_depth is None else point_depth > level
        for i in range(3):
            _hilbert_invert_or_exchange(x, i, q, p, active)
        q >>= 1
        level -= 1
    x[1] = x[1] ^ x[0]
    x[2] = x[2] ^ x[1]
    t = torch.zeros_like(x[2])
    q = 1 << (depth - 1)
    while q > 1:
        t = torch.where((x[2] & q).bool(), t ^ (q - 1), t)
        q >>= 1
    return _interleave(x[0] ^ t, x[1] ^ t, x[2] ^ t)


def _hilbert_decode_torch(local: Tensor, depth: int) -> Tensor:
    """Skilling's TransposeToAxes, vectorised over codes."""
    x = list(_deinterleave(local))
    t = x[2] >> 1
    x[2] = x[2] ^ x[1]
    x[1] = x[1] ^ x[0]
    x[0] = x[0] ^ t
    q = 2
    while q != (2 << (depth - 1)):
        p = q - 1
        for i in (2, 1, 0):
            _hilbert_invert_or_exchange(x, i, q, p)
        q <<= 1
    return torch.stack(x, 1)


_NUMBA_CACHE: list = []


def _numba_kernels():
    """The ``_curves_numba`` module (kernels compile on first use); None without numba."""
    if _NUMBA_CACHE:
        return _NUMBA_CACHE[0]
    try:
        from . import _curves_numba as kernels
    except ImportError:
        kernels = None
    _NUMBA_CACHE.append(kernels)
    return kernels
