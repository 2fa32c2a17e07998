"""GPU scale of the Point Cloud Mamba segmentation model (base): packed scenes, no padding.

Measures, for forward + backward (bf16 autocast, as the trainer runs) of ``PointCloudMambaSeg``
(``size=base``, 4 input channels, 19 classes, 5 cm grid: the SemanticKITTI config):

1. ``packed8``: 8 scenes of 20k-80k points packed into one batch: step time, peak memory,
   points per second;
2. ``scaling``: step time and peak memory for 100k ... 4M points in total (scenes of 50k
   points), without and with activation checkpointing (``grad_checkpoint``); sizes that run
   out of memory are reported as such;
3. ``reference``: the same model with the torch-reference scan and convolution (a Python loop
   over time steps) against the Triton kernels, on a small batch;
4. ``padded``: the 8 scenes of (1) padded to the longest one (each scene repeated up to 80k
   points; equal lengths = a dense (B, L) batch), against packing;
5. ``trainer``: the Trainer on ``configs/segmentation/semantickitti_pcm.yaml`` (base model,
   scans of ~86k points): the largest ``train.batch_size`` that fits (doubling-ish search,
   2 steps each; a size that does not fit ends its run with the trainer's one-line
   ``OutOfMemoryStop`` after ``train.oom_skip_limit`` batches), the peak memory the trainer
   reports for it (``peak_mem_gib`` in ``metrics.jsonl``), the same with
   ``model.grad_checkpoint=true`` at a larger batch, and a run at the largest batch in which one
   batch is deliberately oversized (its scans tiled 3x): the real CUDA out-of-memory recovery
   (one warning line, batch skipped, training goes on).

Scenes are crops of the real SemanticKITTI scans in ``../shared/data`` (unpacked to a temporary
folder), randomly rotated, and concatenated for larger sizes; without the archive, synthetic
ground-plus-boxes scenes are used. Prints one JSON line per measurement and writes them all to
``--out`` (default ``$OUT/segmentation_gpu.json`` when ``$OUT`` is set).

Measured (NVIDIA H200, bf16, base model 15.1M parameters): packed8 377k points 0.77 s/step,
42.8 GiB (padded to 640k: 1.34 s, 50.7 GiB; packing 1.74x faster). Scaling, plain /
checkpointed, s/step (peak GiB): 100k 0.26 (11.5) / 0.45 (2.3); 200k 0.41 (22.4) / 0.50 (3.3);
500k 0.92 (56.3) / 1.10 (8.0); 1M 1.79 (110.0) / 2.08 (15.5); 2M out of memory / 4.11 (30.6);
4M - / 8.02 (62.3): 2.0-2.1 us per point checkpointed from 500k to 4M. Torch-reference scan
61.6x slower on 3.5k points. Trainer on semantickitti_pcm.yaml: batch 8 (~690k points) fits at
96.4 GiB, batch 12 (1.04M) runs out of memory and stops with OutOfMemoryStop after 2 batches;
with grad_checkpoint, batch 16 at 28.7 GiB; batch 8 with one batch tiled 3x (2.08M points):
one warning, the batch skipped, the epoch finished (oom_skipped 1).

    python benchmarks/segmentation_gpu.py [--budget 300] [--out results.json]
        [--sections packed8 scaling reference padded trainer]
"""

from __future__ import annotations

import argparse
import gc
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

from geossm.packed import cu_seqlens_from_lengths
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
    cu = cu_seqlens_from_lengths([len(s) for s in scenes])
    label = torch.randint(0, 19, (len(coord),), device=device)
    return {"coord": coord, "feat": feat, "cu_seqlens": cu.to(device), "label": label}


def step_or_oom(model, batch, iters: int, warmup: int = 1) -> tuple[float, float] | None:
    """``step_time``, or None when the step runs out of memory (the memory is then freed)."""
    try:
        return step_time(model, batch, iters, warmup)
    except torch.OutOfMemoryError:
        pass  # freed below, once the traceback and the tensors it holds are gone
    model.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None


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
            logits = model(batch["coord"], batch["feat"], batch["cu_seqlens"],
                           neighbours=batch.get("neighbours"))
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["label"])
        loss.backward()
        model.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times), (torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else 0.0)


