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

Measured per workload, for every launch variant (``--variants``; default: ``v1`` = the
session-3 launch and layout, ``default`` = ``DEFAULT_CONFIG``, the serial and piece forwards and
the polynomial-exp2 split): ``kernels_fwd`` / ``kernels_fwd_bwd`` = the Triton backend called directly (the
backward reuses the forward's chunk states, as the autograd path does), plus
``rel_diff_vs_v1`` (outputs, final states and every gradient against the ``v1`` variant: the
variants must agree to rounding). ``api`` = the public ``selective_scan(..., backend="triton")``
with autograd (its default config; includes input validation, one host sync per call).
``--mamba-ssm-path DIR`` adds the peers in the same run when importable from ``DIR``:
``mamba_ssm`` SSD Triton ``mamba_chunk_scan_combined`` (packed, ``seq_idx``, heads of 64
channels, chunk 256) and the CUDA Mamba-1 ``selective_scan_fn`` (padded to the longest segment);
each missing one prints a line saying why.

Usage: python benchmarks/scan_gpu.py [--quick] [--out FILE] [--workloads scene,windows,...]
    [--variants "v1;default;serial:forward=serial"] [--mamba-ssm-path DIR] [--no-ref]

A variant is ``v1``, ``default`` or ``NAME:key=value,...`` (LaunchConfig fields changed from
the default; ints and true/false parse). ``--quick`` (about 2-3 minutes on an H200 including compilation): short
``do_bench`` windows, no recompute-backward line, no torch reference.

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


DEFAULT_VARIANTS = ("v1;default;sit:forward=chunked,state_in_thread=true;"
                    "serial:forward=serial;pieces:forward=pieces;poly4:exp_poly_every=4")


def parse_variants(spec: str, ST) -> list[tuple[str, object]]:
    """``[(name, LaunchConfig)]`` from ``"v1;default;NAME:key=value,..."`` (fields changed from
    ``DEFAULT_CONFIG``; integer values where they parse)."""
    import dataclasses

    variants = []
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        if item == "v1":
            variants.append(("v1", ST.V1_CONFIG))
            continue
        if item == "default":
            variants.append(("default", ST.DEFAULT_CONFIG))
            continue
        name, _, settings = item.partition(":")
        changes = {}
        for pair in filter(None, settings.split(",")):
            key, _, value = pair.partition("=")
            changes[key] = parse_value(value)
        variants.append((name, dataclasses.replace(ST.DEFAULT_CONFIG, **changes)))
    return variants


def parse_value(text: str):
    """``"3"`` -> 3, ``"true"`` / ``"false"`` -> bool, ``"none"`` -> None (a field's
    "off", e.g. a register cap), anything else stays a string."""
    if text.lower() == "none":
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def serial_is_hopeless(config, S: int, D: int) -> bool:
    """A serial forward with fewer than 64 programs (one long segment) takes tens to hundreds of
    ms: not worth the device time of a measurement."""
    return config.forward == "serial" and S * (D // min(D, config.bd_serial)) < 64


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--workloads", default="scene,windows,graph_tokens,long")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="semicolon-separated launch variants: v1, default or "
                        "NAME:key=value,... (LaunchConfig fields changed from the default)")
    p.add_argument("--quick", action="store_true",
                   help="short timing windows, no recompute line, no torch reference")
    p.add_argument("--no-ref", action="store_true")
    p.add_argument("--no-api", action="store_true")
    p.add_argument("--fwd-only", action="store_true")
    p.add_argument("--recompute", action="store_true",
                   help="also time fwd + a backward that recomputes the chunk states")
    p.add_argument("--mamba-ssm-path", default=None,
                   help="directory holding the mamba_ssm package (peers in the same run)")
    p.add_argument("--kernels-file", default=None,
                   help="also time another copy of the scan (a module file or package "
                        "__init__.py, e.g. the pre-v2 selective_scan_triton.py) as variant "
                        "'file', called without a config")
    p.add_argument("--profile", action="store_true",
                   help="per-kernel CUDA times (torch.profiler) of kernels fwd and fwd+bwd")
    p.add_argument("--tiny", action="store_true",
                   help="smoke test: at most 4 segments of at most 16 tokens, 32 channels; "
                        "runs on CPU through the Triton interpreter when there is no GPU")
    p.add_argument("--ncu-target", action="store_true",
                   help="one kernels fwd+bwd per workload inside cudaProfilerStart/Stop "
                        "(after a compiling warm-up call), for ncu --profile-from-start off")
    args = p.parse_args(argv)
    if not on_gpu():
        if not args.tiny:
            p.error("needs a CUDA GPU (--tiny runs a CPU smoke test through the interpreter)")
        os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton is first imported
    if args.profile:
        return profile(args)
    if args.ncu_target:
        return ncu_target(args)

    import triton

    from geossm.kernels import selective_scan_triton as ST

    dev = bench_device()
    card = card_name(dev)
    bw = copy_bandwidth(dev)
    variants = parse_variants(args.variants, ST)
    base = dict(card=card, torch=torch.__version__, triton=triton.__version__,
                quick=args.quick)
    emit(dict(base, metric="copy_bandwidth_GBps", value=round(bw / 1e9, 1)), args.out)
    other = load_kernels_file(args.kernels_file) if args.kernels_file else None
    peers = load_peers(args.mamba_ssm_path, args.out)
    warmup, rep = (5, 25) if args.quick else (25, 200)

    def bench(fn, grad_to_none=None):
        return median_ms(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none)

    for name in args.workloads.split(","):
        x, T, D, S = make_inputs(name, dev, args.tiny)
        floor_ms = 2 * (4 * T * D + 2 * T * N_STATE) / bw * 1e3
        info = dict(base, workload=name, T=T, D=D, S=S, N=N_STATE, floor_ms=round(floor_ms, 4))

        def rec(metric, ms, **extra):
            emit(dict(info, metric=metric, ms=round(ms, 4), x_floor=round(ms / floor_ms, 2),
                      **extra), args.out)

        kargs, dout = kernel_args(x, T, D, dev)
        reference = None
        for vname, config in variants:
            if serial_is_hopeless(config, S, D) and not args.tiny:
                emit(dict(info, variant=vname, skipped="serial forward with < 64 programs"),
                     args.out)
                continue
            fwd, fwd_bwd = kernel_calls(ST, kargs, dout, config)
            tags = dict(variant=vname, config=config_fields(config))
            rec("kernels_fwd", bench(fwd), **tags)
            if not args.fwd_only:
                rec("kernels_fwd_bwd", bench(fwd_bwd), **tags)
            results = outputs_and_grads(ST, kargs, dout, config)
            if reference is None:
                reference = (vname, results)
            else:
                emit(dict(info, metric=f"rel_diff_vs_{reference[0]}", variant=vname,
                          **relative_differences(results, reference[1])), args.out)
            if args.recompute:
                def fwd_bwd_recompute():
                    ST.selective_scan_fwd(*kargs, config=config)
                    ST.selective_scan_bwd(dout, None, *kargs, config=config)

                rec("kernels_fwd_bwd_recompute", bench(fwd_bwd_recompute), **tags)
        if other is not None:
            fwd, fwd_bwd = kernel_calls(other, kargs, dout, None)
            rec("kernels_fwd", bench(fwd), variant="file", file=args.kernels_file)
            rec("kernels_fwd_bwd", bench(fwd_bwd), variant="file", file=args.kernels_file)
            if reference is not None:
                emit(dict(info, metric=f"rel_diff_vs_{reference[0]}", variant="file",
                          **relative_differences(outputs_and_grads(other, kargs, dout, None),
                                                 reference[1])), args.out)
        del reference
        if not args.no_api:
            api_fwd, api_fwd_bwd, leaves = api_calls(x, dout)
            rec("api_fwd", bench(api_fwd), variant="api (DEFAULT_CONFIG)")
            rec("api_fwd_bwd", bench(api_fwd_bwd, grad_to_none=leaves),
                variant="api (DEFAULT_CONFIG)")
            del leaves
        for peer, make_calls in peers.items():
            try:
                p_fwd, p_fwd_bwd, p_leaves = make_calls(x, T, D)
                rec("peer_fwd", bench(p_fwd), peer=peer)
                rec("peer_fwd_bwd", bench(p_fwd_bwd, grad_to_none=p_leaves), peer=peer)
                del p_leaves
            except Exception as error:  # noqa: BLE001 - a peer failure is reported, not fatal
                emit(dict(info, peer=peer, error=repr(error)[:300]), args.out)
        if not (args.no_ref or args.quick) and name in ("graph_tokens", "windows"):
            reference_check(x, kargs, ST, info, args.out)
        del x, kargs, dout
        if on_gpu():
            torch.cuda.empty_cache()
    compile_report(ST, args.out, base)
    return 0


def config_fields(config) -> dict:
    import dataclasses

    return dataclasses.asdict(config)


def load_kernels_file(path: str):
    """Another copy of the scan kernels, loaded from a file (A/B in one process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scan_triton_alt", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # a package's relative imports look it up there
    spec.loader.exec_module(module)
    return module


def outputs_and_grads(ST, kargs: tuple, dout: torch.Tensor, config) -> list:
    """Forward outputs (out, final state) and all gradients of one kernels fwd+bwd call."""
    extra = {} if config is None else dict(config=config)
    out, final, saved = ST.selective_scan_fwd(*kargs, **extra)
    grads = ST.selective_scan_bwd(dout, None, *kargs, chunk_states=saved, **extra)
    return [out, final, *grads]


RESULT_NAMES = ("out", "final_state", "du", "ddelta", "dA", "dB", "dC", "dD", "dz",
                "ddelta_bias", "dinitial_state")


def relative_differences(got: list, want: list) -> dict:
    """``{name: |got - want| / |want|}`` (Frobenius, float32) of two outputs_and_grads lists."""
    diffs = {}
    for name, a, b in zip(RESULT_NAMES, got, want):
        if a is None or b is None:
            continue
        b = b.float()
        diffs[name] = float((a.float() - b).norm() / b.norm().clamp_min(1e-30))
    return diffs


def api_calls(x: dict, dout: torch.Tensor):
    """``(fwd, fwd_bwd, leaves)`` closures of the public ``selective_scan`` (triton backend)."""
    from geossm.kernels import selective_scan

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

    return api_fwd, api_fwd_bwd, list(leaves.values())


def reference_check(x: dict, kargs: tuple, ST, info: dict, out_file) -> None:
    """Time the torch reference and compare the default kernels' forward with it."""
    from geossm.kernels.selective_scan_torch import selective_scan_ref

    ref_args = dict(u=x["u"], delta=x["delta"], A=x["A"], B=kargs[3], C=kargs[4], D=x["D"],
                    z=x["z"], delta_bias=x["delta_bias"], cu_seqlens=x["cu_seqlens"],
                    delta_softplus=True)
    emit(dict(info, metric="torch_ref_fwd", ms=round(time_events(
        lambda: selective_scan_ref(**ref_args)), 4)), out_file)
    with torch.no_grad():
        y_ref, f_ref = selective_scan_ref(**ref_args)
        y, f, _ = ST.selective_scan_fwd(*kargs)
    err = float((y.float() - y_ref.float()).norm() / y_ref.float().norm())
    ferr = float((f - f_ref).norm() / f_ref.norm())
    emit(dict(info, metric="rel_err_vs_torch_ref", out=err, final_state=ferr), out_file)


def load_peers(path, out_file) -> dict:
    """``{peer name: make_calls(x, T, D)}`` of the mamba_ssm kernels importable from ``path``;
    one line per peer that is not (with the reason)."""
    if path is None:
        emit(dict(peer="mamba_ssm", skipped="no --mamba-ssm-path given"), out_file)
        return {}
    peers = {}
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ssd_gpu import load_mamba_ssm

    ssd, reason = load_mamba_ssm(path)
    if ssd is None:
        emit(dict(peer="mamba_ssm_ssd_triton", skipped=reason), out_file)
    else:
        peers["mamba_ssm_ssd_triton"] = lambda x, T, D: ssd_peer_calls(ssd, x, T, D)
    try:
        if path not in sys.path:
            sys.path.insert(0, path)
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        peers["mamba_ssm_cuda_mamba1_padded"] = (
            lambda x, T, D: mamba1_peer_calls(selective_scan_fn, x, T, D))
    except Exception as error:  # noqa: BLE001 - any import failure is reported
        emit(dict(peer="mamba_ssm_cuda_mamba1_padded",
                  skipped=f"import failed: {error!r}"[:300]), out_file)
    return peers


SSD_HEAD = 64
SSD_CHUNK = 256


def ssd_peer_calls(scan, x: dict, T: int, D: int):
    """mamba_chunk_scan_combined on the workload as Mamba-2 (heads of 64 channels, one group
    of B/C, N = 16, seq_idx for the segments, batch 1)."""
    H = max(1, D // SSD_HEAD)
    P = D // H
    cu = x["cu_seqlens"].long()
    seq_idx = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=cu.device),
                                      cu[1:] - cu[:-1], output_size=T).to(torch.int32)[None]
    g = torch.Generator(device=x["u"].device).manual_seed(2)
    tensors = dict(x=x["u"].view(1, T, H, P), dt=x["delta"][:, :H].float()[None].contiguous(),
                   A=-torch.rand(H, generator=g, device=x["u"].device) - 0.5,
                   B=x["B"].view(1, T, 1, N_STATE), C=x["C"].view(1, T, 1, N_STATE),
                   D=x["D"][:H].contiguous(), z=x["z"].view(1, T, H, P),
                   dt_bias=x["delta_bias"][:H].contiguous())
    def call(t):
        result = scan(t["x"], t["dt"], t["A"], t["B"], t["C"], SSD_CHUNK, D=t["D"], z=t["z"],
                      dt_bias=t["dt_bias"], seq_idx=seq_idx, dt_softplus=True)
        return result[0] if isinstance(result, tuple) else result

    return _peer_steps(call, tensors, "x")


