"""GPU benchmark of the Mamba-2 SSD scan (``geossm.kernels.ssd_scan``, Triton backend).

Prints one JSON line per measurement (and appends them to ``--out`` if given). Medians come from
``triton.testing.do_bench``.

Workloads: the four segment-length sets of ``benchmarks/scan_gpu.py`` (scene, windows,
graph_tokens, long) with their widths ``D`` split into heads of ``P = 64`` channels
(``H = D / 64``), one group of ``B``/``C``, state sizes ``N = 64`` and ``N = 128``; bf16
``x, dt, B, C, z``, fp32 ``A, D, dt_bias``, ``dt_softplus=True``, z and D given.

Modes:

- default: per workload and N, ``geossm`` (the public ``ssd_scan(..., backend="triton")`` with
  the module's default ``LaunchSettings``; forward without grad, forward + backward under
  autograd with all inputs requiring grad) and ``mamba_ssm``
  (``mamba_chunk_scan_combined``, chunk 256, with ``seq_idx``: its packed varlen path, batch 1)
  when importable; ``rel_diff_to_chunked`` compares the Triton forward with the chunked torch
  backend, ``rel_diff_to_geossm`` mamba_ssm's forward with geossm's.
- ``--quick``: the same comparison with fewer repetitions and no chunked-backend check, plus
  one line per workload and N with the relative difference of every input gradient between
  geossm and mamba_ssm (``grad_rel_diff``). N is the outer loop, so mamba_ssm autotunes once
  per N; meant to finish all four workloads within ``--budget-s 330`` on an H200 including
  compilation and autotuning (a line says where the budget stopped it).
- ``--registers`` (no GPU): per BWD_SWEEP setting and N, registers per thread and spill bytes of
  the two backward chunk kernels compiled for sm_90 (``ptxas -v``; Triton's bundled ptxas or
  ``$PTXAS``).
- ``--sweep``: per N and workload, geossm's (default settings) and mamba_ssm's forward and
  forward + backward (``sweep: "compare"``), then geossm's forward under each ``FWD_SWEEP``
  setting and its backward alone (``ssd_scan_bwd``) under each ``BWD_SWEEP`` setting (each
  line: the settings, ``ms`` and ``rel_diff`` to the first setting's result;
  ``--sweep-kinds`` picks among compare, fwd and bwd, e.g. ``bwd`` for the backward grid alone), then a per-kernel CUDA-time profile
  (``--profile`` alone: of every workload and N) of both implementations' forward + backward
  at the largest N on the first and third workload. Stops starting measurements (with a
  line saying so) once ``--budget-s`` seconds have passed.

mamba_ssm: pass the directory holding the ``mamba_ssm`` package with ``--mamba-ssm-path`` (only
its pure-Python/Triton SSD modules are loaded, not its compiled extensions); otherwise a line
says why it is skipped.

FLOPs: the matmul work of a chunked SSD with chunk ``Q`` per token and head is
``2QN + 2QP`` (intra-chunk ``C B^T`` and ``(CB ⊙ L) x``) plus ``4PN`` (chunk state and
entering state), counted with each implementation's own forward ``Q`` (geossm's
``LaunchSettings.chunk``, mamba_ssm 256); forward + backward counts three times the forward.
``peak_fraction`` is against ``--peak-tflops`` (default 989: the H200's dense bf16
tensor-core peak from its data sheet).

Usage::

    python benchmarks/ssd_gpu.py [--quick | --sweep | --profile] [--out FILE]
        [--workloads scene,windows,graph_tokens,long] [--states 64,128]
        [--mamba-ssm-path DIR] [--no-backward] [--budget-s 140] [--sweep-kinds fwd,bwd]

``--tiny`` cuts every workload to at most 4 segments of at most 16 tokens, one head of 16
channels and N = 16 and, without a GPU, runs through Triton's CPU interpreter with wall-clock
timing: a smoke test of the script's code paths, not a measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
import time
import types

import torch

if "--tiny" in sys.argv[1:] and not torch.cuda.is_available():
    # Triton reads this when its kernels are defined, i.e. before geossm's kernels import.
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scan_sass import compile_kernel, ptx_registers  # noqa: E402
from scan_gpu import (WORKLOAD_D, bench_device, card_name, emit, median_ms,  # noqa: E402
                      workload_lengths)

from geossm.kernels import ssd_scan  # noqa: E402
from geossm.kernels import ssd_scan_triton as SST  # noqa: E402
from geossm.kernels.ssd_scan_triton import LaunchSettings, use_settings  # noqa: E402
from geossm.packed import cu_seqlens_from_lengths  # noqa: E402

HEAD_DIM = 64
MAMBA_SSM_CHUNK = 256
WORKLOADS = ("scene", "windows", "graph_tokens", "long")
GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")

_DEFAULT = LaunchSettings()
#: Forward settings of ``--sweep`` (the first is the reference of ``rel_diff``).
FWD_SWEEP = (
    _DEFAULT,
    dataclasses.replace(_DEFAULT, block_m=64),
    dataclasses.replace(_DEFAULT, block_k=128),
    dataclasses.replace(_DEFAULT, block_k=32, fwd_stages=3),
    dataclasses.replace(_DEFAULT, fwd_stages=3),
    dataclasses.replace(_DEFAULT, chunk=256, block_m=64, fwd_warps=4),
    dataclasses.replace(_DEFAULT, chunk=256, block_m=128),
    dataclasses.replace(_DEFAULT, chunk=64, block_m=64),
    dataclasses.replace(_DEFAULT, scan_block=256, scan_unroll=8),
    dataclasses.replace(_DEFAULT, scan_unroll=16),
    dataclasses.replace(_DEFAULT, scan_block=512, scan_warps=8),
    dataclasses.replace(_DEFAULT, state_warps=4),
    dataclasses.replace(_DEFAULT, half_states=True),
)
#: Backward settings of ``--sweep`` (chunk states are recomputed at ``bwd_chunk``), most
#: promising first (a cut by the time budget drops the last). ``--registers`` (Triton 3.9's
#: sm_90 PTX, N = 64 and 128 alike): the dx kernel spills 44 bytes with whole heads
#: (``bwd_block_p`` 64, the default), none at 32, 8 bytes at 32 with 16 warps (128 registers),
#: none with ``bwd_step_from_outputs`` at 32 (250 registers; 128 with 16 warps); the dB/dC
#: kernel 404 / 44 / 48 bytes at ``bwd_bc_block_n`` 64 (the default) / 32 / 16.
BWD_SWEEP = (
    _DEFAULT,
    # half the chunk-to-chunk scans of the backward (they are a quarter of its time on the
    # scene workload at N = 128), at the price of the (Q, Q) tiles' registers
    dataclasses.replace(_DEFAULT, bwd_chunk=128, bwd_block_p=32),
    dataclasses.replace(_DEFAULT, bwd_chunk=128, bwd_block_p=32, bwd_block_n=16),
    dataclasses.replace(_DEFAULT, bwd_chunk=128, bwd_block_p=32, bwd_bc_block_n=32,
                        bwd_warps=16),
    dataclasses.replace(_DEFAULT, bwd_block_p=32, bwd_bc_block_n=32),
    dataclasses.replace(_DEFAULT, bwd_block_p=32),
    dataclasses.replace(_DEFAULT, bwd_block_p=32, bwd_warps=16),
    dataclasses.replace(_DEFAULT, bwd_block_p=32, bwd_step_from_outputs=True),
    dataclasses.replace(_DEFAULT, bwd_block_p=32, bwd_step_from_outputs=True, bwd_warps=16),
    dataclasses.replace(_DEFAULT, bwd_step_from_outputs=True),
    dataclasses.replace(_DEFAULT, bwd_bc_block_n=32),
    dataclasses.replace(_DEFAULT, bwd_bc_block_n=16),
    dataclasses.replace(_DEFAULT, bwd_bc_block_n=16, bwd_bc_warps=16),
    dataclasses.replace(_DEFAULT, bwd_block_p=16),
    dataclasses.replace(_DEFAULT, bwd_block_n=64),
    dataclasses.replace(_DEFAULT, bwd_block_n=16),
    dataclasses.replace(_DEFAULT, bwd_chunk=32),
    dataclasses.replace(_DEFAULT, bwd_stages=2),
    dataclasses.replace(_DEFAULT, half_states=True),
)


def make_inputs(name: str, state: int, device: torch.device, tiny: bool = False) -> dict:
    """bf16 SSD inputs of workload ``name`` (Mamba-2-like values), packed, with cu_seqlens."""
    lengths = workload_lengths(name, tiny)
    P = 16 if tiny else HEAD_DIM
    H = 1 if tiny else WORKLOAD_D[name] // HEAD_DIM
    T = sum(lengths)
    gen = torch.Generator(device=device).manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    dt0 = torch.exp(torch.rand(H, generator=gen, device=device)
                    * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    bf = torch.bfloat16
    return dict(x=randn(T, H, P).to(bf), dt=(0.1 * randn(T, H)).to(bf),
                A=-torch.empty(H, device=device).uniform_(1, 16, generator=gen),
                B=randn(T, 1, state).to(bf), C=randn(T, 1, state).to(bf), D=randn(H),
                z=randn(T, H, P).to(bf), dt_bias=dt0 + torch.log(-torch.expm1(-dt0)),
                cu_seqlens=cu_seqlens_from_lengths(lengths).to(device))


def forward_flops(T: int, H: int, P: int, N: int, chunk: int) -> float:
    """Matmul FLOPs of a chunked SSD forward (see the module doc)."""
    return float(T) * H * (2 * chunk * N + 2 * chunk * P + 4 * P * N)


def load_mamba_ssm(path: str | None):
    """``(mamba_chunk_scan_combined, None)`` or ``(None, reason it is skipped)``.

    The package's ``__init__`` imports its compiled CUDA extensions; the SSD is pure Triton,
    so the packages on the way are registered empty (with their real search paths) and only
    ``mamba_ssm.ops.triton.ssd_combined`` and its imports are executed.
    """
    if path is None:
        return None, "no --mamba-ssm-path given"
    root = os.path.join(path, "mamba_ssm")
    if not os.path.isdir(root):
        return None, f"no mamba_ssm package directory in {path!r}"
    if not torch.cuda.is_available():
        return None, "mamba_ssm's SSD kernels need a CUDA GPU"
    for name, sub in (("mamba_ssm", ""), ("mamba_ssm.ops", "ops"),
                      ("mamba_ssm.ops.triton", os.path.join("ops", "triton"))):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [os.path.join(root, sub)]
            sys.modules[name] = package
    try:
        module = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
    except Exception as error:  # any import failure is reported, not raised
        return None, f"import of mamba_ssm.ops.triton.ssd_combined failed: {error!r}"
    return module.mamba_chunk_scan_combined, None


def geossm_calls(inputs: dict):
    """``(forward, forward_backward, leaves, dout)``: closures of the public Triton path,
    the leaves they differentiate and the output gradient they use."""
    args = {k: v for k, v in inputs.items() if k != "cu_seqlens"}
    cu = inputs["cu_seqlens"]
    leaves = {k: v.detach().clone().requires_grad_() for k, v in args.items()}
    x = args["x"]
    dout = torch.randn(x.shape, generator=torch.Generator(x.device).manual_seed(2),
                       device=x.device).to(x.dtype)

    def forward():
        with torch.no_grad():
            return ssd_scan(**args, dt_softplus=True, cu_seqlens=cu, backend="triton")

    def forward_backward():
        out = ssd_scan(**leaves, dt_softplus=True, cu_seqlens=cu, backend="triton")
        out.backward(dout)

    return forward, forward_backward, list(leaves.values()), dout


def geossm_backward_call(inputs: dict, dout: torch.Tensor):
    """The Triton backward alone (``ssd_scan_bwd`` on canonical tensors)."""
    H, P = inputs["x"].shape[1:]
    D = inputs["D"].float()[:, None].expand(H, P).contiguous()

    def backward():
        return SST.ssd_scan_bwd(dout, inputs["x"], inputs["dt"], inputs["A"], inputs["B"],
                                inputs["C"], D, inputs["z"], inputs["dt_bias"],
                                inputs["cu_seqlens"], True, False)

    return backward


def mamba_ssm_calls(scan, inputs: dict, dout: torch.Tensor):
    """The same closures for ``mamba_chunk_scan_combined`` with ``seq_idx`` (batch 1)."""
    cu = inputs["cu_seqlens"].long()
    T = inputs["x"].shape[0]
    seq_idx = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=cu.device),
                                      cu[1:] - cu[:-1], output_size=T).to(torch.int32)[None]
    batch = {k: (v[None] if k in ("x", "dt", "B", "C", "z") else v)
             for k, v in inputs.items() if k != "cu_seqlens"}
    leaves = {k: v.detach().clone().requires_grad_() for k, v in batch.items()}

    def call(tensors):
        result = scan(tensors["x"], tensors["dt"], tensors["A"], tensors["B"], tensors["C"],
                      MAMBA_SSM_CHUNK, D=tensors["D"], z=tensors["z"],
                      dt_bias=tensors["dt_bias"], seq_idx=seq_idx, dt_softplus=True)
        # (1, T, H, P); some versions return a tuple led by the output
        return result[0] if isinstance(result, tuple) else result

    def forward():
        with torch.no_grad():
            return call(batch)

    def forward_backward():
        call(leaves).backward(dout[None])

    return forward, forward_backward, list(leaves.values())


def _max_grad_difference(grads, reference) -> float:
    """The largest ``relative_difference`` over the gradients that exist."""
    return max(relative_difference(g, r) for g, r in zip(grads, reference) if g is not None)


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    """``|got - want| / |want|`` (Frobenius norms, in float32)."""
    want = want.float()
    return float((got.float() - want).norm() / want.norm().clamp_min(1e-12))


def chunked_difference(inputs: dict, got: torch.Tensor) -> float:
    """Relative difference of the Triton forward to the chunked torch form (a check)."""
    args = {k: v for k, v in inputs.items() if k != "cu_seqlens"}
    with torch.no_grad():
        want = ssd_scan(**args, dt_softplus=True, cu_seqlens=inputs["cu_seqlens"],
                        backend="chunked")
    return relative_difference(got, want)


def gradient_differences(ours, theirs) -> dict:
    """Relative difference of every input gradient, geossm vs mamba_ssm (one fwd+bwd each)."""
    for leaves in (ours[2], theirs[2]):
        for leaf in leaves:
            leaf.grad = None
    ours[1]()
    theirs[1]()
    return {name: relative_difference(mine.grad, other.grad.reshape(mine.shape))
            for name, mine, other in zip(GRAD_NAMES, ours[2], theirs[2])}


def measure(impl: str, calls, flops_fwd: float, base: dict, args, out_file, reps) -> None:
    forward, forward_backward, leaves = calls[:3]
    warmup, rep = reps
    fwd_ms = median_ms(forward, warmup=warmup, rep=rep)
    emit(dict(base, impl=impl, mode="fwd", ms=fwd_ms, tflops=flops_fwd / fwd_ms * 1e-9,
              peak_fraction=flops_fwd / fwd_ms * 1e-9 / args.peak_tflops), out_file)
    if not args.no_backward:
        ms = median_ms(forward_backward, warmup=warmup, rep=rep, grad_to_none=leaves)
        emit(dict(base, impl=impl, mode="fwd+bwd", ms=ms, tflops=3 * flops_fwd / ms * 1e-9,
                  peak_fraction=3 * flops_fwd / ms * 1e-9 / args.peak_tflops), out_file)


def compare(args, scan, device, states, started: float) -> bool:
    """Default and ``--quick`` modes: geossm (default settings) vs mamba_ssm; with
    ``--quick``, False when the time budget stopped it before a workload."""
    reps = (3, 15) if args.quick else (10, 50)
    # N outermost: mamba_ssm autotunes per (chunk, head dim, N), once per N this way
    for state in states:
        for name in args.workloads.split(","):
            if args.quick and over_budget(args, started):
                return False
            inputs = make_inputs(name, state, device, args.tiny)
            T, H, P = inputs["x"].shape
            base = dict(workload=name, T=T, H=H, P=P, N=state,
                        segments=inputs["cu_seqlens"].numel() - 1, device=card_name(device))
            ours = geossm_calls(inputs)
            if not args.quick:
                base["rel_diff_to_chunked"] = chunked_difference(inputs, ours[0]())
            measure("geossm", ours, forward_flops(T, H, P, state, SST.SETTINGS.chunk),
                    dict(base, chunk=SST.SETTINGS.chunk, bwd_chunk=SST.SETTINGS.bwd_chunk),
                    args, args.out, reps)
            if scan is not None:
                theirs = mamba_ssm_calls(scan, inputs, ours[3])
                diff = relative_difference(ours[0](), theirs[0]()[0])
                measure("mamba_ssm", theirs, forward_flops(T, H, P, state, MAMBA_SSM_CHUNK),
                        dict(base, chunk=MAMBA_SSM_CHUNK, rel_diff_to_geossm=diff), args,
                        args.out, reps)
                if args.quick and not args.no_backward:
                    emit(dict(base, check="grad_rel_diff",
                              grad_rel_diff=gradient_differences(ours, theirs)), args.out)
            release(inputs, device)
    return True


def release(inputs: dict, device: torch.device) -> None:
    inputs.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def settings_record(settings: LaunchSettings) -> dict:
    """The fields in which ``settings`` differ from the defaults (``{}``: the defaults)."""
    default = dataclasses.asdict(_DEFAULT)
    return {k: v for k, v in dataclasses.asdict(settings).items() if v != default[k]}


def sweep(args, scan, device, states, started: float) -> bool:
    """``--sweep``: per (N, workload) geossm's forward and forward + backward with the default
    settings and mamba_ssm's (``sweep: "compare"``), then every FWD_SWEEP and every BWD_SWEEP
    setting (those of ``--sweep-kinds``) on every (N, workload) (so that each setting compiles
    once per N and a cut by the time budget drops whole settings, least promising last);
    False when the time budget ran out."""
    reps = (2, 10) if args.tiny else (3, 20)
    cases = []
    for state in states:
        for name in args.workloads.split(","):
            inputs = make_inputs(name, state, device, args.tiny)
            calls = geossm_calls(inputs)
            T, H = inputs["x"].shape[:2]
            cases.append(dict(base=dict(workload=name, T=T, N=state, H=H), inputs=inputs,
                              calls=calls, forward=calls[0],
                              backward=geossm_backward_call(inputs, calls[3]), dout=calls[3]))
    for case in cases if "compare" in args.sweep_kinds.split(",") else ():
        impls = [("geossm", case["calls"][:3])]
        if scan is not None:
            impls.append(("mamba_ssm", mamba_ssm_calls(scan, case["inputs"], case["dout"])))
        for impl, (forward, forward_backward, leaves) in impls:
            for mode, call, clear in (("fwd", forward, None),
                                      ("fwd+bwd", forward_backward, leaves)):
                if over_budget(args, started):
                    return False
                record = dict(case["base"], sweep="compare", impl=impl, mode=mode)
                try:
                    record["ms"] = median_ms(call, *reps, grad_to_none=clear)
                except Exception as error:  # reported, so the other lines still come
                    record["error"] = repr(error)[:300]
                emit(record, args.out)
    # (sweep, settings, the case's call, how its result is compared with the first setting's)
    sweeps = (("fwd", FWD_SWEEP, "forward", "rel_diff", relative_difference),
              ("bwd", BWD_SWEEP, "backward", "max_grad_rel_diff", _max_grad_difference))
    kinds = args.sweep_kinds.split(",")
    for kind, grid, call, diff_key, difference in sweeps:
        for settings in grid if kind in kinds else ():
            for case in cases:
                if over_budget(args, started):
                    return False
                record = dict(case["base"], sweep=kind, settings=settings_record(settings))
                try:
                    with use_settings(settings):
                        result = case[call]()
                        ms = median_ms(case[call], *reps)
                except Exception as error:  # a setting that fails to compile or run
                    emit(dict(record, error=repr(error)[:300]), args.out)
                    continue
                reference = case.setdefault(f"{kind}_reference", result)
                emit(dict(record, ms=ms, **{diff_key: difference(result, reference)}),
                     args.out)
    return True


#: Pointer arguments of the SSD kernels that hold bf16 (benchmark inputs) / int32 data; the
#: per-chunk states are bf16 with ``half_states``, every other pointer float32.
_BF16_POINTERS = {"x_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "dout_ptr", "dx_ptr",
                  "dz_ptr", "dB_ptr", "dC_ptr", "out_ptr"}
_STATE_POINTERS = {"local_ptr", "dlocal_ptr", "states_ptr"}
_INT_POINTERS = {"seg_ptr", "start_ptr", "cu_ptr", "order_ptr"}


def _compile_for_sm90(kernel, constexprs: dict, settings: LaunchSettings, warps: int) -> str:
    """PTX of ``kernel`` for an H100/H200 (no GPU needed) with the benchmark's dtypes."""
    import inspect

    signature = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            signature[name] = "constexpr"
        elif not name.endswith("_ptr"):
            signature[name] = "i32"
        elif name in _BF16_POINTERS or (settings.half_states and name in _STATE_POINTERS):
            signature[name] = "*bf16"
        elif name in _INT_POINTERS:
            signature[name] = "*i32"
        else:
            signature[name] = "*fp32"
    compiled = compile_kernel(kernel, constexprs, warps, 90, signature=signature,
                              num_stages=settings.bwd_stages)
    return compiled.asm["ptx"]


