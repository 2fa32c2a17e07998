"""``benchmarks/triton_compiles.py --tiny``: the CPU check runs every kernel call of the GPU
measurement through the interpreter and prints its JSON row."""

import json

import pytest

from geossm import _compat
from tests.benchmarks.conftest import load_benchmark


@pytest.mark.skipif(not _compat.has_triton(), reason="triton is not installed")
def test_tiny_run_prints_one_row(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    bench = load_benchmark("triton_compiles")
    out = tmp_path / "rows.jsonl"
    assert bench.main(["--tiny", "--label", "cpu check", "--out", str(out)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row == json.loads(out.read_text())
    assert row["label"] == "cpu check" and row["batches"] == len(bench.TINY_BATCHES)
    assert row["first_pass_s"] > 0 and row["second_pass_s"] > 0
    if row["device"] == "cpu":   # the interpreter compiles nothing
        assert row["compiled"] == 0 and row["per_kernel"] == {}


def test_batches_cover_every_specialisation_case():
    """The batches hold token and segment counts equal to 1, multiples of 16 and neither."""
    bench = load_benchmark("triton_compiles")
    tokens = {sum(b) for b in bench.BATCHES}
    segments = {len(b) for b in bench.BATCHES}
    for counts in (tokens, segments):
        assert 1 in counts
        assert any(c % 16 == 0 for c in counts) and any(c > 1 and c % 16 for c in counts)


def test_dim_must_hold_whole_heads():
    bench = load_benchmark("triton_compiles")
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--dim", "24"])
