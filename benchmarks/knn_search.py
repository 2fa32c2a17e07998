"""The PCM models' exact kNN search: brute force against the block search (and the KD-tree).

For packed batches of real SemanticKITTI crops (``segmentation_gpu.make_scene``: scenes of up
to 50k points, as ``step_profile.py --points`` builds them), times
``knn(coord, cu_seqlens, k=16, method=M)`` for each method, and compares the neighbour
distances each finds with SciPy's KD-tree in float64 on the host (ties may pick other points at
the same distance). Prints one JSON line per (points, method): median seconds over
``--repeats`` after one warm-up, and the largest squared-distance difference to the KD-tree's
neighbours (brute force's ``torch.cdist`` ranks by ``|x|² + |y|² - 2xy``, whose rounding at
LiDAR coordinates of tens of metres swaps near-ties). The block search runs with each
``--block-points``. On the CPU (``--device cpu``) the KD-tree is timed too.

    python benchmarks/knn_search.py [--points 100000 1000000] [--block-points 32 64]
        [--device cuda] [--out knn.jsonl]
    python benchmarks/knn_search.py --device cpu --points 3000 --repeats 1   # the CPU check
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import segmentation_gpu as seg  # noqa: E402

import geossm.tasks.segmentation.neighbours as neighbours  # noqa: E402


def batch_of_scenes(scans, total: int, device) -> dict[str, torch.Tensor]:
    """``total`` points as ceil(total / 50k) scenes of equal size (as step_profile --points)."""
    g = np.random.default_rng(0)
    per_scene = min(total, 50_000)
    count = max(1, math.ceil(total / per_scene))
    return seg.batch_of([seg.make_scene(scans, total // count, g) for _ in range(count)], device)


def timed(fn, repeats: int, device) -> tuple[float, torch.Tensor]:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up, and its result."""
    out = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def neighbour_dist2(coord: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``(N, k)`` squared distances from each point to its neighbours ``idx``."""
    return (coord[idx] - coord[:, None]).square().sum(-1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--block-points", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--scans", type=Path, default=seg.ARCHIVE,
                    help="the SemanticKITTI sample archive of ../shared/data")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    scans = seg.load_scans(args.scans)
    rows = []
    for total in args.points:
        batch = batch_of_scenes(scans, total, device)
        coord, cu = batch["coord"].float(), batch["cu_seqlens"]
        runs = {"brute": lambda: neighbours.knn(coord, cu, args.k, method="brute")}
        for bp in args.block_points:
            runs[f"blocks{bp}"] = mock.patch.object(neighbours, "BLOCK_POINTS", bp)(
                lambda: neighbours.knn(coord, cu, args.k, method="blocks"))
        if device.type == "cpu":
            runs["kdtree"] = lambda: neighbours.knn(coord, cu, args.k, method="kdtree")
        host = coord.cpu()
        reference = neighbour_dist2(host, neighbours.knn(host, cu.cpu(), args.k, method="kdtree"))
        for name, fn in runs.items():
            seconds, idx = timed(fn, args.repeats, device)
            dist2 = neighbour_dist2(host, idx.cpu())
            row = {"bench": "knn_search", "points": int(coord.shape[0]),
                   "scenes": int(cu.numel() - 1), "k": args.k, "method": name,
                   "seconds": round(seconds, 5),
                   "max_dist2_diff_to_kdtree": float((dist2 - reference).abs().max()),
                   "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
