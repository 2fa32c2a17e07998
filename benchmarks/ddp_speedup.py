"""DDP speed-up of a task config: ``torchrun --nproc_per_node=1`` against ``=K``, same per-GPU batch.

Runs the real training loop (``geossm.engine.Trainer.fit``, one epoch, no validation) of a
config under ``torchrun`` once per process count, times the optimizer steps after a warm-up
(Triton compilation, allocator, DataLoader start-up) in windows of ``--window`` steps (one
device sync per window, at its ends), and reports the median samples/s over the windows (all
processes together) and the ratio to one process. Every process loads its data with
``--workers`` DataLoader workers, so data generation is not the bottleneck.

Default: ``configs/segmentation/synthetic_parts_base.yaml`` (Point Cloud Mamba base on
synthetic part shapes of 2k-4k points, packed), 32 shapes per GPU. One JSON line per run::

    {"case": "ddp", "gpus": 1, "samples_per_s": ..., "step_s": ..., ...}
    {"case": "ddp", "gpus": 2, ...}
    {"case": "speedup", "gpus": 2, "speedup": ..., "efficiency": ...}

Usage::

    python benchmarks/ddp_speedup.py [--gpus 1 2] [--batch 32] [--steps 30] [k=v ...]
    python benchmarks/ddp_speedup.py --cpu --gpus 1 2 --batch 2 --steps 4 --warmup 2 ...  # gloo

``--cpu`` runs the same thing with gloo on CPU processes (a check of the script, not a
speed-up figure: the processes share the host's cores).

Measured (2x NVIDIA H200, NVLink NV18, 12 host cores, 5 workers and 2 threads per process,
defaults above, 10 warm-up + 30 timed steps): 1 GPU 115.8 samples/s (0.276 s/step), 2 GPUs
221.5 samples/s (0.289 s/step): speed-up 1.91x (efficiency 0.96); rank 0 waited 0.2-0.3 s
for data over the whole epoch; peak 9.7 GiB per GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "segmentation" / "synthetic_parts_base.yaml"


# ------------------------------------------------------------------------------ worker
class StepTimer:
    """Step callback: host time of every window of ``window`` steps after ``warmup`` steps,
    synchronising the device only at window ends (as often as any trainer log does)."""

    def __init__(self, warmup: int, window: int, device) -> None:
        self.warmup, self.window, self.device = warmup, window, device
        self.marks: list[tuple[int, float, int]] = []   # (step, time, samples so far)
        self.samples = 0
        self.first_step: int | None = None

    def __call__(self, trainer, step: int, num_samples: int) -> None:
        import torch
        if self.first_step is None:
            self.first_step = step - 1
        done = step - self.first_step
        self.samples += num_samples
        if done >= self.warmup and (done - self.warmup) % self.window == 0:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.marks.append((done, time.perf_counter(), self.samples))

    def windows(self) -> list[tuple[float, int]]:
        """``[(seconds, samples of this process), ...]`` per full window."""
        return [(t1 - t0, n1 - n0) for (_, t0, n0), (_, t1, n1) in zip(self.marks, self.marks[1:])]


def worker(args: argparse.Namespace) -> None:
    import torch

    from geossm.config import load_config
    from geossm.engine import Trainer
    from geossm.engine import distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps = args.warmup + args.steps
    overrides = [
        "train.epochs=1", f"train.batch_size={args.batch}", f"train.num_workers={args.workers}",
        f"data.num_samples={steps * args.batch * world}", "eval.split=null", "eval.test_split=null",
        "train.progress=false", f"output_dir={args.run_dir}",
        "device=cpu" if args.cpu else "device=auto", *args.overrides]
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg, config_name="ddp_speedup")
    timer = StepTimer(args.warmup, args.window, trainer.device)
    trainer.step_callbacks.append(timer)
    trainer.fit()
    wins = timer.windows()
    per_rank = [n / t for t, n in wins]
    # Each window's rate summed over ranks: the ranks step together (gradient all-reduce).
    totals = torch.tensor(per_rank, dtype=torch.float64)
    dist.all_reduce_sum_(totals)
    if dist.is_main():
        name = "cpu" if trainer.device.type == "cpu" else torch.cuda.get_device_name(trainer.device)
        step_s = [t / args.window for t, _ in wins]
        rec = {"case": "ddp", "gpus": world, "device": name, "config": Path(args.config).name,
               "per_gpu_batch": args.batch, "workers_per_process": args.workers,
               "host_cores": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads(),
               "timed_steps": len(wins) * args.window, "warmup_steps": args.warmup,
               "samples_per_s": round(statistics.median(totals.tolist()), 2),
               "samples_per_s_windows": [round(x, 2) for x in totals.tolist()],
               "step_s": round(statistics.median(step_s), 4),
               "overrides": list(args.overrides)}
        rows = [json.loads(ln) for ln in (Path(args.run_dir) / "metrics.jsonl").read_text()
                .splitlines() if ln.strip()]
        epoch = next(r for r in rows if r["split"] == "train")
        # Rank 0's host time waiting for its DataLoader over the whole epoch (warm-up included).
        rec["epoch_time_s"] = round(epoch["time_s"], 2)
        rec["data_wait_s"] = round(epoch["data_wait_s"], 2)
        if trainer.device.type == "cuda":
            rec["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        Path(args.result).write_text(json.dumps(rec))
    trainer.close()


# ---------------------------------------------------------------------------- launcher
def launch(args: argparse.Namespace, nproc: int, tmp: Path) -> dict | None:
    result = tmp / f"result_{nproc}.json"
    run_dir = tmp / f"run_{nproc}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(Path(__file__).resolve()), "--worker",
           "--config", str(args.config), "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--window", str(args.window),
           "--workers", str(args.workers), "--result", str(result), "--run-dir", str(run_dir)]
    if args.cpu:
        cmd.append("--cpu")
    cmd += list(args.overrides)
    env = dict(os.environ)
    # The same host threads per process for every process count (torchrun would otherwise
    # set 1 thread only when it starts several processes).
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result.is_file():
        rec = {"case": "ddp", "gpus": nproc, "error": f"exit status {proc.returncode}",
               "wall_s": round(wall, 1)}
        print(json.dumps(rec), flush=True)
        return None
    rec = json.loads(result.read_text())
    rec["wall_s"] = round(wall, 1)
    print(json.dumps(rec), flush=True)
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2],
                        help="process counts to run (the first is the baseline)")
    parser.add_argument("--batch", type=int, default=32, help="samples per GPU per step")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--window", type=int, default=5, help="steps per timing window")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers per process (default: host cores / max(gpus) - 1)")
    parser.add_argument("--threads", type=int, default=4, help="OMP_NUM_THREADS per process")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--cpu", action="store_true", help="gloo on CPU processes (script check)")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args()
    if args.steps % args.window:
        parser.error("--steps must be a multiple of --window")
    if args.workers is None:
        cores = len(os.sched_getaffinity(0))
        args.workers = max(1, cores // max(args.gpus) - 1)
    if args.worker:
        worker(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="ddp_speedup_"))
    records = []
    try:
        for nproc in args.gpus:
            rec = launch(args, nproc, tmp)
            if rec is not None:
                records.append(rec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [json.dumps(r) for r in records]
    base = next((r for r in records if r["gpus"] == args.gpus[0]), None)
    for rec in records:
        if base is None or rec is base:
            continue
        ratio = rec["samples_per_s"] / base["samples_per_s"]
        scale = rec["gpus"] / base["gpus"]
        summary = {"case": "speedup", "gpus": rec["gpus"], "baseline_gpus": base["gpus"],
                   "device": rec["device"], "per_gpu_batch": args.batch,
                   "speedup": round(ratio, 3), "efficiency": round(ratio / scale, 3)}
        print(json.dumps(summary), flush=True)
        lines.append(json.dumps(summary))
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("".join(ln + "\n" for ln in lines))


if __name__ == "__main__":
    main()
