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
    measured = lines[1:]
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
