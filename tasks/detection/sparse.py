"""Sparse voxels in plain torch: voxelisation, mean VFE, submanifold sparse 3D convolution,
voxel merging (down-sampling) and expanding (up-sampling). CPU and GPU, any Python version;
spconv is an optional backend for the convolution (``SubMConv3d(backend="spconv"|"auto")``),
trained through the same weight.

Voxel indices follow spconv: ``indices (V, 4) int`` = ``(batch, z, y, x)`` in a grid of
``spatial_shape = (Z, Y, X)``. Lookups hash every voxel to one int64 key
``((b * Z + z) * Y + y) * X + x`` and binary-search the sorted keys.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from geossm._compat import INSTALL_HINTS, MissingDependencyError
from geossm.serialization.windows import device_constant

__all__ = ["SparseVoxels", "voxelize", "SubMConv3d", "merge_voxels", "expand_voxels",
           "kernel_map", "spconv_available", "scatter_max", "SPARSE_BACKENDS",
           "resolve_backend", "require_spconv", "spconv_subm_conv", "neighbour_table",
           "voxel_keys", "sorted_voxel_keys", "contains_keys", "device_constant", "unique_keys",
           "unique_keys_together", "unique_with_merge", "merged_shape", "voxel_indices",
           "MERGE_PLAN", "VoxelLayout", "voxel_layout", "layout_settings"]


@dataclass(eq=False)
class SparseVoxels:
    """Features on the non-empty cells of a voxel grid.

    Shapes: ``features (V, C)``, ``indices (V, 4)`` int64 ``(batch, z, y, x)``;
    ``spatial_shape (Z, Y, X)``; ``batch_size`` samples. ``cache`` keeps kernel maps of these
    indices so that stacked convolutions build them once. ``sample_counts``: ``(B,)`` voxels of
    every sample on the host (numpy) where the constructor read them (``voxelize``,
    ``merge_voxels``: with the size of their ``unique``), so that the window groups need no
    host read of their own; None where unknown.
    """

    features: Tensor
    indices: Tensor
    spatial_shape: tuple[int, int, int]
    batch_size: int
    cache: dict = field(default_factory=dict)
    sample_counts: np.ndarray | None = None

    def replace(self, features: Tensor) -> "SparseVoxels":
        """Same voxels (and cached maps, sample counts), new features ``(V, C')``."""
        return SparseVoxels(features, self.indices, self.spatial_shape, self.batch_size,
                            self.cache, self.sample_counts)


def voxel_keys(indices: Tensor, spatial_shape: Sequence[int]) -> Tensor:
    """Int64 keys ``(V,)`` of ``indices (V, 4)``, ordered like ``(batch, z, y, x)``:
    ``((b * Z + z) * Y + y) * X + x``, as one product with the strides and a sum."""
    z, y, x = (int(v) for v in spatial_shape)
    strides = device_constant([z * y * x, y * x, x, 1], indices.device)
    return (indices.long() * strides).sum(-1)


def sorted_voxel_keys(sp: "SparseVoxels") -> tuple[Tensor, Tensor]:
    """``(sorted keys (V,), perm (V,))`` of ``sp``'s voxels (``keys[perm] = sorted``), cached
    on ``sp``: the neighbour table and voxel generation look cells up in them."""
    if "sorted_keys" not in sp.cache:
        sp.cache["sorted_keys"] = torch.sort(voxel_keys(sp.indices, sp.spatial_shape))
    return sp.cache["sorted_keys"]


def contains_keys(sorted_keys: Tensor, keys: Tensor) -> Tensor:
    """``(M,)`` bool: whether each of ``keys (M,)`` is among ``sorted_keys (V,)`` (sorted,
    distinct). A binary search, no host sync (``torch.isin`` may sort on the host's count)."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, keys).clamp_max(sorted_keys.numel() - 1)
    return sorted_keys[pos] == keys


def unique_keys(keys: Tensor, cells_per_sample: int, batch_size: int
                ) -> tuple[Tensor, Tensor, np.ndarray]:
    """``torch.unique(keys, return_inverse=True)`` of voxel keys and the number of distinct keys
    of every sample, with one host read for both: the ``B + 1`` counts (on the GPU,
    ``torch.unique`` reads its size on the host, and counting the samples after it would be a
    second read). ``unique_keys_together`` shares the read among several key sets.

    A key's sample is ``key // cells_per_sample``; keys of sample ``batch_size`` or beyond (a
    "past every cell" sentinel marking an entry to drop) are left out of the result, and their
    inverse is ``U`` (one past the last distinct key: a dump row).

    Shapes: ``keys (N,)`` int64, non-negative -> ``(sorted distinct keys (U,), inverse (N,)
    int64, counts (B,) int64 numpy)`` with ``U = counts.sum()``; the keys and inverse equal
    ``torch.unique``'s.
    """
    return unique_keys_together((keys, cells_per_sample, batch_size))[0]


def unique_keys_together(*requests: tuple[Tensor, int, int]
                         ) -> list[tuple[Tensor, Tensor, np.ndarray]]:
    """``unique_keys(*request)`` of every ``(keys, cells_per_sample, batch_size)`` request, with
    one host read for all of them (their counts, concatenated). Key sets of one length and
    batch size are sorted and counted as one ``(K, N)`` stack (fewer operators)."""
    lengths = {(keys.shape[0], int(b)) for keys, _, b in requests}
    if len(lengths) == 1:
        keys = torch.stack([k for k, _, _ in requests])
        cells = [int(c) for _, c, _ in requests]
        sorted_keys, perm, rank, counts = _distinct_runs(keys, cells, requests[0][2])
        # the inverse of every set by one scatter along the voxels
        inverses = torch.empty_like(keys).scatter_(1, perm, rank)
        runs = list(zip(sorted_keys.unbind(0), rank.unbind(0), inverses.unbind(0)))
    else:
        runs, counts = [], []
        for keys, cells, b in requests:
            sorted_keys, perm, rank, c = _distinct_runs(keys[None], [int(cells)], b)
            inverse = torch.empty_like(keys).scatter_(0, perm[0], rank[0])
            runs.append((sorted_keys[0], rank[0], inverse))
            counts.append(c)
        counts = torch.cat(counts)
    counts = counts.cpu().numpy()
    out, at = [], 0
    for (keys, _, batch_size), (sorted_keys, rank, inverse) in zip(requests, runs):
        per_sample = counts[at:at + batch_size]
        at += batch_size + 1
        # the first of every run of equal keys: no scatter with repeated targets, no host read
        firsts = torch.searchsorted(rank, torch.arange(int(per_sample.sum()), device=keys.device))
        out.append((sorted_keys[firsts], inverse, per_sample))
    return out


def _distinct_runs(keys: Tensor, cells_per_sample: Sequence[int], batch_size: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(sorted keys, perm, rank, counts (K * (B + 1),))`` of ``K`` non-negative key sets
    ``keys (K, N)`` (``cells_per_sample``: one per set): ``rank`` numbers the runs of equal
    sorted keys of every set, ``counts`` the runs per sample of every set (each set's last:
    its sentinels')."""
    k = keys.shape[0]
    sorted_keys, perm = torch.sort(keys, dim=1)
    # a run starts where the key differs from the one before (-1 before the first: keys >= 0)
    before = torch.cat([device_constant([[-1]] * k, keys.device), sorted_keys], 1)[:, :-1]
    first = sorted_keys != before
    rank = torch.cumsum(first, 1) - 1
    cells = device_constant([[c] for c in cells_per_sample], keys.device)
    rows = device_constant([[i * (batch_size + 1)] for i in range(k)], keys.device)
    sample = torch.div(sorted_keys, cells, rounding_mode="floor").clamp_max(batch_size) + rows
    counts = torch.zeros(k * (batch_size + 1), dtype=torch.long, device=keys.device).index_add_(
        0, sample.view(-1), first.view(-1).long())
    return sorted_keys, perm, rank, counts


