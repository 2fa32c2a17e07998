"""LION window groups: voxels sorted by window, cut into groups of exactly ``group_size``.

LION (Liu et al., NeurIPS 2024) partitions the voxels of each sample into windows, sorts them
window by window along x (or along y), and runs a linear RNN over groups of a fixed number of
voxels. LION pads each sample's run to a multiple of the group size by duplicating voxels; with
``cu_seqlens`` there is no need: the last group of a sample is simply shorter.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from geossm.packed import check_int32_tokens, mark_cu_seqlens_valid

from .structure import Serialization, _check_integer, _unchecked

__all__ = ["window_groups", "window_groups_multi", "window_partition", "device_constant"]


def device_constant(values, device: torch.device, dtype: torch.dtype = torch.long) -> Tensor:
    """A constant tensor of ``values`` (nested tuples of numbers) on ``device``, made once per
    process: a fresh ``torch.tensor(..., device=cuda)`` in every step is a copy to the device
    that waits for it (a host sync). The result is shared: never modify it in place."""
    return _device_constant(_frozen(values), torch.device(device), dtype)


def _frozen(values):
    return tuple(_frozen(v) for v in values) if isinstance(values, (list, tuple)) else values


@functools.lru_cache(maxsize=256)
def _device_constant(values, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def _triple(name: str, value, what: str) -> tuple[int, int, int]:
    if (not isinstance(value, (Sequence, Tensor)) or isinstance(value, str) or len(value) != 3):
        raise ValueError(f"{name}: expected 3 positive ints {what}, got {value!r}")
    vals = tuple(int(v) for v in value)
    if any(v < 1 for v in vals) or any(float(v) != float(w) for v, w in zip(vals, value)):
        raise ValueError(f"{name}: expected 3 positive ints {what}, got {tuple(value)!r}")
    return vals


def window_groups(coords: Tensor, sparse_shape, window_shape, group_size: int,
                  axis: str = "x", shift: bool = False, *,
                  partition: tuple[Tensor, Tensor] | None = None,
                  check: bool = True) -> Serialization:
    """Serialize voxels window by window and cut every sample into fixed-size groups.

    With ``(wx, wy, wz) = window_shape`` and ``s = window // 2`` when ``shift`` (else 0), a voxel
    at ``(x, y, z)`` lies in window ``w = (x + sx) // wx, ...`` at in-window position
    ``r = (x + sx) % wx, ...``. The sort key of ``axis="x"`` is::

        (batch, w_x, w_y, w_z, r_x, r_y, r_z)      # axis="y": (batch, w_y, w_x, w_z, r_y, r_x, r_z)

    ties by source index. Each sample's sorted run of ``n_b`` voxels is then cut into
    ``ceil(n_b / group_size)`` groups: all of exactly ``group_size`` voxels except the sample's
    last; groups never cross samples, no voxel is padded or duplicated, empty samples give no group.

    The groups depend only on the samples' voxel counts and ``group_size``, not on the axis or
    the shift: layers that serialize the same voxels along x and along y can share one
    ``partition`` (``window_partition``), and with it one ``cu_seqlens`` tensor.

    Args:
        coords: ``(N, 4)`` integer voxel indices ``(batch, z, y, x)`` (spconv's convention).
        sparse_shape: ``(Z, Y, X)`` grid extent (spconv's ``spatial_shape``).
        window_shape: ``(wx, wy, wz)`` window extent in voxels, x first (LION's configs).
        group_size: voxels per group (LION: 4096, 2048, 1024, 512).
        axis: ``"x"`` or ``"y"``: the slowest window axis, default ``"x"``.
        shift: offset the windows by half a window (shifted windows), default False.
        partition: ``window_partition(coords[:, 0], batch_size, group_size)`` computed before
            (reused, not checked against ``coords``), default None: computed here.
        check: check that ``coords`` are non-negative and inside ``sparse_shape`` (two host
            syncs), default True; a caller whose indices are valid by construction passes
            False (then ``partition`` is required).

    Returns:
        ``Serialization`` over the ``G`` groups (``cu_seqlens (G+1,)``) with extras
        ``group_batch (G,)`` (sample of every group) and ``window (N,)`` (flat window index of
        every source voxel, unique across samples). Host syncs: the range checks and ``G``
        (none with ``partition`` and ``check=False``).
    """
    return window_groups_multi(coords, sparse_shape, window_shape, group_size, [(axis, shift)],
                               partition=partition, check=check)[0]


def window_groups_multi(coords: Tensor, sparse_shape, window_shape, group_size: int,
                        variants: Sequence[tuple[str, bool]] = (("x", False), ("y", True)), *,
                        partition: tuple[Tensor, Tensor] | None = None,
                        check: bool = True) -> list[Serialization]:
    """``window_groups`` of the same voxels for several ``(axis, shift)`` ``variants`` (default
    LION's pair: x, then y with shifted windows), computed together: one sort of all the
    variants' keys and one shared partition (``cu_seqlens``). Arguments and result of each as
    ``window_groups``; raises as it does."""
    _check_integer("coords", coords)
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords: expected shape (N, 4) = (batch, z, y, x), got {tuple(coords.shape)}")
    zs, ys, xs = _triple("sparse_shape", sparse_shape, "(Z, Y, X)")
    wx, wy, wz = _triple("window_shape", window_shape, "(wx, wy, wz)")
    _check_group_size(group_size)
    variants = [(axis, bool(shift)) for axis, shift in variants]
    for axis, _ in variants:
        if axis not in ("x", "y"):
            raise ValueError(f"axis: expected 'x' or 'y', got {axis!r}")
    if not check and partition is None:
        raise ValueError("partition: expected window_partition(...) when check=False (the "
                         "number of samples is then not read from coords), got None")
    n = coords.shape[0]
    check_int32_tokens(n, "coords")
    c = coords.long()
    num_samples = 0
    if check and n:
        lo = c.min(0).values.tolist()
        hi = c.max(0).values.tolist()
        if min(lo) < 0:
            raise ValueError(f"coords: expected non-negative (batch, z, y, x), got minima {lo}")
        if hi[1] >= zs or hi[2] >= ys or hi[3] >= xs:
            raise ValueError(
                f"coords: expected (z, y, x) < sparse_shape {(zs, ys, xs)}, got maxima {hi[1:]}"
            )
        num_samples = hi[0] + 1
    if partition is None:
        partition = window_partition(c[:, 0], num_samples, group_size)
    cu, group_batch = partition
    orders, inverses, wins = _window_orders(c, (zs, ys, xs), (wx, wy, wz), variants)
    return [_unchecked(order, inverse, cu, {"group_batch": group_batch, "window": win})
            for order, inverse, win in zip(orders, inverses, wins)]


def _check_group_size(group_size) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: expected a positive int, got {group_size!r}")


def _window_orders(c: Tensor, sparse_shape: tuple[int, int, int],
                   window_shape: tuple[int, int, int], variants: Sequence[tuple[str, bool]]
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """``(order, inverse, window)`` of ``window_groups``, each ``(K, N)`` for int64 ``c (N, 4)``
    and ``K`` variants: the coordinates of every variant (shifted or not) as one ``(K, N, 3)``
    tensor, window and in-window keys combined by per-variant strides (the same integers as
    the nested ``(w_x * ny + w_y) * nz + w_z`` form), one sort along the voxels."""
    zs, ys, xs = sparse_shape
    wx, wy, wz = window_shape
    dev = c.device
    # +1 window per axis leaves room for the shifted grid.
    nx, ny, nz = -(-xs // wx) + 1, -(-ys // wy) + 1, -(-zs // wz) + 1
    shifts, win_strides, in_strides = [], [], []
    for axis, shift in variants:
        shifts.append([[wx // 2, wy // 2, wz // 2] if shift else [0, 0, 0]])
        if axis == "x":
            win_strides.append([[ny * nz, nz, 1]])
            in_strides.append([[wy * wz, wz, 1]])
        else:
            win_strides.append([[nz, nx * nz, 1]])
            in_strides.append([[wz, wx * wz, 1]])
    size = device_constant([wx, wy, wz], dev)
    xyz = c.flip(1)[:, :3] + device_constant(shifts, dev)                  # (K, N, 3)
    win_xyz = xyz // size
    in_xyz = xyz - win_xyz * size
    win = (win_xyz * device_constant(win_strides, dev)).sum(-1) + c[:, 0] * (nx * ny * nz)
    key = win * (wx * wy * wz) + (in_xyz * device_constant(in_strides, dev)).sum(-1)
    order = torch.sort(key, dim=1, stable=True).indices
    rows = torch.arange(order.shape[1], device=dev).expand_as(order)
    inverse = torch.empty_like(order).scatter_(1, order, rows)
    return order, inverse, win


def window_partition(sample: Tensor, num_samples: int, group_size: int, *,
                     counts: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
    """The groups of ``window_groups``: every sample's run cut into groups of ``group_size``.

    Args:
        sample: ``(N,)`` integer sample of every voxel, each in ``[0, num_samples)``.
        num_samples: ``B``.
        group_size: voxels per group.
        counts: ``(B,)`` voxels of every sample on the host (numpy), when the caller holds them
            already (e.g. read together with the size of the ``unique`` that made the voxels);
            checked in shape and total (``N``) only, not against ``sample`` (that would read
            it on the host). Default None: counted here. Raises ``ValueError`` otherwise.

    Returns:
        ``(cu_seqlens (G+1,) int32, group_batch (G,) int64)`` on ``sample``'s device. One host
        sync without ``counts`` (none with them): the ``B`` voxel counts, from which the groups
        are laid out on the host (a few numbers, no kernel launches) and sent back without
        waiting (pinned memory); the kernels' check of ``cu_seqlens`` is then skipped
        (``mark_cu_seqlens_valid``).
    """
    _check_group_size(group_size)
    dev = sample.device
    n = sample.numel()
    if counts is None:
        # scatter-add, not bincount: bincount reads the maximum on the host (a second sync)
        counts = torch.zeros(num_samples, dtype=torch.long, device=dev).index_add_(
            0, sample.long(), torch.ones_like(sample, dtype=torch.long)).cpu().numpy()
    else:
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != (num_samples,) or int(counts.sum()) != n:
            raise ValueError(f"counts: expected {num_samples} voxel counts summing to {n}, got "
                             f"shape {counts.shape} summing to {int(counts.sum())}")
    groups = -(-counts // group_size)
    group_batch = np.repeat(np.arange(num_samples, dtype=np.int64), groups)
    rank = np.arange(len(group_batch)) - np.repeat(np.cumsum(groups) - groups, groups)
    starts = np.cumsum(counts) - counts
    cu = np.append(starts[group_batch] + rank * group_size, n).astype(np.int32)
    cu, group_batch = _to_device(cu, dev), _to_device(group_batch, dev)
    mark_cu_seqlens_valid(cu, n)
    return cu, group_batch


def _to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """``array`` as a tensor on ``device``; to a GPU from pinned memory without a host wait
    (the caching host allocator keeps the block until the copy is done)."""
    t = torch.from_numpy(array)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
