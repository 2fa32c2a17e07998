"""Event recognition with Mamba: serialized raw events or windowed representations.

``EventMambaCls`` has two modes (``mode``):

- ``"windowed"``: frames / voxel grids ``(B, C, H, W)`` -> a 3x3 convolution stem -> patch
  embedding (``patch_size`` x ``patch_size``, stride = size) -> ``(B, h*w, D)`` tokens plus a
  learned position embedding -> ``depth`` ``SerializedBlock`` s (BiMamba + MLP), block ``i``
  scanning the patch grid along ``orders[i % len(orders)]`` (row-major ``xyz``, column-major
  ``yxz``, Hilbert ...) -> mean over tokens -> linear classifier;
- ``"serialized"``: raw events ``(N, 4)`` = ``x, y, t, p`` packed by ``cu_seqlens`` ->
  per-event embedding of ``(x / W, y / H, t / t_max, p)`` (Fourier features + MLP) -> blocks over
  ``serialize_events(events, sensor_size, time_scale, order)`` (one segment per recording;
  block ``i`` uses ``orders[i % len(orders)]``) -> mean per recording -> linear classifier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geossm.nn import RMSNorm, SerializedBlock
from geossm.registry import MODELS
from geossm.serialization import serialize_grid
from geossm.serialization.events import serialize_events

MODES = ("windowed", "serialized")
#: Batch sizes whose repeated patch serializations ``EventMambaCls`` keeps (training and
#: evaluation batch sizes and an epoch's last, smaller batch).
REPEAT_CACHE_SIZE = 8


def segment_mean(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Mean of every segment: ``x (T, D)``, ``cu_seqlens (S+1,)`` -> ``(S, D)`` (0 if empty)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=x.device), lengths,
                                  output_size=x.shape[0])
    out = torch.zeros(lengths.numel(), x.shape[1], device=x.device, dtype=x.dtype)
    out.index_add_(0, seg, x)
    return out / lengths.clamp_min(1).to(x.dtype)[:, None]


class FourierEmbedding(nn.Module):
    """``[x, sin(2^k pi x), cos(2^k pi x)]_{k < F}`` per input column, then an MLP to ``dim``.

    Shapes: ``x (N, C)`` in about [0, 1] -> ``(N, dim)``.
    """

    def __init__(self, in_dim: int, dim: int, num_freqs: int = 6):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(num_freqs).float(),
                             persistent=False)
        feat = in_dim * (1 + 2 * num_freqs)
        self.mlp = nn.Sequential(nn.Linear(feat, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ang = x[..., None] * self.freqs  # (N, C, F)
        feat = torch.cat([x, ang.sin().flatten(-2), ang.cos().flatten(-2)], -1)
        return self.mlp(feat)


@MODELS.register
class EventMambaCls(nn.Module):
    """Event-stream classifier (module docstring for the two modes).

    Args:
        num_classes: output classes, default 10.
        mode: ``"windowed"`` (default) or ``"serialized"``.
        in_channels: channels of the windowed input (``2 * n_time_bins`` for frames,
            ``n_time_bins`` for voxel grids), default 6.
        sensor_size: ``(W, H, P)``, default N-MNIST's ``(34, 34, 2)``.
        dim: token width ``D``, default 64.
        depth: number of ``SerializedBlock`` s, default 2.
        patch_size: windowed patch side, default 4 (inputs are zero-padded to a multiple).
        stem_channels: width of the 3x3 stem convolutions (0: none), default 32.
        stem_depth: number of 3x3 convolution + BatchNorm + GELU layers in the stem, default 1.
        orders: scan order per block, cycled; default ``("xyz", "yxz")`` for windowed (rows,
            then columns) and ``("hilbert", "hilbert-trans")`` for serialized.
        time_scale: serialized: time cells per µs of ``serialize_events``, default 1e-3.
        d_state, expand: Mamba sizes, default 8 and 2.
        mlp_ratio: block MLP width factor, default 2.
        drop_path: largest stochastic-depth rate (linear over blocks), default 0.
        dropout: dropout before the classifier, default 0.
        backend: Mamba kernel backend (None: numba on CPU, triton on CUDA).
        mixer: ``"mamba"`` (Mamba-1, default) or ``"mamba2"`` (Mamba-2 SSD) in every block.

    Shapes::

        windowed:    frames (B, C, H, W)                         -> logits (B, num_classes)
        serialized:  events (N, 4) int64 x, y, t, p; cu_seqlens (B+1,) int32
                                                                  -> logits (B, num_classes)
    """

    def __init__(self, num_classes: int = 10, mode: str = "windowed", in_channels: int = 6,
                 sensor_size: Sequence[int] = (34, 34, 2), dim: int = 64, depth: int = 2,
                 patch_size: int = 4, stem_channels: int = 32, stem_depth: int = 1,
                 orders: Sequence[str] | None = None, time_scale: float = 1e-3,
                 d_state: int = 8, expand: int = 2, mlp_ratio: float = 2.0,
                 drop_path: float = 0.0, dropout: float = 0.0, backend: str | None = None,
                 mixer: str = "mamba"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth: expected a positive int, got {depth!r}")
        if isinstance(stem_depth, bool) or not isinstance(stem_depth, int) or stem_depth < 1:
            raise ValueError(f"stem_depth: expected a positive int, got {stem_depth!r}")
        if len(sensor_size) != 3:
            raise ValueError(f"sensor_size: expected (W, H, P), got {sensor_size!r}")
        self.mode = mode
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.patch_size = int(patch_size)
        self.time_scale = float(time_scale)
        default_orders = ("xyz", "yxz") if mode == "windowed" else ("hilbert", "hilbert-trans")
        self.orders = tuple(orders) if orders else default_orders
        w, h = self.sensor_size[:2]
        if mode == "windowed":
            ps = self.patch_size
            self.grid_hw = (math.ceil(h / ps), math.ceil(w / ps))
            layers: list[nn.Module] = []
            c = in_channels
            for _ in range(int(stem_depth) if stem_channels else 0):
                layers += [nn.Conv2d(c, stem_channels, 3, padding=1),
                           nn.BatchNorm2d(stem_channels), nn.GELU()]
                c = stem_channels
            layers.append(nn.Conv2d(c, dim, ps, stride=ps))
            self.embed = nn.Sequential(*layers)
            self.pos = nn.Parameter(torch.zeros(self.grid_hw[0] * self.grid_hw[1], dim))
            nn.init.trunc_normal_(self.pos, std=0.02)
        else:
            self.embed = FourierEmbedding(4, dim)
        rates = [drop_path * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            SerializedBlock(dim, mlp_ratio=mlp_ratio, drop_path=r, d_state=d_state,
                            expand=expand, backend=backend, mixer=mixer) for r in rates)
        self.norm = RMSNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        self._grid_cache: dict[str, list] = {}
        self._repeat_cache: dict[int, list] = {}  # batch size -> serializations (one device)

    @classmethod
    def example(cls):
        init = {"num_classes": 3, "dim": 16, "depth": 2, "in_channels": 2,
                "sensor_size": (8, 8, 2), "patch_size": 4, "stem_channels": 4}
        return init, {"frames": torch.rand(2, 2, 8, 8)}

    def _patch_serializations(self, batch, device: torch.device) -> list:
        """One serialization per order of a batch of ``batch`` patch grids: the grid of one
        frame is serialized once per device (cached) and repeated for the batch by tensor ops,
        so ``batch`` may stay symbolic under ``torch.export``. A concrete ``batch``'s repeats
        are cached too: the same ``cu_seqlens`` tensors every step, so the kernels' value
        check of them (a host sync) runs once, not per step (a CUDA graph of the step needs
        that)."""
        key = str(device)
        if key not in self._grid_cache:
            gh, gw = self.grid_hw
            yy, xx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            cells = torch.stack([xx.flatten(), yy.flatten(),
                                 torch.zeros(gh * gw, dtype=torch.long)], 1).to(device)
            self._grid_cache = {key: [serialize_grid(cells, o) for o in self.orders]}
            self._repeat_cache = {}
        if type(batch) is not int or torch.compiler.is_compiling():
            return [s.repeat(batch) for s in self._grid_cache[key]]
        if batch not in self._repeat_cache:
            if len(self._repeat_cache) >= REPEAT_CACHE_SIZE:
                self._repeat_cache.pop(next(iter(self._repeat_cache)))
            self._repeat_cache[batch] = [s.repeat(batch) for s in self._grid_cache[key]]
        return self._repeat_cache[batch]

    def forward(self, frames: torch.Tensor | None = None, events: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        if self.mode == "windowed":
            if frames is None or frames.dim() != 4:
                got = None if frames is None else tuple(frames.shape)
                raise ValueError(f"EventMambaCls(mode='windowed'): expected frames (B, C, H, W), "
                                 f"got {got} (data.representation must be frames or voxel)")
            b = frames.shape[0]
            ps = self.patch_size
            gh, gw = self.grid_hw
            pad_h, pad_w = gh * ps - frames.shape[2], gw * ps - frames.shape[3]
            if pad_h < 0 or pad_w < 0:
                raise ValueError(f"frames: expected H <= {gh * ps} and W <= {gw * ps} (sensor "
                                 f"{self.sensor_size}), got {tuple(frames.shape[2:])}")
            x = F.pad(frames, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
            x = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, h*w, D)
            x = x.reshape(b * gh * gw, -1)
            sers = self._patch_serializations(b, x.device)
            for i, blk in enumerate(self.blocks):
                x = blk(x, sers[i % len(sers)])
            pooled = self.norm(x).view(b, gh * gw, -1).mean(1)
            return self.head(self.drop(pooled))
        if events is None or events.dim() != 2 or events.shape[1] != 4 or cu_seqlens is None:
            got = None if events is None else tuple(events.shape)
            raise ValueError(f"EventMambaCls(mode='serialized'): expected events (N, 4) and "
                             f"cu_seqlens, got events {got} (data.representation must be "
                             "events)")
        events = events.long()
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        nb = lengths.numel()
        batch = torch.repeat_interleave(torch.arange(nb, device=events.device), lengths,
                                        output_size=events.shape[0])
        w, h = self.sensor_size[:2]
        t = events[:, 2].float()
        t_max = torch.zeros(nb, device=t.device).scatter_reduce_(0, batch, t, "amax")
        feat = torch.stack([events[:, 0].float() / w, events[:, 1].float() / h,
                            t / t_max.clamp_min(1.0)[batch], events[:, 3].clamp(0, 1).float()], 1)
        x = self.embed(feat)
        cols = {"x": events[:, 0], "y": events[:, 1], "t": events[:, 2], "p": events[:, 3]}
        # each recording ordered as it would be alone, whatever it is batched with
        sers = [serialize_events(cols, self.sensor_size, self.time_scale, order=o, batch=batch,
                                 per_sample=True) for o in self.orders]
        for i, blk in enumerate(self.blocks):
            x = blk(x, sers[i % len(sers)])
        return self.head(self.drop(segment_mean(self.norm(x), cu_seqlens)))


__all__ = ["EventMambaCls", "FourierEmbedding", "segment_mean", "MODES"]
