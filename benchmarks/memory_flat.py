"""Memory stays flat over a long CPU run: the default job (``configs/default.yaml``) for many short
epochs on tiny synthetic data, memory recorded after every epoch.

After every training epoch (and a full ``gc.collect()``) it records

- ``rss_mb``: resident memory as the OS sees it;
- ``rss_trimmed_mb``: the same after glibc's ``malloc_trim(0)`` has handed freed heap pages back
  (without it, RSS also measures how fragmented the allocator's free lists are, which moves by
  a few MB from epoch to epoch without any live allocation growing);
- ``malloc_in_use_mb``: bytes malloc has handed out and not had back (glibc ``mallinfo2``: all
  arenas and mmap'd blocks), i.e. live C/C++ allocations, torch tensors included;
- ``heap_mb``: the Python heap traced by ``tracemalloc`` (Python objects and numpy buffers),
  traced from the end of the warm-up on; the two numbers above leave out tracemalloc's own
  tables (``tracemalloc_mb``);
- ``objects``: the number of objects the garbage collector tracks.

Leak test: least-squares slopes over the fit window, the last ``--fit-last`` epochs (default
40; the warm-up before it fills allocator pools, numba and oneDNN JIT caches and the optimizer
state). The run is flat when the trimmed RSS grows by at most ``--max-rss-slope-mb`` per epoch
(default 0.05 MB, < 5 MB per 100 epochs of a ~600 MB process), the Python heap by at most
``--max-heap-slope-kb`` per epoch (default 8 KB) and the tracked objects by at most
``--max-object-growth`` over the window; the exit status is 1 otherwise. Each slope is also
given over the last half of the window: a filling (bounded) cache slows down, a leak does not.

oneDNN's primitive cache: see ``ONEDNN_CACHE`` below; ``--onednn-cache -1`` measures with
oneDNN's default capacity.

Output: one JSON line per epoch ``{"bench": "memory_flat", "epoch", "wall_s", "rss_mb",
"rss_trimmed_mb", "malloc_in_use_mb", "heap_mb", "tracemalloc_mb", "objects"}`` and a summary
with the slopes, the growth over the window, the ``tracemalloc`` lines and the object types
that grew most.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/memory_flat.py        # 100 epochs
    python benchmarks/memory_flat.py --epochs 20 --warmup 5 --fit-last 10 train.batch_size=2

GPU peak memory and out-of-memory recovery are not measured here (CPU only).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc

import numpy as np

# oneDNN (torch's CPU GELU and others) caches one JIT-compiled primitive per input shape, up to
# 1024 of them. Packed batches have a new token count almost every step, so with the default
# capacity the cache fills over the first ~150 epochs of this job: the C heap grows by ~0.3,
# then ~0.07 MB per epoch, and stops (measured: +23.6 MB by epoch 150, then flat to 170, torch
# 2.11). Bounded, not a leak (see --onednn-cache -1). 64 entries fill during the warm-up, so
# the fit window sees leaks only.
ONEDNN_CACHE = 64

TINY = ["data.num_samples=8", "data.num_val_samples=4", "data.min_points=64",
        "data.max_points=128", "train.batch_size=4", "train.progress=false", "device=cpu",
        "train.num_workers=0", "eval.every=1000"]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _libc_function(symbol: str):
    """The C library's function ``symbol`` (None where there is no such function)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), symbol) if name else None
    except (OSError, AttributeError):
        return None


def _malloc_trim():
    """glibc's ``malloc_trim`` (None on other C libraries)."""
    return _libc_function("malloc_trim")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo2():
    """glibc's ``mallinfo2`` (None on other C libraries or glibc < 2.33)."""
    fn = _libc_function("mallinfo2")
    if fn is not None:
        fn.restype = _Mallinfo2
    return fn


def c_heap_in_use_mb(mallinfo2) -> float:
    """Bytes malloc has handed out and not had back (all arenas + mmap'd blocks), in MB."""
    info = mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


def slope_per_epoch(values: list[float]) -> float:
    """Least-squares slope of ``values`` against their index (0 for fewer than 2 values)."""
    if len(values) < 2:
        return 0.0
    return float(np.polyfit(np.arange(len(values)), np.asarray(values), 1)[0])


def type_counts() -> collections.Counter:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


class Recorder:
    """Samples memory at the end of every epoch; keeps snapshots at the fit window's ends."""

    def __init__(self, trim, trace: bool, fit_start: int, last_epoch: int,
                 trace_frames: int = 1) -> None:
        self.trim, self.trace, self.trace_frames = trim, trace, trace_frames
        self.fit_start, self.last_epoch = fit_start, last_epoch
        self.rows: list[dict] = []
        self.first_snapshot = self.first_types = None
        self.report: dict = {}
        self.clock = time.perf_counter()
        self.mallinfo2 = _mallinfo2()

    def sample(self) -> dict:
        gc.collect()
        now = time.perf_counter()
        row = {"bench": "memory_flat", "epoch": len(self.rows) + 1,
               "wall_s": now - self.clock, "rss_mb": rss_mb()}
        self.clock = now
        # tracemalloc's own tables live in the C heap and grow with what it traces: left out
        overhead = tracemalloc.get_tracemalloc_memory() / 2**20 if tracemalloc.is_tracing() else 0
        if self.trim is not None:
            self.trim(0)
            row["rss_trimmed_mb"] = rss_mb() - overhead
        if self.mallinfo2 is not None:
            row["malloc_in_use_mb"] = c_heap_in_use_mb(self.mallinfo2) - overhead
        if tracemalloc.is_tracing():
            row["heap_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
            row["tracemalloc_mb"] = overhead
        row["objects"] = len(gc.get_objects())
        self.rows.append(row)
        if row["epoch"] == self.fit_start - 1:
            # Baselines before the window, so that the window's every row already holds them.
            self.first_types = type_counts()
            if self.trace:
                # Traced from here on only: tracing the warm-up's numba compilations would
                # cost minutes and hundreds of MB, and what stays alive after it can grow.
                tracemalloc.start(self.trace_frames)
                self.first_snapshot = tracemalloc.take_snapshot()
        if row["epoch"] == self.last_epoch:  # before the final evaluation and teardown
            self.report = self.growth_report()
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                          for k, v in row.items()}), flush=True)
        return row

    def growth_report(self, top: int = 8) -> dict:
        """The tracemalloc lines and object types that grew most over the fit window."""
        report: dict = {}
        if self.first_snapshot is not None:  # first: the type census below allocates
            key = "traceback" if self.trace_frames > 1 else "lineno"
            diff = tracemalloc.take_snapshot().compare_to(self.first_snapshot, key)
            report["heap_lines_grown"] = [
                {"where": " <- ".join(str(f) for f in d.traceback),
                 "kb": round(d.size_diff / 1024, 1),
                 "count": d.count_diff} for d in diff[:top] if d.size_diff > 0]
            del diff  # its objects would show in the census below
        if self.first_types is not None:
            grew = type_counts()
            grew.subtract(self.first_types)
            report["types_grown"] = {k: v for k, v in grew.most_common(top) if v > 0}
        return report


