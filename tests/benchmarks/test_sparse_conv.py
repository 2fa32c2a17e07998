import json

import pytest

from geossm.tasks.detection.sparse import spconv_available
from tests.benchmarks.conftest import load_benchmark



def _load_script():
    return load_benchmark("sparse_conv")


def test_tiny_mode_measures_both_backends_and_their_agreement(tmp_path, capsys):
    """``--tiny`` (CPU, tiny LION on synthetic scenes) prints one JSON line per measurement
    and writes the same to ``--out``; with spconv installed its rows agree with torch."""
    out = tmp_path / "rows.jsonl"
    _load_script().main(["--tiny", "--out", str(out)])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{")]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert printed == rows
    timed = [r for r in rows if "step_ms" in r]
    assert {(r["bench"], r["backend"]) for r in timed} >= {("lion_step", "torch"),
                                                            ("subm_layer", "torch")}
    assert all(r["step_ms"] > 0 and r["device"] == "cpu" and r["voxels"] > 0 for r in timed)
    if not spconv_available():
        assert any(r.get("skipped") for r in rows)
        reason = "spconv is not importable: only the torch rows were checked"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    assert {(r["bench"], r["backend"]) for r in timed} >= {("lion_step", "spconv"),
                                                            ("subm_layer", "spconv")}
    agreement = [r for r in rows if r["bench"] == "agreement"]
    assert [r["backend"] for r in agreement] == ["spconv"]
    assert agreement[0]["heatmap_max_abs_diff"] < 1e-3
    assert agreement[0]["eval_heatmap_max_abs_diff"] < 1e-3
    assert agreement[0]["conv_grad_max_rel_diff"] < 1e-3


def test_cases_are_parsed_or_rejected():
    script = _load_script()
    assert script.parse_case("fov8") == ("fov", 8)
    assert script.parse_case("frame1") == ("all", 1)
    with pytest.raises(ValueError, match="--cases: expected fovN, frameN or synN"):
        script.parse_case("kitti")
