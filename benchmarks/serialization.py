"""Speed of the serializers (issue 4). Prints one JSON line per measurement.

Workloads:

- ``serialize``: 1M random points in 8 samples (125k each, 20 m cube, 2 cm grid), one order per
  line (hilbert is the one with a target: < 1 s on a 2-core CPU, < 5 ms on a GPU), and
  ``serialize_multi`` of the four PTv3 orders;
- ``serialized_pooling``: one level on the hilbert codes of the same points;
- ``window_groups``: 200k voxels in 4 samples of a 41x1440x1440 grid, LION's window (13, 13, 32)
  and group size 4096, axes x and y, plain and shifted;
- ``random_walk_tokens``: a 100k-node random graph with average degree 10 (undirected),
  m = 4 walk lengths, M = 4 walks, s = 1;
- ``degree_order``: the same graph in 8 graphs of the batch.

Timing: median of ``--repeats`` runs after ``--warmup`` runs (warm-up also compiles the numba
kernels); on CUDA each run is timed with CUDA events around the call.

    python benchmarks/serialization.py [--device cpu|cuda] [--repeats 5] [--warmup 2] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from geossm.serialization import (degree_order, random_walk_tokens, serialize, serialize_multi,
                                  serialized_pooling, window_groups)


def timed(fn, device: torch.device, repeats: int, warmup: int) -> tuple[float, object]:
    """Median seconds of ``fn()``; CUDA events on GPU (with a synchronize after each run)."""
    out = None
    for _ in range(warmup):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            stop.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(stop) / 1000.0)
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def emit(name: str, device: torch.device, seconds: float, **info) -> None:
    record = {"benchmark": name, "device": str(device), "seconds": round(seconds, 6), **info,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": (torch.cuda.get_device_name(device) if device.type == "cuda"
                          else platform.processor() or platform.machine())}
    print(json.dumps(record), flush=True)


def bench_points(device, args):
    gen = torch.Generator(device=device).manual_seed(0)
    n, samples = 1_000_000, 8
    coord = torch.rand(n, 3, generator=gen, device=device) * 20.0
    batch = torch.arange(samples, device=device).repeat_interleave(n // samples)
    for order in ("hilbert", "z", "hilbert-trans", "xyz"):
        sec, s = timed(lambda: serialize(coord, 0.02, order, batch), device, args.repeats, args.warmup)
        emit("serialize", device, sec, order=order, points=n, samples=samples,
             depth=int(s.extras["depth"]), target_s=1.0 if device.type == "cpu" and order == "hilbert"
             else (0.005 if order == "hilbert" else None))
    orders = ("z", "z-trans", "hilbert", "hilbert-trans")
    sec, _ = timed(lambda: serialize_multi(coord, 0.02, orders, batch), device, args.repeats,
                   args.warmup)
    emit("serialize_multi", device, sec, orders=list(orders), points=n, samples=samples)
    s = serialize(coord, 0.02, "hilbert", batch)
    code, depth = s.extras["code"], int(s.extras["depth"])
    sec, pool = timed(lambda: serialized_pooling(code, "hilbert", depth, 1, samples), device,
                      args.repeats, args.warmup)
    emit("serialized_pooling", device, sec, order="hilbert", points=n, levels=1,
         parents=int(pool.counts.numel()))


def bench_windows(device, args):
    gen = torch.Generator(device=device).manual_seed(1)
    n, samples = 200_000, 4
    sparse = (41, 1440, 1440)
    coords = torch.stack([
        torch.randint(0, samples, (n,), generator=gen, device=device),
        torch.randint(0, sparse[0], (n,), generator=gen, device=device),
        torch.randint(0, sparse[1], (n,), generator=gen, device=device),
        torch.randint(0, sparse[2], (n,), generator=gen, device=device),
    ], 1)
    for axis in ("x", "y"):
        for shift in (False, True):
            sec, s = timed(lambda: window_groups(coords, sparse, (13, 13, 32), 4096, axis, shift),
                           device, args.repeats, args.warmup)
            emit("window_groups", device, sec, voxels=n, samples=samples, axis=axis, shift=shift,
                 group_size=4096, groups=s.num_segments)


def _graph(n, avg_degree, device):
    gen = torch.Generator(device=device).manual_seed(2)
    e = n * avg_degree // 2
    src = torch.randint(0, n, (e,), generator=gen, device=device)
    dst = torch.randint(0, n, (e,), generator=gen, device=device)
    return torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)


def bench_graph(device, args):
    n = 100_000
    edge_index = _graph(n, 10, device)
    gen = torch.Generator(device=device).manual_seed(3)
    m, big_m, s = 4, 4, 1
    sec, tok = timed(lambda: random_walk_tokens(edge_index, n, m, big_m, s, generator=gen),
                     device, args.repeats, args.warmup)
    emit("random_walk_tokens", device, sec, nodes=n, edges=int(edge_index.shape[1]),
         walk_length=m, num_walks=big_m, repeats=s, tokens=tok.num_tokens,
         memberships=int(tok.index.numel()))
    batch = torch.arange(8, device=device).repeat_interleave(n // 8)
    sec, _ = timed(lambda: degree_order(edge_index, n, batch, generator=gen), device,
                   args.repeats, args.warmup)
    emit("degree_order", device, sec, nodes=n, graphs=8)


BENCHES = {"points": bench_points, "windows": bench_windows, "graph": bench_graph}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", choices=sorted(BENCHES), default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    for name, bench in BENCHES.items():
        if args.only in (None, name):
            bench(device, args)


if __name__ == "__main__":
    main()
