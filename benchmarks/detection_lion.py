"""Step time and peak memory of LION (``configs/detection/kitti_lion.yaml``) on real KITTI frames.

Measures forward + backward + AdamW step (bf16 autocast on CUDA, as the trainer runs) for:

1. ``frame1``: one full KITTI frame: every point of the velodyne sweep (~120k) before the
   detector's range crop (``x >= 0`` of OpenPCDet's range keeps the front half);
2. ``fov1``: one frame restricted to the camera's field of view (what training sees);
3. ``fov8`` / ``frame8``: a batch of 8 (the 6 real frames, then frames 0 and 1 again mirrored
   in y so that no two samples are identical).

Frames come from ``../shared/data/kitti/kitti_object_6frames.tar.xz`` (or ``--root``, an
unpacked KITTI object folder). Prints one JSON line per measurement (points in, voxels,
median step time over ``--steps`` after ``--warmup``, peak memory) and writes them to ``--out``.

    python benchmarks/detection_lion.py [--root DIR] [--steps 10] [--out results.jsonl]
        [key=value config overrides ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from geossm.config import apply_overrides, load_config
from geossm.registry import TASKS

import geossm.tasks.detection  # noqa: F401  (registers the task)
from geossm.tasks.detection.kitti import in_image_fov, read_calib, read_velodyne

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "kitti" / "kitti_object_6frames.tar.xz"


def load_frames(root: Path) -> list[dict[str, np.ndarray]]:
    """``{"all" (N, 4), "fov" (N', 4)}`` per frame of ``root/training``."""
    frames = []
    for velo in sorted((root / "training" / "velodyne").glob("*.bin")):
        pts = read_velodyne(velo)
        calib = read_calib(root / "training" / "calib" / f"{velo.stem}.txt")
        frames.append({"all": pts, "fov": pts[in_image_fov(pts, calib)]})
    if not frames:
        raise FileNotFoundError(f"no KITTI frames under {root}/training/velodyne")
    return frames


def load_kitti_frames(root: Path | None) -> list[dict[str, np.ndarray]]:
    """``load_frames(root)``; ``root=None``: of the shared KITTI archive, unpacked to a temp dir."""
    with tempfile.TemporaryDirectory() as tmp:
        if root is None:
            with tarfile.open(ARCHIVE) as tar:
                tar.extractall(tmp, filter="data")
            root = Path(tmp)
        return load_frames(root)


def write_rows(rows: list[dict], out: Path | None) -> None:
    """The rows as JSON lines to ``out`` (its folder made); nothing when ``out`` is None."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))


def batch_of(frames: list[dict], key: str, size: int, pcr) -> list[np.ndarray]:
    """``size`` point clouds (cropped to the range): the frames in order, mirrored repeats."""
    lo, hi = np.asarray(pcr[:3]), np.asarray(pcr[3:])
    out = []
    for i in range(size):
        p = frames[i % len(frames)][key].copy()
        if (i // len(frames)) % 2:
            p[:, 1] *= -1
        out.append(p[np.all((p[:, :3] >= lo) & (p[:, :3] < hi), 1)])
    return out


def device_batch(task, clouds: list[np.ndarray], device: torch.device) -> dict:
    """``clouds`` collated by ``task`` with no ground truth boxes, its tensors on ``device``."""
    samples = [{"points": c, "gt_boxes": np.zeros((0, 7), np.float32),
                "gt_labels": np.zeros(0, np.int64)} for c in clouds]
    from geossm.engine.task import move_to

    return move_to(task.collate(samples), device)     # the voxel layout (an object) too


def measure(task, model, clouds: list[np.ndarray], raw_points: int, steps: int, warmup: int,
            device: torch.device) -> dict:
    """Median seconds of one training step on ``clouds`` (no ground truth boxes: the loss is
    the heatmap focal loss against an empty map plus the regression terms, same cost)."""
    batch = device_batch(task, clouds, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else \
        torch.autocast("cpu", enabled=False)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with amp:
            out = task.forward(model, batch)
            loss = task.loss(out, batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    with torch.no_grad():
        from geossm.tasks.detection.sparse import voxelize
        pts = batch["points"].float()
        cu = batch["cu_seqlens"]
        b = torch.repeat_interleave(torch.arange(len(clouds), device=device),
                                    (cu[1:] - cu[:-1]).long())
        voxels = int(voxelize(pts, b, len(clouds), model.voxel_size, model.pcr)[0].features.shape[0])
    row = {"batch": len(clouds), "raw_points": raw_points,
           "points_in_range": int(sum(len(c) for c in clouds)), "voxels": voxels,
           "step_ms": round(1000 * statistics.median(times), 1),
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    if device.type == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="unpacked KITTI object folder")
    ap.add_argument("--config", type=Path, default=REPO / "configs/detection/kitti_lion.yaml")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cases", default="fov1,frame1,fov8,frame8")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("overrides", nargs="*")
    ns = ap.parse_args()
    cfg = apply_overrides(load_config(ns.config), ns.overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task = TASKS.get("DetectionTask")(cfg)
    frames = load_kitti_frames(ns.root)
    rows = []
    for case in ns.cases.split(","):
        key = "fov" if case.startswith("fov") else "all"
        size = int(case[len(key) if key == "fov" else len("frame"):])
        torch.manual_seed(0)
        model = task.build_model().to(device).train()
        clouds = batch_of(frames, key, size, model.pcr)
        raw = int(sum(len(frames[i % len(frames)][key]) for i in range(size)))
        row = {"case": case, **measure(task, model, clouds, raw, ns.steps, ns.warmup, device)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    write_rows(rows, ns.out)


if __name__ == "__main__":
    main()
