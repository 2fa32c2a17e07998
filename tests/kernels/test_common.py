"""``geossm.kernels._common``'s Triton variant counters, and what they guard: a Triton kernel
compiles once per model, not once per batch layout (the token, segment and chunk counts that
change from batch to batch are not specialised on)."""

import inspect
import sys
import types

import pytest
import torch

from geossm.kernels import _common
from tests.benchmarks.conftest import load_benchmark

try:
    import triton
except ImportError:   # pragma: no cover - CI installs triton
    triton = None

# every Triton kernel module and the batch-dependent ints its kernels leave unspecialised
KERNEL_MODULES = ("geossm.kernels.selective_scan_triton.fwd_chunk_state",
                  "geossm.kernels.selective_scan_triton.fwd_output",
                  "geossm.kernels.selective_scan_triton.fwd_serial",
                  "geossm.kernels.selective_scan_triton.carry",
                  "geossm.kernels.selective_scan_triton.bwd_h_pass",
                  "geossm.kernels.selective_scan_triton.bwd_dh_pass",
                  "geossm.kernels.causal_conv1d_triton",
                  "geossm.kernels.ssd_scan_triton")
# ints that are shapes of the model, not of the batch: specialising on them is free
MODEL_INTS = {"D", "G", "N", "dpg", "nblk_g", "DN", "H", "P", "PN", "heads_per_group"}
# ints that change with the batch: they must never be specialised on
BATCH_INTS = {"S", "T", "K", "L", "dL", "nprog", "n_rows_bound", "n_chunks_bound",
              "n_pieces_bound"}


def test_triton_variants_counts_each_kernel_once(monkeypatch):
    class Kernel:  # what the counter reads of a Triton JITFunction: per device, (cache, ...)
        def __init__(self, *keys):
            self.device_caches = {0: ({k: object() for k in keys}, {}, None, None, None)}

    class Autotuner:  # wrappers keep the next function in ``fn``
        def __init__(self, fn):
            self.fn = fn

    scan, conv = Kernel("fp32", "bf16", "bf16/T%16"), Kernel("fp32")
    first, second, other = (types.ModuleType(n) for n in ("geossm_t.a", "geossm_t.b", "x.c"))
    first.scan, first.conv = scan, Autotuner(conv)
    second.scan = scan                        # imported again elsewhere: counted once
    other.kernel = Kernel("a", "b")           # outside the prefix
    for module in (first, second, other):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    assert _common.triton_variants("geossm_t") == 4
    scan.device_caches[1] = ({"fp32": object()}, {}, None, None, None)   # a second device
    assert _common.triton_variants("geossm_t") == 5
    assert _common.compiled_variants(conv) == 1 and _common.compiled_variants(object()) == 0


def _kernels():
    """``(name, python function, do_not_specialize names)`` of every Triton kernel (launched
    with a grid: a function with a ``tl.program_id`` call) of the kernel modules."""
    import importlib

    found = []
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            fn = getattr(obj, "fn", None)
            if fn is None or "tl.program_id" not in inspect.getsource(fn):
                continue
            names = getattr(obj, "do_not_specialize", None)
            if names is None:   # the interpreter keeps the decorator's arguments in ``kwargs``
                names = getattr(obj, "kwargs", {}).get("do_not_specialize")
            found.append((f"{module_name}.{name}", fn, tuple(names or ())))
    return found


@pytest.mark.skipif(triton is None, reason="triton is not installed")
def test_batch_dependent_ints_are_not_specialised():
    """Every int argument of every kernel is either a model shape or listed in the kernel's
    ``do_not_specialize``; the listed names are real non-constexpr arguments (a typo would
    silently bring the per-batch recompiles back)."""
    kernels = _kernels()
    assert len(kernels) >= 15, [k[0] for k in kernels]
    for name, fn, unspecialised in kernels:
        params = inspect.signature(fn).parameters
        runtime = {p for p, v in params.items() if "constexpr" not in str(v.annotation)}
        assert set(unspecialised) <= runtime, (name, set(unspecialised) - runtime)
        batch_args = runtime & BATCH_INTS
        assert batch_args <= set(unspecialised), (name, batch_args - set(unspecialised))
        assert not set(unspecialised) & MODEL_INTS, name


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs CUDA: compiled Triton kernels (the interpreter compiles none)")
def test_batches_of_any_layout_compile_each_kernel_once():
    """Token counts of 1, multiples of 16 and neither, 1, 16 and other segment counts, one
    chunk and several: each kernel compiles once per direction (REVERSE is a constexpr), not
    once per batch layout. The SSD chunk-state kernel also runs once per chunk length (the
    constexpr ``Q``): the forward's ``chunk`` and the backward's ``bwd_chunk``."""
    from geossm.kernels.ssd_scan_triton import LaunchSettings

    ssd = LaunchSettings()
    allowed = {"geossm.kernels.ssd_scan_triton._chunk_state_kernel":
               2 * len({ssd.chunk, ssd.bwd_chunk})}
    bench = load_benchmark("triton_compiles")
    before = bench.kernel_variants()
    bench.timed_pass(bench.BATCHES, 32, torch.device("cuda"))
    grown = {name: n - before.get(name, 0) for name, n in bench.kernel_variants().items()}
    assert sum(grown.values()) >= 15, grown
    too_many = {name: n for name, n in grown.items() if n > allowed.get(name, 2)}
    assert not too_many, too_many