def backward_registers(settings: LaunchSettings, state: int) -> list[dict]:
    """``ptxas -v`` of the two backward chunk kernels under ``settings`` (heads of 64, bf16,
    z, D, dt_bias, softplus, no initial / final states), compiled for sm_90 on this machine."""
    Q = settings.bwd_chunk
    common = dict(HAS_Z=True, HAS_INIT=False, HAS_DFINAL=False, GENERAL=False, Q=Q,
                  IEEE=False, REVERSE=False)
    block_p = min(HEAD_DIM, settings.bwd_block_p)
    dx = dict(common, HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, FINISH=block_p == HEAD_DIM,
              FROM_OUTPUTS=settings.bwd_step_from_outputs, BLOCK_P=block_p,
              BLOCK_N=min(state, settings.bwd_block_n))
    bc = dict(common, BLOCK_P=HEAD_DIM, BLOCK_N=min(state, settings.bwd_bc_block_n))
    return [dict(kernel=name, **ptx_registers(_compile_for_sm90(kernel, constexprs, settings,
                                                                warps)))
            for name, kernel, constexprs, warps in (
                ("dx_dz_ddt", SST._chunk_bwd_kernel, dx, settings.bwd_warps),
                ("dB_dC", SST._chunk_bwd_bc_kernel, bc, settings.bwd_bc_warps))]


