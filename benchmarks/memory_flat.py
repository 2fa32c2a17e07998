"""Memory stays flat over a long CPU run: the default job (``configs/default.yaml``) for many short
epochs on tiny synthetic data, resident memory (RSS) recorded after every epoch.

Prints one JSON line per epoch ``{"bench": "memory_flat", "epoch", "rss_mb"}`` and a summary
``{"bench": "memory_flat", "epochs", "warmup", "rss_first_mb", "rss_last_mb", "growth_mb",
"slope_mb_per_epoch", "max_growth_mb", "flat"}``; the exit status is 1 when the RSS grew by more
than ``--max-growth-mb`` between the end of the warm-up epochs (allocator pools and JIT caches
fill there) and the last epoch.

    python benchmarks/memory_flat.py                       # 30 epochs, ~a few minutes on 2 cores
    python benchmarks/memory_flat.py --epochs 8 --config default.yaml train.batch_size=2

GPU peak memory and out-of-memory recovery are not measured here (CPU only).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile

import numpy as np

TINY = ["data.num_samples=8", "data.num_val_samples=4", "data.min_points=64",
        "data.max_points=128", "train.batch_size=4", "train.progress=false", "device=cpu",
        "train.num_workers=0", "eval.every=1000"]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="default.yaml")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="epochs before the baseline RSS")
    p.add_argument("--max-growth-mb", type=float, default=64.0)
    p.add_argument("overrides", nargs="*", help="extra key=value overrides")
    args = p.parse_args(argv)
    if args.epochs <= args.warmup:
        p.error(f"--epochs must exceed --warmup ({args.warmup})")

    from geossm.config import find_config, load_config
    from geossm.engine import Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(find_config(args.config),
                          TINY + [f"train.epochs={args.epochs}", f"output_dir={out}"]
                          + args.overrides)
        trainer = Trainer(cfg, config_name="memory_flat")
        samples: list[float] = []
        train_epoch = trainer._train_epoch

        def measured(*a, **k):
            stats = train_epoch(*a, **k)
            gc.collect()
            samples.append(rss_mb())
            print(json.dumps({"bench": "memory_flat", "epoch": len(samples),
                              "rss_mb": round(samples[-1], 1)}), flush=True)
            return stats

        trainer._train_epoch = measured  # one RSS sample at the end of every epoch
        try:
            trainer.fit()
        finally:
            trainer.close()

    base, last = samples[args.warmup - 1], samples[-1]
    tail = np.asarray(samples[args.warmup - 1:])
    slope = float(np.polyfit(np.arange(tail.size), tail, 1)[0]) if tail.size > 1 else 0.0
    growth = last - base
    flat = growth <= args.max_growth_mb
    print(json.dumps({"bench": "memory_flat", "config": args.config, "epochs": len(samples),
                      "warmup": args.warmup, "rss_first_mb": round(base, 1),
                      "rss_last_mb": round(last, 1), "growth_mb": round(growth, 1),
                      "slope_mb_per_epoch": round(slope, 2),
                      "max_growth_mb": args.max_growth_mb, "flat": flat}), flush=True)
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
