import json
from pathlib import Path

import yaml

from tests.benchmarks.conftest import load_benchmark

graph_table = load_benchmark("graph_table")


def _run(root: Path, model: str, seed: int, best: float, last: float, eval_split="val"):
    run = root / f"{model}_{seed}"
    run.mkdir(parents=True)
    cfg = {"data": {"name": "Cora", "split": 0}, "model": {"name": model}, "seed": seed,
           "device": "cpu", "eval": {"split": eval_split, "metric": "acc"}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"epoch": 1, "split": "val", "acc": 0.5},
            {"epoch": 9, "split": "test", "weights": "last", "acc": last},
            {"epoch": 3, "split": "test", "weights": "best", "acc": best}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (run / "train.log").write_text("2026-12-04 10:00:00,001 INFO run\n"
                                   "2026-12-04 10:01:30,500 INFO epoch 9 test\n")


def test_table_from_run_directories_and_readme_section(tmp_path):
    for seed, acc in ((0, 0.80), (1, 0.82)):
        _run(tmp_path / "runs", "GCNPlus", seed, acc, 0.1)
    _run(tmp_path / "runs", "GraphMambaNetwork", 0, 0.83, 0.2)
    (tmp_path / "runs" / "unfinished").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- graph-results:begin -->\nold\n<!-- graph-results:end -->\ntail\n")
    out = tmp_path / "results.md"
    assert graph_table.main([f"{tmp_path / 'runs'}:test box", "--out", str(out),
                             "--readme", str(readme)]) == 0
    text = out.read_text()
    assert "| Cora | acc (best weights) | 81.0 ± 1.4 (GCNPlus, n=2) | 83.0 " \
           "(GraphMambaNetwork, n=1) | GCN 81.5, GAT 83.0 |" in text
    assert "seeds 0-1 × splits 0; seeds 0 × splits 0 | test box | 3.0 min + 1.5 min |" in text
    new = readme.read_text()
    assert "old" not in new and new.endswith("tail\n") and "81.0 ± 1.4" in new
    assert graph_table.replace_section(new, "b\n").count("graph-results:begin") == 1


def test_runs_without_validation_report_the_last_weights(tmp_path):
    _run(tmp_path, "GINPlus", 0, 0.9, 0.7, eval_split=None)
    row = graph_table.read_run(tmp_path / "GINPlus_0")
    assert row["value"] == 0.7 and row["selected"] == "last" and row["wall_s"] == 90.0


def test_resumed_runs_count_their_parts_not_the_pause_between(tmp_path):
    _run(tmp_path, "GCNPlus", 0, 0.8, 0.8)
    (tmp_path / "GCNPlus_0" / "train.log").write_text(
        "2026-12-04 10:00:00,001 INFO run /x: GCNPlus\n"
        "2026-12-04 10:01:00,001 INFO epoch 1 val\n"
        "2026-12-05 09:00:00,001 INFO run /x: GCNPlus\n"     # resumed a day later
        "2026-12-05 09:00:30,001 INFO model.init_from=/y.pt ignored: resuming from /x\n"
        "2026-12-05 09:02:00,001 INFO epoch 2 test\n")
    assert graph_table.read_run(tmp_path / "GCNPlus_0")["wall_s"] == 60.0 + 120.0


def test_unfinished_runs_show_their_progress_and_kept_rows_stay(tmp_path):
    _run(tmp_path / "runs", "GCNPlus", 0, 0.80, 0.1)
    for seed, val in ((0, 0.40), (1, 0.50)):
        run = tmp_path / "runs" / f"GraphMambaNetwork_{seed}"
        run.mkdir()
        cfg = {"data": {"name": "Cora", "split": 0}, "model": {"name": "GraphMambaNetwork"},
               "seed": seed, "train": {"epochs": 300}, "eval": {"split": "val", "metric": "acc"}}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        rows = [{"epoch": e, "split": s, "acc": val if s == "val" else None, "loss": 1.0}
                for e in (1, 2, 3 + seed) for s in ("train", "val")]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "results.md"
    out.write_text("| dataset | metric |\n|---|---|\n| MUTAG | acc | old row |\n"
                   "| Cora | acc | replaced |\n")
    assert graph_table.main([str(tmp_path / "runs"), "--out", str(out), "--keep"]) == 0
    text = out.read_text()
    assert "unfinished (GraphMambaNetwork, n=2: epoch 3-4 of 300, best val 45.0, no test " \
           "yet)" in text
    assert "| MUTAG | acc | old row |" in text and "replaced" not in text
    assert text.index("| Cora |") < text.index("| MUTAG |")
    assert graph_table.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert "MUTAG" not in out.read_text()


def test_a_dataset_whose_runs_are_all_unfinished_has_its_row(tmp_path):
    _run(tmp_path / "runs", "GCNPlus", 0, 0.80, 0.1)
    run = tmp_path / "runs" / "peptides"
    run.mkdir()
    cfg = {"data": {"name": "PeptidesFunc"}, "model": {"name": "GNNPlus"}, "seed": 2,
           "train": {"epochs": 300}, "eval": {"split": "val", "metric": "ap"}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 7, "split": "train", "loss": 1}) +
                                       "\n" + json.dumps({"epoch": 7, "split": "val", "ap": 0.6}))
    out = tmp_path / "results.md"
    assert graph_table.main([f"{tmp_path / 'runs'}:box", "--out", str(out)]) == 0
    row = next(ln for ln in out.read_text().splitlines() if ln.startswith("| PeptidesFunc"))
    assert "| ap (best weights) | unfinished (GNNPlus, n=1: epoch 7 of 300, best val 0.6000, " \
           "no test yet) | not run |" in row and "seeds 2 × splits -" in row and "| box |" in row


def test_mae_runs_keep_their_lowest_validation_and_four_decimals(tmp_path):
    # Peptides-struct: a null eval.mode selects the lowest validation MAE, as the task does
    run = tmp_path / "runs" / "struct"
    run.mkdir(parents=True)
    cfg = {"data": {"name": "PeptidesStruct"}, "model": {"name": "GNNPlus"}, "seed": 0,
           "train": {"epochs": 300}, "eval": {"split": "val", "metric": "mae", "mode": None}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"epoch": e, "split": "val", "mae": v} for e, v in ((1, 0.31), (2, 0.26), (3, 0.29))]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert graph_table.read_progress(run)["best_val"] == 0.26
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"epoch": 2, "split": "test", "weights": "best", "mae": 0.25}) + "\n")
    out = tmp_path / "results.md"
    assert graph_table.main([f"{tmp_path / 'runs'}:box", "--out", str(out)]) == 0
    row = next(ln for ln in out.read_text().splitlines() if ln.startswith("| PeptidesStruct"))
    assert "| mae (best weights) | 0.2500 (GNNPlus, n=1) | not run | GMN 0.2473, GPS 0.2500" in row