def merged_shape(spatial_shape: Sequence[int], stride: Sequence[int]) -> tuple[int, int, int]:
    """The grid ``(Z, Y, X)`` after a merge by ``stride (sz, sy, sx)`` (rounded up)."""
    return tuple(-(-int(d) // int(v)) for d, v in zip(spatial_shape, stride))


def unique_with_merge(keys: Tensor, spatial_shape: Sequence[int], batch_size: int,
                      then_merge: Sequence[int] | None = None
                      ) -> tuple[Tensor, Tensor, np.ndarray, tuple | None]:
    """``unique_keys`` of voxel ``keys (N,)`` in the grid ``spatial_shape`` (sentinel
    ``B * Z * Y * X`` for an entry to drop) and, with ``then_merge (sz, sy, sx)``, the
    ``merge_voxels`` of the resulting voxels by that stride worked out in the same host read:
    ``(keys, inverse, counts, merge)`` with ``merge = (stride, coarse keys (U2,), voxel to
    coarse (U,), coarse voxels per sample (B,))`` or None, for the voxels' ``cache``
    (``MERGE_PLAN``)."""
    z, y, x = (int(v) for v in spatial_shape)
    if then_merge is None:
        return (*unique_keys(keys, z * y * x, batch_size), None)
    stride = tuple(int(v) for v in then_merge)
    shape = merged_shape(spatial_shape, stride)
    s = device_constant([1, *stride], keys.device)
    # a sentinel decodes to sample B: its coarse key is the coarse grid's sentinel
    coarse = voxel_keys(voxel_indices(keys, spatial_shape) // s, shape)
    (uniq, inverse, counts), (uniq2, inverse2, counts2) = unique_keys_together(
        (keys, z * y * x, batch_size), (coarse, shape[0] * shape[1] * shape[2], batch_size))
    # every entry of a voxel has the voxel's coarse cell: repeated targets, equal values
    fine_to_coarse = inverse2.new_empty(uniq.numel() + 1).scatter_(0, inverse, inverse2)
    return uniq, inverse, counts, (stride, uniq2, fine_to_coarse[:-1], counts2)


#: ``SparseVoxels.cache`` key of a merge worked out with the voxels (``unique_with_merge``)
MERGE_PLAN = "merge_plan"


def scatter_max(src: Tensor, index: Tensor, size: int) -> Tensor:
    """Row-wise max of ``src (N, C)`` into ``size`` rows by ``index (N,)`` (empty rows 0)."""
    out = torch.zeros(size, src.shape[1], dtype=src.dtype, device=src.device)
    return out.scatter_reduce(0, index[:, None].expand_as(src), src, "amax", include_self=False)


@dataclass(frozen=True, eq=False)
class VoxelLayout:
    """Where the points of a batch fall on a voxel grid, worked out apart from their features
    (``voxel_layout``; the detection task's ``collate`` builds it in the data loader, so that
    the step neither sorts the points nor reads a size on the host for it).

    Fields: ``indices (V, 4)`` long ``(batch, z, y, x)``, sorted by ``voxel_keys``;
    ``point_to_voxel (N,)`` long, ``V`` for a point outside the grid; ``spatial_shape``;
    ``sample_counts (B,)`` numpy voxels per sample; ``merge``: the first merge of the voxels
    worked out with them (``unique_with_merge``) or None; ``settings``: what built it (the
    voxel size, range and merge stride), compared by the model that uses it."""

    indices: Tensor
    point_to_voxel: Tensor
    spatial_shape: tuple[int, int, int]
    sample_counts: np.ndarray
    merge: tuple | None = None
    settings: tuple = ()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "VoxelLayout":
        """Every tensor on ``device`` (the trainer's ``move_to`` passes ``non_blocking=True``:
        from the loader's pinned memory the copies then do not wait for the device's queue)."""
        return self._apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "VoxelLayout":
        """Every tensor in pinned host memory (the data loader's ``pin_memory``)."""
        return self._apply(lambda t: t.pin_memory())

    def _apply(self, fn) -> "VoxelLayout":
        merge = self.merge
        if merge is not None:
            merge = (merge[0], fn(merge[1]), fn(merge[2]), merge[3])
        return VoxelLayout(fn(self.indices), fn(self.point_to_voxel), self.spatial_shape,
                           self.sample_counts, merge, self.settings)


def voxel_layout(points: Tensor, batch: Tensor, batch_size: int, voxel_size: Sequence[float],
                 point_cloud_range: Sequence[float], then_merge: Sequence[int] | None = None
                 ) -> VoxelLayout:
    """The voxels of ``voxelize`` without their features (arguments as there).
    Host sync: the number of voxels of every sample (``unique_keys``)."""
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points: expected shape (N, >=3), got {tuple(points.shape)}")
    if batch.shape != points.shape[:1]:
        raise ValueError(f"batch: expected shape ({points.shape[0]},), got {tuple(batch.shape)}")
    dev, dtype = points.device, points.dtype
    vs = device_constant([float(v) for v in voxel_size], dev, dtype)
    lo = device_constant([float(v) for v in point_cloud_range[:3]], dev, dtype)
    hi = device_constant([float(v) for v in point_cloud_range[3:]], dev, dtype)
    shape_xyz = [int(round(float(h - l) / float(v))) for l, h, v in
                 zip(point_cloud_range[:3], point_cloud_range[3:], voxel_size)]
    spatial = (shape_xyz[2], shape_xyz[1], shape_xyz[0])
    cell = torch.floor((points[:, :3] - lo) / vs).long()
    inside = ((points[:, :3] >= lo) & (points[:, :3] < hi)).all(1)
    inside &= ((cell >= 0) & (cell < device_constant(shape_xyz, dev))).all(1)
    idx = torch.stack([batch.long(), cell[:, 2], cell[:, 1], cell[:, 0]], 1)
    # points outside get the key past every cell's: unique_keys leaves it out and maps them to
    # the dump row V (no boolean selection, one host read: the voxels per sample)
    cells = spatial[0] * spatial[1] * spatial[2]
    keys = torch.where(inside, voxel_keys(idx, spatial), int(batch_size) * cells)
    uniq, inv, per_sample, merge = unique_with_merge(keys, spatial, int(batch_size),
                                                     then_merge)
    return VoxelLayout(voxel_indices(uniq, spatial), inv, spatial, per_sample, merge,
                       layout_settings(voxel_size, point_cloud_range, then_merge))


def layout_settings(voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                    then_merge: Sequence[int] | None) -> tuple:
    """``VoxelLayout.settings``: what a layout was built with, in a form compared by value."""
    return (tuple(float(v) for v in voxel_size), tuple(float(v) for v in point_cloud_range),
            None if then_merge is None else tuple(int(v) for v in then_merge))


def voxelize(points: Tensor, batch: Tensor | None, batch_size: int, voxel_size: Sequence[float],
             point_cloud_range: Sequence[float], then_merge: Sequence[int] | None = None,
             layout: VoxelLayout | None = None) -> tuple[SparseVoxels, Tensor]:
    """Points -> voxels with the mean of their points' features (mean VFE).

    A point ``p`` falls in cell ``floor((p - range_min) / voxel_size)``; points outside the range
    are dropped. Features of a voxel are the mean over its points of ``points[:, :C]``.

    Args:
        points: ``(N, C)`` float, ``x, y, z, ...`` first.
        batch: ``(N,)`` sample of every point (may be None with ``layout``).
        batch_size: ``B``.
        voxel_size: ``(vx, vy, vz)`` metres.
        point_cloud_range: ``(x0, y0, z0, x1, y1, z1)``.
        then_merge: ``(sz, sy, sx)`` of the ``merge_voxels`` the voxels will go through first:
            its coarse cells are worked out here, in the same host read (default None).
        layout: ``voxel_layout`` of these arguments computed before (e.g. in the data loader),
            default None: computed here. Not checked against the points (that would read them).

    Returns:
        ``(SparseVoxels with features (V, C), point_to_voxel (N,))`` (-1 for dropped points).
        Host sync: the number of voxels of every sample (``unique_keys``); none with
        ``layout``.
    """
    if layout is None:
        layout = voxel_layout(points, batch, batch_size, voxel_size, point_cloud_range,
                              then_merge)
    elif layout.point_to_voxel.shape != points.shape[:1] or len(layout.sample_counts) != batch_size:
        raise ValueError(f"layout: built for {layout.point_to_voxel.shape[0]} points in "
                         f"{len(layout.sample_counts)} samples, got {points.shape[0]} points in "
                         f"{batch_size}")
    v, inv = layout.indices.shape[0], layout.point_to_voxel
    feats = torch.zeros(v + 1, points.shape[1], dtype=points.dtype, device=points.device)
    feats.index_add_(0, inv, points)
    counts = torch.zeros(v + 1, dtype=points.dtype, device=points.device).index_add_(
        0, inv, torch.ones_like(points[:, 0]))
    feats = feats[:v] / counts[:v, None].clamp_min(1)
    sp = SparseVoxels(feats, layout.indices, layout.spatial_shape, int(batch_size),
                      sample_counts=layout.sample_counts)
    if layout.merge is not None:
        sp.cache[MERGE_PLAN] = layout.merge
    return sp, torch.where(inv < v, inv, -1)


def voxel_indices(keys: Tensor, spatial: Sequence[int]) -> Tensor:
    """``(V, 4)`` ``(batch, z, y, x)`` of ``voxel_keys`` ``(V,)`` in the grid ``spatial``."""
    z, y, x = (int(v) for v in spatial)
    strides = device_constant([z * y * x, y * x, x, 1], keys.device)
    extents = device_constant([2 ** 62, z, y, x], keys.device)   # the batch is not wrapped
    return torch.remainder(keys[:, None] // strides, extents)


def _offsets(kernel_size: int, device: torch.device) -> Tensor:
    """``(k^3, 4)`` long offsets ``(0, dz, dy, dx)``, z-major, then y, then x, each from
    ``-k//2`` (a ``device_constant``)."""
    r = range(-(kernel_size // 2), kernel_size // 2 + 1)
    return device_constant([(0, dz, dy, dx) for dz in r for dy in r for dx in r], device)


def neighbour_table(sp: SparseVoxels, kernel_size: int = 3) -> Tensor:
    """``(V, k^3)`` long: row of the voxel at ``indices[v] + offset_k``, or ``V`` (a zero row)
    where that cell is empty. Offsets as ``kernel_map``. Cached on ``sp``.

    All offsets at once: the ``V * k^3`` neighbour keys are looked up in the sorted voxel keys
    by one ``searchsorted``, with no output whose size depends on the data (no host sync)."""
    key = ("table", kernel_size)
    if key not in sp.cache:
        v = sp.indices.shape[0]
        dev = sp.indices.device
        sorted_keys, perm = sorted_voxel_keys(sp)
        nb = sp.indices.long()[:, None, :] + _offsets(kernel_size, dev)         # (V, k^3, 4)
        hi = device_constant([sp.batch_size, *sp.spatial_shape], dev)
        ok = ((nb >= 0) & (nb < hi)).all(-1)
        nk = voxel_keys(nb.reshape(-1, 4), sp.spatial_shape).view(v, kernel_size ** 3)
        pos = torch.searchsorted(sorted_keys, nk).clamp_max(max(v - 1, 0))
        if v:
            found = ok & (sorted_keys[pos] == nk)
            table = torch.where(found, perm[pos], v)
        else:
            table = torch.empty(0, kernel_size ** 3, dtype=torch.long, device=dev)
        sp.cache[key] = table
    return sp.cache[key]


def kernel_map(sp: SparseVoxels, kernel_size: int = 3) -> list[tuple[Tensor, Tensor]]:
    """For each of the ``k^3`` offsets ``(dz, dy, dx)``, the pairs ``(out_rows, in_rows)`` with
    ``indices[in] = indices[out] + offset`` (the submanifold rule: outputs only at input sites).
    Cached on ``sp``. Offsets are ordered z-major, then y, then x, each from ``-k//2``.
    Read from ``neighbour_table`` (one host sync per offset: the number of pairs)."""
    key = ("subm", kernel_size)
    if key not in sp.cache:
        table = neighbour_table(sp, kernel_size)
        v = table.shape[0]
        out = []
        for k in range(table.shape[1]):
            rows = torch.nonzero(table[:, k] < v).squeeze(1)
            out.append((rows, table[rows, k]))
        sp.cache[key] = out
    return sp.cache[key]


class _GatherGemm(torch.autograd.Function):
    """``out = gather(x, table) (V, k^3 * C_in) @ W (k^3 * C_in, C_out)``.

    The submanifold rulebook is symmetric (``u = v + o`` iff ``v = u - o``), so the input
    gradient is again a gather - GEMM with the mirrored offsets, and no scatter-add (slow on
    CPU, atomic on GPU) is needed in either direction."""

    @staticmethod
    def forward(ctx, x, weight, table):
        # one compute dtype for both passes: autocast's (bf16 on GPU training) when it is on,
        # else the inputs' common type; gradients go back in the inputs' own dtypes
        dev = x.device.type
        dtype = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
                 else torch.promote_types(x.dtype, weight.dtype))
        ctx.dtypes = (x.dtype, weight.dtype)
        x, weight = x.to(dtype), weight.to(dtype)
        v, k3 = table.shape
        xp = torch.cat([x, x.new_zeros(1, x.shape[1])])
        cols = xp[table].reshape(v, k3 * x.shape[1])                      # (V, k^3 * C_in)
        ctx.save_for_backward(cols, weight, table)
        return cols @ weight.reshape(-1, weight.shape[2])

    @staticmethod
    def backward(ctx, grad):
        cols, weight, table = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        grad = grad.to(cols.dtype)
        k3, cin, cout = weight.shape
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (cols.t() @ grad).reshape(k3, cin, cout).to(w_dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            gp = torch.cat([grad, grad.new_zeros(1, cout)])
            # offset k of u reads grad_out at u - o_k = the entry of the mirrored offset
            gcols = gp[table.flip(1)].reshape(table.shape[0], k3 * cout)   # (V, k^3 * C_out)
            grad_x = (gcols @ weight.transpose(1, 2).reshape(-1, cin)).to(x_dtype)
        return grad_x, grad_w, None


#: the values of ``SubMConv3d(backend=...)`` and of ``LION(sparse_backend=...)``
SPARSE_BACKENDS = ("torch", "spconv", "auto")


@functools.lru_cache(maxsize=None)
def spconv_available() -> bool:
    """Whether the spconv backend can be used (``spconv.pytorch`` imports; checked once, the
    import takes seconds)."""
    try:
        _import_spconv()
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _import_spconv():
    """``(spconv.pytorch.ops, spconv.pytorch.functional, ConvAlgo)``, imported once (every
    spconv forward asks for them); spconv 2.3's import warns about its own deprecated
    ``torch.cuda.amp`` decorators, which say nothing to users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from spconv.core import ConvAlgo
        from spconv.pytorch import functional, ops
    return ops, functional, ConvAlgo


def require_spconv(feature: str) -> None:
    """Raise ``MissingDependencyError`` with the install hint unless spconv can be used."""
    if not spconv_available():
        raise MissingDependencyError(
            f"{feature} needs spconv, which is not importable here: {INSTALL_HINTS['spconv']}. "
            "Or choose the torch backend ('torch', or 'auto' to use spconv only where it is "
            "installed)")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"torch"`` or ``"spconv"`` for ``backend`` in ``SPARSE_BACKENDS`` on ``device``:
    ``"auto"`` is spconv on CUDA when it is installed, torch otherwise."""
    if backend == "auto":
        return "spconv" if device.type == "cuda" and spconv_available() else "torch"
    return backend


def _check_backend(backend: str, argument: str) -> None:
    if backend not in SPARSE_BACKENDS:
        raise ValueError(f"{argument}: expected one of {SPARSE_BACKENDS}, got {backend!r}")
    if backend == "spconv":
        require_spconv(f"{argument}='spconv'")


def _spconv_algo(name: str, kernel_size: int, device: torch.device):
    """spconv's ``ConvAlgo`` for ``name``: ``"auto"`` is spconv's own default, the masked
    implicit GEMM on CUDA for kernels of at most 32 offsets, else the native
    gather-GEMM-scatter (the only one on the CPU)."""
    algo = _import_spconv()[2]
    if name == "auto":
        implicit = device.type == "cuda" and kernel_size ** 3 <= 32
        return algo.MaskImplicitGemm if implicit else algo.Native
    if name == "mask_implicit_gemm" and device.type != "cuda":
        raise ValueError(f"spconv_algo: 'mask_implicit_gemm' runs on CUDA only, got "
                         f"{device.type} features (use 'native' or 'auto')")
    return {"native": algo.Native, "mask_implicit_gemm": algo.MaskImplicitGemm}[name]


def spconv_subm_conv(sp: SparseVoxels, weight: Tensor, kernel_size: int, algo: str = "auto"
                     ) -> Tensor:
    """Submanifold convolution of ``sp.features (V, C_in)`` through spconv's autograd
    functions, without bias: ``(V, C_out)`` rows in ``sp``'s order.

    ``weight (k^3, C_in, C_out)`` (z-major offsets, the torch path's layout) is viewed as
    spconv's ``(C_out, kz, ky, kx, C_in)``; the permuted copy is part of the graph, so the
    gradient reaches ``weight`` itself. spconv's rulebook (its "indice pairs") is built once per
    voxel set, algorithm and grad mode, and kept in ``sp.cache`` like the torch path's kernel
    map. On CUDA under autocast spconv computes in fp16 (its ``custom_fwd`` casts the inputs).
    """
    ops, functional, _ = _import_spconv()
    k, (_, cin, cout) = kernel_size, weight.shape
    conv_algo = _spconv_algo(algo, k, sp.features.device)
    is_train = torch.is_grad_enabled()
    key = ("spconv_subm", k, conv_algo.name, is_train)
    if key not in sp.cache:
        sp.cache[key] = _spconv_rulebook(ops, sp, k, conv_algo, is_train)
    rules = sp.cache[key]
    # under CUDA autocast spconv's custom_fwd casts both inputs to fp16 itself; casting the
    # weight to bf16 features first would round it twice
    dtype = (torch.float16 if sp.features.is_cuda and torch.is_autocast_enabled("cuda")
             else sp.features.dtype)
    filters = weight.permute(2, 0, 1).reshape(cout, k, k, k, cin).to(dtype).contiguous()
    features = sp.features.to(dtype).contiguous()
    v = features.shape[0]
    if conv_algo.name == "Native":
        pairs, pairs_per_offset = rules
        return functional.indice_subm_conv(features, filters, pairs, pairs_per_offset, v,
                                           conv_algo)
    pair_fwd, pair_bwd, mask_fwd, mask_bwd, order_fwd, order_bwd, masks = rules
    return functional.implicit_gemm(features, filters, pair_fwd, pair_bwd, mask_fwd, mask_bwd,
                                    order_fwd, order_bwd, v, masks, is_train, True)


def _spconv_rulebook(ops, sp: SparseVoxels, k: int, conv_algo, is_train: bool) -> tuple:
    """spconv's indice pairs of a ``k^3`` submanifold conv on ``sp.indices`` (int32)."""
    indices = sp.indices.int().contiguous()
    geometry = dict(ksize=[k] * 3, stride=[1] * 3, padding=[k // 2] * 3, dilation=[1] * 3,
                    out_padding=[0] * 3, subm=True, transpose=False)
    if conv_algo.name == "Native":
        _, pairs, pairs_per_offset = ops.get_indice_pairs(
            indices, sp.batch_size, list(sp.spatial_shape), conv_algo, **geometry)
        return pairs, pairs_per_offset
    res = ops.get_indice_pairs_implicit_gemm(indices, sp.batch_size, list(sp.spatial_shape),
                                             conv_algo, is_train=is_train, **geometry)
    return tuple(res[2:9])


class SubMConv3d(nn.Module):
    """Submanifold sparse 3D convolution: outputs only at the input's voxels.

    ``out[v] = bias + sum_{o in offsets} W[o]^T in[v + o]`` over neighbours ``v + o`` that exist.
    The torch path lays the rulebook (``kernel_map``: hashed voxel keys, sorted and
    binary-searched per offset) out as a neighbour table; one gather of the ``k^3`` neighbours
    and one GEMM give the output rows directly (the scatter of gather-GEMM-scatter is the
    identity for a submanifold conv), and the backward pass is the same with mirrored offsets.
    The spconv path feeds the same weight to spconv's autograd functions
    (``spconv_subm_conv``); both train the one parameter.

    Args:
        in_channels, out_channels: ``C_in``, ``C_out``.
        kernel_size: odd ``k``, default 3.
        bias: default True.
        backend: ``"torch"`` (default), ``"spconv"`` (needs spconv; raises
            ``MissingDependencyError`` with the install line when it is missing) or ``"auto"``
            (spconv for CUDA inputs when installed, torch otherwise; decided per forward).
        spconv_algo: ``"auto"`` (spconv's default: masked implicit GEMM on CUDA for
            ``k^3 <= 32``, else native, the only one on the CPU), ``"native"`` or
            ``"mask_implicit_gemm"`` (CUDA only).

    Shapes: ``features (V, C_in) -> (V, C_out)``; weight ``(k^3, C_in, C_out)`` with z-major
    offsets for every backend (checkpoints load into either).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 bias: bool = True, backend: str = "torch", spconv_algo: str = "auto"):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd positive int, got {kernel_size!r}")
        _check_backend(backend, "backend")
        if spconv_algo not in ("auto", "native", "mask_implicit_gemm"):
            raise ValueError("spconv_algo: expected 'auto', 'native' or 'mask_implicit_gemm', "
                             f"got {spconv_algo!r}")
        self.kernel_size, self.backend, self.spconv_algo = kernel_size, backend, spconv_algo
        self.in_channels, self.out_channels = in_channels, out_channels
        k3 = kernel_size ** 3
        self.weight = nn.Parameter(torch.empty(k3, in_channels, out_channels))
        bound = 1 / math.sqrt(in_channels * k3)
        nn.init.uniform_(self.weight, -bound * math.sqrt(3), bound * math.sqrt(3))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, sp: SparseVoxels) -> SparseVoxels:
        x = sp.features
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"features: expected shape (V, {self.in_channels}), got "
                             f"{tuple(x.shape)}")
        # no voxels: nothing for spconv's rulebook; the torch path gives the empty rows
        if resolve_backend(self.backend, x.device) == "spconv" and x.shape[0]:
            out = spconv_subm_conv(sp, self.weight, self.kernel_size, self.spconv_algo)
        else:
            out = _GatherGemm.apply(x, self.weight.to(x.dtype),
                                    neighbour_table(sp, self.kernel_size))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return sp.replace(out)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"backend={self.backend}")


def merge_voxels(sp: SparseVoxels, stride: Sequence[int], reduce: str = "max"
                 ) -> tuple[SparseVoxels, Tensor]:
    """Voxel merging (down-sampling): cell ``(z, y, x)`` goes to ``(z // sz, y // sy, x // sx)``
    and features of the merged cells are reduced (``"max"`` or ``"mean"``).

    Args:
        stride: ``(sz, sy, sx)``.
    Returns:
        ``(coarse SparseVoxels, fine_to_coarse (V,))``; ``expand_voxels`` undoes the merge.
        Host sync: the merged voxels of every sample (``unique_keys``); none where the voxels'
        constructor worked this merge out (``then_merge``).
    """
    if len(stride) != 3 or any(int(v) < 1 for v in stride):
        raise ValueError(f"stride: expected 3 positive ints (sz, sy, sx), got {tuple(stride)}")
    stride = tuple(int(v) for v in stride)
    shape = merged_shape(sp.spatial_shape, stride)
    plan = sp.cache.get(MERGE_PLAN)
    if plan is not None and plan[0] == stride:
        _, uniq, inv, counts = plan
    else:
        s = device_constant([1, *stride], sp.indices.device)
        keys = voxel_keys(sp.indices // s, shape)
        uniq, inv, counts = unique_keys(keys, shape[0] * shape[1] * shape[2], sp.batch_size)
    if reduce == "max":
        feats = scatter_max(sp.features, inv, uniq.numel())
    elif reduce == "mean":
        feats = torch.zeros(uniq.numel(), sp.features.shape[1], dtype=sp.features.dtype,
                            device=sp.features.device).index_add_(0, inv, sp.features)
        # scatter-add, not bincount: bincount reads the maximum on the host (a sync)
        members = torch.zeros(uniq.numel(), dtype=torch.long, device=inv.device).index_add_(
            0, inv, torch.ones_like(inv))
        feats = feats / members.clamp_min(1)[:, None]
    else:
        raise ValueError(f"reduce: expected 'max' or 'mean', got {reduce!r}")
    return SparseVoxels(feats, voxel_indices(uniq, shape), shape, sp.batch_size,
                        sample_counts=counts), inv


def expand_voxels(coarse: SparseVoxels, fine: SparseVoxels, fine_to_coarse: Tensor) -> SparseVoxels:
    """Voxel expanding (up-sampling): every fine voxel takes its coarse cell's features."""
    return fine.replace(coarse.features.index_select(0, fine_to_coarse))