def mamba1_peer_calls(scan_fn, x: dict, T: int, D: int):
    """mamba_ssm's CUDA Mamba-1 ``selective_scan_fn`` on the segments padded to the longest
    (batch = segments, layout (batch, D, L)); padding built once, outside the timing."""
    cu = x["cu_seqlens"].long().cpu()
    lens = (cu[1:] - cu[:-1]).tolist()
    S, Lmax = len(lens), max(lens)
    tok = torch.cat([torch.arange(a, b) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())])
    seg = torch.repeat_interleave(torch.arange(S), torch.tensor(lens))
    pos = tok - cu[:-1][seg]
    dev = x["u"].device
    seg, pos = seg.to(dev), pos.to(dev)

    def padded(v, width):
        out = v.new_zeros(S, Lmax, width)
        out[seg, pos] = v.view(T, width)
        return out.transpose(1, 2).contiguous()

    tensors = dict(u=padded(x["u"], D), delta=padded(x["delta"], D), A=x["A"],
                   B=padded(x["B"], N_STATE), C=padded(x["C"], N_STATE), D=x["D"],
                   z=padded(x["z"], D), delta_bias=x["delta_bias"])
    def call(t):
        return scan_fn(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                       delta_bias=t["delta_bias"], delta_softplus=True)

    return _peer_steps(call, tensors, "u")


