"""GPU benchmark of the Triton selective scan on the four workloads of issue 3.

Prints one JSON line per measurement (and appends them to ``--out`` if given). Medians come from
``triton.testing.do_bench``. The memory floor of a forward pass is
``2 * (4*T*D + 2*T*N)`` bytes (read u, delta, z, B, C in bf16, write out) over the copy
bandwidth measured here with a large device-to-device ``clone`` (bytes read + written).

Workloads (N = 16, bf16 u/delta/z/B/C with B, C shaped (T, N), fp32 A/D/delta_bias,
delta_softplus=True, z and D given; lengths from ``torch.Generator().manual_seed(0)``):

    scene         torch.randint(20000, 80001, (8,)) segments, D = 192
    windows       100 segments of 4096, D = 128
    graph_tokens  torch.randint(8, 34, (20000,)) segments, D = 128
    long          one segment of 1,000,000, D = 64

Measured per workload: ``kernels`` = the Triton backend called directly (forward; forward +
backward where the backward reuses the forward's chunk states; forward + backward that
recomputes them, as the autograd path does today) and ``api`` = the public
``selective_scan(..., backend="triton")`` with autograd (includes its input validation, which
costs one host sync per call). The torch reference runs where it finishes in reasonable time.

Usage: python benchmarks/scan_gpu.py [--out FILE] [--workloads scene,windows,...] [--no-ref]

``--tiny`` cuts every workload to at most 4 segments of at most 16 tokens and 32 channels and,
without a GPU, runs through Triton's CPU interpreter with wall-clock timing: a smoke test of the
script's code paths, not a measurement. ``--ncu-target`` runs one kernels fwd+bwd per workload between
``cudaProfilerStart``/``Stop`` (after a warm-up call that compiles), for
``ncu --profile-from-start off``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

import torch

from geossm.packed import cu_seqlens_from_lengths

N_STATE = 16


def workload_lengths(name: str, tiny: bool = False) -> list[int]:
    """Segment lengths of workload ``name``; ``tiny``: the first 4, each cut to 16 tokens."""
    g = torch.Generator().manual_seed(0)
    if name == "scene":
        lens = torch.randint(20000, 80001, (8,), generator=g).tolist()
    elif name == "windows":
        lens = [4096] * 100
    elif name == "graph_tokens":
        lens = torch.randint(8, 34, (20000,), generator=g).tolist()
    elif name == "long":
        lens = [1_000_000]
    else:
        raise ValueError(f"unknown workload {name!r}")
    return [min(n, 16) for n in lens[:4]] if tiny else lens


WORKLOAD_D = {"scene": 192, "windows": 128, "graph_tokens": 128, "long": 64}


def make_inputs(name: str, device: torch.device, tiny: bool = False):
    lens = workload_lengths(name, tiny)
    D, N = (32 if tiny else WORKLOAD_D[name]), N_STATE
    T = sum(lens)
    g = torch.Generator(device=device).manual_seed(1)
    cu = cu_seqlens_from_lengths(lens)
    bf = torch.bfloat16

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device)

    # Mamba-like values: S4D-real A, dt in [1e-3, 1e-1] through the bias, unit-scale signals
    A = -torch.arange(1, N + 1, device=device, dtype=torch.float32).repeat(D, 1)
    dt0 = torch.exp(torch.rand(D, generator=g, device=device) * (math.log(0.1) - math.log(1e-3))
                    + math.log(1e-3))
    delta_bias = dt0 + torch.log(-torch.expm1(-dt0))
    return dict(u=randn(T, D).to(bf), delta=(0.1 * randn(T, D)).to(bf), A=A,
                B=randn(T, N).to(bf), C=randn(T, N).to(bf), D=randn(D),
                z=randn(T, D).to(bf), delta_bias=delta_bias,
                cu_seqlens=cu.to(device)), T, D, len(lens)


def copy_bandwidth(device) -> float:
    """Bytes/s of a large device-to-device clone, counting bytes read plus written."""
    size = 2 * 1024**3 if device.type == "cuda" else 64 * 1024**2
    x = torch.empty(size // 4, dtype=torch.float32, device=device).normal_()
    ms = median_ms(lambda: x.clone(), warmup=50, rep=300)
    bw = 2 * x.numel() * 4 / (ms * 1e-3)
    del x
    torch.cuda.empty_cache()
    return bw


def emit(rec: dict, out_file):
    line = json.dumps(rec)
    print(line, flush=True)
    if out_file:
        with open(out_file, "a") as f:
            f.write(line + "\n")


def on_gpu() -> bool:
    return torch.cuda.is_available()


def bench_device() -> torch.device:
    """The GPU, or the CPU (``--tiny`` smoke test through the Triton interpreter)."""
    return torch.device("cuda" if on_gpu() else "cpu")


def synchronize() -> None:
    if on_gpu():
        torch.cuda.synchronize()


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU (Triton interpreter, smoke test only)"


def median_ms(fn, warmup=25, rep=200, grad_to_none=None) -> float:
    """``triton.testing.do_bench`` median on a GPU; on CPU (``--tiny`` smoke test) the
    wall-clock time of one call after one warm-up call."""
    if on_gpu():
        import triton.testing
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none,
                                       return_mode="median")
    import time
    fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def time_events(fn, reps=3) -> float:
    """Median of a few event-timed calls (for slow references that do_bench would repeat
    too often)."""
    if not on_gpu():
        return median_ms(fn)
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--workloads", default="scene,windows,graph_tokens,long")
    p.add_argument("--no-ref", action="store_true")
    p.add_argument("--no-api", action="store_true")
    p.add_argument("--chunk", type=int, default=None, help="override the Triton chunk length")
    p.add_argument("--fwd-only", action="store_true")
    p.add_argument("--bd", type=int, default=None, help="override the channels per program")
    p.add_argument("--nw-fwd", type=int, default=None, help="override forward num_warps")
    p.add_argument("--nw-bwd", type=int, default=None, help="override backward num_warps")
    p.add_argument("--no-recompute", action="store_true")
    p.add_argument("--bd-bwd", type=int, default=None, help="channels per backward program")
    p.add_argument("--kernels-file", default=None,
                   help="sweep: load the triton scan module from this file instead (A/B of "
                        "a kernel rewrite against the installed one in the same process)")
    p.add_argument("--profile", action="store_true",
                   help="per-kernel CUDA times (torch.profiler) of kernels fwd and fwd+bwd")
    p.add_argument("--tiny", action="store_true",
                   help="smoke test: at most 4 segments of at most 16 tokens, 32 channels; "
                        "runs on CPU through the Triton interpreter when there is no GPU")
    p.add_argument("--ncu-target", action="store_true",
                   help="one kernels fwd+bwd per workload inside cudaProfilerStart/Stop "
                        "(after a compiling warm-up call), for ncu --profile-from-start off")
    p.add_argument("--sweep", default=None,
                   help="semicolon-separated variants, each comma-separated NAME=VALUE module "
                        "switches of selective_scan_triton (e.g. 'base;MAX_BD_BWD=32'): times "
                        "kernels fwd and fwd+bwd of every workload under each, one process")
    args = p.parse_args(argv)
    if not on_gpu():
        if not args.tiny:
            p.error("needs a CUDA GPU (--tiny runs a CPU smoke test through the interpreter)")
        os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton is first imported
    if args.sweep:
        return sweep(args)
    if args.profile:
        return profile(args)
    if args.ncu_target:
        return ncu_target(args)

    import triton
    from geossm.kernels import selective_scan
    from geossm.kernels import selective_scan_triton as ST
    from geossm.kernels.selective_scan_torch import selective_scan_ref

    if args.chunk:
        ST.CHUNK = args.chunk
    if args.bd:
        ST.MAX_BD = args.bd
    # only switches given on the command line change the module's defaults (assigning None
    # here once replaced the default 32-channel backward blocks by 64-channel ones)
    if args.nw_fwd:
        ST.NUM_WARPS_FWD = args.nw_fwd
    if args.nw_bwd:
        ST.NUM_WARPS_BWD = args.nw_bwd
    if args.bd_bwd:
        ST.MAX_BD_BWD = args.bd_bwd
    dev = bench_device()
    card = card_name(dev)
    bw = copy_bandwidth(dev)
    base = dict(card=card, torch=torch.__version__, triton=triton.__version__, chunk=ST.CHUNK,
                max_bd=ST.MAX_BD, nw_fwd=ST.NUM_WARPS_FWD, nw_bwd=ST.NUM_WARPS_BWD,
                bd_bwd=ST.MAX_BD_BWD)
    emit(dict(base, metric="copy_bandwidth_GBps", value=round(bw / 1e9, 1)), args.out)

    def bench(fn, grad_to_none=None):
        return median_ms(fn, warmup=25, rep=200, grad_to_none=grad_to_none)

    for name in args.workloads.split(","):
        x, T, D, S = make_inputs(name, dev, args.tiny)
        N = N_STATE
        floor_bytes = 2 * (4 * T * D + 2 * T * N)
        floor_ms = floor_bytes / bw * 1e3
        info = dict(base, workload=name, T=T, D=D, S=S, N=N, floor_ms=round(floor_ms, 4))

        def rec(metric, ms, **extra):
            emit(dict(info, metric=metric, ms=round(ms, 4), x_floor=round(ms / floor_ms, 2),
                      **extra), args.out)

        kargs, dout = kernel_args(x, T, D, dev)
        fwd, fwd_bwd_saved = kernel_calls(ST, kargs, dout)
        rec("kernels_fwd", bench(fwd))
        if args.fwd_only:
            continue

        def fwd_bwd_recompute():
            ST.selective_scan_fwd(*kargs)
            ST.selective_scan_bwd(dout, None, *kargs)

        rec("kernels_fwd_bwd", bench(fwd_bwd_saved), bwd="reuses forward chunk states")
        if not args.no_recompute:
            rec("kernels_fwd_bwd_recompute", bench(fwd_bwd_recompute),
                bwd="recomputes chunk states (as the custom-op autograd path did)")

        if not args.no_api:
            leaves = {k: v.detach().clone().requires_grad_(True)
                      for k, v in x.items() if k != "cu_seqlens"}

            def api_fwd():
                with torch.no_grad():
                    selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"],
                                   z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True,
                                   cu_seqlens=x["cu_seqlens"], backend="triton")

            def api_fwd_bwd():
                out = selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"],
                                     leaves["C"], D=leaves["D"], z=leaves["z"],
                                     delta_bias=leaves["delta_bias"], delta_softplus=True,
                                     cu_seqlens=x["cu_seqlens"], backend="triton")
                out.backward(dout)

            rec("api_fwd", bench(api_fwd))
            rec("api_fwd_bwd", bench(api_fwd_bwd, grad_to_none=list(leaves.values())))
            del leaves

        # correctness against the torch reference where it is cheap enough to run
        if not args.no_ref and name in ("graph_tokens", "windows"):
            ref_args = dict(u=x["u"], delta=x["delta"], A=x["A"], B=kargs[3], C=kargs[4], D=x["D"],
                            z=x["z"], delta_bias=x["delta_bias"], cu_seqlens=x["cu_seqlens"],
                            delta_softplus=True)
            ref_ms = time_events(lambda: selective_scan_ref(**ref_args))
            rec("torch_ref_fwd", ref_ms)
            with torch.no_grad():
                y_ref, f_ref = selective_scan_ref(**ref_args)
                y, f, _ = fwd()
            err = float((y.float() - y_ref.float()).norm() / y_ref.float().norm())
            ferr = float((f - f_ref).norm() / f_ref.norm())
            emit(dict(info, metric="rel_err_vs_torch_ref", out=err, final_state=ferr), args.out)
            del y_ref, f_ref
        del x, kargs, dout
        torch.cuda.empty_cache()
    compile_report(ST, args.out, base)
    return 0


def sweep(args) -> int:
    """Kernel fwd and fwd+bwd times of every workload under each variant (module switches)."""
    from geossm.kernels import selective_scan_triton as ST

    tag = "installed"
    if args.kernels_file:
        import importlib.util
        spec = importlib.util.spec_from_file_location("scan_triton_alt", args.kernels_file)
        ST = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ST)
        tag = args.kernels_file
    dev = bench_device()
    card = card_name(dev)
    bw = copy_bandwidth(dev)
    emit(dict(card=card, metric="copy_bandwidth_GBps", value=round(bw / 1e9, 1)), args.out)
    defaults = {name: getattr(ST, name, None) for name in
                ("MAX_BD", "MAX_BD_BWD", "NUM_WARPS_FWD", "MAXNREG_FWD",
                 "NUM_WARPS_BWD", "CHUNK")}
    inputs = {name: make_inputs(name, dev, args.tiny) for name in args.workloads.split(",")}
    for variant in args.sweep.split(";"):
        for name, value in defaults.items():
            setattr(ST, name, value)
        switches = {}
        for item in filter(None, variant.split(",")):
            if item == "base":
                continue
            key, value = item.split("=")
            switches[key] = int(value)
            setattr(ST, key, int(value))
        for name, (x, T, D, S) in inputs.items():
            floor_ms = 2 * (4 * T * D + 2 * T * N_STATE) / bw * 1e3
            fwd, fwd_bwd = kernel_calls(ST, *kernel_args(x, T, D, dev))
            for metric, fn in (("kernels_fwd", fwd), ("kernels_fwd_bwd", fwd_bwd)):
                ms = median_ms(fn, warmup=10, rep=100)
                emit(dict(card=card, kernels=tag, variant=variant, workload=name, metric=metric,
                          ms=round(ms, 4), x_floor=round(ms / floor_ms, 2),
                          floor_ms=round(floor_ms, 4)), args.out)
    compile_report(ST, args.out, dict(card=card))
    return 0


def kernel_args(x: dict, T: int, D: int, dev: torch.device) -> tuple[tuple, torch.Tensor]:
    """The bare kernels' positional arguments for one workload's inputs ``x`` (the canonical
    tensors the public function hands the backend: B, C as (T, 1, N)) and a bf16 ``dout``."""
    Bg, Cg = x["B"].view(T, 1, N_STATE), x["C"].view(T, 1, N_STATE)
    kargs = (x["u"], x["delta"], x["A"], Bg, Cg, x["D"], x["z"], x["delta_bias"],
             x["cu_seqlens"], None, True, False)
    return kargs, torch.randn(T, D, device=dev).to(torch.bfloat16)


def kernel_calls(ST, kargs: tuple, dout: torch.Tensor):
    """``(fwd, fwd_bwd)``: closures over the Triton kernels of module ``ST`` (fwd+bwd reuses
    the forward's chunk states)."""
    def fwd():
        return ST.selective_scan_fwd(*kargs)

    def fwd_bwd():
        _, _, saved = ST.selective_scan_fwd(*kargs)
        ST.selective_scan_bwd(dout, None, *kargs, chunk_states=saved)

    return fwd, fwd_bwd


def profile(args) -> int:
    """Per-kernel CUDA time of one kernels fwd+bwd call per workload (mean of 5, torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from geossm.kernels import selective_scan_triton as ST

    dev = bench_device()
    card = card_name(dev)
    activity = ProfilerActivity.CUDA if on_gpu() else ProfilerActivity.CPU
    for name in args.workloads.split(","):
        x, T, D, S = make_inputs(name, dev, args.tiny)
        _, fwd_bwd = kernel_calls(ST, *kernel_args(x, T, D, dev))
        fwd_bwd()
        synchronize()
        reps = 5
        with torch_profile(activities=[activity]) as prof:
            for _ in range(reps):
                fwd_bwd()
            synchronize()
        rows = {}
        for evt in prof.key_averages():
            us = (getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
                  if on_gpu() else evt.cpu_time_total)
            if us:
                rows[evt.key[:60]] = (round(us / reps / 1e3, 4), evt.count // reps)
        for kernel, (ms, calls) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
            emit(dict(card=card, workload=name, metric="profile_ms_per_fwd_bwd", kernel=kernel,
                      ms=ms, calls=calls), args.out)
        del x, fwd_bwd
        torch.cuda.empty_cache()
    return 0


def ncu_target(args) -> int:
    """One kernels fwd+bwd per workload between cudaProfilerStart and cudaProfilerStop, each
    after a warm-up call (compilation, launch plan), so that ``ncu --profile-from-start off``
    profiles exactly the kernels of one forward (chunk state, carry, output) and one backward."""
    from geossm.kernels import selective_scan_triton as ST

    dev = bench_device()
    for name in args.workloads.split(","):
        x, T, D, S = make_inputs(name, dev, args.tiny)
        _, fwd_bwd = kernel_calls(ST, *kernel_args(x, T, D, dev))
        fwd_bwd()
        synchronize()
        if on_gpu():
            torch.cuda.profiler.start()
        fwd_bwd()
        synchronize()
        if on_gpu():
            torch.cuda.profiler.stop()
        emit(dict(card=card_name(dev), workload=name, T=T, D=D, S=S,
                  metric="ncu_target_done"), args.out)
        del x, fwd_bwd
        torch.cuda.empty_cache()
    return 0


def compile_report(module, out_file, base):
    """Registers and spills of every compiled Triton kernel of ``module`` (best effort: the
    cache layout differs between Triton versions)."""
    import triton
    for name in dir(module):
        fn = getattr(module, name)
        if not isinstance(fn, triton.runtime.jit.JITFunction):
            continue
        try:
            caches = fn.device_caches
            for dev_cache in caches.values():
                kernels = dev_cache[0] if isinstance(dev_cache, tuple) else dev_cache
                for k in kernels.values():
                    emit(dict(base, metric="compiled", kernel=name,
                              n_regs=getattr(k, "n_regs", None),
                              n_spills=getattr(k, "n_spills", None),
                              num_warps=getattr(getattr(k, "metadata", None), "num_warps", None),
                              shared=getattr(getattr(k, "metadata", None), "shared", None)),
                         out_file)
        except Exception as err:  # noqa: BLE001 - a report, never a failure
            emit(dict(base, metric="compiled", kernel=name, error=repr(err)), out_file)


if __name__ == "__main__":
    sys.exit(main())
