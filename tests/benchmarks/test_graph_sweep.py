import json

from tests.benchmarks.conftest import load_benchmark

graph_sweep = load_benchmark("graph_sweep")


def _sweep(tmp_path, monkeypatch, capsys, select: str, values: dict, *options: str) -> dict:
    """``graph_sweep.main`` over two splits with the training replaced by fixed validation
    values per variant; returns the selection line."""
    def fake_run_all(items, jobs, deadline, threads=1):
        def row(tag, kw):
            scores = {select.split(".", 1)[1]: values[tag] + 0.001 * kw["split"]}
            return {"split": kw["split"], "seed": kw["seed"], "best": scores, "last": scores}
        return [(tag, row(tag, kw)) for tag, kw in items]

    monkeypatch.setattr(graph_sweep, "run_all", fake_run_all)
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({name: [] for name in values}))
    assert graph_sweep.main(["config.yaml", "--variants", str(variants), "--splits", "0-1",
                             "--select", select, *options]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


def test_the_sweep_keeps_the_variant_best_in_its_metric_direction(tmp_path, monkeypatch, capsys):
    # a sweep over Peptides-struct picks the lowest validation MAE, one over accuracy the highest
    values = {"low": 0.25, "high": 0.31}
    assert _sweep(tmp_path, monkeypatch, capsys, "best.mae", values)["selected"] == "low"
    assert _sweep(tmp_path, monkeypatch, capsys, "best.acc", values)["selected"] == "high"
    assert _sweep(tmp_path, monkeypatch, capsys, "best.mae", values,
                  "--mode", "max")["selected"] == "high"
