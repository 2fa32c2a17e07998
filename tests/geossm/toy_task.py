"""A tiny point-segmentation task for the engine/CLI tests (not part of the library).

Importable as ``toy_task`` (``tests/geossm`` is put on ``sys.path`` by conftest.py and by the
subprocess tests through ``PYTHONPATH``); configs name it with ``imports: [toy_task]``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geossm.engine import ConfusionMatrix, Task
from geossm.registry import DATASETS, MODELS, TASKS

NUM_CLASSES = 3


def toy_sample(rng: np.random.Generator, min_points: int = 20,
               max_points: int = 60) -> dict[str, np.ndarray]:
    n = int(rng.integers(min_points, max_points))
    coord = rng.uniform(-1, 1, size=(n, 3)).astype(np.float32)
    label = np.digitize(coord[:, 0], [-0.3, 0.3]).astype(np.int64)  # 3 slabs along x
    return {"coord": coord, "label": label}


@DATASETS.register
class ToyPoints(torch.utils.data.Dataset):
    """Synthetic clouds (``root: null``) or ``<root>/<split>/*.npz`` files with coord/label."""

    def __init__(self, root: str | None = None, split: str = "train", num_samples: int = 16,
                 augment: bool = True, seed: int = 0, min_points: int = 20,
                 max_points: int = 60) -> None:
        self.split, self.augment = split, augment and split == "train"
        if root is None:
            rng = np.random.default_rng(seed + zlib.crc32(split.encode()))
            self.samples = [toy_sample(rng, min_points, max_points) for _ in range(num_samples)]
        else:
            folder = Path(root) / split
            files = sorted(folder.glob("*.npz")) if folder.is_dir() else []
            if not files:
                raise FileNotFoundError(f"ToyPoints: expected .npz files in {folder} "
                                        f"(layout <root>/<split>/*.npz)")
            self.samples = []
            for f in files:
                with np.load(f) as z:
                    self.samples.append({"coord": z["coord"], "label": z["label"]})

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        s = dict(self.samples[i])
        if self.augment:
            # Global torch RNG on purpose: resume must restore it to be exact.
            s["coord"] = s["coord"] + 0.01 * torch.randn(s["coord"].shape).numpy()
        return s


@MODELS.register
class ToyPointNet(torch.nn.Module):
    """Per-point MLP plus the per-cloud mean feature (packed: ``coord (N, 3)``, ``batch (N,)``)."""

    def __init__(self, in_channels: int = 3, hidden: int = 16, num_classes: int = NUM_CLASSES,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(in_channels, hidden)
        self.mix = torch.nn.Linear(2 * hidden, hidden)
        self.drop = torch.nn.Dropout(dropout)
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, num_classes)

    @classmethod
    def example(cls) -> tuple[dict, dict]:
        coord = torch.randn(7, 3)
        return {"hidden": 8}, {"coord": coord, "batch": torch.tensor([0, 0, 0, 1, 1, 1, 1])}

    def forward(self, coord: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(coord))
        nseg = int(batch.max()) + 1 if batch.numel() else 0
        sums = h.new_zeros(nseg, h.shape[1]).index_add_(0, batch, h)
        counts = torch.bincount(batch, minlength=nseg).clamp_min(1).unsqueeze(1).to(h.dtype)
        # index_select, not [batch]: the latter's backward adds with CPU atomics (see
        # test_no_registered_model_sums_gradients_with_cpu_atomics).
        h = torch.relu(self.mix(torch.cat([h, (sums / counts).index_select(0, batch)], 1)))
        return self.head(self.norm(self.drop(h)))


@TASKS.register
class ToySegTask(Task):
    input_keys = ("coord", "batch")
    best_metric = "miou"
    best_mode = "max"

    def loss(self, outputs, batch):
        return F.cross_entropy(outputs.float(), batch["label"])

    def build_metrics(self):
        return ConfusionMatrix(NUM_CLASSES, target_key="label")


def write_toy_config(path: Path, **extra: object) -> Path:
    """A config file for the toy task (extra top-level mappings are merged in as YAML)."""
    import yaml
    cfg = {
        "description": "toy segmentation for tests",
        "imports": ["toy_task"],
        "task": "ToySegTask",
        "model": {"name": "ToyPointNet", "hidden": 16},
        "data": {"name": "ToyPoints", "root": None, "num_samples": 16},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "warmup_epochs": 1,
                  "progress": False, "log_every": 2},
        "eval": {"split": "val"},
        "device": "cpu",
    }
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