def registers_report(args, states) -> None:
    """``--registers``: registers and spills of the backward kernels per BWD_SWEEP setting."""
    for state in states:
        for settings in BWD_SWEEP:
            for record in backward_registers(settings, state):
                emit(dict(record, registers="sm_90", N=state,
                          settings=settings_record(settings)), args.out)


def over_budget(args, started: float) -> bool:
    return time.perf_counter() - started > args.budget_s


def profile(args, scan, device, states) -> None:
    """Per-kernel CUDA time of one forward + backward of each implementation (mean of 3)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for state in states:
        for name in args.workloads.split(","):
            inputs = make_inputs(name, state, device, args.tiny)
            ours = geossm_calls(inputs)
            impls = [("geossm", ours[1])]
            if scan is not None:
                impls.append(("mamba_ssm", mamba_ssm_calls(scan, inputs, ours[3])[1]))
            for impl, call in impls:
                call()
                activities = [ProfilerActivity.CUDA] if device.type == "cuda" else []
                with torch_profile(activities=activities or [ProfilerActivity.CPU]) as prof:
                    for _ in range(3):
                        call()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                kernels = []
                for event in prof.key_averages():
                    total = getattr(event, "device_time_total", None)
                    if total is None:
                        total = getattr(event, "cuda_time_total", 0.0)
                    if total > 0:
                        kernels.append((event.key[:80], round(total / 3, 1), event.count // 3))
                kernels.sort(key=lambda k: -k[1])
                emit(dict(workload=name, N=state, profile=impl,
                          kernels_us=[list(k) for k in kernels[:14]]), args.out)
            release(inputs, device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--states", default="64,128")
    parser.add_argument("--mamba-ssm-path", default=None)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--no-backward", action="store_true")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--sweep", action="store_true")
    mode.add_argument("--profile", action="store_true")
    mode.add_argument("--registers", action="store_true",
                      help="no GPU: registers / spills of the backward kernels compiled for "
                           "sm_90 per BWD_SWEEP setting (ptxas -v)")
    parser.add_argument("--budget-s", type=float, default=140.0,
                        help="--sweep / --quick stop starting new measurements after this "
                             "many seconds")
    parser.add_argument("--sweep-kinds", default="compare,fwd,bwd,profile",
                        help="--sweep: what to run, in this order: compare (geossm's defaults "
                             "against mamba_ssm), the fwd and / or bwd setting grids, the "
                             "per-kernel profile")
    parser.add_argument("--settings", default=None,
                        help="JSON object of LaunchSettings fields that replace the defaults "
                             "for every geossm call (e.g. '{\"bwd_chunk\": 128}'); the sweep "
                             "grids keep their own settings")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    if args.registers:
        registers_report(args, [int(s) for s in args.states.split(",")])
        return 0
    settings = parse_settings(args.settings, parser)
    with use_settings(settings):
        run(args, parser, settings)
    return 0


def parse_settings(text: str | None, parser) -> LaunchSettings:
    """``--settings``: the defaults with the JSON object's fields replaced."""
    if text is None:
        return _DEFAULT
    try:
        fields = json.loads(text)
        return dataclasses.replace(_DEFAULT, **fields)
    except (ValueError, TypeError) as error:
        parser.error(f"--settings must be a JSON object of LaunchSettings fields with valid "
                     f"values, got {text!r}: {error}")


