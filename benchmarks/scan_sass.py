"""Instruction count of the Triton selective scan's step loops, from the sm_90 SASS (no GPU).

Every recurrence pass is compiled for an H100/H200 (``sm_90``) on this machine (Triton compiles
for a target without a device; ``ptxas`` must be installed) and disassembled with ``nvdisasm``
(``--nvdisasm PATH``, the ``NVDISASM`` environment variable or PATH; pip package
``nvidia-cuda-nvdisasm``). The step loop is the innermost loop that holds an ``MUFU.EX2``; its
body is counted once per iteration (one time step of a program's (N, BD) state tile).

One JSON line per (variant, pass): SASS instructions of the loop body per thread, how many of
them are MUFU / FP32 (FFMA, FMUL, FADD) / loads / stores / shuffles / branches, the (token,
channel, state) elements one thread advances per step, and ``instr_per_element`` = loop
instructions per element per thread (a thread-instruction count; divide by 32 for
warp-instructions). Constexprs are those of the benchmark workloads: bf16 inputs, N = 16,
one group, softplus, delta_bias, D and z given, no initial state, D = 128. The kernels are
compiled as Triton's launcher specialises them on the GPU (``launch_specialisation``: pointers
16-byte aligned, the one group a constant, D and D * N divisible by 16, the batch's counts
unspecialised); ``--unspecialised`` drops that, as the counts of sessions 16-37 did: their
step loops were 15-40 % longer than the ones the GPU runs.

Usage: python benchmarks/scan_sass.py [--nvdisasm PATH] [--out FILE] [--arch 90] [--unspecialised]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

BF16_POINTERS = {"u", "delta", "Bm", "Cm", "z", "dout", "out", "du", "dz"}
INT_POINTERS = {"cu_seq", "cu_nl", "row_seg", "chunk_meta", "piece_meta", "cu_ch"}
SCALARS = {"S", "n_rows_bound", "n_chunks_bound", "nprog", "D", "G", "N", "dpg", "nblk_g", "T",
           "DN", "n_pieces_bound"}
N_STATE = 16


def kernel_signature(fn, constexprs: dict) -> dict:
    sig = {}
    params = inspect.signature(fn.fn).parameters
    constexprs = {k: v for k, v in constexprs.items() if k in params}
    for name in params:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in SCALARS:
            sig[name] = "i32"
        elif name in BF16_POINTERS:
            sig[name] = "*bf16"
        elif name in INT_POINTERS:
            sig[name] = "*i32"
        else:
            sig[name] = "*fp32"
    return sig


def launch_specialisation(fn, constexprs: dict, model_ints: dict) -> tuple[dict, dict]:
    """The constexprs and attributes Triton's launcher gives ``fn`` at run time, for a compile
    without a GPU: every pointer 16-byte aligned (PyTorch's allocations are), every int in
    ``model_ints`` (the model's shapes: D, G, ...) a constant when it is 1 and divisible by 16
    when it is; the batch's ints (token, segment, chunk and program counts) nothing, as the
    kernels list them in ``do_not_specialize``. Returns ``(constexprs, attrs)`` for
    ``compile_kernel``."""
    constexprs = dict(constexprs)
    for name, value in model_ints.items():
        if value == 1 and name in inspect.signature(fn.fn).parameters:
            constexprs[name] = 1
    sig = kernel_signature(fn, constexprs)
    attrs = {}
    for index, (name, kind) in enumerate(sig.items()):
        aligned = kind.startswith("*") or (kind == "i32" and model_ints.get(name, 1) % 16 == 0)
        if aligned:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return constexprs, attrs


def ptxas_report(text: str) -> dict:
    """Registers per thread and spill-store bytes from ``ptxas -v`` output (None if absent)."""
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return dict(n_regs=int(regs.group(1)) if regs else None,
                spill_store_bytes=int(spill.group(1)) if spill else None)


def find_ptxas() -> str | None:
    """``$PTXAS``, Triton's bundled ptxas, or the one on PATH."""
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                           "ptxas")
    for candidate in (os.environ.get("PTXAS"), bundled, shutil.which("ptxas")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def ptx_registers(ptx: str, arch: int = 90) -> dict:
    """``ptxas -v`` of ``ptx`` for ``sm_<arch>a``; a PTX ISA newer than the ptxas knows is
    relabelled to the newest it accepts (Triton may be newer than its bundled ptxas)."""
    ptxas = find_ptxas()
    if ptxas is None:
        return dict(n_regs=None, spill_store_bytes=None, error="no ptxas found")
    for _ in range(2):
        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
            f.write(ptx)
            f.flush()
            err = subprocess.run([ptxas, f"-arch=sm_{arch}a", "-v", f.name, "-o", os.devnull],
                                 capture_output=True, text=True).stderr
        newest = re.search(r"current version is '(\d+\.\d+)'", err)
        if not newest:
            break
        ptx = re.sub(r"^\.version \d+\.\d+", f".version {newest.group(1)}", ptx, flags=re.M)
    return ptxas_report(err)


def compile_kernel(fn, constexprs: dict, num_warps: int, arch: int, signature: dict | None = None,
                   num_stages: int | None = None, attrs: dict | None = None,
                   maxnreg: int | None = None):
    """``fn`` compiled for ``sm_<arch>`` on this machine (no GPU needed). ``signature``:
    parameter name -> Triton type (default: the scan kernels' ``kernel_signature``); ``attrs``:
    ``{(index,): [["tt.divisibility", 16]]}`` (``launch_specialisation``), default none."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = signature if signature is not None else kernel_signature(fn, constexprs)
    names = list(sig)
    constexprs = {k: v for k, v in constexprs.items() if sig.get(k) == "constexpr"}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in constexprs.items()},
                    attrs=attrs)
    options = dict(num_warps=num_warps)
    if num_stages is not None:
        options["num_stages"] = num_stages
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^\.(L_x_\d+):")
_TARGET = re.compile(r"`\(\.(L_x_\d+)\)")


def sass_loops(text: str) -> list[list[str]]:
    """Opcode lists of every loop body (a backward branch to an earlier label)."""
    ops, labels = [], {}
    for line in text.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            labels[label.group(1)] = len(ops)
            continue
        m = _LINE.search(line)
        if m:
            ops.append((m.group(3), m.group(4)))
    loops = []
    for index, (op, rest) in enumerate(ops):
        target = _TARGET.search(rest)
        if op == "BRA" and target and labels.get(target.group(1), index + 1) <= index:
            loops.append((labels[target.group(1)], index))
    return [[op for op, _ in ops[a:b + 1]] for a, b in loops]


def step_loop(text: str) -> list[str]:
    """The innermost loop holding an MUFU.EX2 (the per-step recurrence)."""
    loops = [body for body in sass_loops(text) if "MUFU.EX2" in body]
    if not loops:
        raise ValueError("no loop with MUFU.EX2 in the SASS")
    return min(loops, key=len)


def count(body: list[str]) -> dict:
    def n(pred):
        return sum(1 for op in body if pred(op))

    return dict(loop_instructions=len(body),
                mufu=n(lambda op: op.startswith("MUFU")),
                mufu_ex2=n(lambda op: op == "MUFU.EX2"),
                fp32=n(lambda op: op.split(".")[0] in ("FFMA", "FMUL", "FADD", "FMNMX", "FSEL",
                                                      "FSETP")),
                loads=n(lambda op: op.startswith(("LDG", "LDS"))),
                stores=n(lambda op: op.startswith(("STG", "STS"))),
                shuffles=n(lambda op: op.startswith("SHFL")),
                barriers=n(lambda op: op.startswith("BAR")))


def model_ints(D: int, bd: int) -> dict:
    """The model-shape ints of a pass at ``D`` channels, one group and ``bd`` channels per
    program, as the launcher passes them (``launch_specialisation``)."""
    return dict(D=D, G=1, dpg=D, nblk_g=D // bd, DN=D * N_STATE)


def register_cap(config, pass_name: str):
    """The ``LaunchConfig`` register cap of a pass, by the kernel it launches."""
    if pass_name.startswith("fwd_chunk_state"):
        return config.register_cap("chunk_state")
    if pass_name.startswith("fwd_output"):
        return config.register_cap("output")
    if pass_name.startswith("fwd_"):
        return config.register_cap("fwd")
    return config.register_cap(pass_name.removeprefix("bwd_").split(" ")[0])


def passes(ST, config):
    """``[(pass name, jit function, constexprs, num_warps, channels per program)]``."""
    from geossm.kernels.selective_scan_triton import (bwd_dh_pass, bwd_h_pass, fwd_chunk_state,
                                                      fwd_output, fwd_serial)

    D = 128
    bd = min(config.max_bd, D)
    bd_bwd = min(config.max_bd_bwd, D)
    bd_serial = min(config.bd_serial, D)
    warps = config.num_warps_fwd or max(1, min(4, bd // 32))
    warps_bwd = config.num_warps_bwd or max(1, min(4, bd_bwd // 32))
    warps_serial = config.num_warps_serial or max(1, min(4, bd_serial // 32))
    common = dict(L=config.chunk, NP=N_STATE, N=N_STATE, REVERSE=False, SOFTPLUS=True, FAST=True,
                  HAS_BIAS=True, POLY_EVERY=config.exp_poly_every,
                  STATE_IN_THREAD=config.state_in_thread)
    full = dict(common, HAS_D=True, HAS_Z=True, HAS_INIT=False)
    out = []
    if config.forward in ("serial", "pieces"):
        from geossm.kernels.selective_scan_triton.config import SERIAL_PIECE_CHUNKS

        serial = config.forward == "serial"
        pieces = SERIAL_PIECE_CHUNKS if serial else (config.piece_chunks or 16)
        if not serial:
            out.append(("fwd_chunk_state (pieces)", fwd_chunk_state.fwd_chunk_state,
                        dict(common, BD=bd, L=config.chunk * pieces), warps, bd))
        out.append(("fwd_serial" if serial else "fwd_serial (pieces)", fwd_serial.fwd_serial,
                    dict(full, BD=bd_serial, P=pieces, NEED_FINAL=True,
                         STATE_IN_THREAD=config.serial_state_in_thread),
                    warps_serial, bd_serial))
    else:
        out.append(("fwd_chunk_state", fwd_chunk_state.fwd_chunk_state,
                    dict(common, BD=bd), warps, bd))
        out.append(("fwd_output", fwd_output.fwd_output, dict(full, BD=bd, NEED_FINAL=True),
                    warps, bd))
    sub = config.da_sub_length("cuda")   # the GPU's dA sub-chunk (compiled for sm_90)
    # fuse_backward: the h-pass also sweeps single chunks backward (the loop counted is the
    # shorter of its two step loops)
    fuse = config.fuse_backward
    out.append(("bwd_h_pass (fused)" if fuse else "bwd_h_pass", bwd_h_pass.bwd_h_pass,
                dict(full, BD=bd_bwd, SUB=sub, HAS_DFINAL=False, NEED_DINIT=False,
                     FUSE_DH=fuse), warps_bwd, bd_bwd))
    out.append(("bwd_dh_pass", bwd_dh_pass.bwd_dh_pass,
                dict(full, BD=bd_bwd, SUB=sub, HAS_DFINAL=False, ONLY_MULTI=fuse),
                warps_bwd, bd_bwd))
    return out


def find_nvdisasm(given: str | None) -> str:
    path = given or os.environ.get("NVDISASM") or shutil.which("nvdisasm")
    if not path:
        raise SystemExit("nvdisasm not found: pass --nvdisasm PATH (pip package "
                         "nvidia-cuda-nvdisasm) or set NVDISASM")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nvdisasm", default=None)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--out", default=None)
    p.add_argument("--unspecialised", action="store_true",
                   help="compile without the launcher's specialisations (no pointer alignment, "
                        "G an int): the counts of sessions 16-37, which overstated the loops")
    p.add_argument("--variants", default="v1;sit:forward=chunked,state_in_thread=true;"
                                         "serial:forward=serial;"
                                         "pieces:forward=pieces,piece_chunks=16;"
                                         "poly_all:forward=chunked,state_in_thread=true,"
                                         "exp_poly_every=1;"
                                         "serial_poly_all:forward=serial,exp_poly_every=1;"
                                         "serial_fused:forward=serial,fuse_backward=true",
                   help="as in scan_gpu.py; a loop with exp_poly_every=k > 1 holds both "
                        "branches, so count k = 1 (every step on the polynomial) and weight: "
                        "per step = ((k - 1) * count(k = 0) + count(k = 1)) / k")
    args = p.parse_args(argv)
    nvdisasm = find_nvdisasm(args.nvdisasm)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from scan_gpu import parse_variants

    import triton

    from geossm.kernels import selective_scan_triton as ST

    for vname, config in parse_variants(args.variants, ST):
        for name, fn, constexprs, warps, bd in passes(ST, config):
            attrs = None
            if not args.unspecialised:
                constexprs, attrs = launch_specialisation(fn, constexprs, model_ints(128, bd))
            kernel = compile_kernel(fn, constexprs, warps, args.arch, attrs=attrs,
                                    maxnreg=register_cap(config, name))
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(kernel.asm["cubin"])
                f.flush()
                text = subprocess.run([nvdisasm, "-c", f.name], check=True,
                                      capture_output=True, text=True).stdout
            counts = count(step_loop(text))
            per_thread = bd * N_STATE / (32 * warps)
            rec = dict(variant=vname, kernel=name, specialised=not args.unspecialised,
                       triton=triton.__version__,
                       arch=f"sm_{args.arch}", BD=bd, num_warps=warps,
                       elements_per_thread_per_step=per_thread, **counts,
                       **ptx_registers(kernel.asm["ptx"], args.arch),
                       instr_per_element=round(counts["loop_instructions"] / per_thread, 2))
            line = json.dumps(rec)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
