"""Triton compiles caused by batches of changing layout, and the seconds they cost.

Training feeds the kernels a new token count, segment count and chunk count with every batch.
Triton specialises each int argument on being 1 or a multiple of 16 unless the kernel lists it
in ``do_not_specialize``, so without that every new combination compiles the kernel again in
the middle of training. This script runs the Mamba-1 scan, the SSD scan and the causal conv
(Triton backends, forward + backward, both directions) over batches whose token and segment
counts are 1, multiples of 16 and neither, twice: the first pass compiles, the second reuses.
One JSON line: compiled variants per kernel, the first and second pass's seconds, the card.
Point ``TRITON_CACHE_DIR`` at an empty folder, or the on-disk cache hides the compile cost.

Usage: python benchmarks/triton_compiles.py [--label NAME] [--out FILE] [--dim 64]
    (CPU: ``--tiny`` runs the same calls through the interpreter, which compiles nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

# token counts of 1, multiples of 16 and neither; 1, 16 and other segment counts; one chunk
# per segment and several
BATCHES = ([1], [16], [5, 27, 3], [64] * 16, [300, 33], [7] * 17, [129, 640], [48, 48, 48])
TINY_BATCHES = ([1], [5, 3], [16])


def batch_inputs(lengths, dim: int, device, seed: int):
    """Random leaf inputs of one packed batch: u, delta, z (T, dim), A (dim, 16), B, C (T, 16),
    cu_seqlens (S+1,) int32."""
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    u, delta, z = (torch.randn(T, dim, generator=g).to(device).requires_grad_()
                   for _ in range(3))
    A = -torch.rand(dim, 16, generator=g).to(device)
    B, C = (torch.randn(T, 16, generator=g).to(device) for _ in range(2))
    cu = torch.tensor([0, *lengths]).cumsum(0).to(device=device, dtype=torch.int32)
    return u, delta, z, A, B, C, cu


def run_batch(lengths, dim: int, device, seed: int) -> None:
    """Forward and backward of the three Triton kernels on one batch, both directions."""
    from geossm.kernels import causal_conv1d, selective_scan, ssd_scan

    u, delta, z, A, B, C, cu = batch_inputs(lengths, dim, device, seed)
    T, heads = len(u), dim // 16
    for reverse in (False, True):
        selective_scan(u, delta, A, B, C, z=z, delta_softplus=True, cu_seqlens=cu,
                       reverse=reverse, backend="triton").sum().backward()
        x = u.detach().view(T, heads, 16).requires_grad_()
        ssd_scan(x, delta.detach()[:, :heads], -torch.rand(heads, device=device),
                 B.view(T, 1, 16), C.view(T, 1, 16), cu_seqlens=cu, dt_softplus=True,
                 reverse=reverse, backend="triton").sum().backward()
        w = torch.randn(dim, 4, device=device, requires_grad=True)
        causal_conv1d(u, w, cu_seqlens=cu, activation="silu", reverse=reverse,
                      backend="triton").sum().backward()


def kernel_variants() -> dict:
    """``{module.kernel: compiled variants}`` of every loaded geossm Triton kernel."""
    from geossm.kernels._common import compiled_variants, loaded_kernels

    return {name: compiled_variants(fn)
            for name, fn in loaded_kernels("geossm.kernels").items()}


def timed_pass(batches, dim: int, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for seed, lengths in enumerate(batches):
        run_batch(lengths, dim, device, seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--label", default="this tree")
    p.add_argument("--out", default=None)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--tiny", action="store_true",
                   help="three small batches; on a CPU through the Triton interpreter")
    args = p.parse_args(argv)
    if args.dim < 16 or args.dim % 16:
        p.error(f"--dim must be a positive multiple of 16 (SSD heads of 16), got {args.dim}")
    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.tiny:
            p.error("needs a CUDA GPU (--tiny runs a CPU smoke test through the interpreter)")
        os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton is first imported
    device = torch.device("cuda" if cuda else "cpu")
    batches = TINY_BATCHES if args.tiny else BATCHES
    dim = 32 if args.tiny else args.dim
    first_s = timed_pass(batches, dim, device)
    second_s = timed_pass(batches, dim, device)
    variants = kernel_variants()
    row = dict(label=args.label, device=torch.cuda.get_device_name(device) if cuda else "cpu",
               batches=len(batches), first_pass_s=round(first_s, 3),
               second_pass_s=round(second_s, 3), compiled=sum(variants.values()),
               max_per_kernel=max(variants.values(), default=0),
               triton_cache_dir=os.environ.get("TRITON_CACHE_DIR"), per_kernel=variants)
    line = json.dumps(row)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
