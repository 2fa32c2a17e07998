"""LION: LiDAR detection with linear group RNNs over window groups of voxels.

Pipeline (``LION.forward``)::

    points (N, 4) ─voxelize + mean VFE─▶ voxels (V, C) ─SubMConv stem─▶ (V, dim)
      ─▶ LION blocks: 3D spatial descriptor (submanifold 3x3x3 conv)
                      linear group RNN along x, then along y with shifted windows
                      voxel merging ─▶ the same at the merged resolution
                      ─▶ voxel expanding (+ residual)
                      voxel generation (top-k foreground voxels diffused to their BEV neighbours)
                      z merging between blocks
      ─▶ height compression (sum over z) ─▶ dense BEV (B, dim, Y, X) ─▶ 2D backbone
      ─▶ CenterPoint-style head: class heatmaps (B, K, Y, X) + box regression (B, 8, Y, X)

The linear group RNN is (Bi)Mamba over the packed groups of ``window_groups`` (no padding, no
duplicated voxels). The operator is chosen by name (``operator="mamba"``); other linear
operators (RWKV, RetNet) plug in through ``OPERATORS``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geossm.nn import BiMamba, SerializedBlock
from geossm.nn.packed_graphs import PackedGraphs
from geossm.nn.packed_mixer import (bidirectional_indices, packed_backend, packed_bimamba,
                                    segment_reversal)
from geossm.nn.stacked_weights import bind_direction_weights, is_packed, pack_where_possible
from geossm.registry import MODELS
from geossm.serialization import Serialization, window_groups_multi, window_partition

from .boxes import nms_bev
from .sparse import (MERGE_PLAN, SparseVoxels, SubMConv3d, VoxelLayout, contains_keys,
                     device_constant, expand_voxels, merge_voxels, merged_shape, scatter_max,
                     layout_settings, sorted_voxel_keys, unique_with_merge, voxel_indices,
                     voxel_keys, voxel_layout, voxelize)

__all__ = ["LION", "LIONBlock", "LinearGroupLayer", "OPERATORS", "BoxDecoder", "bev_grid",
           "decode_boxes", "generate_voxels", "generate_merged_voxels", "VoxelPlanner"]


def _mamba_block(dim: int, bidirectional: bool, mlp_ratio: float, drop_path: float, **kw):
    return SerializedBlock(dim, bidirectional=bidirectional, mlp_ratio=mlp_ratio,
                           drop_path=drop_path, **kw)


#: name -> factory ``(dim, bidirectional, mlp_ratio, drop_path, **kwargs) -> module`` whose
#: ``forward(x (N, D), serialization)`` mixes along the serialization's groups.
OPERATORS = {"mamba": _mamba_block}


class LinearGroupLayer(nn.Module):
    """One linear group RNN layer: voxels grouped by ``window_groups`` along ``axis`` and mixed
    by the operator within each group.

    A bidirectional Mamba-1 mixer keeps its two directions' weights as one parameter per pair
    (``stacked_weights.pack_bimamba_weights``; the state dict has the two-module keys). An
    optimizer state saved before that layout (two parameter tensors per pair) does
    not resume; the weights of such a checkpoint load.

    Shapes: ``SparseVoxels (V, D) -> (V, D)``.
    """

    def __init__(self, dim: int, window_shape: Sequence[int], group_size: int, axis: str,
                 shift: bool, operator: str = "mamba", bidirectional: bool = True,
                 mlp_ratio: float = 0.0, drop_path: float = 0.0, **op_kwargs):
        super().__init__()
        if operator not in OPERATORS:
            raise ValueError(f"operator: expected one of {sorted(OPERATORS)}, got {operator!r}")
        self.window_shape, self.group_size = tuple(int(v) for v in window_shape), int(group_size)
        self.axis, self.shift = axis, bool(shift)
        self.mixer = OPERATORS[operator](dim, bidirectional, mlp_ratio, drop_path, **op_kwargs)
        if isinstance(self.mixer, SerializedBlock):
            # both directions' weights stacked where they can be: the packed path's layout
            # (the state dict keeps the two-module keys)
            pack_where_possible(self.mixer.mixer)
        #: both Mamba directions in one launch of each kernel (``packed_bimamba``) where the
        #: operator allows it (see ``packed_backend``); False: the mixer's own two calls.
        self.packed = True
        #: the packed path keeps only its normalised input for the backward and recomputes
        #: the rest there (``packed_bimamba(recompute=True)``); False keeps the scan inputs.
        self.packed_recompute = True
        #: a ``PackedGraphs`` that runs the packed path on padded sizes as CUDA graphs (on
        #: CUDA, with ``packed_recompute``), or None (``LION(graph_layers=...)`` sets it)
        self.graphs: PackedGraphs | None = None

    def forward(self, sp: SparseVoxels, serialization: Serialization | None = None,
                indices: Sequence[Tensor] | None = None) -> SparseVoxels:
        """``serialization``: this layer's window groups of ``sp``'s voxels when computed
        before (``run_level``); default None: computed here. ``indices``: its
        ``bidirectional_indices`` for the packed path, default None: computed here."""
        if serialization is None:
            serialization = window_groups_multi(
                sp.indices, sp.spatial_shape, self.window_shape, self.group_size,
                [(self.axis, self.shift)], partition=group_partition(sp, self.group_size),
                check=False)[0]
        backend = self.packed_backend(sp.features)
        if backend is None:
            bind_direction_weights(getattr(self.mixer, "mixer", None))  # if stacked
            return sp.replace(self.mixer(sp.features, serialization))
        block = self.mixer
        if self.graphed(sp.features):
            return sp.replace(self.graphs(
                sp.features, block.norm1.weight, block.mixer, serialization.order,
                serialization.inverse, group_reversal(sp, serialization, self.group_size),
                serialization.cu_seqlens, block.norm1.eps, backend))
        if indices is None:
            indices = bidirectional_indices(serialization.order, serialization.inverse,
                                            group_reversal(sp, serialization, self.group_size))
        return sp.replace(packed_bimamba(
            sp.features, block.norm1.weight, block.mixer, indices, serialization.cu_seqlens,
            block.norm1.eps, backend, self.packed_recompute))

    def graphed(self, x: Tensor) -> bool:
        """Whether the packed path runs on ``self.graphs`` for features ``x``: graphs set, the
        packed path applies, ``packed_recompute`` on, and CUDA features (or graphs that run
        their padded buffers eagerly, ``capture=False``)."""
        return (self.graphs is not None and self.packed_recompute
                and self.packed_backend(x) is not None
                and (x.is_cuda or not self.graphs.capture))

    def packed_backend(self, x: Tensor) -> str | None:
        """The kernel backend ``packed_bimamba`` runs on for features ``x``, or None where it
        does not apply and the mixer runs as it is: ``packed`` off, not a bidirectional
        Mamba-1 ``SerializedBlock`` without MLP, drop-path active, activation checkpointing,
        biases in the in-/out-projections, the ``torch`` reference backend, the unfused Mamba
        path, or under ``torch.compile``."""
        block = self.mixer
        if not (self.packed and isinstance(block, SerializedBlock)
                and isinstance(block.mixer, BiMamba) and is_packed(block.mixer)
                and block.mlp is None):
            return None
        if (block.training and block.drop_path.p > 0) or block.grad_checkpoint:
            return None
        # stacked weights imply no in-/out-projection biases and matching conv biases
        return packed_backend(block.mixer, x)


def run_level(layers: Sequence[LinearGroupLayer], sp: SparseVoxels) -> SparseVoxels:
    """``layers`` one after the other on the same voxels (a LION level: x, then y shifted),
    their window groups computed together (one sort, one partition: ``window_groups_multi``).
    The layers must share ``window_shape`` and ``group_size``."""
    first = layers[0]
    if any((l.window_shape, l.group_size) != (first.window_shape, first.group_size)
           for l in layers):
        raise ValueError("layers: expected one window_shape and group_size for the level, got "
                         f"{[(l.window_shape, l.group_size) for l in layers]}")
    sers = window_groups_multi(sp.indices, sp.spatial_shape, first.window_shape,
                               first.group_size, [(l.axis, l.shift) for l in layers],
                               partition=group_partition(sp, first.group_size), check=False)
    indices = [None] * len(layers)
    if any(layer.packed_backend(sp.features) is not None and not layer.graphed(sp.features)
           for layer in layers):
        # the gathers of every layer's two directions at once (one set of index ops a level)
        stacked = bidirectional_indices(torch.stack([s.order for s in sers]),
                                        torch.stack([s.inverse for s in sers]),
                                        group_reversal(sp, sers[0], first.group_size))
        indices = list(zip(*(t.unbind(0) for t in stacked)))
    for layer, ser, idx in zip(layers, sers, indices):
        sp = layer(sp, ser, idx)
    return sp


def group_reversal(sp: SparseVoxels, serialization: Serialization, group_size: int) -> Tensor:
    """``segment_reversal`` of the window groups of ``sp``'s voxels (``serialization``'s
    ``cu_seqlens``), cached on ``sp`` like ``group_partition``."""
    key = ("segment_reversal", group_size)
    if key not in sp.cache:
        sp.cache[key] = segment_reversal(serialization.cu_seqlens, serialization.num_tokens)
    return sp.cache[key]


def group_partition(sp: SparseVoxels, group_size: int) -> tuple[Tensor, Tensor]:
    """``window_partition`` of ``sp``'s voxels, cached on ``sp``: the x and the y layer of a
    LION level cut the same groups (one ``cu_seqlens`` tensor for both, so the kernels' check
    of its values runs once). No host sync where ``sp`` knows its ``sample_counts`` (the
    voxelisation and every merge read them), else one."""
    key = ("window_partition", group_size)
    if key not in sp.cache:
        sp.cache[key] = window_partition(sp.indices[:, 0], sp.batch_size, group_size,
                                         counts=sp.sample_counts)
    return sp.cache[key]


class _Descriptor(nn.Module):
    """3D spatial feature descriptor: submanifold 3x3x3 conv + norm + GELU, residual."""

    def __init__(self, dim: int, sparse_backend: str = "torch"):
        super().__init__()
        self.conv = SubMConv3d(dim, dim, 3, bias=False, backend=sparse_backend)
        self.norm = nn.LayerNorm(dim)

    def forward(self, sp: SparseVoxels) -> SparseVoxels:
        return sp.replace(sp.features + F.gelu(self.norm(self.conv(sp).features)))


class LIONBlock(nn.Module):
    """A LION block: descriptor, x / y(shifted) group layers at full resolution, voxel merging,
    x / y group layers at the merged resolution, voxel expanding added back.

    Args:
        dim: feature width.
        window_shape: ``(wx, wy, wz)`` window in voxels (the merged level uses the same window
            in its own, coarser voxels).
        group_size: voxels per group (the merged level uses half).
        merge_stride: ``(sz, sy, sx)`` of the merge (default ``(1, 2, 2)``).
        operator / bidirectional / mlp_ratio / drop_path / op_kwargs: of ``LinearGroupLayer``.
        sparse_backend: of the descriptor's ``SubMConv3d``, default ``"torch"``.
    """

    def __init__(self, dim: int, window_shape: Sequence[int], group_size: int,
                 merge_stride: Sequence[int] = (1, 2, 2), operator: str = "mamba",
                 bidirectional: bool = True, mlp_ratio: float = 0.0, drop_path: float = 0.0,
                 sparse_backend: str = "torch", **op_kwargs):
        super().__init__()
        kw = dict(operator=operator, bidirectional=bidirectional, mlp_ratio=mlp_ratio,
                  drop_path=drop_path, **op_kwargs)
        self.descriptor = _Descriptor(dim, sparse_backend)
        self.full = nn.ModuleList([
            LinearGroupLayer(dim, window_shape, group_size, "x", False, **kw),
            LinearGroupLayer(dim, window_shape, group_size, "y", True, **kw)])
        self.merge_stride = tuple(int(s) for s in merge_stride)
        self.coarse = nn.ModuleList([
            LinearGroupLayer(dim, window_shape, max(group_size // 2, 1), "x", False, **kw),
            LinearGroupLayer(dim, window_shape, max(group_size // 2, 1), "y", True, **kw)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, sp: SparseVoxels) -> SparseVoxels:
        sp = run_level(self.full, self.descriptor(sp))
        coarse, inv = merge_voxels(sp, self.merge_stride)
        coarse = run_level(self.coarse, coarse)
        up = expand_voxels(coarse, sp, inv)
        return sp.replace(self.norm(sp.features + up.features))


def generate_voxels(sp: SparseVoxels, ratio: float, distance: int = 1) -> SparseVoxels:
    """Voxel generation: the ``ratio`` fraction of voxels with the largest feature response
    (max over channels, per sample: ``ceil(ratio * n_b)`` of a sample's ``n_b``) is diffused to
    its four BEV neighbours at ``distance`` (``x +- d``, ``y +- d``); new cells start from their
    source voxel's features, cells that already exist keep theirs.

    The whole batch at once and with no size that depends on the data but the result's: one
    sort ranks every sample's voxels by score; every voxel proposes its four cells, and those
    of unselected voxels, outside the grid or already there get a key past every cell's, so
    that one ``unique`` both deduplicates the new cells and drops them (as its last entry).
    Host sync: the number of new cells (``generate_merged_voxels`` shares it with a merge)."""
    if ratio <= 0 or sp.features.shape[0] == 0:
        return sp
    order, cand, new, past = _generation_candidates(sp, ratio, distance)
    new = torch.cat([new, new.new_full((1,), past)])   # always one: the last entry to drop
    _, first = _first_occurrence(new)
    first = first[:-1]
    src = order[torch.div(first, GENERATION_OFFSETS, rounding_mode="floor")]
    return SparseVoxels(torch.cat([sp.features, sp.features[src]]),
                        torch.cat([sp.indices, cand[first]]), sp.spatial_shape, sp.batch_size)


#: cells every selected voxel proposes (``_generation_candidates``)
GENERATION_OFFSETS = 4


def _generation_candidates(sp: SparseVoxels, ratio: float, distance: int
                           ) -> tuple[Tensor, Tensor, Tensor, int]:
    """``(order (V,), cells (4V, 4), keys (4V,), past)`` of voxel generation: every voxel in
    ``_ranked_voxels`` order proposes its four BEV neighbours ``(y - d, x - d, x + d, y + d)``
    (the order of their keys), and ``keys`` holds the ``voxel_keys`` of the proposals that can
    be new cells (proposed by a selected voxel, inside the grid, not a voxel of ``sp``) and
    ``past`` (a key past every cell's) for the others."""
    order, selected = _ranked_voxels(sp.features.detach().max(1).values, sp.indices[:, 0],
                                     sp.batch_size, ratio)
    z, y, x = sp.spatial_shape
    d = distance
    dev = sp.indices.device
    offs = device_constant([[0, 0, -d, 0], [0, 0, 0, -d], [0, 0, 0, d], [0, 0, d, 0]], dev)
    cand = sp.indices[order][:, None] + offs                                # (V, 4, 4)
    yx = cand[..., 2:]
    ok = ((yx >= 0) & (yx < device_constant([y, x], dev))).all(-1) & selected[:, None]
    cand, ok = cand.view(-1, 4), ok.view(-1)
    keys = voxel_keys(cand, sp.spatial_shape)
    past = sp.batch_size * z * y * x
    keys = torch.where(ok & ~contains_keys(sorted_voxel_keys(sp)[0], keys), keys, past)
    return order, cand, keys, past


def generate_merged_voxels(sp: SparseVoxels, ratio: float, stride: Sequence[int],
                           distance: int = 1, then_merge: Sequence[int] | None = None
                           ) -> SparseVoxels:
    """``merge_voxels(generate_voxels(sp, ratio, distance), stride)[0]`` (max merge) with one
    host sync instead of two: the generated cells are never laid out on their own.

    Every proposal of ``_generation_candidates`` is a row (its source's features); a proposal
    that is not the first of its new cell (by stable sort: the earliest-ranked source, the
    cell ``generate_voxels`` keeps) goes to a dump row of the merge. The merge's ``unique``
    (``unique_keys``) is then the only size the host reads, with the merged voxels per sample
    (``sample_counts``: the next window groups need no sync). The same values as the two
    steps, and on the CPU the same gradients bit for bit (the proposals of one source are
    summed in the order of their cells' keys, as the two steps' gather backward sums them).
    ``then_merge (sz, sy, sx)``: the next ``merge_voxels`` of the result, worked out in the
    same host read (``unique_with_merge``), default None.

    Shapes: ``sp.features (V, C)`` -> merged ``(U, C)``; ``stride (sz, sy, sx)``."""
    if ratio <= 0 or sp.features.shape[0] == 0:
        return merge_voxels(sp, stride)[0]      # no look-ahead here: a setting not trained
    if len(stride) != 3 or any(int(v) < 1 for v in stride):
        raise ValueError(f"stride: expected 3 positive ints (sz, sy, sx), got {tuple(stride)}")
    order, cand, keys, past = _generation_candidates(sp, ratio, distance)
    sorted_keys, perm = torch.sort(keys, stable=True)
    first = sorted_keys != torch.cat([device_constant([-1], keys.device), sorted_keys])[:-1]
    keep = torch.empty_like(first).scatter_(0, perm, first) & (keys != past)
    shape = merged_shape(sp.spatial_shape, stride)
    cells = shape[0] * shape[1] * shape[2]
    s = device_constant([1, *[int(v) for v in stride]], sp.indices.device)
    merged = voxel_keys(torch.cat([sp.indices, cand]) // s, shape)
    v = sp.indices.shape[0]
    merged = torch.cat([merged[:v], torch.where(keep, merged[v:], sp.batch_size * cells)])
    uniq, inv, counts, plan = unique_with_merge(merged, shape, sp.batch_size, then_merge)
    src = order[:, None].expand(-1, GENERATION_OFFSETS).reshape(-1)
    rows = torch.cat([sp.features, sp.features.index_select(0, src)])
    feats = scatter_max(rows, inv, uniq.numel() + 1)[:-1]
    out = SparseVoxels(feats, voxel_indices(uniq, shape), shape, sp.batch_size,
                       sample_counts=counts)
    if plan is not None:
        out.cache[MERGE_PLAN] = plan
    return out


def _ranked_voxels(score: Tensor, sample: Tensor, batch_size: int, ratio: float
                   ) -> tuple[Tensor, Tensor]:
    """``(order (V,), selected (V,) bool)``: the voxels sample by sample, each sample's by
    descending ``score`` (the order ``topk`` gives), and whether each is among its sample's
    ``ceil(ratio * n_b)`` highest. Shapes: ``score, sample (V,)``."""
    # descending score, then (stable) by sample: each sample's run sorted by score
    by_score = torch.sort(score, descending=True, stable=True).indices
    order = by_score[torch.sort(sample[by_score], stable=True).indices]
    counts = torch.zeros(batch_size, dtype=torch.long, device=score.device).index_add_(
        0, sample.long(), torch.ones_like(sample, dtype=torch.long))
    starts = torch.cumsum(counts, 0) - counts
    take = torch.ceil(ratio * counts.double()).long()
    sample_of = sample[order]
    rank = torch.arange(order.numel(), device=score.device) - starts[sample_of]
    return order, rank < take[sample_of]


def _first_occurrence(keys: Tensor) -> tuple[Tensor, Tensor]:
    """``(sorted distinct keys (U,), position of each one's first occurrence in keys (U,))``."""
    uniq, inv = torch.unique(keys, return_inverse=True)
    pos = torch.full((uniq.numel(),), keys.numel(), dtype=torch.long, device=keys.device)
    pos.scatter_reduce_(0, inv, torch.arange(keys.numel(), device=keys.device), "amin")
    return uniq, pos


def _bev(sp: SparseVoxels) -> Tensor:
    """Height compression: sum over z into a dense ``(B, C, Y, X)`` map."""
    _, y, x = sp.spatial_shape
    c = sp.features.shape[1]
    flat = torch.zeros(sp.batch_size * y * x, c, dtype=sp.features.dtype, device=sp.features.device)
    i = sp.indices
    flat.index_add_(0, (i[:, 0] * y + i[:, 2]) * x + i[:, 3], sp.features)
    return flat.view(sp.batch_size, y, x, c).permute(0, 3, 1, 2).contiguous()


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class BEVBackbone(nn.Module):
    """Small 2D backbone: ``layers`` convs at stride 1, ``layers`` at stride 2, the second
    up-sampled back and concatenated. Shapes: ``(B, C, Y, X) -> (B, 2 * channels, Y, X)``."""

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 2):
        super().__init__()
        if layers < 1:
            raise ValueError(f"bev_layers: expected an int >= 1, got {layers!r}")
        self.block1 = nn.Sequential(_conv(in_channels, channels),
                                    *[_conv(channels, channels) for _ in range(layers - 1)])
        self.block2 = nn.Sequential(_conv(channels, 2 * channels, 2),
                                    *[_conv(2 * channels, 2 * channels) for _ in range(layers - 1)])
        self.up = nn.Sequential(nn.ConvTranspose2d(2 * channels, channels, 2, 2, bias=False),
                                nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.out_channels = 2 * channels

    def forward(self, x: Tensor) -> Tensor:
        a = self.block1(x)
        b = self.up(self.block2(a))
        if b.shape[-2:] != a.shape[-2:]:
            b = b[..., :a.shape[-2], :a.shape[-1]]
        return torch.cat([a, b], 1)


class CenterHead(nn.Module):
    """CenterPoint-style head: class heatmaps and box regression
    ``(dx_cell, dy_cell, z, log dx, log dy, log dz, sin, cos)`` per BEV cell."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 64,
                 branch_conv: bool = True):
        super().__init__()
        self.shared = _conv(in_channels, channels)
        pre = (lambda: [_conv(channels, channels)]) if branch_conv else (lambda: [])
        self.heatmap = nn.Sequential(*pre(), nn.Conv2d(channels, num_classes, 1))
        self.reg = nn.Sequential(*pre(), nn.Conv2d(channels, 8, 1))
        # focal-loss prior: initial heatmap probability 0.1
        nn.init.constant_(self.heatmap[-1].bias, -2.19)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.shared(x)
        return self.heatmap(h), self.reg(h)


@MODELS.register
class LION(nn.Module):
    """LION detector (see the module docstring).

    Args:
        num_classes: ``K`` heatmap classes (default 3: Car, Pedestrian, Cyclist).
        point_cloud_range: ``(x0, y0, z0, x1, y1, z1)``, default OpenPCDet's KITTI range.
        voxel_size: ``(vx, vy, vz)``, default ``(0.32, 0.32, 0.25)``.
        in_channels: point features (x, y, z, reflectance), default 4.
        dim: voxel feature width, default 32.
        stem_dim: width of the embedding and stem conv at full resolution (default ``dim``);
            a linear layer maps it to ``dim`` after the stem merge.
        stem_stride: ``(sz, sy, sx)`` merge after the stem (1 = none), default ``(1, 1, 1)``.
        num_blocks: LION blocks, default 2.
        window_shape: ``(wx, wy, wz)`` for every block, or one per block, default
            ``(13, 13, 4)``.
        merge_stride: ``(sz, sy, sx)`` of the voxel merging inside every block, default
            ``(1, 2, 2)`` (LION: ``(2, 2, 2)``).
        group_sizes: voxels per group, per block, default ``(1024, 512)`` (LION: 4096 .. 512).
        z_stride: z merge factor after every block but the last, default 2.
        generation_ratio: voxel generation top-k fraction (0 = off), default 0.1.
        operator / bidirectional / d_state / expand / mlp_ratio / drop_path: linear operator
            settings (``Mamba`` with ``d_state=8``, ``expand=1`` by default).
        mixer: ``"mamba"`` (Mamba-1, default) or ``"mamba2"`` (Mamba-2 SSD) in the operator.
        bev_channels / bev_layers: 2D backbone width and convs per stage, default 64 / 2.
        head_branch_conv: a 3x3 conv before each head's 1x1 output, default True.
        score_threshold / nms_threshold / max_detections / pre_nms: decoding, defaults
            0.1 / 0.1 / 50 / 200.
        packed_scan: both directions of every bidirectional group layer in one launch of each
            kernel (``LinearGroupLayer.packed``, ``packed_mixer.packed_bimamba``), default True;
            False: the two Mamba calls (the same math, other float rounding).
        packed_recompute: the packed layers keep only their normalised input for the backward
            and recompute the rest (the two-call path's activation memory), default True;
            False keeps the scan inputs (~20 fewer operators per layer, more memory).
        graph_layers: on CUDA, run every packed group layer (with ``packed_recompute``) on a
            few padded voxel counts, its forward and backward each replayed as one CUDA graph
            (``geossm.nn.packed_graphs.PackedGraphs``): the same math, float rounding apart;
            ``"padded"`` runs the same padded buffers eagerly (no graph: it separates what the
            few repeated shapes save, e.g. cuBLAS's per-shape setup, from what the replay
            saves); default False.
        sparse_backend: the submanifold convolutions' backend (``SubMConv3d``): ``"torch"``,
            ``"spconv"`` (raises ``MissingDependencyError`` here when spconv is missing) or
            ``"auto"`` (default: spconv on CUDA when installed, torch otherwise). Voxel
            merging, expanding and generation are index operations with no spconv counterpart.

    Forward: ``points (N, C)``, ``cu_seqlens (B+1,)``, optional ``voxels`` (the batch's
    ``voxel_planner()`` layout, built in the data loader) -> ``{"heatmap" (B, K, Y, X) logits,
    "reg" (B, 8, Y, X)}`` with the BEV grid of ``bev_grid()``. Host syncs per step: one per
    voxel generation (with its z merge and the next block's merge), plus one for the
    voxelisation without ``voxels``.
    """

    def __init__(self, num_classes: int = 3,
                 point_cloud_range: Sequence[float] = (0.0, -39.68, -3.0, 69.12, 39.68, 1.0),
                 voxel_size: Sequence[float] = (0.32, 0.32, 0.25), in_channels: int = 4,
                 dim: int = 32, stem_dim: int | None = None,
                 stem_stride: Sequence[int] = (1, 1, 1), num_blocks: int = 2,
                 window_shape: Sequence = (13, 13, 4), merge_stride: Sequence[int] = (1, 2, 2),
                 group_sizes: Sequence[int] = (1024, 512),
                 z_stride: int = 2, generation_ratio: float = 0.1, operator: str = "mamba",
                 bidirectional: bool = True, d_state: int = 8, expand: int = 1,
                 mlp_ratio: float = 0.0, drop_path: float = 0.0, bev_channels: int = 64,
                 bev_layers: int = 2, head_branch_conv: bool = True,
                 score_threshold: float = 0.1, nms_threshold: float = 0.1,
                 max_detections: int = 50, pre_nms: int = 200, sparse_backend: str = "auto",
                 mixer: str = "mamba", packed_scan: bool = True, packed_recompute: bool = True,
                 graph_layers: bool | str = False, **_ignored):
        super().__init__()
        if len(point_cloud_range) != 6 or len(voxel_size) != 3:
            raise ValueError("point_cloud_range / voxel_size: expected 6 and 3 numbers, got "
                             f"{list(point_cloud_range)} / {list(voxel_size)}")
        if len(group_sizes) < num_blocks:
            raise ValueError(f"group_sizes: expected {num_blocks} sizes (one per block), got "
                             f"{list(group_sizes)}")
        self.num_classes = int(num_classes)
        self.pcr = tuple(float(v) for v in point_cloud_range)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.stem_stride = tuple(int(s) for s in stem_stride)
        self.z_stride = int(z_stride)
        self.generation_ratio = float(generation_ratio)
        # voxel features: mean of (x, y, z, r) plus the mean's offset from the voxel centre
        sd = int(stem_dim or dim)
        self.embed = nn.Sequential(nn.Linear(in_channels + 3, sd), nn.LayerNorm(sd), nn.GELU())
        self.stem = SubMConv3d(sd, sd, 3, bias=False, backend=sparse_backend)
        self.stem_norm = nn.LayerNorm(sd)
        self.lift = nn.Linear(sd, dim) if sd != dim else nn.Identity()
        op = dict(operator=operator, bidirectional=bidirectional, mlp_ratio=mlp_ratio,
                  drop_path=drop_path, d_state=d_state, expand=expand, mixer=mixer)
        windows = (list(window_shape) if isinstance(window_shape[0], Sequence)
                   else [window_shape] * num_blocks)
        if len(windows) < num_blocks:
            raise ValueError(f"window_shape: expected one (wx, wy, wz) or {num_blocks}, got "
                             f"{list(window_shape)}")
        self.blocks = nn.ModuleList([LIONBlock(dim, windows[i], group_sizes[i], merge_stride,
                                               sparse_backend=sparse_backend, **op)
                                     for i in range(num_blocks)])
        #: ``graph_layers``: one ``PackedGraphs`` for every packed group layer (on CUDA)
        if graph_layers not in (False, True, "padded"):
            raise ValueError(f"graph_layers must be false, true or 'padded', not {graph_layers!r}")
        self.layer_graphs = (PackedGraphs(capture=graph_layers is True) if graph_layers
                             else None)
        for module in self.blocks.modules():
            if isinstance(module, LinearGroupLayer):
                module.packed = bool(packed_scan)
                module.packed_recompute = bool(packed_recompute)
                module.graphs = self.layer_graphs
        self.bev = BEVBackbone(dim, bev_channels, bev_layers)
        self.head = CenterHead(self.bev.out_channels, num_classes, bev_channels, head_branch_conv)
        self.decoder = BoxDecoder(bev_grid(self.pcr, self.voxel_size, self.stem_stride),
                                  score_threshold, nms_threshold, max_detections, pre_nms)

    @classmethod
    def example(cls):
        """Tiny model and a 2-frame input for the registry test."""
        g = torch.Generator().manual_seed(0)
        pts = torch.rand(300, 4, generator=g) * torch.tensor([8.0, 8.0, 2.0, 1.0]) \
            + torch.tensor([0.0, -4.0, -1.5, 0.0])
        kwargs = dict(num_classes=2, point_cloud_range=(0, -4, -2, 8, 4, 1),
                      voxel_size=(0.5, 0.5, 0.5), dim=8, num_blocks=1, window_shape=(4, 4, 2),
                      group_sizes=(32,), bev_channels=8)
        return kwargs, {"points": pts, "cu_seqlens": torch.tensor([0, 150, 300], dtype=torch.int32)}

    def bev_grid(self) -> dict[str, Any]:
        """The output map (``bev_grid`` of this model's range, voxel size and stem stride)."""
        return dict(self.decoder.grid)

    def voxel_planner(self) -> "VoxelPlanner":
        """What ``forward`` reads of a batch's voxel grid, to build in the data loader (the
        detection task's ``collate``): ``planner(points, cu_seqlens) -> VoxelLayout``."""
        stem = any(s > 1 for s in self.stem_stride)
        # every voxel set's first merge is worked out with the set (one host read for both)
        first_merge = self.stem_stride if stem else self._block_merge(0)
        return VoxelPlanner(self.voxel_size, self.pcr, first_merge)

    def forward(self, points: Tensor, cu_seqlens: Tensor,
                voxels: VoxelLayout | None = None) -> dict[str, Tensor]:
        """``voxels``: the batch's ``voxel_planner()`` layout built before (no sort of the
        points and no host sync for it here), default None: computed here. ``ValueError``
        for a layout of other settings or another batch."""
        b = cu_seqlens.numel() - 1
        pts = points.float()
        planner = self.voxel_planner()
        if voxels is None:
            voxels = planner(pts, cu_seqlens)
        elif voxels.settings != planner.settings():
            raise ValueError(f"voxels: a layout of {voxels.settings} (voxel size, range, first "
                             f"merge), the model needs {planner.settings()}; build it with "
                             "model.voxel_planner()")
        elif voxels.indices.device != pts.device:
            voxels = voxels.to(pts.device)
        sp, _ = voxelize(pts, None, b, self.voxel_size, self.pcr, layout=voxels)
        vs = device_constant(self.voxel_size, pts.device, torch.float32)
        centre = ((sp.indices.flip(1)[:, :3].float() + 0.5) * vs   # (x, y, z) of (b, z, y, x)
                  + device_constant(self.pcr[:3], pts.device, torch.float32))
        f = torch.cat([sp.features, (sp.features[:, :3] - centre) / vs], 1)
        sp = sp.replace(self.embed(f))
        sp = sp.replace(self.stem_norm(sp.features + self.stem(sp).features))
        if any(s > 1 for s in self.stem_stride):
            sp, _ = merge_voxels(sp, self.stem_stride)
        sp = sp.replace(self.lift(sp.features))
        for i, blk in enumerate(self.blocks):
            sp = blk(sp)
            if i < len(self.blocks) - 1:
                if self.z_stride > 1:
                    sp = generate_merged_voxels(sp, self.generation_ratio,
                                                (self.z_stride, 1, 1),
                                                then_merge=self._block_merge(i + 1))
                else:
                    sp = generate_voxels(sp, self.generation_ratio)
        bev = self.bev(_bev(sp))
        heatmap, reg = self.head(bev)
        return {"heatmap": heatmap, "reg": reg}

    def _block_merge(self, i: int) -> tuple[int, int, int] | None:
        """The voxel merge stride inside block ``i`` (None past the last block)."""
        return self.blocks[i].merge_stride if i < len(self.blocks) else None

    def decode(self, outputs: dict[str, Tensor]) -> list[dict[str, np.ndarray]]:
        """Boxes per sample: ``{"boxes" (D, 7), "scores" (D,), "labels" (D,) 1-based}``."""
        return self.decoder(outputs)


@dataclass(frozen=True)
class VoxelPlanner:
    """The voxel grid of ``LION`` (``LION.voxel_planner()``): ``planner(points (N, C),
    cu_seqlens (B+1,)) -> VoxelLayout`` (``voxel_layout`` of the packed batch, with the model's
    first merge). Picklable (a data loader worker builds the layouts), compared by value."""

    voxel_size: tuple[float, float, float]
    point_cloud_range: tuple[float, float, float, float, float, float]
    then_merge: tuple[int, int, int] | None

    def settings(self) -> tuple:
        """``VoxelLayout.settings`` of the layouts built here."""
        return layout_settings(self.voxel_size, self.point_cloud_range, self.then_merge)

    def __call__(self, points: Tensor, cu_seqlens: Tensor) -> VoxelLayout:
        b = cu_seqlens.numel() - 1
        counts = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        batch = torch.repeat_interleave(torch.arange(b, device=points.device), counts,
                                        output_size=points.shape[0])
        return voxel_layout(points.float(), batch, b, self.voxel_size, self.point_cloud_range,
                            self.then_merge)


def bev_grid(point_cloud_range: Sequence[float], voxel_size: Sequence[float],
             stem_stride: Sequence[int] = (1, 1, 1)) -> dict[str, Any]:
    """The BEV output map of ``LION`` with these settings: origin ``(x0, y0)``, cell size
    ``(cx, cy)`` metres, shape ``(ny, nx)`` (the voxel grid over ``point_cloud_range``
    ``(x0, y0, z0, x1, y1, z1)``, divided by the ``(sz, sy, sx)`` stem merge, rounded up)."""
    pcr = [float(v) for v in point_cloud_range]
    vx, vy = float(voxel_size[0]), float(voxel_size[1])
    sy, sx = int(stem_stride[1]), int(stem_stride[2])
    nx = int(round((pcr[3] - pcr[0]) / vx))
    ny = int(round((pcr[4] - pcr[1]) / vy))
    return {"x0": pcr[0], "y0": pcr[1], "cx": vx * sx, "cy": vy * sy,
            "nx": -(-nx // sx), "ny": -(-ny // sy)}


#: ``model.*`` keys that ``BoxDecoder.from_config`` reads (grid, then decoding).
DECODER_KEYS = ("point_cloud_range", "voxel_size", "stem_stride", "score_threshold",
                "nms_threshold", "max_detections", "pre_nms")


class BoxDecoder:
    """Head outputs -> boxes per sample (``decode_boxes`` on the BEV ``grid``).

    Args:
        grid: the output map (``bev_grid``).
        score_threshold / nms_threshold / max_detections / pre_nms: as ``decode_boxes``,
            defaults 0.1 / 0.1 / 50 / 200.
    """

    def __init__(self, grid: dict[str, Any], score_threshold: float = 0.1,
                 nms_threshold: float = 0.1, max_detections: int = 50, pre_nms: int = 200):
        self.grid = dict(grid)
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)
        self.max_detections, self.pre_nms = int(max_detections), int(pre_nms)

    @classmethod
    def from_config(cls, model: Any) -> "BoxDecoder":
        """The decoder of the model a config's ``model`` mapping describes, without building
        it: the ``DECODER_KEYS`` it leaves out take the model class's own defaults (``LION``'s).

        Raises ``ValueError`` naming a key the config leaves out and the class has no default
        for.
        """
        cls_ = MODELS.get(str(model["name"]))
        params = inspect.signature(cls_).parameters
        values = {}
        for key in DECODER_KEYS:
            if key in model:
                values[key] = model[key]
            elif key in params and params[key].default is not inspect.Parameter.empty:
                values[key] = params[key].default
            else:
                raise ValueError(f"model.{key}: {cls_.__name__} has no default for it; set "
                                 f"model.{key} (the detection task's box decoder reads it)")
        grid = bev_grid(values.pop("point_cloud_range"), values.pop("voxel_size"),
                        values.pop("stem_stride"))
        return cls(grid, **values)

    @torch.no_grad()
    def __call__(self, outputs: dict[str, Tensor]) -> list[dict[str, np.ndarray]]:
        """``{"heatmap" (B, K, Y, X), "reg" (B, 8, Y, X)}`` -> per sample ``{"boxes" (D, 7),
        "scores" (D,), "labels" (D,) 1-based}``."""
        return decode_boxes(outputs["heatmap"], outputs["reg"], self.grid, self.score_threshold,
                            self.nms_threshold, self.max_detections, self.pre_nms)


def decode_boxes(heatmap: Tensor, reg: Tensor, grid: dict, score_threshold: float = 0.1,
                 nms_threshold: float = 0.1, max_detections: int = 50, pre_nms: int = 200
                 ) -> list[dict[str, np.ndarray]]:
    """Heatmap peaks (3x3 local maxima) -> top ``pre_nms`` -> boxes -> score threshold ->
    rotated BEV NMS per class -> at most ``max_detections`` per sample.

    Shapes: ``heatmap (B, K, Y, X)`` logits, ``reg (B, 8, Y, X)``."""
    prob = torch.sigmoid(heatmap.float())
    peak = prob == F.max_pool2d(prob, 3, 1, 1)
    prob = prob * peak
    bsz, k, ny, nx = prob.shape
    out = []
    for i in range(bsz):
        scores, idx = torch.topk(prob[i].reshape(-1), min(pre_nms, prob[i].numel()))
        keep = scores > score_threshold
        scores, idx = scores[keep], idx[keep]
        cls = idx // (ny * nx)
        cell = idx % (ny * nx)
        iy, ix = cell // nx, cell % nx
        r = reg[i].float().reshape(8, -1)[:, cell]
        x = (ix.float() + r[0]) * grid["cx"] + grid["x0"]
        y = (iy.float() + r[1]) * grid["cy"] + grid["y0"]
        dims = torch.exp(r[3:6].clamp(max=4.0))
        heading = torch.atan2(r[6], r[7])
        boxes = torch.stack([x, y, r[2], dims[0], dims[1], dims[2], heading], 1).cpu().numpy()
        sc, lab = scores.cpu().numpy(), (cls + 1).cpu().numpy()
        kept = []
        for c in np.unique(lab):
            m = np.nonzero(lab == c)[0]
            kept.append(m[nms_bev(boxes[m], sc[m], nms_threshold)])
        kept = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
        kept = kept[np.argsort(-sc[kept], kind="stable")][:max_detections]
        out.append({"boxes": boxes[kept].astype(np.float32), "scores": sc[kept].astype(np.float32),
                    "labels": lab[kept].astype(np.int64)})
    return out
