"""benchmarks/scan_gpu.py: the ``--tiny`` smoke run (Triton interpreter on CPU) measures every
launch variant and compares each with the first."""

from __future__ import annotations

import json

import pytest

from geossm import _compat
from tests.benchmarks.conftest import load_benchmark


@pytest.mark.skipif(not _compat.has_triton(), reason="triton not installed")
def test_tiny_run_times_every_variant_and_agrees_with_v1(capsys):
    script = load_benchmark("scan_gpu")
    variants = "v1;default;serial:forward=serial"
    assert script.main(["--tiny", "--quick", "--workloads", "graph_tokens", "--no-api",
                        "--variants", variants]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["metric"] == "copy_bandwidth_GBps"
    assert {"peer": "mamba_ssm", "skipped": "no --mamba-ssm-path given"} in lines
    timed = [(r["variant"], r["metric"]) for r in lines if r.get("metric", "").startswith("kernels")]
    assert timed == [(v, m) for v in ("v1", "default", "serial")
                     for m in ("kernels_fwd", "kernels_fwd_bwd")]
    diffs = [r for r in lines if r.get("metric") == "rel_diff_vs_v1"]
    assert [r["variant"] for r in diffs] == ["default", "serial"]
    # bf16 tensors may differ by an ulp where the variants sum in another order (on a GPU)
    tolerance = dict(out=1e-2, du=1e-2, dz=1e-2)
    for record in diffs:
        for name in ("out", "final_state", "du", "ddelta", "dA", "dB", "dC", "dz"):
            assert record[name] < tolerance.get(name, 1e-4), (record["variant"], name)


def test_parse_variants_changes_only_the_given_fields():
    script = load_benchmark("scan_gpu")
    from geossm.kernels import selective_scan_triton as ST

    parsed = dict(script.parse_variants("v1;default;fast:forward=serial,bd_serial=64", ST))
    assert parsed["v1"] == ST.V1_CONFIG and parsed["default"] == ST.DEFAULT_CONFIG
    assert parsed["fast"].forward == "serial" and parsed["fast"].bd_serial == 64
    assert parsed["fast"].chunk == ST.DEFAULT_CONFIG.chunk
    with pytest.raises(ValueError, match="forward must be one of"):
        script.parse_variants("bad:forward=sideways", ST)
    uncapped = dict(script.parse_variants("free:maxnreg_output=none,maxnreg_chunk_state=None",
                                          ST))["free"]
    assert uncapped.maxnreg_output is None and uncapped.maxnreg_chunk_state is None
    assert ST.DEFAULT_CONFIG.maxnreg_output == 80  # so the variant above does change it
