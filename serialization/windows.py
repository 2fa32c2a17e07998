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

__all__ = ["window_groups"]


def _triple(name: str, value, what: str) -> tuple[int, int, int]:
    if (not isinstance(value, (Sequence, Tensor)) or isinstance(value, str) or len(value) != 3):
        raise ValueError(f"{name}: expected 3 positive ints {what}, got {value!r}")
    vals = tuple(int(v) for v in value)
    if any(v < 1 for v in vals) or any(float(v) != float(w) for v, w in zip(vals, value)):
        raise ValueError(f"{name}: expected 3 positive ints {what}, got {tuple(value)!r}")
    return vals


def window_groups(coords: Tensor, sparse_shape, window_shape, group_size: int,
                  axis: str = "x", shift: bool = False) -> Serialization:
    """Serialize voxels window by window and cut every sample into fixed-size groups.

    With ``(wx, wy, wz) = window_shape`` and ``s = window // 2`` when ``shift`` (else 0), a voxel
    at ``(x, y, z)`` lies in window ``w = (x + sx) // wx, ...`` at in-window position
    ``r = (x + sx) % wx, ...``. The sort key of ``axis="x"`` is::

        (batch, w_x, w_y, w_z, r_x, r_y, r_z)      # axis="y": (batch, w_y, w_x, w_z, r_y, r_x, r_z)

    ties by source index. Each sample's sorted run of ``n_b`` voxels is then cut into
    ``ceil(n_b / group_size)`` groups: all of exactly ``group_size`` voxels except the sample's
    last; groups never cross samples, no voxel is padded or duplicated, empty samples give no group.

    Args:
        coords: ``(N, 4)`` integer voxel indices ``(batch, z, y, x)`` (spconv's convention).
        sparse_shape: ``(Z, Y, X)`` grid extent (spconv's ``spatial_shape``).
        window_shape: ``(wx, wy, wz)`` window extent in voxels, x first (LION's configs).
        group_size: voxels per group (LION: 4096, 2048, 1024, 512).
        axis: ``"x"`` or ``"y"``: the slowest window axis, default ``"x"``.
        shift: offset the windows by half a window (shifted windows), default False.

    Returns:
        ``Serialization`` over the ``G`` groups (``cu_seqlens (G+1,)``) with extras
        ``group_batch (G,)`` (sample of every group) and ``window (N,)`` (flat window index of
        every source voxel, unique across samples). Host syncs: the range checks and ``G``.
    """
    if not isinstance(coords, Tensor):
        raise TypeError(f"coords: expected a torch.Tensor, got {type(coords).__name__}")
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords: expected shape (N, 4) = (batch, z, y, x), got {tuple(coords.shape)}")
    if coords.dtype.is_floating_point or coords.dtype.is_complex or coords.dtype == torch.bool:
        raise ValueError(f"coords: expected an integer tensor, got dtype {coords.dtype}")
    zs, ys, xs = _triple("sparse_shape", sparse_shape, "(Z, Y, X)")
    wx, wy, wz = _triple("window_shape", window_shape, "(wx, wy, wz)")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: expected a positive int, got {group_size!r}")
    if axis not in ("x", "y"):
        raise ValueError(f"axis: expected 'x' or 'y', got {axis!r}")
    dev = coords.device
    n = coords.shape[0]
    check_int32_tokens(n, "coords")
    c = coords.long()
    if n:
        lo = c.min(0).values.tolist()
        hi = c.max(0).values.tolist()
        if min(lo) < 0:
            raise ValueError(f"coords: expected non-negative (batch, z, y, x), got minima {lo}")
        if hi[1] >= zs or hi[2] >= ys or hi[3] >= xs:
            raise ValueError(
                f"coords: expected (z, y, x) < sparse_shape {(zs, ys, xs)}, got maxima {hi[1:]}"
            )
        num_samples = hi[0] + 1
    else:
        num_samples = 0
    sx, sy, sz = (wx // 2, wy // 2, wz // 2) if shift else (0, 0, 0)
    x, y, z = c[:, 3] + sx, c[:, 2] + sy, c[:, 1] + sz
    # +1 window per axis leaves room for the shifted grid.
    nx, ny, nz = -(-xs // wx) + 1, -(-ys // wy) + 1, -(-zs // wz) + 1
    win_x, win_y, win_z = x // wx, y // wy, z // wz
    in_x, in_y, in_z = x % wx, y % wy, z % wz
    if axis == "x":
        win = (win_x * ny + win_y) * nz + win_z
        inner = (in_x * wy + in_y) * wz + in_z
    else:
        win = (win_y * nx + win_x) * nz + win_z
        inner = (in_y * wx + in_x) * wz + in_z
    win = c[:, 0] * (nx * ny * nz) + win
    key = win * (wx * wy * wz) + inner
    order = torch.sort(key, stable=True).indices
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n, device=dev)

    counts = torch.bincount(c[:, 0], minlength=num_samples)
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
    return _unchecked(order, inverse, cu, {"group_batch": group_batch, "window": win})
