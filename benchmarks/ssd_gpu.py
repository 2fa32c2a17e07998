"""GPU benchmark of the Mamba-2 SSD scan (``geossm.kernels.ssd_scan``, Triton backend).

Prints one JSON line per measurement (and appends them to ``--out`` if given). Medians come from
``triton.testing.do_bench`` (10 ms warm-up, 50 ms of repetitions, so that the whole run takes a
few minutes).

Workloads: the four segment-length sets of ``benchmarks/scan_gpu.py`` (scene, windows,
graph_tokens, long) with their widths ``D`` split into heads of ``P = 64`` channels
(``H = D / 64``), one group of ``B``/``C``, state sizes ``N = 64`` and ``N = 128``; bf16
``x, dt, B, C, z``, fp32 ``A, D, dt_bias``, ``dt_softplus=True``, z and D given.

Measured per workload and N:

- ``geossm``: the public ``ssd_scan(..., backend="triton")``, forward (no grad) and forward +
  backward (autograd, all inputs requiring grad).
- ``mamba_ssm``: ``mamba_chunk_scan_combined`` (chunk 256) with ``seq_idx`` (its packed varlen
  path) on the same inputs viewed as batch 1, when importable: pass the directory that holds
  the ``mamba_ssm`` package with ``--mamba-ssm-path`` (only its pure-Python/Triton SSD modules
  are loaded, not its compiled extensions); otherwise a line says why it is skipped. The
  relative difference (Frobenius) of the two forward outputs is reported as a check, and
  ``rel_diff_to_chunked`` compares the Triton forward with the chunked torch backend.

FLOPs: the matmul work of a chunked SSD with chunk ``Q`` per token and head is
``2QN + 2QP`` (intra-chunk ``C B^T`` and ``(CB ⊙ L) x``) plus ``4PN`` (chunk state and
entering state), counted with each implementation's own ``Q`` (geossm 64, mamba_ssm 256);
forward + backward counts three times the forward. ``peak_fraction`` is against
``--peak-tflops`` (default 790: the measured bf16 dense tensor-core peak of an H200).

Usage::

    python benchmarks/ssd_gpu.py [--out FILE] [--workloads scene,windows,graph_tokens,long]
        [--states 64,128] [--mamba-ssm-path DIR] [--no-backward]

``--tiny`` cuts every workload to at most 4 segments of at most 16 tokens, one head of 16
channels and N = 16 and, without a GPU, runs through Triton's CPU interpreter with wall-clock
timing: a smoke test of the script's code paths, not a measurement.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import types

import torch

if "--tiny" in sys.argv[1:] and not torch.cuda.is_available():
    # Triton reads this when its kernels are defined, i.e. before geossm's kernels import.
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scan_gpu import (WORKLOAD_D, bench_device, card_name, emit, median_ms,  # noqa: E402
                      workload_lengths)

from geossm.kernels import ssd_scan  # noqa: E402
from geossm.kernels.ssd_scan_triton import CHUNK  # noqa: E402
from geossm.packed import cu_seqlens_from_lengths  # noqa: E402

HEAD_DIM = 64
MAMBA_SSM_CHUNK = 256
WORKLOADS = ("scene", "windows", "graph_tokens", "long")


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
    """``(forward, forward_backward, leaves)`` closures of the public Triton path."""
    args = {k: v for k, v in inputs.items() if k != "cu_seqlens"}
    cu = inputs["cu_seqlens"]
    leaves = {k: v.detach().clone().requires_grad_() for k, v in args.items()}
    dout = torch.randn_like(args["x"])

    def forward():
        with torch.no_grad():
            return ssd_scan(**args, dt_softplus=True, cu_seqlens=cu, backend="triton")

    def forward_backward():
        out = ssd_scan(**leaves, dt_softplus=True, cu_seqlens=cu, backend="triton")
        out.backward(dout)

    return forward, forward_backward, list(leaves.values())


def mamba_ssm_calls(scan, inputs: dict):
    """The same closures for ``mamba_chunk_scan_combined`` with ``seq_idx`` (batch 1)."""
    cu = inputs["cu_seqlens"].long()
    T = inputs["x"].shape[0]
    seq_idx = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=cu.device),
                                      cu[1:] - cu[:-1], output_size=T).to(torch.int32)[None]
    batch = {k: (v[None] if k in ("x", "dt", "B", "C", "z") else v)
             for k, v in inputs.items() if k != "cu_seqlens"}
    leaves = {k: v.detach().clone().requires_grad_() for k, v in batch.items()}
    dout = torch.randn_like(batch["x"])

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
        call(leaves).backward(dout)

    return forward, forward_backward, list(leaves.values())


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


def measure(impl: str, calls, flops_fwd: float, base: dict, args, out_file) -> None:
    forward, forward_backward, leaves = calls
    fwd_ms = median_ms(forward, warmup=10, rep=50)
    emit(dict(base, impl=impl, mode="fwd", ms=fwd_ms, tflops=flops_fwd / fwd_ms * 1e-9,
              peak_fraction=flops_fwd / fwd_ms * 1e-9 / args.peak_tflops), out_file)
    if not args.no_backward:
        ms = median_ms(forward_backward, warmup=10, rep=50, grad_to_none=leaves)
        emit(dict(base, impl=impl, mode="fwd+bwd", ms=ms, tflops=3 * flops_fwd / ms * 1e-9,
                  peak_fraction=3 * flops_fwd / ms * 1e-9 / args.peak_tflops), out_file)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--states", default="64,128")
    parser.add_argument("--mamba-ssm-path", default=None)
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    device = bench_device()
    if device.type != "cuda" and not args.tiny:
        parser.error("needs a CUDA GPU (or --tiny for the CPU smoke test)")
    scan, reason = load_mamba_ssm(args.mamba_ssm_path)
    if scan is None:
        emit({"impl": "mamba_ssm", "skipped": reason}, args.out)
    states = [16] if args.tiny else [int(s) for s in args.states.split(",")]
    for name in args.workloads.split(","):
        for state in states:
            inputs = make_inputs(name, state, device, args.tiny)
            T, H, P = inputs["x"].shape
            base = dict(workload=name, T=T, H=H, P=P, N=state,
                        segments=inputs["cu_seqlens"].numel() - 1, device=card_name(device))
            ours = geossm_calls(inputs)
            base["rel_diff_to_chunked"] = chunked_difference(inputs, ours[0]())
            measure("geossm", ours, forward_flops(T, H, P, state, CHUNK),
                    dict(base, chunk=CHUNK), args, args.out)
            if scan is not None:
                theirs = mamba_ssm_calls(scan, inputs)
                diff = relative_difference(ours[0](), theirs[0]()[0])
                measure("mamba_ssm", theirs, forward_flops(T, H, P, state, MAMBA_SSM_CHUNK),
                        dict(base, chunk=MAMBA_SSM_CHUNK, rel_diff_to_geossm=diff), args,
                        args.out)
            del inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