def run(args, parser, settings: LaunchSettings) -> None:
    """The measurements of ``main`` under ``settings``."""
    device = bench_device()
    if device.type != "cuda" and not args.tiny:
        parser.error("needs a CUDA GPU (or --tiny for the CPU smoke test)")
    started = time.perf_counter()
    scan, reason = load_mamba_ssm(args.mamba_ssm_path)
    if scan is None:
        emit({"impl": "mamba_ssm", "skipped": reason}, args.out)
    states = [16] if args.tiny else [int(s) for s in args.states.split(",")]
    finished = True
    if args.sweep:
        finished = sweep(args, scan, device, states, started)
        if not finished:
            emit({"sweep": "stopped", "reason": f"--budget-s {args.budget_s} reached"},
                 args.out)
    if args.profile or (args.sweep and "profile" in args.sweep_kinds.split(",")):
        # the profile of a sweep: the largest N on the first and third workload only
        chosen = args.workloads.split(",")
        if args.sweep:
            args.workloads = ",".join(chosen[0:1] + chosen[2:3])
            states = states[-1:]
        profile(args, scan, device, states)
    elif not args.sweep and not compare(args, scan, device, states, started):
        emit({"quick": "stopped", "reason": f"--budget-s {args.budget_s} reached"}, args.out)
    emit({"done": True, "elapsed_s": round(time.perf_counter() - started, 1),
          "defaults": dataclasses.asdict(_DEFAULT),
          "settings": settings_record(settings)}, args.out)


if __name__ == "__main__":
    sys.exit(main())
