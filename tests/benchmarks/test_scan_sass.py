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