def run_training(args, recorder: Recorder) -> None:
    from geossm.config import find_config, load_config
    from geossm.engine import Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(find_config(args.config),
                          TINY + [f"train.epochs={args.epochs}", f"output_dir={out}"]
                          + args.overrides)
        trainer = Trainer(cfg, config_name="memory_flat")
        train_epoch = trainer._train_epoch

        def measured(*a, **k):
            stats = train_epoch(*a, **k)
            recorder.sample()
            return stats

        trainer._train_epoch = measured  # one sample at the end of every epoch
        try:
            trainer.fit()
        finally:
            trainer.close()


def summarize(args, rows: list[dict], fit_start: int, report: dict) -> dict:
    window = rows[fit_start - 1:]  # the heap is traced from the fit window on
    summary: dict = {"bench": "memory_flat", "config": args.config, "epochs": len(rows),
                     "warmup": args.warmup, "fit_epochs": [fit_start, len(rows)],
                     "onednn_cache": args.onednn_cache,
                     "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)}
    checks = []
    for key, limit in (("rss_mb", None), ("rss_trimmed_mb", args.max_rss_slope_mb),
                       ("malloc_in_use_mb", None), ("heap_mb", args.max_heap_slope_kb / 1024)):
        if key not in window[0]:
            continue
        values = [r[key] for r in window]
        slope = slope_per_epoch(values)
        summary[f"{key}_first"] = round(values[0], 3)
        summary[f"{key}_last"] = round(values[-1], 3)
        summary[f"{key}_slope_per_epoch"] = round(slope, 4)
        # a filling (bounded) cache slows down; a leak keeps its pace
        summary[f"{key}_slope_last_half"] = round(slope_per_epoch(values[len(values) // 2:]), 4)
        if limit is not None:
            checks.append(slope <= limit)
    if "rss_trimmed_mb" not in window[0]:  # no malloc_trim: judge the raw RSS
        checks.append(summary["rss_mb_slope_per_epoch"] <= args.max_rss_slope_mb)
    objects = window[-1]["objects"] - window[0]["objects"]
    summary["objects_growth"] = objects
    checks.append(objects <= args.max_object_growth)
    summary.update(max_rss_slope_mb=args.max_rss_slope_mb,
                   max_heap_slope_kb=args.max_heap_slope_kb,
                   max_object_growth=args.max_object_growth, flat=all(checks), **report)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="default.yaml")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10, help="epochs before the fit window")
    p.add_argument("--fit-last", type=int, default=40,
                   help="fit the slope over the last N epochs (0: every epoch after the warm-up)")
    p.add_argument("--max-rss-slope-mb", type=float, default=0.05)
    p.add_argument("--max-heap-slope-kb", type=float, default=8.0)
    p.add_argument("--max-object-growth", type=int, default=2000)
    p.add_argument("--no-trim", action="store_true", help="do not call malloc_trim(0)")
    p.add_argument("--no-tracemalloc", action="store_true",
                   help="skip the Python-heap trace (it slows Python allocations)")
    p.add_argument("--trace-frames", type=int, default=1,
                   help="stack frames tracemalloc keeps per allocation (more: slower, clearer)")
    p.add_argument("--onednn-cache", type=int, default=ONEDNN_CACHE,
                   help="oneDNN primitive cache capacity (-1: oneDNN's own default, 1024)")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides")
    args = p.parse_args(argv)
    if args.epochs < args.warmup + 3:
        p.error(f"--epochs must exceed --warmup ({args.warmup}) by at least 3")
    fit_start = args.warmup + 1
    if args.fit_last:
        fit_start = max(fit_start, args.epochs - args.fit_last + 1)

    if args.onednn_cache >= 0:  # read by oneDNN when it first creates a primitive
        os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(args.onednn_cache)
    recorder = Recorder(None if args.no_trim else _malloc_trim(), not args.no_tracemalloc,
                        fit_start, args.epochs, args.trace_frames)
    clock, cpu = time.perf_counter(), os.times()
    run_training(args, recorder)
    summary = summarize(args, recorder.rows, fit_start, recorder.report)
    used = os.times()
    summary["wall_s"] = round(time.perf_counter() - clock, 1)
    summary["cpu_s"] = round(used.user + used.system - cpu.user - cpu.system, 1)
    print(json.dumps(summary), flush=True)
    return 0 if summary["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
