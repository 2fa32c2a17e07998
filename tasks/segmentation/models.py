"""Point Cloud Mamba for packed point clouds: segmentation (U-Net) and classification.

The family follows Point Cloud Mamba (PCM: consistent-traverse serialization cycled across
layers, point prompts, coordinate encoding) on a PTv3-style hierarchy (serialized pooling, no
farthest-point sampling)::

    coord (N, 3), feat (N, C), cu_seqlens (B+1,)
      -> kNN embedding: max_k MLP([feat_j, (coord_j - coord_i) / r])                (N, D0)
      -> stage 0: blocks at the grid_size cells
      -> stage s: serialized pooling (stride 2^l cells: proj, max, norm) + blocks     (N_s, D_s)
      -> segmentation: U-Net decoder (unpool + skip) -> head                         (N, classes)
         classification: per-sample [max, mean] of the last stage -> head            (B, classes)

Each block is a ``geossm.nn.SerializedBlock`` (bidirectional Mamba + MLP) running along one
serialization order; block ``j`` (counted over the whole encoder) uses ``orders[j % len(orders)]``
(default PCM's nine: the six consistent traverse orders, hilbert, z, z-trans), with that
order's point prompts at both ends of every sequence and a coordinate encoding added before it.

Whole scenes are packed: ``cu_seqlens`` delimits samples of any sizes, every sequence op runs
on the packed tensors (no padding); the exact kNN (``neighbours.knn``) runs per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from geossm.nn import CoordinateEncoding, PointPrompts, SerializedBlock
from geossm.packed import cu_seqlens_from_lengths
from geossm.registry import MODELS
from geossm.serialization import (ORDERS, Serialization, grid_coordinates, pool_grid,
                                  sample_depths, serialize_grid)
from geossm.serialization.traceable import tracing

from .neighbours import checked_neighbours, knn

__all__ = ["PCM_ORDERS", "SIZES", "knn", "KNNEmbedding", "PCMEncoder", "PointCloudMambaSeg",
           "PointCloudMambaCls"]

#: Point Cloud Mamba's orders: the six consistent traverse orders, then hilbert, z, z-trans.
PCM_ORDERS = ("xyz", "xzy", "yxz", "yzx", "zxy", "zyx", "hilbert", "z", "z-trans")

#: Presets chosen by ``size``; explicit arguments override them.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"dims": (32, 64, 128), "depths": (1, 2, 2), "strides": (2, 2), "d_state": 8,
             "expand": 2, "k": 16, "num_prompts": 2, "mlp_ratio": 2.0},
    "base": {"dims": (64, 128, 256, 384), "depths": (2, 2, 4, 2), "strides": (2, 2, 2),
             "d_state": 16, "expand": 2, "k": 16, "num_prompts": 4, "mlp_ratio": 4.0},
}


def _check_packed(coord: torch.Tensor, feat: torch.Tensor, cu_seqlens: torch.Tensor,
                  in_channels: int) -> None:
    if not isinstance(coord, torch.Tensor) or coord.dim() != 2 or coord.shape[1] != 3:
        got = tuple(coord.shape) if isinstance(coord, torch.Tensor) else type(coord).__name__
        raise ValueError(f"coord must have shape (N, 3), got {got}")
    if not isinstance(feat, torch.Tensor) or feat.shape != (coord.shape[0], in_channels):
        got = tuple(feat.shape) if isinstance(feat, torch.Tensor) else type(feat).__name__
        raise ValueError(f"feat must have shape (N={coord.shape[0]}, in_channels={in_channels}), "
                         f"got {got}")
    if (not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1
            or cu_seqlens.numel() < 2):
        got = tuple(cu_seqlens.shape) if isinstance(cu_seqlens, torch.Tensor) else cu_seqlens
        raise ValueError(f"cu_seqlens must have shape (B+1,) with B >= 1, got {got}")
    if tracing():  # torch.export: the values are symbolic; the shapes above are checked
        return
    first, last = cu_seqlens[[0, -1]].tolist()  # one host sync for both ends
    if last != coord.shape[0] or first != 0:
        raise ValueError(f"cu_seqlens must start at 0 and end at N={coord.shape[0]}, got "
                         f"{first}..{last}")
    if coord.shape[0] == 0:
        # one empty cloud among others is an empty segment; a batch of nothing has no grid
        raise ValueError(f"coord has 0 points: every one of the {cu_seqlens.numel() - 1} "
                         "point clouds of the batch is empty")


def _checkpointing(module: nn.Module, enabled: bool) -> bool:
    """Whether activation checkpointing applies: ``enabled`` and gradients being recorded in
    training mode (otherwise checkpointing would only cost time)."""
    return enabled and module.training and torch.is_grad_enabled()


def _run(module: nn.Module, enabled: bool, *args: Any) -> Any:
    """``module(*args)``, under activation checkpointing when ``_checkpointing`` says so."""
    if _checkpointing(module, enabled):
        return _checkpoint(module, *args, use_reentrant=False)
    return module(*args)


class KNNEmbedding(nn.Module):
    """Point embedding: ``max_j MLP([feat_j, (coord_j - coord_i) / r])`` over the ``k`` nearest
    neighbours ``j`` of each point ``i`` (self included), ``r`` the sample's mean distance to
    the ``k``-th neighbour (scale-free offsets for objects and scenes alike).

    While training with gradients and ``recompute`` (default True; or ``grad_checkpoint``) the
    MLP runs over chunks of ``checkpoint_chunk`` points, each under activation checkpointing:
    the ``(N, k, dim)`` activations, the largest tensors of the model at full resolution (about
    20 KB per point of PCM base under bf16 autocast), are then neither kept for backward nor
    materialised for all points at once (backward recomputes one chunk at a time: two thin
    matmuls over ``N k`` rows, cheap next to the rest of the step). Same results either way.

    Shapes: ``coord (N, 3)``, ``feat (N, C)``, ``cu_seqlens (B+1,)`` -> ``(N, dim)``.
    """

    def __init__(self, in_channels: int, dim: int, k: int = 16, grad_checkpoint: bool = False,
                 checkpoint_chunk: int = 2 ** 17, recompute: bool = True) -> None:
        super().__init__()
        self.k = k
        self.grad_checkpoint = bool(grad_checkpoint)
        self.recompute = bool(recompute)
        self.checkpoint_chunk = int(checkpoint_chunk)
        self.fc1 = nn.Linear(in_channels + 3, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.fc2 = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, coord: torch.Tensor, feat: torch.Tensor, cu_seqlens: torch.Tensor,
                batch: torch.Tensor, neighbours: torch.Tensor | None = None) -> torch.Tensor:
        """``neighbours (N, k)`` long: ``knn(coord, cu_seqlens, k)`` computed before (the
        task's loader: ``train.knn_in_loader``); default None: computed here."""
        idx = (knn(coord, cu_seqlens, self.k) if neighbours is None
               else checked_neighbours(neighbours, coord, self.k))   # (N, k)
        rel = coord[idx] - coord[:, None, :]                       # (N, k, 3)
        with torch.no_grad():
            reach = rel.norm(dim=-1).amax(1)                       # (N,) distance to the k-th
            b = cu_seqlens.numel() - 1
            mean = torch.zeros(b, device=coord.device).index_add_(0, batch, reach.float())
            counts = torch.bincount(batch, minlength=b).clamp(min=1)
            radius = (mean / counts).clamp(min=1e-6)[batch]        # (N,)
        rel = (rel / radius[:, None, None].to(rel.dtype)).to(feat.dtype)
        if not _checkpointing(self, self.grad_checkpoint or self.recompute):
            return self._mlp(feat, idx, rel)
        step = max(1, self.checkpoint_chunk)
        return torch.cat([_checkpoint(self._mlp, feat, idx[a:a + step], rel[a:a + step],
                                      use_reentrant=False)
                          for a in range(0, idx.shape[0], step)])

    def _mlp(self, feat: torch.Tensor, idx: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """``(n, dim)`` features of the points whose neighbours are ``idx (n, k)``."""
        h = torch.cat([feat[idx], rel], -1)                        # (n, k, C + 3)
        h = self.fc2(F.gelu(self.norm1(self.fc1(h))))              # (n, k, dim)
        return self.norm2(h.amax(1))


class _Down(nn.Module):
    """Serialized pooling step's features: ``norm(act(max_{children} proj(x)))``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, x: torch.Tensor, pooling) -> torch.Tensor:
        return F.gelu(self.norm(pooling.pool(self.proj(x), "max")))


class _Up(nn.Module):
    """U-Net merge: ``act(norm(proj(parent)[cluster] + proj_skip(skip)))``."""

    def __init__(self, dim_parent: int, dim_skip: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_parent, dim_out)
        self.proj_skip = nn.Linear(dim_skip, dim_out)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, parent: torch.Tensor, skip: torch.Tensor, pooling) -> torch.Tensor:
        return F.gelu(self.norm(pooling.unpool(self.proj(parent)) + self.proj_skip(skip)))


class _Level:
    """Geometry of one hierarchy level (not a module): serializations by order, the pooling
    that produced it from the level below, per-token normalised coordinates and sample ids.
    ``depth (S,)``: every sample's own grid depth, so that it is serialized and pooled as it
    would be alone (Hilbert orders and the clipping of pooling levels depend on the depth)."""

    def __init__(self, grid: torch.Tensor, batch: torch.Tensor, depth: torch.Tensor,
                 num_samples: int,
                 coord: torch.Tensor, pooling=None) -> None:
        self.grid, self.batch, self.depth = grid, batch, depth
        self.num_samples, self.coord, self.pooling = num_samples, coord, pooling
        self._sers: dict[str, Serialization] = {}
        if pooling is not None:
            self._sers[pooling.order] = pooling.serialization

    def serialization(self, order: str) -> Serialization:
        if order not in self._sers:
            self._sers[order] = serialize_grid(self.grid, order, self.batch, self.depth,
                                               self.num_samples)
        return self._sers[order]

    def pool(self, levels: int) -> "_Level":
        # Pooling along z: coarsening z codes is a shift (no decode); the parents come out
        # z-serialized, so that order is free at the next level.
        pooling = pool_grid(self.grid, self.batch, self.depth, levels, self.num_samples)
        coord = pooling.pool(self.coord, "mean")
        return _Level(pooling.grid_coord, pooling.batch, pooling.depth, self.num_samples,
                      coord, pooling)


def _sample_normalised(coord: torch.Tensor, batch: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Coordinates centred on each sample's mean and scaled by its largest radius (the input of
    the coordinate encodings, so they see the same range for objects and scenes)."""
    counts = torch.bincount(batch, minlength=num_samples).clamp(min=1)[:, None].to(coord.dtype)
    mean = torch.zeros(num_samples, 3, dtype=coord.dtype, device=coord.device)
    mean = mean.index_add_(0, batch, coord) / counts
    rel = coord - mean[batch]
    radius = torch.zeros(num_samples, dtype=coord.dtype, device=coord.device).scatter_reduce(
        0, batch, rel.norm(dim=1), "amax", include_self=False).clamp(min=1e-6)
    return rel / radius[batch, None]


def _resolve(size: str, overrides: dict[str, Any]) -> dict[str, Any]:
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    cfg = dict(SIZES[size])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    dims, depths = tuple(cfg["dims"]), tuple(cfg["depths"])
    if len(dims) != len(depths) or not dims:
        raise ValueError(f"dims and depths must have the same non-zero length, got {dims} and "
                         f"{depths}")
    strides = tuple(cfg["strides"])
    if len(strides) != len(dims) - 1:
        raise ValueError(f"strides must have len(dims) - 1 = {len(dims) - 1} entries, got "
                         f"{strides}")
    for s in strides:
        if not isinstance(s, int) or s < 2 or s & (s - 1):
            raise ValueError(f"strides must be powers of two >= 2, got {strides}")
    cfg.update(dims=dims, depths=depths, strides=strides)
    return cfg


def _encoder(size: str, num_classes: int, in_channels: int, grid_size: float,
             orders: Sequence[str], drop_path: float, d_conv: int, backend: str | None,
             grad_checkpoint: bool, mixer: str = "mamba",
             **overrides: Any) -> tuple["PCMEncoder", dict[str, Any]]:
    """``(encoder, cfg)`` of a segmentation or classification model: the ``size`` preset with
    the non-None ``overrides`` (``cfg``) and its ``PCMEncoder``, after checking ``num_classes``."""
    cfg = _resolve(size, overrides)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    encoder = PCMEncoder(in_channels, cfg["dims"], cfg["depths"], cfg["strides"], grid_size,
                         orders, cfg["k"], cfg["num_prompts"], cfg["mlp_ratio"], drop_path,
                         cfg["d_state"], d_conv, cfg["expand"], backend, grad_checkpoint,
                         mixer=mixer)
    return encoder, cfg


class PCMEncoder(nn.Module):
    """The encoder shared by segmentation and classification (see the module doc).

    Args:
        in_channels: ``C`` of ``feat``.
        dims, depths: width and number of blocks of every stage.
        strides: cell stride between consecutive stages (powers of two), ``len(dims) - 1``.
        grid_size: cell edge of stage 0, in coordinate units.
        orders: serialization orders cycled over the blocks.
        k: neighbours of the kNN embedding.
        num_prompts: point prompts at each end of every sequence (0 = none).
        mlp_ratio, drop_path, d_state, d_conv, expand, backend: block settings (``drop_path``
            grows linearly from 0 to this value over the blocks).
        grad_checkpoint: activation checkpointing of the embedding and of every block while
            training (see ``SerializedBlock``): far less memory, about one more forward.
        mixer: sequence mixer of every block, ``"mamba"`` or ``"mamba2"``, default ``"mamba"``.
    """

    def __init__(self, in_channels: int, dims: Sequence[int], depths: Sequence[int],
                 strides: Sequence[int], grid_size: float, orders: Sequence[str], k: int,
                 num_prompts: int, mlp_ratio: float, drop_path: float, d_state: int,
                 d_conv: int, expand: int, backend: str | None,
                 grad_checkpoint: bool = False, mixer: str = "mamba") -> None:
        super().__init__()
        if not grid_size > 0:
            raise ValueError(f"grid_size must be > 0, got {grid_size!r}")
        if isinstance(orders, str) or not orders or any(o not in ORDERS for o in orders):
            raise ValueError(f"orders must be a non-empty list of names from {ORDERS}, got "
                             f"{orders!r}")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
        self.in_channels, self.dims, self.depths = in_channels, tuple(dims), tuple(depths)
        self.levels = tuple(int(math.log2(s)) for s in strides)
        self.grid_size, self.orders = float(grid_size), tuple(orders)
        self.grad_checkpoint = bool(grad_checkpoint)
        self.embed = KNNEmbedding(in_channels, dims[0], k, grad_checkpoint=grad_checkpoint)
        self.down = nn.ModuleList(_Down(dims[i - 1], dims[i]) for i in range(1, len(dims)))
        total = sum(depths)
        rates = [drop_path * j / max(1, total - 1) for j in range(total)]
        mamba = {"d_state": d_state, "d_conv": d_conv, "expand": expand, "backend": backend,
                 "grad_checkpoint": grad_checkpoint, "mixer": mixer}
        self.stages = nn.ModuleList()
        self.coord_enc = nn.ModuleList()
        self.prompts = nn.ModuleList()
        self.block_orders: list[list[int]] = []
        j = 0
        for dim, depth in zip(dims, depths):
            self.stages.append(nn.ModuleList(
                SerializedBlock(dim, bidirectional=True, mlp_ratio=mlp_ratio,
                                drop_path=rates[j + b], **mamba) for b in range(depth)))
            self.coord_enc.append(nn.ModuleList(CoordinateEncoding(3, dim) for _ in range(depth)))
            self.prompts.append(PointPrompts(len(self.orders), num_prompts, dim)
                                if num_prompts > 0 and depth > 0 else nn.Identity())
            self.block_orders.append([(j + b) % len(self.orders) for b in range(depth)])
            j += depth

    def forward(self, coord: torch.Tensor, feat: torch.Tensor, cu_seqlens: torch.Tensor,
                neighbours: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], list[_Level]]:
        """Features and geometry of every stage: ``([x_0 (N, D0), x_1 (N_1, D1), ...],
        [level_0, level_1, ...])``. ``neighbours (N, k)``: the embedding's kNN computed
        before (``KNNEmbedding``), default None."""
        _check_packed(coord, feat, cu_seqlens, self.in_channels)
        num_samples = cu_seqlens.numel() - 1
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        batch = torch.repeat_interleave(torch.arange(num_samples, device=coord.device), lengths,
                                        output_size=coord.shape[0])
        coord = coord.float()
        # Grid anchored at each sample's own minimum corner: a sample gets the same cells
        # (hence the same serializations and pooling) whatever else is packed with it.
        lo = coord.new_full((num_samples, 3), float("inf")).scatter_reduce(
            0, batch[:, None].expand(-1, 3), coord, "amin", include_self=True)
        grid = grid_coordinates(coord - lo[batch], self.grid_size)
        # Per-sample depths too: tensor ops, so they trace under torch.export as well.
        level = _Level(grid, batch, sample_depths(grid, batch, num_samples), num_samples,
                       _sample_normalised(coord, batch, num_samples))
        x = self.embed(coord, feat.to(coord.dtype), cu_seqlens.to(torch.int64), batch,
                       neighbours)
        feats, levels = [], []
        for s, blocks in enumerate(self.stages):
            if s > 0:
                level = level.pool(self.levels[s - 1])
                x = _run(self.down[s - 1], self.grad_checkpoint, x, level.pooling)
            for b, block in enumerate(blocks):
                oi = self.block_orders[s][b]
                ser = level.serialization(self.orders[oi])
                x = self.coord_enc[s][b](x, level.coord)
                prompts = None
                if isinstance(self.prompts[s], PointPrompts):
                    prompts = self.prompts[s].tokens(oi)
                x = block(x, ser, prompts)
            feats.append(x)
            levels.append(level)
        return feats, levels


def _example_inputs(in_channels: int, lengths: Sequence[int] = (150, 40, 97), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    coord = torch.rand(n, 3, generator=g) * 2 - 1
    feat = torch.cat([coord, torch.randn(n, in_channels - 3, generator=g)], 1)[:, :in_channels]
    return coord, feat, cu_seqlens_from_lengths(lengths)


@MODELS.register
class PointCloudMambaSeg(nn.Module):
    """Point Cloud Mamba segmentation network (U-Net over serialized pooling levels).

    Args:
        in_channels: ``C`` of ``feat`` (default 3: xyz).
        num_classes: classes (or parts) predicted per point.
        size: ``"tiny"`` or ``"base"`` preset (see ``SIZES``); the arguments below override it.
        dims, depths, strides, d_state, expand, k, num_prompts, mlp_ratio: see ``PCMEncoder``.
        grid_size: stage-0 cell edge (default 0.02: objects in the unit sphere).
        orders: default ``PCM_ORDERS``.
        dec_depths: blocks of each decoder level ``0 .. len(dims) - 2``, default none.
        drop_path: default 0.1.  d_conv: default 4.  dropout: head dropout, default 0.
        num_categories: > 0 adds a learned category embedding to every point before the head
            (ShapeNetPart's category-conditioned parts); ``forward`` then needs ``category``.
        backend: scan backend (None = numba on CPU, triton on CUDA; ``"torch"`` reference).
        grad_checkpoint: activation checkpointing of the embedding, of every encoder and decoder
            block, of the pooling/unpooling steps and of the head while training (config ``model.grad_checkpoint: true``): same results,
            a fraction of the activation memory, about one extra forward per step. Default False.
        mixer: ``"mamba"`` (Mamba-1, default) or ``"mamba2"`` (Mamba-2 SSD) in every block.

    Shapes::

        coord (N, 3), feat (N, C), cu_seqlens (B+1,) int, category (B,) -> logits (N, classes)
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, size: str = "tiny",
                 dims: Sequence[int] | None = None, depths: Sequence[int] | None = None,
                 strides: Sequence[int] | None = None, grid_size: float = 0.02,
                 orders: Sequence[str] = PCM_ORDERS, dec_depths: Sequence[int] | None = None,
                 k: int | None = None, num_prompts: int | None = None,
                 mlp_ratio: float | None = None, drop_path: float = 0.1,
                 d_state: int | None = None, d_conv: int = 4, expand: int | None = None,
                 dropout: float = 0.0, num_categories: int = 0, backend: str | None = None,
                 grad_checkpoint: bool = False, mixer: str = "mamba") -> None:
        super().__init__()
        self.encoder, cfg = _encoder(size, num_classes, in_channels, grid_size, orders,
                                     drop_path, d_conv, backend, grad_checkpoint, mixer,
                                     dims=dims,
                                     depths=depths, strides=strides, k=k, num_prompts=num_prompts,
                                     mlp_ratio=mlp_ratio, d_state=d_state, expand=expand)
        dims = cfg["dims"]
        dec_depths = tuple(dec_depths) if dec_depths is not None else (0,) * (len(dims) - 1)
        if len(dec_depths) != len(dims) - 1:
            raise ValueError(f"dec_depths must have len(dims) - 1 = {len(dims) - 1} entries, "
                             f"got {dec_depths}")
        self.up = nn.ModuleList(_Up(dims[i + 1], dims[i], dims[i]) for i in range(len(dims) - 1))
        self.dec_blocks = nn.ModuleList(
            nn.ModuleList(SerializedBlock(dims[i], bidirectional=True,
                                          mlp_ratio=cfg["mlp_ratio"], d_state=cfg["d_state"],
                                          d_conv=d_conv, expand=cfg["expand"], backend=backend,
                                          grad_checkpoint=grad_checkpoint, mixer=mixer)
                          for _ in range(dec_depths[i]))
            for i in range(len(dims) - 1))
        self.num_categories = num_categories
        self.category_embed = nn.Embedding(num_categories, dims[0]) if num_categories > 0 else None
        self.head = nn.Sequential(nn.Linear(dims[0], dims[0]), nn.LayerNorm(dims[0]), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(dims[0], num_classes))

    @classmethod
    def example(cls) -> tuple[dict, dict]:
        coord, feat, cu = _example_inputs(4)
        init = {"in_channels": 4, "num_classes": 5, "dims": (8, 16), "depths": (1, 1),
                "strides": (2,), "grid_size": 0.1, "d_state": 4, "dec_depths": (1,),
                "num_categories": 2}
        return init, {"coord": coord, "feat": feat, "cu_seqlens": cu,
                      "category": torch.tensor([0, 1, 1])}

    def forward(self, coord: torch.Tensor, feat: torch.Tensor, cu_seqlens: torch.Tensor,
                category: torch.Tensor | None = None,
                neighbours: torch.Tensor | None = None) -> torch.Tensor:
        """``neighbours (N, k)``: the kNN embedding's neighbours computed before
        (``knn(coord, cu_seqlens, k)``, e.g. in the data loader), default None: here."""
        feats, levels = self.encoder(coord, feat, cu_seqlens, neighbours)
        x = feats[-1]
        for i in range(len(feats) - 2, -1, -1):
            x = _run(self.up[i], self.encoder.grad_checkpoint, x, feats[i], levels[i + 1].pooling)
            for b, block in enumerate(self.dec_blocks[i]):
                order = self.encoder.orders[b % len(self.encoder.orders)]
                x = block(x, levels[i].serialization(order))
        if self.category_embed is not None:
            if category is None:
                raise ValueError("category (B,) is required: the model was built with "
                                 f"num_categories={self.num_categories}")
            category = torch.as_tensor(category, device=x.device).reshape(-1).long()
            if category.numel() != cu_seqlens.numel() - 1:
                raise ValueError(f"category must have one entry per sample (B="
                                 f"{cu_seqlens.numel() - 1}), got {category.numel()}")
            # Look up per point, not `embed(category)[batch]`: that gather's backward is an
            # accumulating index_put whose CPU kernel adds with atomics across threads (a
            # summation order set by thread timing: runs differed in the last bits).
            # Embedding's backward sums every row in point order for any thread count.
            x = x + self.category_embed(category[levels[0].batch])
        return _run(self.head, self.encoder.grad_checkpoint, x)


@MODELS.register
class PointCloudMambaCls(nn.Module):
    """Point Cloud Mamba classifier: the encoder, then per-sample max and mean pooling of the
    last stage and an MLP head.

    Args:
        in_channels, size, dims, depths, strides, grid_size, orders, k, num_prompts, mlp_ratio,
        drop_path, d_state, d_conv, expand, backend, grad_checkpoint, mixer: see
        ``PointCloudMambaSeg``.
        num_classes: default 40 (ModelNet40).
        dropout: head dropout, default 0.5.

    Shapes: ``coord (N, 3), feat (N, C), cu_seqlens (B+1,)`` -> ``logits (B, classes)``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 40, size: str = "tiny",
                 dims: Sequence[int] | None = None, depths: Sequence[int] | None = None,
                 strides: Sequence[int] | None = None, grid_size: float = 0.02,
                 orders: Sequence[str] = PCM_ORDERS, k: int | None = None,
                 num_prompts: int | None = None, mlp_ratio: float | None = None,
                 drop_path: float = 0.1, d_state: int | None = None, d_conv: int = 4,
                 expand: int | None = None, dropout: float = 0.5,
                 backend: str | None = None, grad_checkpoint: bool = False,
                 mixer: str = "mamba") -> None:
        super().__init__()
        self.encoder, cfg = _encoder(size, num_classes, in_channels, grid_size, orders,
                                     drop_path, d_conv, backend, grad_checkpoint, mixer,
                                     dims=dims,
                                     depths=depths, strides=strides, k=k, num_prompts=num_prompts,
                                     mlp_ratio=mlp_ratio, d_state=d_state, expand=expand)
        d = cfg["dims"][-1]
        hidden = max(256, d)
        self.head = nn.Sequential(nn.Linear(2 * d, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    @classmethod
    def example(cls) -> tuple[dict, dict]:
        coord, feat, cu = _example_inputs(3)
        init = {"num_classes": 4, "dims": (8, 16), "depths": (1, 1), "strides": (2,),
                "grid_size": 0.1, "d_state": 4}
        return init, {"coord": coord, "feat": feat, "cu_seqlens": cu}

    def forward(self, coord: torch.Tensor, feat: torch.Tensor, cu_seqlens: torch.Tensor,
                neighbours: torch.Tensor | None = None) -> torch.Tensor:
        """``neighbours (N, k)``: as ``PointCloudMambaSeg.forward``'s."""
        feats, levels = self.encoder(coord, feat, cu_seqlens, neighbours)
        x, level = feats[-1], levels[-1]
        b = level.num_samples
        idx = level.batch[:, None].expand_as(x)
        mx = x.new_zeros(b, x.shape[1]).scatter_reduce(0, idx, x, "amax", include_self=False)
        mean = x.new_zeros(b, x.shape[1]).scatter_reduce(0, idx, x, "mean", include_self=False)
        return self.head(torch.cat([mx, mean], 1))