def _peer_steps(call, tensors: dict, out_like: str):
    """``(fwd, fwd_bwd, leaves)`` for a peer's ``call(tensors)``: the forward without
    gradients, and forward + backward on leaf copies with a fixed random output gradient
    shaped like ``tensors[out_like]``."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in tensors.items()}
    dout = torch.randn_like(tensors[out_like])

    def fwd():
        with torch.no_grad():
            call(tensors)

    def fwd_bwd():
        call(leaves).backward(dout)

    return fwd, fwd_bwd, list(leaves.values())


def kernel_args(x: dict, T: int, D: int, dev: torch.device) -> tuple[tuple, torch.Tensor]:
    """The bare kernels' positional arguments for one workload's inputs ``x`` (the canonical
    tensors the public function hands the backend: B, C as (T, 1, N)) and a bf16 ``dout``."""
    Bg, Cg = x["B"].view(T, 1, N_STATE), x["C"].view(T, 1, N_STATE)
    kargs = (x["u"], x["delta"], x["A"], Bg, Cg, x["D"], x["z"], x["delta_bias"],
             x["cu_seqlens"], None, True, False)
    return kargs, torch.randn(T, D, device=dev).to(torch.bfloat16)


def kernel_calls(ST, kargs: tuple, dout: torch.Tensor, config=None):
    """``(fwd, fwd_bwd)``: closures over the Triton kernels of module ``ST`` under launch
    ``config`` (None: called without one; fwd+bwd reuses the forward's chunk states)."""
    extra = {} if config is None else dict(config=config)

    def fwd():
        return ST.selective_scan_fwd(*kargs, **extra)

    def fwd_bwd():
        _, _, saved = ST.selective_scan_fwd(*kargs, **extra)
        ST.selective_scan_bwd(dout, None, *kargs, chunk_states=saved, **extra)

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


def compile_report(package, out_file, base):
    """Registers and spills of every compiled Triton kernel of ``package`` and its modules
    (best effort: the cache layout differs between Triton versions)."""
    import triton

    prefix = package.__name__
    modules = [m for name, m in sorted(sys.modules.items())
               if m is not None and (name == prefix or name.startswith(prefix + "."))]
    seen = set()
    for module in modules:
        for name in dir(module):
            fn = getattr(module, name)
            if not isinstance(fn, triton.runtime.jit.JITFunction) or id(fn) in seen:
                continue
            seen.add(id(fn))
            report_kernel(fn, name, out_file, base)


def report_kernel(fn, name: str, out_file, base) -> None:
    try:
        for dev_cache in fn.device_caches.values():
            kernels = dev_cache[0] if isinstance(dev_cache, tuple) else dev_cache
            for k in kernels.values():
                metadata = getattr(k, "metadata", None)
                emit(dict(base, metric="compiled", kernel=name,
                          n_regs=getattr(k, "n_regs", None),
                          n_spills=getattr(k, "n_spills", None),
                          num_warps=getattr(metadata, "num_warps", None),
                          shared=getattr(metadata, "shared", None)), out_file)
    except Exception as err:  # noqa: BLE001 - a report, never a failure
        emit(dict(base, metric="compiled", kernel=name, error=repr(err)), out_file)


if __name__ == "__main__":
    sys.exit(main())
