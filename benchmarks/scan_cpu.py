"""CPU speed of the grouped selective scan: numba kernels vs the torch reference loop.

Workload (issue 2): T = 20,000 tokens in 16 segments of 1,250, D = 64, N = 16, float32,
forward + backward (with z, D, delta_bias, softplus). The reference is the per-time-step torch
loop vectorised over segments (``selective_scan_ref``). Prints one JSON line per case:
median seconds over repeats, state updates per second (T·D·N / s) and the speed-up.

    python benchmarks/scan_cpu.py [--repeats 5] [--segments 16] [--length 1250]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from geossm.kernels import causal_conv1d, selective_scan


def make_inputs(segments: int, length: int, channels: int, state: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    T = segments * length

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_()

    inputs = dict(
        u=randn(T, channels), delta=randn(T, channels, scale=0.5),
        A=(-torch.rand(channels, state, generator=gen) * 4 - 0.1).requires_grad_(),
        B=randn(T, state), C=randn(T, state), D=randn(channels), z=randn(T, channels),
        delta_bias=randn(channels, scale=0.1),
    )
    cu_seqlens = torch.arange(segments + 1, dtype=torch.int32) * length
    return inputs, cu_seqlens


def time_scan(backend: str, inputs, cu_seqlens, repeats: int, backward: bool) -> float:
    times = []
    for _ in range(repeats + 1):  # the first run compiles / warms up
        start = time.perf_counter()
        out = selective_scan(**inputs, delta_softplus=True, cu_seqlens=cu_seqlens,
                             backend=backend)
        if backward:
            torch.autograd.grad(out.sum(), list(inputs.values()))
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def time_conv(backend: str, T: int, channels: int, cu_seqlens, repeats: int) -> float:
    x = torch.randn(T, channels, requires_grad=True)
    weight = torch.randn(channels, 4, requires_grad=True)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out = causal_conv1d(x, weight, cu_seqlens=cu_seqlens, activation="silu", backend=backend)
        torch.autograd.grad(out.sum(), [x, weight])
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--segments", type=int, default=16)
    parser.add_argument("--length", type=int, default=1250)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--state", type=int, default=16)
    args = parser.parse_args()

    inputs, cu = make_inputs(args.segments, args.length, args.channels, args.state)
    T = args.segments * args.length
    updates = T * args.channels * args.state
    machine = {"cpu": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads()}
    results = {}
    for backward in (False, True):
        for backend in ("torch", "numba"):
            seconds = time_scan(backend, inputs, cu, args.repeats, backward)
            results[(backend, backward)] = seconds
            print(json.dumps({
                "op": "selective_scan", "pass": "fwd+bwd" if backward else "fwd",
                "backend": backend, "T": T, "segments": args.segments, "D": args.channels,
                "N": args.state, "median_s": round(seconds, 5),
                "state_updates_per_s": round(updates / seconds),
                **machine}), flush=True)
        ratio = results[("torch", backward)] / results[("numba", backward)]
        print(json.dumps({"op": "selective_scan", "pass": "fwd+bwd" if backward else "fwd",
                          "numba_speedup_over_torch_loop": round(ratio, 2)}), flush=True)
    for backend in ("torch", "numba"):
        seconds = time_conv(backend, T, args.channels, cu, args.repeats)
        print(json.dumps({"op": "causal_conv1d", "pass": "fwd+bwd", "backend": backend, "T": T,
                          "D": args.channels, "W": 4, "median_s": round(seconds, 5),
                          **machine}), flush=True)


if __name__ == "__main__":
    main()
