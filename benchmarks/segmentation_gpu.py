"""GPU scale of the Point Cloud Mamba segmentation model (base): packed scenes, no padding.

Measures, for forward + backward (bf16 autocast, as the trainer runs) of ``PointCloudMambaSeg``
(``size=base``, 4 input channels, 19 classes, 5 cm grid: the SemanticKITTI config):

1. ``packed8``: 8 scenes of 20k-80k points packed into one batch: step time, peak memory,
   points per second;
2. ``scaling``: step time for 100k ... 2M points in total (scenes of 50k points);
3. ``reference``: the same model with the torch-reference scan and convolution (a Python loop
   over time steps) against the Triton kernels, on a small batch;
4. ``padded``: the 8 scenes of (1) padded to the longest one (each scene repeated up to 80k
   points; equal lengths = a dense (B, L) batch), against packing.

Scenes are crops of the real SemanticKITTI scans in ``../shared/data`` (unpacked to a temporary
folder), randomly rotated, and concatenated for larger sizes; without the archive, synthetic
ground-plus-boxes scenes are used. Prints one JSON line per measurement and writes them all to
``--out`` (default ``$OUT/segmentation_gpu.json`` when ``$OUT`` is set).

    python benchmarks/segmentation_gpu.py [--budget 300] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from geossm.tasks.segmentation.models import PointCloudMambaSeg

ARCHIVE = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "semantickitti"
           / "semantickitti_npy_3scans.tar.xz")


def load_scans(archive: Path = ARCHIVE) -> list[np.ndarray]:
    """The real scans (N, 3) grid-sampled at 5 cm, or synthetic ones without the archive
    (uniform ground and boxes: far sparser than LiDAR near the sensor, so pooling shrinks them
    less and they cost more memory per point)."""
    scans = []
    if archive.is_file():
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
            for f in sorted((Path(tmp) / "semantickitti_npy" / "points").glob("*.npy")):
                scans.append(np.load(f).astype(np.float32)[:, :3])
    else:
        g = np.random.default_rng(0)
        for _ in range(3):
            ground = np.c_[g.uniform(-40, 40, (70000, 2)), g.normal(0, 0.05, 70000)]
            boxes = g.uniform(-40, 40, (40, 2))
            objs = np.concatenate([np.c_[b + g.uniform(-2, 2, (500, 2)), g.uniform(0, 3, 500)]
                                   for b in boxes])
            scans.append(np.concatenate([ground, objs]).astype(np.float32))
    out = []
    for s in scans:
        cell = np.floor((s - s.min(0)) / 0.05).astype(np.int64)
        _, keep = np.unique(cell, axis=0, return_index=True)
        out.append(s[np.sort(keep)])
    return out


def make_scene(scans: list[np.ndarray], n: int, g: np.random.Generator) -> np.ndarray:
    """``n`` points: the nearest points around a random centre of a random scan (several scans
    side by side when one is too small), randomly rotated about z."""
    parts, total, shift = [], 0, 0.0
    while total < n:
        s = scans[int(g.integers(len(scans)))]
        need = min(n - total, len(s))
        c = s[g.integers(len(s))]
        d = ((s - c) ** 2).sum(1)
        pts = s[np.argpartition(d, need - 1)[:need]] - c
        pts[:, 0] += shift
        shift += 200.0
        parts.append(pts)
        total += need
    pts = np.concatenate(parts)
    a = g.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]], np.float32)
    return pts @ rot.T


def batch_of(scenes: list[np.ndarray], device) -> dict[str, torch.Tensor]:
    coord = torch.from_numpy(np.concatenate(scenes)).to(device)
    feat = torch.cat([coord, torch.rand(len(coord), 1, device=device)], 1)
    lengths = torch.tensor([len(s) for s in scenes])
    cu = torch.zeros(len(scenes) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    label = torch.randint(0, 19, (len(coord),), device=device)
    return {"coord": coord, "feat": feat, "cu_seqlens": cu.to(device), "label": label}


def step_time(model, batch, iters: int, warmup: int = 1) -> tuple[float, float]:
    """Median seconds of forward + backward and the peak memory (GiB) of those steps."""
    cuda = batch["coord"].is_cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + iters):
        sync()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = model(batch["coord"], batch["feat"], batch["cu_seqlens"])
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["label"])
        loss.backward()
        model.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times), (torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0,
                        help="seconds; later sections are skipped once spent")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the torch-reference comparison (section 3)")
    parser.add_argument("--archive", type=Path, default=ARCHIVE,
                        help="semantickitti_npy_3scans.tar.xz (default: ../shared/data/...)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU check of the script: sizes / 2000, tiny model")
    args = parser.parse_args()
    scale = 2000 if args.smoke else 1
    out_path = args.out or (os.path.join(os.environ["OUT"], "segmentation_gpu.json")
                            if os.environ.get("OUT") else None)
    start = time.perf_counter()
    device = torch.device("cpu" if args.smoke else "cuda")
    records: list[dict] = []
    source = "real SemanticKITTI crops" if args.archive.is_file() else "synthetic scenes"

    def emit(rec: dict) -> None:
        name = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name()
        rec = {"device": name, "scenes_from": source, **rec}
        print(json.dumps(rec), flush=True)
        records.append(rec)
        if out_path:
            Path(out_path).write_text(json.dumps(records, indent=1))

    def left() -> float:
        if args.smoke:
            return float("inf")  # the smoke run checks every section
        return args.budget - (time.perf_counter() - start)

    torch.manual_seed(0)
    g = np.random.default_rng(0)
    scans = load_scans(args.archive)
    size = "tiny" if args.smoke else "base"
    dec = (1, 1) if args.smoke else (1, 1, 1)
    model = PointCloudMambaSeg(size=size, in_channels=4, num_classes=19, grid_size=0.05,
                               dec_depths=dec).to(device)
    params = sum(p.numel() for p in model.parameters())

    # 1. eight packed scenes of 20k-80k points.
    sizes = [20000 // scale, 80000 // scale] + [int(x) // scale for x in
                                                g.integers(20000, 80001, 6)]
    scenes8 = [make_scene(scans, n, g) for n in sizes]
    b8 = batch_of(scenes8, device)
    t, mem = step_time(model, b8, args.iters, warmup=2)  # warm-up compiles the Triton kernels
    n8 = int(b8["coord"].shape[0])
    emit({"case": "packed8", "scenes": sizes, "points": n8, "params": params,
          "step_s": round(t, 4), "peak_mem_gib": round(mem, 2), "points_per_s": round(n8 / t)})

    # 2. scaling with the total number of points.
    for total in (100_000, 200_000, 500_000, 1_000_000, 2_000_000):
        total //= scale
        if left() < 60:
            emit({"case": "scaling", "points": total, "skipped": "time budget"})
            continue
        k = max(1, math.ceil(total / (50_000 // scale)))
        scenes = [make_scene(scans, total // k, g) for _ in range(k)]
        b = batch_of(scenes, device)
        try:
            t, mem = step_time(model, b, 3 if total <= 500_000 else 2)
        except torch.OutOfMemoryError:
            emit({"case": "scaling", "points": total, "scenes": k, "error": "out of memory"})
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        emit({"case": "scaling", "points": total, "scenes": k, "step_s": round(t, 4),
              "peak_mem_gib": round(mem, 2), "points_per_s": round(total / t),
              "us_per_point": round(t / total * 1e6, 3)})
        del b

    # 3. torch-reference scan/conv vs Triton on a small batch.
    if args.no_reference:
        pass
    elif left() > 60:
        small = batch_of([make_scene(scans, 2000 // scale, g), make_scene(scans, 1500 // scale, g)],
                         device)
        t_triton, _ = step_time(model, small, 3)
        ref = PointCloudMambaSeg(size=size, in_channels=4, num_classes=19, grid_size=0.05,
                                 dec_depths=dec, backend="torch").to(device)
        ref.load_state_dict(model.state_dict())
        t_ref, _ = step_time(ref, small, 1, warmup=0)
        emit({"case": "reference", "points": int(small["coord"].shape[0]),
              "triton_step_s": round(t_triton, 4), "torch_reference_step_s": round(t_ref, 4),
              "speedup": round(t_ref / t_triton, 1)})
        del ref
    else:
        emit({"case": "reference", "skipped": "time budget"})

    # 4. padding every scene to the longest (a dense batch) vs packing.
    if left() > 40:
        longest = max(sizes)
        padded = [np.concatenate([s, s[np.arange(longest - len(s)) % len(s)]]) for s in scenes8]
        bp = batch_of(padded, device)
        try:
            t_pad, mem_pad = step_time(model, bp, max(2, args.iters - 2))
            packed = next(r for r in records if r["case"] == "packed8")
            emit({"case": "padded", "points_real": n8, "points_padded": int(bp["coord"].shape[0]),
                  "step_s": round(t_pad, 4), "peak_mem_gib": round(mem_pad, 2),
                  "packed_step_s": packed["step_s"], "packed_peak_mem_gib": packed["peak_mem_gib"],
                  "packing_speedup": round(t_pad / packed["step_s"], 2)})
        except torch.OutOfMemoryError:
            emit({"case": "padded", "error": "out of memory"})
    else:
        emit({"case": "padded", "skipped": "time budget"})
    emit({"case": "total", "wall_s": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
