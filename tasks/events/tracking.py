"""MambaEVT-style single-object tracking on event streams.

Pieces (after MambaEVT, Wang et al. 2024: template + search region, a Mamba backbone, a dynamic
template memory):

- ``event_frames``: per ground-truth time ``t_k``, event counts per polarity in ``(t_k - window,
  t_k]``: ``(K, 2, H, W)``;
- ``crop``: square crops ``(side x side`` pixels around a centre, resampled to a fixed size,
  zeros outside the sensor), the template (``template_factor * sqrt(w h)``) and the search
  region (``search_factor * sqrt(w h)``);
- ``MambaEVTTracker``: shared patch embedding of template, search and memory crops; the memory
  templates, each pooled to one token, run through a memory ``Mamba`` in time order; the
  sequence ``[memory, template, search]`` runs through BiMamba blocks; a centre head on the
  search tokens gives a heatmap over the ``G x G`` cells plus a sub-cell offset and the box
  size relative to the search side;
- ``track``: the online loop (batched over sequences): search around the last box, a cosine
  window on the heatmap, box from the best cell, and the dynamic memory - a long-term library
  (one crop every ``interval`` frames) and a short-term library (the latest confident crops);
- metrics as the tracking toolkits (OTB / LaSOT / pytracking) define them: ``success_curve``
  (IoU > threshold, 21 thresholds in [0, 1]) and its AUC, ``precision`` at 20 px (centre
  distance), ``normalized_precision`` at 0.2 (centre distance over the ground-truth size);
- datasets: ``SyntheticTracking`` (the shipped simulator), ``EventVOT`` and ``FE108`` (official
  layouts; untested on the real data here, which is not available offline).

Boxes are ``[x, y, w, h]`` with ``(x, y)`` the top-left corner in pixels (``groundtruth.txt``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from geossm.engine.metrics import Metric
from geossm.engine.task import Task
from geossm.nn import MLP, BiMamba, Mamba, RMSNorm
from geossm.packed import pack_collate
from geossm.registry import DATASETS, MODELS, TASKS

from .io import read_events
from .simulator import simulate

# ------------------------------------------------------------------------------ crops


def event_frames(events: np.ndarray, times: np.ndarray, sensor_size: Sequence[int],
                 window_us: int) -> np.ndarray:
    """Event counts ``(K, 2, H, W) float32`` in ``(t_k - window_us, t_k]`` for every ``t_k``."""
    w, h = int(sensor_size[0]), int(sensor_size[1])
    t = events["t"]
    out = np.zeros((len(times), 2, h, w), np.float32)
    for k, tk in enumerate(np.asarray(times)):
        lo, hi = np.searchsorted(t, [tk - window_us, tk], side="right")
        e = events[lo:hi]
        inside = (e["x"] >= 0) & (e["x"] < w) & (e["y"] >= 0) & (e["y"] < h)
        e = e[inside]
        flat = (e["p"].astype(np.int64) * h + e["y"].astype(np.int64)) * w + e["x"]
        out[k] = np.bincount(flat, minlength=2 * h * w).reshape(2, h, w)
    return out


def crop(frames: torch.Tensor, centers: torch.Tensor, sides: torch.Tensor,
         size: int) -> torch.Tensor:
    """Square crops resampled bilinearly to ``size x size`` (zeros outside), ``log1p``-scaled.

    Shapes: ``frames (B, C, H, W)``, ``centers (B, 2)`` (x, y) and ``sides (B,)`` in pixels
    (pixel ``i`` spans ``[i, i + 1)``) -> ``(B, C, size, size)``.
    """
    b, _, h, w = frames.shape
    theta = torch.zeros(b, 2, 3, dtype=frames.dtype, device=frames.device)
    theta[:, 0, 0] = sides / w
    theta[:, 1, 1] = sides / h
    theta[:, 0, 2] = 2 * centers[:, 0] / w - 1
    theta[:, 1, 2] = 2 * centers[:, 1] / h - 1
    grid = F.affine_grid(theta, (b, frames.shape[1], size, size), align_corners=False)
    out = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Counts per crop pixel grow with the crop side: normalise to counts per sensor pixel.
    return torch.log1p(out)


def box_center_side(boxes: torch.Tensor, factor: float, min_side: float = 8.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ``(B, 2)`` and crop sides ``factor * sqrt(w h)`` ``(B,)`` of boxes ``(B, 4)``."""
    centers = boxes[:, :2] + boxes[:, 2:] / 2
    sides = factor * torch.sqrt(boxes[:, 2].clamp_min(1) * boxes[:, 3].clamp_min(1))
    return centers, sides.clamp_min(min_side)