SECTIONS = ("packed8", "scaling", "reference", "padded", "trainer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0,
                        help="seconds; later sections are skipped once spent")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", default=None)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 6, 8, 12, 16, 24, 32],
                        help="trainer section: batch sizes tried in order until one fails")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the torch-reference comparison (section 3)")
    parser.add_argument("--archive", type=Path, default=ARCHIVE,
                        help="semantickitti_npy_3scans.tar.xz (default: ../shared/data/...)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU check of the script: sizes / 2000, tiny model")
    args = parser.parse_args()
    if args.no_reference and "reference" in args.sections:
        args.sections.remove("reference")
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

    def build(**kw) -> PointCloudMambaSeg:
        torch.manual_seed(0)
        return PointCloudMambaSeg(size=size, in_channels=4, num_classes=19, grid_size=0.05,
                                  dec_depths=dec, **kw).to(device)

    model = build()
    params = sum(p.numel() for p in model.parameters())

    # 1. eight packed scenes of 20k-80k points.
    sizes = [20000 // scale, 80000 // scale] + [int(x) // scale for x in
                                                g.integers(20000, 80001, 6)]
    scenes8 = [make_scene(scans, n, g) for n in sizes]
    b8 = batch_of(scenes8, device)
    n8 = int(b8["coord"].shape[0])
    if "packed8" in args.sections or "padded" in args.sections:
        t, mem = step_time(model, b8, args.iters, warmup=2)  # warm-up compiles the kernels
        emit({"case": "packed8", "scenes": sizes, "points": n8, "params": params,
              "step_s": round(t, 4), "peak_mem_gib": round(mem, 2),
              "points_per_s": round(n8 / t)})

    # 2. scaling with the total number of points, without and with activation checkpointing.
    if "scaling" in args.sections:
        scaling(args, model, scans, g, device, scale, emit, left)

    # 3. torch-reference scan/conv vs Triton on a small batch.
    if "reference" not in args.sections:
        pass
    elif left() > 60:
        small = batch_of([make_scene(scans, max(8, 2000 // scale), g),
                          make_scene(scans, max(8, 1500 // scale), g)],
                         device)
        t_triton, _ = step_time(model, small, 3)
        ref = build(backend="torch")
        ref.load_state_dict(model.state_dict())
        t_ref, _ = step_time(ref, small, 1, warmup=0)
        emit({"case": "reference", "points": int(small["coord"].shape[0]),
              "triton_step_s": round(t_triton, 4), "torch_reference_step_s": round(t_ref, 4),
              "speedup": round(t_ref / t_triton, 1)})
        del ref
    else:
        emit({"case": "reference", "skipped": "time budget"})

    # 4. padding every scene to the longest (a dense batch) vs packing.
    if "padded" not in args.sections:
        pass
    elif left() > 40:
        longest = max(sizes)
        padded = [np.concatenate([s, s[np.arange(longest - len(s)) % len(s)]]) for s in scenes8]
        bp = batch_of(padded, device)
        res = step_or_oom(model, bp, max(2, args.iters - 2))
        if res is None:
            emit({"case": "padded", "error": "out of memory"})
        else:
            t_pad, mem_pad = res
            packed = next(r for r in records if r["case"] == "packed8")
            emit({"case": "padded", "points_real": n8, "points_padded": int(bp["coord"].shape[0]),
                  "step_s": round(t_pad, 4), "peak_mem_gib": round(mem_pad, 2),
                  "packed_step_s": packed["step_s"], "packed_peak_mem_gib": packed["peak_mem_gib"],
                  "packing_speedup": round(t_pad / packed["step_s"], 2)})
        del bp
    else:
        emit({"case": "padded", "skipped": "time budget"})
    del model, b8

    # 5. the trainer at the largest batch that fits, and its out-of-memory recovery.
    if "trainer" in args.sections:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        trainer_section(args, emit, left)
    emit({"case": "total", "wall_s": round(time.perf_counter() - start, 1)})


SCALING_POINTS = (100_000, 200_000, 500_000, 1_000_000, 2_000_000, 4_000_000)


def set_grad_checkpoint(model: torch.nn.Module, on: bool) -> None:
    """Activation checkpointing on or off in every module that has the switch."""
    for m in model.modules():
        if hasattr(m, "grad_checkpoint"):
            m.grad_checkpoint = on


def scaling(args, model, scans, g, device, scale, emit, left) -> None:
    """Step time / peak memory from 100k to 4M points, plain then checkpointed (the plain
    model is not tried past its first out-of-memory size)."""
    plain_fits = True
    for total in SCALING_POINTS:
        total //= scale
        k = max(1, math.ceil(total / (50_000 // scale)))
        scenes = [make_scene(scans, total // k, g) for _ in range(k)]
        b = batch_of(scenes, device)
        for ckpt in (False, True):
            if not ckpt and not plain_fits:
                emit({"case": "scaling", "points": total, "scenes": k, "grad_checkpoint": False,
                      "error": "out of memory (at a smaller size already)"})
                continue
            if left() < 45:
                emit({"case": "scaling", "points": total, "grad_checkpoint": ckpt,
                      "skipped": "time budget"})
                continue
            set_grad_checkpoint(model, ckpt)
            res = step_or_oom(model, b, 3 if total <= 500_000 // scale else 2)
            if res is None:
                plain_fits = plain_fits and ckpt
                emit({"case": "scaling", "points": total, "scenes": k, "grad_checkpoint": ckpt,
                      "error": "out of memory"})
                continue
            t, mem = res
            emit({"case": "scaling", "points": total, "scenes": k, "grad_checkpoint": ckpt,
                  "step_s": round(t, 4), "peak_mem_gib": round(mem, 2),
                  "points_per_s": round(total / t), "us_per_point": round(t / total * 1e6, 3)})
        del b
    set_grad_checkpoint(model, False)


# ------------------------------------------------------------------ 5. the trainer
KITTI_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "segmentation" / \
    "semantickitti_pcm.yaml"


def _train_row(run_dir: Path) -> dict:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    return next(r for r in rows if r["split"] == "train")


def _fit(cfg, task=None) -> tuple[dict | None, str | None]:
    """``(train row of metrics.jsonl, None)`` or ``(None, OutOfMemoryStop message)``."""
    from geossm.engine import Trainer
    from geossm.engine.trainer import OutOfMemoryStop
    trainer = Trainer(cfg, task=task, config_name="segmentation_gpu")
    try:
        trainer.fit()
        return _train_row(Path(str(cfg.output_dir))), None
    except OutOfMemoryStop as err:
        return None, str(err)
    finally:
        trainer.close()
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _Oversized(torch.utils.data.Dataset):
    """Items ``[first, last)`` (in fetch order: a loader without workers fetches batch by
    batch) come back with their scan tiled ``factor`` times side by side."""

    def __init__(self, dataset, first: int, last: int, factor: int = 3) -> None:
        self.dataset, self.first, self.last, self.factor = dataset, first, last, factor
        self.fetched = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        sample = self.dataset[i]
        self.fetched += 1
        if not self.first < self.fetched <= self.last:
            return sample
        n = len(sample["coord"])
        tiled = {k: np.concatenate([v] * self.factor) if isinstance(v, np.ndarray)
                 and v.ndim and len(v) == n else v for k, v in sample.items()}
        tiled["coord"] = tiled["coord"].copy()
        tiled["coord"][:, 0] += np.repeat(np.arange(self.factor) * 200.0, n).astype(np.float32)
        return tiled


def trainer_section(args, emit, left) -> None:
    from geossm.config import load_config
    from geossm.registry import TASKS
    import geossm.tasks.segmentation  # noqa: F401  (registers the task)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.archive.is_file():
            emit({"case": "trainer", "skipped": f"no archive {args.archive}"})
            return
        with tarfile.open(args.archive) as tar:
            tar.extractall(tmp, filter="data")
        root = tmp / "semantickitti_npy"
        steps = 2
        common = [f"data.root={root}", '+data.frames={train: ["000000", "000001"]}',
                  "eval.split=null", "train.epochs=1", "train.progress=false",
                  "train.log_every=1000", "train.oom_skip_limit=2",
                  f"device={'cpu' if args.smoke else 'cuda'}"]
        if args.smoke:
            common += ["model.size=tiny", "model.dec_depths=[1,1]", "data.max_points=600",
                       "model.num_prompts=1", "train.num_workers=0"]
        else:
            common += ["train.num_workers=4"]

        def config(batch: int, name: str, *extra: str, loop_steps: int = steps):
            loop = max(1, math.ceil(loop_steps * batch / 2))
            return load_config(str(KITTI_CONFIG), common + [f"train.batch_size={batch}",
                                                       f"+data.loop={loop}",
                                                       f"output_dir={tmp / name}", *extra])

        candidates = (1, 2) if args.smoke else tuple(args.batches)
        largest = None
        for batch in candidates:
            if left() < 45:
                emit({"case": "trainer_batch", "batch": batch, "skipped": "time budget"})
                break
            t = time.perf_counter()
            row, stop = _fit(config(batch, f"b{batch}"))
            fits = row is not None and row["oom_skipped"] == 0
            rec = {"case": "trainer_batch", "config": KITTI_CONFIG.name, "batch": batch,
                   "fits": fits, "wall_s": round(time.perf_counter() - t, 1)}
            if row is not None:
                rec.update({k: row.get(k) for k in ("peak_mem_gib", "oom_skipped",
                                                    "samples_per_s")})
            if stop is not None:
                rec["error"] = stop
            emit(rec)
            if not fits:
                break
            largest = batch
        if largest is None:
            return
        if left() < 40:
            emit({"case": "trainer_oom_recovery", "skipped": "time budget"})
            return
        # The real recovery: batch 2 of 4 holds its scans tiled 3x (3x the points of the
        # largest batch that fits), fetched in order by a loader without workers.
        cfg = config(largest, "recovery", "train.num_workers=0", loop_steps=4)
        task = TASKS.get(str(cfg.task))(cfg)
        build = task.build_dataset
        task.build_dataset = lambda split: _Oversized(build(split), largest, 2 * largest)
        t = time.perf_counter()
        row, stop = _fit(cfg, task)
        log = (tmp / "recovery" / "train.log").read_text().splitlines()
        emit({"case": "trainer_oom_recovery", "batch": largest, "oversized_batch": 2,
              "finished": row is not None, "train_row": row, "stop": stop,
              "warning_lines": [ln for ln in log if "out of memory" in ln],
              "wall_s": round(time.perf_counter() - t, 1)})
        if left() > 45:
            batch = 2 * largest
            row, stop = _fit(config(batch, f"ckpt{batch}", "model.grad_checkpoint=true",
                                    loop_steps=2))
            emit({"case": "trainer_checkpointed", "batch": batch, "grad_checkpoint": True,
                  "fits": row is not None and row["oom_skipped"] == 0,
                  **({k: row.get(k) for k in ("peak_mem_gib", "oom_skipped", "samples_per_s")}
                     if row else {"error": stop})})


if __name__ == "__main__":
    main()
