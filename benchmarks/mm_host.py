"""Host time per ``mm`` call on CUDA (bf16): the same shape every call vs a new row count ``M``
every call, for cuBLAS and cuBLASLt. Why: LION's voxel counts change with every batch, and its
eager step's matmuls cost ~130 µs of host time each under the profiler (README, "Where LION's
host time goes"); cuBLAS chooses an algorithm per unseen shape. One JSON line per case:
``host_us_per_call`` (time to queue the calls) and ``wall_us_per_call`` (until they finish).

    python benchmarks/mm_host.py
"""

from __future__ import annotations

import json
import sys
import time

import torch

#: (K, N) of LION's packed group layers at width 64 (in_proj, x_proj, dt_proj, out_proj)
SHAPES = ((64, 512), (256, 72), (72, 256), (128, 64))


def host_time(vary_m: bool, k: int, n: int, calls: int = 300, rows: int = 150_000) -> dict:
    """Queue ``calls`` matmuls of ``(rows + δ, k) x (k, n)``; δ is 0, or new on every call."""
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    big = torch.randn(rows + 20_000, k, device="cuda", dtype=torch.bfloat16)
    xs = [big[:rows + ((i * 7919) % 20_000 if vary_m else 0)] for i in range(calls)]
    for x in xs[:5]:
        x.mm(w.t())
    torch.cuda.synchronize()
    start = time.perf_counter()
    for x in xs[5:]:
        x.mm(w.t())
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {"vary_m": vary_m, "k": k, "n": n,
            "host_us_per_call": round(1e6 * host / (calls - 5), 1),
            "wall_us_per_call": round(1e6 * wall / (calls - 5), 1)}


def main() -> int:
    if not torch.cuda.is_available():
        print("mm_host.py: skipped, needs a CUDA device", file=sys.stderr)
        return 0
    default = torch.backends.cuda.preferred_blas_library()
    try:
        for lib in ("cublas", "cublaslt"):
            torch.backends.cuda.preferred_blas_library(lib)
            for vary_m in (False, True):
                for k, n in SHAPES:
                    row = {"bench": "mm_host", "lib": lib, **host_time(vary_m, k, n),
                           "device": torch.cuda.get_device_name()}
                    print(json.dumps(row), flush=True)
    finally:
        torch.backends.cuda.preferred_blas_library(default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
