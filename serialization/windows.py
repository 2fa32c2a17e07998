"""LION window groups: voxels sorted by window, cut into groups of exactly ``group_size``.

LION (Liu et al., NeurIPS 2024) partitions the voxels of each sample into windows, sorts them
window by window along x (or along y), and runs a linear RNN over groups of a fixed number of
voxels. LION pads each sample's run to a multiple of the group size by duplicating voxels; with
``cu_seqlens`` there is no need: the last group of a sample is simply shorter.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from geossm.packed import check_int32_tokens

from .structure import Serialization, _unchecked

__all__ = ["window_groups", "window_partition"]


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
    if not isinstance(coords, Tensor):
        raise TypeError(f"coords: expected a torch.Tensor, got {type(coords).__name__}")
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords: expected shape (N, 4) = (batch, z, y, x), got {tuple(coords.shape)}")
    if coords.dtype.is_floating_point or coords.dtype.is_complex or coords.dtype == torch.bool:
        raise ValueError(f"coords: expected an integer tensor, got dtype {coords.dtype}")
    zs, ys, xs = _triple("sparse_shape", sparse_shape, "(Z, Y, X)")
    wx, wy, wz = _triple("window_shape", window_shape, "(wx, wy, wz)")
    _check_group_size(group_size)
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
    order, inverse, win = _window_order(c, (zs, ys, xs), (wx, wy, wz), axis, shift)
    return _unchecked(order, inverse, cu, {"group_batch": group_batch, "window": win})


def _check_group_size(group_size) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: expected a positive int, got {group_size!r}")


def _window_order(c: Tensor, sparse_shape: tuple[int, int, int],
                  window_shape: tuple[int, int, int], axis: str, shift: bool
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """``(order, inverse, window)`` of ``window_groups`` for int64 ``c (N, 4)``: the window
    and in-window keys of the three axes as one ``(N, 3)`` tensor each, combined by strides
    (the same integers as the nested ``(w_x * ny + w_y) * nz + w_z`` form)."""
    zs, ys, xs = sparse_shape
    wx, wy, wz = window_shape
    dev = c.device
    # +1 window per axis leaves room for the shifted grid.
    nx, ny, nz = -(-xs // wx) + 1, -(-ys // wy) + 1, -(-zs // wz) + 1
    size = torch.tensor([wx, wy, wz], device=dev)
    xyz = c[:, [3, 2, 1]]
    if shift:
        xyz = xyz + size // 2
    win_xyz = xyz // size
    in_xyz = xyz - win_xyz * size
    if axis == "x":
        win_stride, in_stride = (ny * nz, nz, 1), (wy * wz, wz, 1)
    else:
        win_stride, in_stride = (nz, nx * nz, 1), (wz, wx * wz, 1)
    win = (win_xyz * torch.tensor(win_stride, device=dev)).sum(1) + c[:, 0] * (nx * ny * nz)
    key = win * (wx * wy * wz) + (in_xyz * torch.tensor(in_stride, device=dev)).sum(1)
    order = torch.sort(key, stable=True).indices
    inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=dev))
    return order, inverse, win


def window_partition(sample: Tensor, num_samples: int, group_size: int) -> tuple[Tensor, Tensor]:
    """The groups of ``window_groups``: every sample's run cut into groups of ``group_size``.

    Args:
        sample: ``(N,)`` integer sample of every voxel, each in ``[0, num_samples)``.
        num_samples: ``B``.
        group_size: voxels per group.

    Returns:
        ``(cu_seqlens (G+1,) int32, group_batch (G,) int64)``. One host sync: ``G``.
    """
    _check_group_size(group_size)
    dev = sample.device
    n = sample.numel()
    # scatter-add, not bincount: bincount reads the maximum on the host
    counts = torch.zeros(num_samples, dtype=torch.long, device=dev).index_add_(
        0, sample.long(), torch.ones_like(sample, dtype=torch.long))
    starts = torch.cumsum(counts, 0) - counts
    groups = (counts + group_size - 1) // group_size
    total = int(groups.sum()) if num_samples else 0
    group_batch = torch.repeat_interleave(torch.arange(num_samples, device=dev), groups,
                                          output_size=total)
    first_group = torch.cumsum(groups, 0) - groups
    rank = torch.arange(total, device=dev) - first_group[group_batch]
    cu = torch.empty(total + 1, dtype=torch.int32, device=dev)
    cu[:total] = (starts[group_batch] + rank * group_size).to(torch.int32)
    cu[total] = n
    return cu, group_batch
