"""benchmarks/ssd_gpu.py: the ``--tiny`` smoke run (Triton interpreter on CPU) prints its lines."""

from __future__ import annotations

import json

import pytest

from geossm import _compat
from tests.benchmarks.conftest import load_benchmark



def load_script():
    return load_benchmark("ssd_gpu")


@pytest.mark.skipif(not _compat.has_triton(), reason="triton not installed")
def test_tiny_run_prints_one_line_per_measurement(capsys, tmp_path):
    script = load_script()
    out_file = tmp_path / "ssd.jsonl"
    assert script.main(["--tiny", "--workloads", "graph_tokens", "--out", str(out_file)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"impl": "mamba_ssm", "skipped": "no --mamba-ssm-path given"}
    assert lines[-1]["done"] is True and lines[-1]["elapsed_s"] >= 0
    measured = lines[1:-1]
    assert [(r["impl"], r["mode"]) for r in measured] == [("geossm", "fwd"),
                                                          ("geossm", "fwd+bwd")]
    for record in measured:
        assert record["workload"] == "graph_tokens" and record["segments"] == 4
        assert record["ms"] > 0 and record["tflops"] > 0
        assert record["rel_diff_to_chunked"] < 2e-2          # bf16 outputs of both
    assert len(out_file.read_text().splitlines()) == len(lines)


def test_mamba_ssm_loader_says_why_it_is_skipped(tmp_path):
    script = load_script()
    assert script.load_mamba_ssm(None) == (None, "no --mamba-ssm-path given")
    scan, reason = script.load_mamba_ssm(str(tmp_path))
    assert scan is None and "no mamba_ssm package directory" in reason


def test_flop_count_of_the_chunked_form():
    script = load_script()
    # per token and head: 2QN + 2QP + 4PN
    assert script.forward_flops(10, 2, 64, 128, 64) == 10 * 2 * (2 * 64 * 128 + 2 * 64 * 64
                                                                 + 4 * 64 * 128)


@pytest.mark.skipif(not _compat.has_triton(), reason="triton not installed")
def test_tiny_sweep_prints_every_setting(capsys):
    script = load_script()
    assert script.main(["--tiny", "--sweep", "--workloads", "windows"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    fwd = [r for r in lines if r.get("sweep") == "fwd"]
    bwd = [r for r in lines if r.get("sweep") == "bwd"]
    assert len(fwd) == len(script.FWD_SWEEP) and len(bwd) == len(script.BWD_SWEEP)
    compared = [(r["impl"], r["mode"]) for r in lines if r.get("sweep") == "compare"]
    assert compared == [("geossm", "fwd"), ("geossm", "fwd+bwd")]     # no mamba_ssm on CPU
    for record in fwd + bwd:
        assert record["ms"] > 0
    # the interpreter computes every setting in float32 (bf16 inputs): equal up to rounding
    assert max(r["rel_diff"] for r in fwd) < 1e-2
    assert max(r["max_grad_rel_diff"] for r in bwd) < 1e-2
    assert any("profile" in r for r in lines) and lines[-1]["done"] is True


def distinct_tilings(script):
    """The sweep's settings that differ in what the interpreter runs (not warps/stages)."""
    seen = {}
    for settings in script.FWD_SWEEP + script.BWD_SWEEP:
        key = (settings.chunk, settings.block_m, settings.block_k, settings.bwd_chunk,
               settings.bwd_block_n, settings.bwd_block_p, settings.bwd_bc_block_n,
               settings.bwd_step_from_outputs,
               settings.scan_block, settings.scan_unroll, settings.half_states)
        seen.setdefault(key, settings)
    return list(seen.values())


@pytest.mark.skipif(not _compat.has_triton(), reason="triton not installed")
def test_every_swept_setting_matches_the_float64_reference():
    """Every tiling of the sweep: Triton forward and own backward against the float64
    reference, on segments that start and end around the chunk edges."""
    from geossm.kernels.ssd_scan_triton import use_settings
    from tests.kernels.test_ssd_scan import make_inputs, run
    from tests.kernels.test_ssd_scan_triton import assert_close_with_sums

    script = load_script()
    for settings in distinct_tilings(script):
        Q, Qb = settings.chunk, settings.bwd_chunk
        lengths = [Q - 1, 2, 0, Qb + 1, 3] + ([Q + 5] if Q <= 128 else [])
        inputs, cu = make_inputs(lengths, heads=2, head_dim=4, groups=1, state=4, init=False)
        want = run("exact", inputs, cu, final=False)
        with use_settings(settings):
            got = run("triton", inputs, cu, final=False)
        assert_close_with_sums(got, want)


@pytest.mark.skipif(not _compat.has_triton(), reason="triton not installed")
def test_settings_replace_the_defaults_and_kinds_pick_the_sweep_parts(capsys):
    script = load_script()
    settings = '{"bwd_chunk": 32, "bwd_block_p": 16}'
    assert script.main(["--tiny", "--sweep", "--sweep-kinds", "compare", "--workloads",
                        "windows", "--settings", settings]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    compared = [r for r in lines if r.get("sweep") == "compare"]
    assert [r["mode"] for r in compared] == ["fwd", "fwd+bwd"]
    assert not any(r.get("sweep") in ("fwd", "bwd") or "profile" in r for r in lines)
    assert lines[-1]["settings"] == {"bwd_chunk": 32, "bwd_block_p": 16}
    assert script.SST.SETTINGS == script.LaunchSettings()      # restored after the run


def test_bad_settings_are_refused_with_the_reason(capsys):
    script = load_script()
    with pytest.raises(SystemExit):
        script.main(["--tiny", "--quick", "--settings", '{"bwd_chunk": 31}'])
    assert "must be a power of two, got 31" in capsys.readouterr().err
