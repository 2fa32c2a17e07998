"""``MambaEVTTracker`` (template + search + memory tokens through BiMamba blocks, a centre /
offset / size head), ``decode_boxes`` and ``track``, the online loop over whole sequences."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from geossm.nn import Mamba, RMSNorm, SerializedBlock
from geossm.registry import MODELS
from geossm.serialization import Serialization

from .crops import box_center_side, crop


@MODELS.register
class MambaEVTTracker(nn.Module):
    """Template + search + memory tokens through BiMamba, centre / offset / size head.

    Args:
        in_channels: channels of the crops (2 polarities), default 2.
        template_size, search_size: crop sides in pixels after resampling, default 32 / 64.
        patch_size: patch side, default 8 (``G = search_size / patch_size`` cells).
        dim: token width, default 48.
        depth: BiMamba ``SerializedBlock`` s over ``[memory, template, search]``, default 3.
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
        self.blocks = nn.ModuleList(SerializedBlock(dim, mlp_ratio=mlp_ratio, **mk)
                                    for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 5))
        self._sequences: dict[tuple, Serialization] = {}

    @classmethod
    def example(cls):
        init = {"template_size": 16, "search_size": 32, "patch_size": 8, "dim": 16, "depth": 1,
                "memory_size": 2, "stem_channels": 4}
        return init, {"template": torch.rand(2, 2, 16, 16), "search": torch.rand(2, 2, 32, 32),
                      "memory": torch.rand(2, 2, 2, 16, 16)}

    def _tokens(self, img: torch.Tensor) -> torch.Tensor:
        return self.embed(img).flatten(2).transpose(1, 2)  # (B, L, D)

    def _sequence(self, batch: int, length: int, device: torch.device) -> Serialization:
        """``batch`` sequences of ``length`` tokens each scanned in token order
        ([memory, template, search]): the identity order, cached for the last shape."""
        key = (batch, length, str(device))
        if key not in self._sequences:
            order = torch.arange(batch * length, device=device)
            cu_seqlens = torch.arange(0, batch * length + 1, length, dtype=torch.int32,
                                      device=device)
            self._sequences = {key: Serialization.from_order(order, cu_seqlens)}
        return self._sequences[key]

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
        x = torch.cat(parts, 1)  # (B, L, D)
        length = x.shape[1]
        sequences = self._sequence(b, length, x.device)
        x = x.reshape(b * length, -1)  # packed (B*L, D): one segment per sample
        for blk in self.blocks:
            x = blk(x, sequences)
        x = x.view(b, length, -1)
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
