"""benchmarks/scan_sass.py: the SASS loop finder on a hand-written listing (no GPU, no nvdisasm)."""

from __future__ import annotations

from tests.benchmarks.conftest import load_benchmark

LISTING = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
.L_x_1:
        /*0020*/                   FMUL R3, R2, R2 ;
        /*0030*/                   MUFU.EX2 R3, R3 ;
        /*0040*/                   FFMA R5, R3, R5, R6 ;
        /*0050*/              @!P0 BRA `(.L_x_1) ;
        /*0060*/                   SHFL.BFLY PT, R7, R5, 0x1, 0x1f ;
        /*0070*/              @P1 BRA `(.L_x_0) ;
        /*0080*/                   BRA `(.L_x_2) ;
.L_x_2:
        /*0090*/                   EXIT ;
"""


def test_step_loop_is_the_innermost_loop_with_an_exponential():
    script = load_benchmark("scan_sass")
    loops = script.sass_loops(LISTING)
    assert sorted(len(body) for body in loops) == [4, 7]   # the forward BRA is no loop
    body = script.step_loop(LISTING)
    assert body == ["FMUL", "MUFU.EX2", "FFMA", "BRA"]
    counts = script.count(body)
    assert counts["loop_instructions"] == 4 and counts["mufu_ex2"] == 1
    assert counts["fp32"] == 2 and counts["shuffles"] == 0
    assert script.count(max(loops, key=len))["shuffles"] == 1


def test_ptxas_report_reads_registers_and_spills():
    script = load_benchmark("scan_sass")
    text = ("ptxas info    : Function properties for _chunk_bwd_kernel\n"
            "    104 bytes stack frame, 100 bytes spill stores, 100 bytes spill loads\n"
            "ptxas info    : Used 255 registers, used 1 barriers, 104 bytes cumulative stack\n")
    assert script.ptxas_report(text) == dict(n_regs=255, spill_store_bytes=100)
    assert script.ptxas_report("fatal") == dict(n_regs=None, spill_store_bytes=None)


def test_launch_specialisation_matches_the_gpu_launcher():
    """Pointers aligned, the one group a constant, D-like shapes divisible by 16; the batch's
    counts (unspecialised by the kernels) get nothing."""
    import pytest

    pytest.importorskip("triton")
    script = load_benchmark("scan_sass")
    from geossm.kernels.selective_scan_triton.fwd_output import fwd_output

    model = script.model_ints(128, 64)
    assert model == dict(D=128, G=1, dpg=128, nblk_g=2, DN=2048)
    constexprs, attrs = script.launch_specialisation(fwd_output, dict(N=16, BD=64), model)
    assert constexprs["G"] == 1 and constexprs["BD"] == 64
    sig = script.kernel_signature(fwd_output, constexprs)
    aligned = {name for index, name in enumerate(sig) if (index,) in attrs}
    assert {"u", "delta", "Bm", "out", "chunk_meta", "D", "dpg"} <= aligned
    assert not aligned & {"S", "n_chunks_bound", "nprog", "G", "N"}
    assert all(value == [["tt.divisibility", 16]] for value in attrs.values())