# ----------------------------------------------------------------------------- metrics

def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``(N, 4)`` and ``(N, 4)`` ``[x, y, w, h]`` -> ``(N,)``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    x1 = np.maximum(a[:, 0], b[:, 0])
    y1 = np.maximum(a[:, 1], b[:, 1])
    x2 = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y2 = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


SUCCESS_THRESHOLDS = np.linspace(0, 1, 21)
PRECISION_THRESHOLDS = np.arange(0, 51, dtype=np.float64)
NORM_PRECISION_THRESHOLDS = np.arange(0, 51, dtype=np.float64) / 100


def success_curve(pred: np.ndarray, gt: np.ndarray,
                  thresholds: np.ndarray = SUCCESS_THRESHOLDS) -> np.ndarray:
    """Fraction of frames with IoU > threshold, for each threshold (OTB success plot)."""
    ious = iou_xywh(pred, gt)
    return (ious[None, :] > np.asarray(thresholds)[:, None]).mean(1)


def success_auc(pred: np.ndarray, gt: np.ndarray) -> float:
    """Area under the success plot: the mean of ``success_curve`` over 21 thresholds in [0, 1]."""
    return float(success_curve(pred, gt).mean())


def center_errors(pred: np.ndarray, gt: np.ndarray, normalized: bool = False) -> np.ndarray:
    """Centre distances ``(N,)`` in pixels, or with ``normalized`` per axis divided by the
    ground-truth width / height before the norm (LaSOT's normalised precision)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    d = (pred[:, :2] + pred[:, 2:] / 2) - (gt[:, :2] + gt[:, 2:] / 2)
    if normalized:
        d = d / np.maximum(gt[:, 2:], 1e-12)
    return np.linalg.norm(d, axis=1)


def precision(pred: np.ndarray, gt: np.ndarray, threshold: float = 20.0) -> float:
    """Fraction of frames whose centre lies within ``threshold`` pixels (default 20)."""
    return float((center_errors(pred, gt) <= threshold).mean())


def normalized_precision(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.2) -> float:
    """Fraction of frames whose size-normalised centre error is within ``threshold`` (0.2)."""
    return float((center_errors(pred, gt, normalized=True) <= threshold).mean())


class TrackingMetric(Metric):
    """Success AUC, precision at 20 px and normalised precision at 0.2, averaged over sequences
    (each sequence's scores over its frames after the first, as the toolkits do)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(3, dtype=torch.float64))
        self.add_state("count", torch.zeros((), dtype=torch.float64))

    def update(self, outputs: Any, batch: Mapping[str, Any]) -> None:
        if not isinstance(outputs, Mapping) or "tracks" not in outputs:
            return
        pred = outputs["tracks"].detach().cpu().numpy()
        gt = batch["boxes"].detach().cpu().numpy()
        for p, g in zip(pred, gt):
            p, g = p[1:], g[1:]
            self.sums += torch.tensor([success_auc(p, g), precision(p, g),
                                       normalized_precision(p, g)], dtype=torch.float64)
            self.count += 1

    def compute(self) -> dict[str, float]:
        n = float(self.count)
        if n == 0:
            return {}
        s = (self.sums / n).tolist()
        return {"success_auc": s[0], "precision_20": s[1], "norm_precision": s[2]}


# ------------------------------------------------------------------------------- model

class _Block(nn.Module):
    """Pre-norm residual BiMamba + MLP over dense ``(B, L, D)`` tokens."""

    def __init__(self, dim: int, mlp_ratio: float, **mamba_kwargs):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.mixer = BiMamba(dim, **mamba_kwargs)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@MODELS.register
class MambaEVTTracker(nn.Module):
    """Template + search + memory tokens through BiMamba, centre / offset / size head.

    Args:
        in_channels: channels of the crops (2 polarities), default 2.
        template_size, search_size: crop sides in pixels after resampling, default 32 / 64.
        patch_size: patch side, default 8 (``G = search_size / patch_size`` cells).
        dim: token width, default 48.
        depth: BiMamba blocks, default 3.
        memory_size: memory templates (long-term + short-term slots), default 4; 0 disables.
        stem_channels: width of the 3x3 stem convolution, default 16.
        d_state, expand, mlp_ratio: block sizes, default 8, 2, 2.
        backend: Mamba kernel backend (None: numba on CPU, triton on CUDA).

    Shapes::

        template (B, C, T, T), search (B, C, S, S), memory (B, M, C, T, T) or None
        -> {"logits": (B, G*G), "offset": (B, G*G, 2) in [0, 1] cells,
            "size": (B, G*G, 2) (w, h) / search side}
    """

    def __init__(self, in_channels: int = 2, template_size: int = 32, search_size: int = 64,
                 patch_size: int = 8, dim: int = 48, depth: int = 3, memory_size: int = 4,
                 stem_channels: int = 16, d_state: int = 8, expand: int = 2,
                 mlp_ratio: float = 2.0, backend: str | None = None):
        super().__init__()
        for name, v in (("template_size", template_size), ("search_size", search_size)):
            if v % patch_size:
                raise ValueError(f"{name}: expected a multiple of patch_size={patch_size}, "
                                 f"got {v}")
        self.template_size, self.search_size = template_size, search_size
        self.patch_size, self.memory_size = patch_size, memory_size
        self.grid = search_size // patch_size
        nt = (template_size // patch_size) ** 2
        self.embed = nn.Sequential(nn.Conv2d(in_channels, stem_channels, 3, padding=1),
                                   nn.GELU(), nn.Conv2d(stem_channels, dim, patch_size,
                                                        stride=patch_size))
        self.pos_t = nn.Parameter(torch.zeros(nt, dim))
        self.pos_s = nn.Parameter(torch.zeros(self.grid ** 2, dim))
        nn.init.trunc_normal_(self.pos_t, std=0.02)
        nn.init.trunc_normal_(self.pos_s, std=0.02)
        mk = dict(d_state=d_state, expand=expand, backend=backend)
        if memory_size:
            self.memory_mamba = Mamba(dim, **mk)
            self.memory_norm = RMSNorm(dim)
            self.pos_m = nn.Parameter(torch.zeros(memory_size, dim))
            nn.init.trunc_normal_(self.pos_m, std=0.02)
        self.blocks = nn.ModuleList(_Block(dim, mlp_ratio, **mk) for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 5))

    @classmethod
    def example(cls):
        init = {"template_size": 16, "search_size": 32, "patch_size": 8, "dim": 16, "depth": 1,
                "memory_size": 2, "stem_channels": 4}
        return init, {"template": torch.rand(2, 2, 16, 16), "search": torch.rand(2, 2, 32, 32),
                      "memory": torch.rand(2, 2, 2, 16, 16)}

    def _tokens(self, img: torch.Tensor) -> torch.Tensor:
        return self.embed(img).flatten(2).transpose(1, 2)  # (B, L, D)

    def forward(self, template: torch.Tensor, search: torch.Tensor,
                memory: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if template.dim() != 4 or template.shape[-1] != self.template_size:
            raise ValueError(f"template: expected (B, C, {self.template_size}, "
                             f"{self.template_size}), got {tuple(template.shape)}")
        if search.dim() != 4 or search.shape[-1] != self.search_size:
            raise ValueError(f"search: expected (B, C, {self.search_size}, {self.search_size}), "
                             f"got {tuple(search.shape)}")
        b = template.shape[0]
        parts = []
        if self.memory_size:
            if memory is None:
                memory = template[:, None].expand(-1, self.memory_size, -1, -1, -1)
            if memory.dim() != 5 or memory.shape[1] != self.memory_size:
                raise ValueError(f"memory: expected (B, {self.memory_size}, C, T, T), got "
                                 f"{tuple(memory.shape)}")
            mem = self._tokens(memory.flatten(0, 1)).mean(1).view(b, self.memory_size, -1)
            mem = mem + self.memory_mamba(self.memory_norm(mem))  # memory Mamba, oldest first
            parts.append(mem + self.pos_m)
        parts.append(self._tokens(template) + self.pos_t)
        parts.append(self._tokens(search) + self.pos_s)
        x = torch.cat(parts, 1)
        for blk in self.blocks:
            x = blk(x)
        out = self.head(self.norm(x[:, -self.grid ** 2:]))  # (B, G*G, 5)
        return {"logits": out[..., 0], "offset": torch.sigmoid(out[..., 1:3]),
                "size": torch.sigmoid(out[..., 3:5])}


def decode_boxes(outputs: Mapping[str, torch.Tensor], centers: torch.Tensor,
                 sides: torch.Tensor, grid: int, window: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes ``(B, 4)`` in sensor pixels from the head's outputs on search crops of
    ``centers (B, 2)``, ``sides (B,)``; the best cell maximises ``softmax(logits) * window``.
    Also returns the best cell's probability ``(B,)`` (the confidence)."""
    prob = outputs["logits"].float().softmax(-1)
    score = prob * window if window is not None else prob
    cell = score.argmax(-1)
    idx = torch.arange(len(cell), device=cell.device)
    off = outputs["offset"][idx, cell].float()
    size = outputs["size"][idx, cell].float()
    col, row = (cell % grid).float(), (cell // grid).float()
    cx = centers[:, 0] - sides / 2 + (col + off[:, 0]) / grid * sides
    cy = centers[:, 1] - sides / 2 + (row + off[:, 1]) / grid * sides
    w, h = size[:, 0] * sides, size[:, 1] * sides
    return torch.stack([cx - w / 2, cy - h / 2, w, h], 1), prob[idx, cell]


@torch.no_grad()
def track(model: MambaEVTTracker, frames: torch.Tensor, init_boxes: torch.Tensor,
          template_factor: float = 2.0, search_factor: float = 4.0, interval: int = 5,
          confidence: float = 0.3, window_weight: float = 0.3, size_lr: float = 0.7
          ) -> torch.Tensor:
    """Track ``B`` sequences at once.

    Args:
        model: the tracker (put in eval mode by the caller or here).
        frames: ``(B, K, C, H, W)`` event frames at the ground-truth times.
        init_boxes: ``(B, 4)`` boxes in frame 0.
        template_factor, search_factor: crop sides over ``sqrt(w h)``, default 2 and 4.
        interval: frames between long-term memory updates, default 5.
        confidence: least best-cell probability for a short-term memory update, default 0.3.
        window_weight: weight of the cosine window on the heatmap, default 0.3.
        size_lr: box-size update rate (1: take the new size), default 0.7.

    Returns:
        ``(B, K, 4)`` boxes, the first equal to ``init_boxes``.
    """
    was_training = model.training
    model.eval()
    b, k = frames.shape[:2]
    ts, ss, g = model.template_size, model.search_size, model.grid
    box = init_boxes.float().clone()
    c, s = box_center_side(box, template_factor)
    template = crop(frames[:, 0], c, s, ts)
    m = model.memory_size
    n_long = (m + 1) // 2
    long_mem = [template] * n_long
    short_mem = [template] * (m - n_long)
    hann = torch.hann_window(g + 2, periodic=False, device=frames.device)[1:-1]
    window = (1 - window_weight) + window_weight * torch.outer(hann, hann).flatten()
    out = [box.clone()]
    for i in range(1, k):
        c, s = box_center_side(box, search_factor, min_side=16.0)
        search = crop(frames[:, i], c, s, ss)
        memory = torch.stack(long_mem + short_mem, 1) if m else None
        pred, conf = decode_boxes(model(template, search, memory), c, s, g, window)
        wh = (1 - size_lr) * box[:, 2:] + size_lr * pred[:, 2:]
        center = pred[:, :2] + pred[:, 2:] / 2
        h, w = frames.shape[-2:]
        wh = wh.clamp(min=4.0)
        center = torch.stack([center[:, 0].clamp(0, w), center[:, 1].clamp(0, h)], 1)
        box = torch.cat([center - wh / 2, wh], 1)
        out.append(box.clone())
        if m:
            cc, cs = box_center_side(box, template_factor)
            cur = crop(frames[:, i], cc, cs, ts)
            if len(short_mem):
                keep = (conf >= confidence)[:, None, None, None]
                short_mem = short_mem[1:] + [torch.where(keep, cur, short_mem[-1])]
            if i % interval == 0 and n_long > 1:
                # The first slot keeps the initial template; the others roll.
                long_mem = [long_mem[0]] + long_mem[2:] + [cur]
    model.train(was_training)
    return torch.stack(out, 1)


# ----------------------------------------------------------------------------- datasets

class _TrackingSequences(torch.utils.data.Dataset):
    """Sequences ``(events, boxes, times, sensor)`` -> training pairs or whole sequences.

    ``mode="pairs"`` (training): ``samples_per_sequence`` random items per sequence per epoch,
    each a template crop (a frame before the search frame, mostly the first), ``memory_size``
    memory crops from earlier frames, a search crop around the jittered target and the target
    cell / offset / size. ``mode="sequences"`` (evaluation): one item per sequence with
    ``frames (K, 2, H, W)`` and ``boxes (K, 4)``.
    """

    def __init__(self, mode: str = "pairs", window_us: int = 10_000,
                 samples_per_sequence: int = 16, template_size: int = 32, search_size: int = 64,
                 patch_size: int = 8, memory_size: int = 4, template_factor: float = 2.0,
                 search_factor: float = 4.0, center_jitter: float = 0.25,
                 scale_jitter: float = 0.15, seed: int = 0):
        if mode not in ("pairs", "sequences"):
            raise ValueError(f"mode: expected 'pairs' or 'sequences', got {mode!r}")
        self.mode, self.window_us = mode, int(window_us)
        self.samples_per_sequence = int(samples_per_sequence)
        self.template_size, self.search_size = template_size, search_size
        self.grid = search_size // patch_size
        self.memory_size = memory_size
        self.template_factor, self.search_factor = template_factor, search_factor
        self.center_jitter, self.scale_jitter = center_jitter, scale_jitter
        self.seed = seed
        self.frames: list[np.ndarray] = []
        self.boxes: list[np.ndarray] = []
        self.names: list[str] = []
        self._calls = 0

    def add(self, name: str, events: np.ndarray, boxes: np.ndarray, times: np.ndarray,
            sensor_size: Sequence[int]) -> None:
        self.names.append(name)
        self.frames.append(event_frames(events, times, sensor_size, self.window_us))
        self.boxes.append(np.asarray(boxes, np.float32))

    def __len__(self) -> int:
        n = len(self.frames)
        return n * self.samples_per_sequence if self.mode == "pairs" else n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.mode == "sequences":
            return {"frames": self.frames[index], "boxes": self.boxes[index]}
        seq = index // self.samples_per_sequence
        self._calls += 1
        rng = np.random.default_rng([self.seed, index, self._calls,
                                     int(torch.randint(0, 2**31 - 1, ()).item())])
        frames = torch.from_numpy(self.frames[seq])
        boxes = torch.from_numpy(self.boxes[seq])
        k = len(boxes)
        i = int(rng.integers(1, k))
        j = 0 if rng.random() < 0.5 else int(rng.integers(0, i))
        mem_idx = np.sort(rng.integers(0, i, self.memory_size)) if self.memory_size else []

        def jittered(idx: int, cj: float, sj: float, factor: float) -> tuple:
            c, s = box_center_side(boxes[idx:idx + 1], factor)
            s = s * float(np.exp(rng.uniform(-sj, sj)))
            c = c + torch.from_numpy(rng.uniform(-cj, cj, 2)).float() * s
            return c, s

        c, s = jittered(j, 0.05, 0.05, self.template_factor)
        template = crop(frames[j:j + 1], c, s, self.template_size)[0]
        memory = [crop(frames[m:m + 1], *jittered(int(m), 0.1, 0.1, self.template_factor),
                       self.template_size)[0] for m in mem_idx]
        c, s = jittered(i, self.center_jitter, self.scale_jitter, self.search_factor)
        search = crop(frames[i:i + 1], c, s, self.search_size)[0]
        box = boxes[i]
        # Target in search-crop units (0..1 over the crop side).
        u = (box[0] + box[2] / 2 - (c[0, 0] - s[0] / 2)) / s[0]
        v = (box[1] + box[3] / 2 - (c[0, 1] - s[0] / 2)) / s[0]
        g = self.grid
        col = int(np.clip(math.floor(float(u) * g), 0, g - 1))
        row = int(np.clip(math.floor(float(v) * g), 0, g - 1))
        offset = np.clip([float(u) * g - col, float(v) * g - row], 0, 1)
        size = np.clip([float(box[2] / s[0]), float(box[3] / s[0])], 0, 1)
        item = {"template": template.numpy(), "search": search.numpy(),
                "cell": row * g + col, "offset": np.asarray(offset, np.float32),
                "size": np.asarray(size, np.float32)}
        if self.memory_size:
            item["memory"] = torch.stack(memory).numpy()
        return item


@DATASETS.register
class SyntheticTracking(_TrackingSequences):
    """Sequences of the shipped event simulator (``geossm.tasks.events.simulator``).

    ``split="train"`` uses seeds ``seed .. seed + num_sequences - 1``; ``"val"`` / ``"test"``
    use ``num_test_sequences`` held-out seeds from ``seed + 100_000`` on. Training yields pairs,
    evaluation whole sequences. Simulated sequences are cached as ``.npz`` under ``cache_dir``
    (default: ``$GEOSSM_CACHE`` or ``~/.cache/geossm``, then ``synthetic_tracking/``).

    Args:
        root: unused (the data is generated); accepted for the config convention.
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_sequences, num_test_sequences: default 32 and 8.
        sim: keyword arguments of ``simulate`` (sensor size, frames, speeds ...).
        Others: see ``_TrackingSequences``.
    """

    def __init__(self, root: str | None = None, split: str = "train", num_sequences: int = 32,
                 num_test_sequences: int = 8, sim: Mapping[str, Any] | None = None,
                 cache_dir: str | None = None, seed: int = 0, **kwargs: Any):
        if split not in ("train", "val", "test"):
            raise ValueError(f"SyntheticTracking: split must be train, val or test, got "
                             f"{split!r}")
        kwargs.setdefault("mode", "pairs" if split == "train" else "sequences")
        super().__init__(seed=seed, **kwargs)
        sim = dict(sim or {})
        seeds = (range(seed, seed + num_sequences) if split == "train"
                 else range(seed + 100_000, seed + 100_000 + num_test_sequences))
        cache = Path(cache_dir or os.environ.get("GEOSSM_CACHE")
                     or Path.home() / ".cache" / "geossm") / "synthetic_tracking"
        tag = "_".join(f"{k}{v}" for k, v in sorted(sim.items())) or "default"
        for s in tqdm(list(seeds), desc=f"simulate {split}", leave=False):
            path = cache / f"{tag}_seed{s}.npz"
            seq = None
            if path.is_file():
                try:
                    with np.load(path, allow_pickle=False) as z:
                        seq = (z["events"], z["boxes"], z["times"], tuple(z["sensor_size"]))
                except (OSError, ValueError, KeyError):
                    seq = None  # a broken cache entry is simulated again
            if seq is None:
                r = simulate(s, **sim)
                seq = (r.events, r.boxes, r.times, r.sensor_size)
                try:
                    cache.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".tmp.npz")
                    np.savez(tmp, events=r.events, boxes=r.boxes, times=r.times,
                             sensor_size=np.asarray(r.sensor_size))
                    os.replace(tmp, path)
                except OSError:
                    pass  # a read-only cache only costs time
            self.add(f"seed{s}", *seq)


def _read_boxes(path: Path) -> np.ndarray:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        vals = [v for v in re.split(r"[,\s]+", line.strip()) if v]
        try:
            rows.append([float(v) for v in vals[:4]])
        except ValueError as err:
            raise ValueError(f"{path}: line {n}: expected 4 numbers x, y, w, h, got "
                             f"{line!r}") from err
        if len(vals) < 4:
            raise ValueError(f"{path}: line {n}: expected 4 numbers x, y, w, h, got {line!r}")
    if not rows:
        raise ValueError(f"{path}: no boxes")
    return np.asarray(rows, np.float64)


def _frame_times(seq_dir: Path, events: np.ndarray, n: int) -> np.ndarray:
    """Frame timestamps: ``timestamps.txt`` (µs, one per box) when present, else ``n`` times
    evenly spaced over the recording, ending at its last event."""
    ts = seq_dir / "timestamps.txt"
    if ts.is_file():
        times = np.loadtxt(ts, dtype=np.float64, ndmin=1)
        if len(times) != n:
            raise ValueError(f"{ts}: expected {n} timestamps (one per box), got {len(times)}")
        return times.astype(np.int64)
    if not len(events):
        return np.zeros(n, np.int64)
    t0, t1 = int(events["t"][0]), int(events["t"][-1])
    return np.linspace(t0, t1, n + 1)[1:].round().astype(np.int64)


def _read_csv_events(path: Path) -> np.ndarray:
    """EventVOT ``<seq>.csv``: columns named x, y, t|timestamp, p|polarity (any order), or
    four unnamed columns t, x, y, p."""
    from .io import make_events
    with open(path, newline="") as f:
        first = f.readline()
    names = [c.strip().lower() for c in first.split(",")]
    has_header = any(c and not re.fullmatch(r"[-+.\deE]+", c) for c in names)
    data = np.loadtxt(path, delimiter=",", skiprows=1 if has_header else 0, ndmin=2)
    if data.shape[1] < 4:
        raise ValueError(f"{path}: expected 4 columns of events, got {data.shape[1]}")
    if has_header:
        alias = {"x": ("x",), "y": ("y",), "t": ("t", "timestamp", "ts", "time"),
                 "p": ("p", "polarity", "pol", "on")}
        col = {}
        for key, options in alias.items():
            found = [i for i, n in enumerate(names) if n in options]
            if not found:
                raise ValueError(f"{path}: no column for '{key}' in header {names}")
            col[key] = found[0]
    else:
        col = {"t": 0, "x": 1, "y": 2, "p": 3}
    ev = make_events(data[:, col["x"]], data[:, col["y"]], data[:, col["t"]], data[:, col["p"]])
    return ev[np.argsort(ev["t"], kind="stable")]


class _RealTracking(_TrackingSequences):
    split_dirs: dict[str, tuple[str, ...]] = {}

    def _split_dir(self, root: Path, split: str) -> Path:
        if split not in self.split_dirs:
            raise ValueError(f"{type(self).__name__}: split must be one of "
                             f"{sorted(self.split_dirs)}, got {split!r}")
        for name in self.split_dirs[split]:
            if (root / name).is_dir():
                return root / name
        raise FileNotFoundError(f"{type(self).__name__}: none of "
                                f"{[str(root / n) for n in self.split_dirs[split]]} exists")

    def _files(self, sequence_dir: Path) -> tuple[Path, Path]:
        """``(ground-truth file, event file)`` of one sequence folder in the dataset's layout."""
        raise NotImplementedError

    def _sequence_dirs(self, root: str | os.PathLike, split: str,
                       sequences: Sequence[str] | None) -> Iterator[tuple[Path, Path, Path]]:
        """``(sequence folder, ground-truth file, event file)`` of every sequence of ``split``,
        with a progress bar; a missing folder or file raises naming it."""
        name = type(self).__name__
        folder = self._split_dir(Path(str(root)), split)
        dirs = sorted(d for d in folder.iterdir() if d.is_dir())
        if sequences is not None:
            dirs = [d for d in dirs if d.name in set(sequences)]
        if not dirs:
            raise FileNotFoundError(f"{name}: no sequence folders under {folder}")
        for d in tqdm(dirs, desc=f"{name} {split}", leave=False):
            gt, ev_file = self._files(d)
            for p in (gt, ev_file):
                if not p.is_file():
                    raise FileNotFoundError(f"{name}: expected {p} (official layout)")
            yield d, gt, ev_file


@DATASETS.register
class EventVOT(_RealTracking):
    """EventVOT (Wang et al. 2024) in its official layout::

        root/{train,test,val}/<sequence>/<sequence>.csv     raw events (x, y, t, p columns)
        root/{train,test,val}/<sequence>/groundtruth.txt    x,y,w,h per frame
        root/{train,test,val}/<sequence>/absent.txt         optional

    1280 x 720 sensor. Frame times come from ``timestamps.txt`` when present, else are spaced
    evenly over the recording. Untested on the real dataset (not available offline).
    """

    split_dirs = {"train": ("train", "Training Subset"), "test": ("test", "Testing Subset"),
                  "val": ("val", "validating Subset")}
    sensor_size = (1280, 720, 2)

    def _files(self, sequence_dir: Path) -> tuple[Path, Path]:
        return sequence_dir / "groundtruth.txt", sequence_dir / f"{sequence_dir.name}.csv"

    def __init__(self, root: str | os.PathLike, split: str = "test",
                 sequences: Sequence[str] | None = None, **kwargs: Any):
        kwargs.setdefault("mode", "pairs" if split == "train" else "sequences")
        super().__init__(**kwargs)
        for d, gt, ev_file in self._sequence_dirs(root, split, sequences):
            events = _read_csv_events(ev_file)
            boxes = _read_boxes(gt)
            self.add(d.name, events, boxes, _frame_times(d, events, len(boxes)),
                     self.sensor_size)


@DATASETS.register
class FE108(_RealTracking):
    """FE108 (Zhang et al. 2021) in its official layout::

        root/{train,test}/<sequence>/events.aedat4          DAVIS346 events (+ APS frames)
        root/{train,test}/<sequence>/groundtruth_rect.txt   x,y,w,h per APS frame

    346 x 260 sensor. Frame times come from ``timestamps.txt`` (µs, one per box) when present,
    else are spaced evenly over the recording (the APS frame stream is not decoded here).
    Untested on the real dataset (not available offline).
    """

    split_dirs = {"train": ("train",), "test": ("test",), "val": ("test",)}
    sensor_size = (346, 260, 2)

    def _files(self, sequence_dir: Path) -> tuple[Path, Path]:
        return sequence_dir / "groundtruth_rect.txt", sequence_dir / "events.aedat4"

    def __init__(self, root: str | os.PathLike, split: str = "test",
                 sequences: Sequence[str] | None = None, **kwargs: Any):
        kwargs.setdefault("mode", "pairs" if split == "train" else "sequences")
        super().__init__(**kwargs)
        for d, gt, ev_file in self._sequence_dirs(root, split, sequences):
            rec = read_events(ev_file, "aedat4")
            boxes = _read_boxes(gt)
            self.add(d.name, rec.events, boxes, _frame_times(d, rec.events, len(boxes)),
                     rec.sensor_size or self.sensor_size)


# -------------------------------------------------------------------------------- task

@TASKS.register
class EventTrackingTask(Task):
    """Train ``MambaEVTTracker`` on pairs; evaluate by tracking whole sequences.

    Training batches: ``template (B, 2, T, T)``, ``search (B, 2, S, S)``, ``memory (B, M, 2, T,
    T)``, ``cell (B,)``, ``offset (B, 2)``, ``size (B, 2)``. Loss: cross-entropy of the
    target cell over the ``G x G`` heatmap + ``loss.box_weight`` x L1 of offset and size at
    that cell. Evaluation batches (``frames (B, K, 2, H, W)``, ``boxes (B, K, 4)``) run
    ``track`` (config ``tracker: {...}`` = its keyword arguments) and report ``success_auc``,
    ``precision_20`` and ``norm_precision`` (best.pt selects on ``success_auc``).
    """

    stack_keys = ("template", "search", "memory", "offset", "size", "frames", "boxes")
    best_metric, best_mode = "success_auc", "max"

    def collate(self, samples):
        keys = [k for k in self.stack_keys if k in samples[0]]
        return pack_collate(samples, stack_keys=keys)

    def _tracker_kwargs(self) -> dict[str, Any]:
        tr = self.cfg.get("tracker") if hasattr(self.cfg, "get") else None
        return dict(tr) if tr else {}

    def forward(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if "frames" in batch:
            net = getattr(model, "module", model)
            return {"tracks": track(net, batch["frames"].float(), batch["boxes"][:, 0].float(),
                                    **self._tracker_kwargs())}
        return model(template=batch["template"].float(), search=batch["search"].float(),
                     memory=batch["memory"].float() if "memory" in batch else None)

    def loss(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]
             ) -> torch.Tensor | dict[str, torch.Tensor]:
        if "tracks" in outputs:
            return outputs["tracks"].new_zeros(())  # no loss on whole-sequence evaluation
        weight = float((self.cfg.get("loss") or {}).get("box_weight", 5.0))
        cell = batch["cell"].long()
        idx = torch.arange(len(cell), device=cell.device)
        ce = F.cross_entropy(outputs["logits"].float(), cell)
        l1 = (F.l1_loss(outputs["offset"][idx, cell].float(), batch["offset"].float())
              + F.l1_loss(outputs["size"][idx, cell].float(), batch["size"].float()))
        return {"loss": ce + weight * l1, "ce": ce.detach(), "l1": l1.detach()}

    def build_metrics(self) -> TrackingMetric:
        return TrackingMetric()

    def load_input(self, path: str | os.PathLike) -> dict[str, Any]:
        """A ``.npz`` with ``frames (K, 2, H, W)`` and ``boxes (K, 4)`` (at least the first)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        with np.load(path, allow_pickle=False) as z:
            if "frames" not in z.files or "boxes" not in z.files:
                raise ValueError(f"input file {path}: expected arrays 'frames' and 'boxes', got "
                                 f"{z.files}")
            return {"frames": z["frames"], "boxes": z["boxes"]}

    def write_prediction(self, sample, result, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{k: np.asarray(v) for k, v in result.items()})
        return [path]


__all__ = ["event_frames", "crop", "box_center_side", "iou_xywh", "success_curve",
           "success_auc", "precision", "normalized_precision", "center_errors",
           "TrackingMetric", "MambaEVTTracker", "decode_boxes", "track", "SyntheticTracking",
           "EventVOT", "FE108", "EventTrackingTask"]
