"""``benchmarks/knn_search.py`` on the CPU: every method times and finds the KD-tree's
neighbour distances on crops of the real SemanticKITTI scans."""

import json

from tests.benchmarks.conftest import load_benchmark
from tests.shared_data import shared_path


def test_knn_search_rows_on_the_cpu(capsys, tmp_path):
    archive = shared_path("semantickitti", "semantickitti_npy_3scans.tar.xz")
    out = tmp_path / "knn.jsonl"
    load_benchmark("knn_search").main(["--device", "cpu", "--points", "3000", "--repeats", "1",
                                       "--block-points", "16", "--scans", str(archive),
                                       "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["method"] for r in rows] == ["brute", "blocks16", "kdtree"]
    assert all(r["points"] == 3000 and r["scenes"] == 1 and r["seconds"] > 0 for r in rows)
    by_method = {r["method"]: r["max_dist2_diff_to_kdtree"] for r in rows}
    assert by_method["kdtree"] == 0 and by_method["blocks16"] < 1e-6  # float32 near-ties only
    assert by_method["brute"] < 1e-2  # torch.cdist's |x|²+|y|²-2xy rounding, tens of metres
    assert capsys.readouterr().out.count('"bench": "knn_search"') == 3
