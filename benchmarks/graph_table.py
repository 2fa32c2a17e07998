"""The graph results table, built from run directories: ``benchmarks/graph_results.md`` and the
README's graph-results section.

Every run directory under the given roots (a folder holding ``config.yaml`` and
``metrics.jsonl``, as ``geossm train`` and ``geossm.tasks.graph.crossval`` write them) is one
run. Runs are grouped by dataset (``data.name``) and model class (``model.name``); a group's
test metric is the mean ± std (ddof 1) over its runs of the test metric of the weights chosen on
validation (``weights=best``; ``last`` for configs without a validation split, e.g. the TU folds,
which test the last epoch). Every row prints the geossm MPNN baseline (``GNNPlus`` family) and
the Graph Mamba model beside the published anchors, with the seeds / splits, the machine and the
summed wall time of the runs (a run resumed in parts counts each part's own span, not the
pauses between them). Runs that have no test line yet are shown as unfinished (epochs done
and best validation metric so far) where their model has no finished run::

    python benchmarks/graph_table.py runs/table_cpu:"CPU, 1 thread (shared 2-core)" \\
        runs/table_gpu:"1x H200" [--out benchmarks/graph_results.md] [--readme README.md] [--keep]

``--keep`` keeps the rows of the existing ``--out`` table whose dataset has no run under the
given roots (rows measured earlier, from run directories that are not on this machine).

``ROOT:MACHINE`` labels the runs under ROOT (default: the config's ``device``). One JSON line per
group is printed, then the table is written to ``--out`` and, with ``--readme``, between the
README's ``<!-- graph-results:begin -->`` and ``<!-- graph-results:end -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from datetime import datetime
from pathlib import Path

import yaml

from geossm.tasks.graph.metrics import best_of

#: Published anchors (test metric, percent or AP) per dataset name: facts from the papers.
ANCHORS = {
    "Cora": "GCN 81.5, GAT 83.0",
    "CiteSeer": "GCN 70.3, GAT 72.5",
    "PubMed": "GCN 79.0, GAT 79.0",
    "Tolokers": "GAT-sep 83.78 ± 0.43, GCN 83.64 (Platonov et al.)",
    "ChameleonFiltered": "tuned GCN 46.3 (Luo et al. 2024); GCN 40.9 (Platonov et al.)",
    "SquirrelFiltered": "tuned GCN 45.0 (Luo et al. 2024); GCN 39.5 (Platonov et al.)",
    "MUTAG": "GIN 89.4 ± 5.6",
    "PeptidesFunc": "GCN+ 0.726 (GNN+), GMN 0.7071, Graph-Mamba 0.6739, GPS 0.6535",
    "PeptidesStruct": "GMN 0.2473, GPS 0.2500 (MAE: lower is better)",
}
BASELINES = ("GNNPlus", "GCNPlus", "GINPlus", "GatedGCNPlus", "SAGEPlus")
MAMBAS = ("GraphMambaNetwork", "GraphMamba")
TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ")
RUN_START = re.compile(r" INFO run\b")  # the trainer's first line, written again by every resume
BEGIN, END = "<!-- graph-results:begin -->", "<!-- graph-results:end -->"


def find_runs(root: Path) -> list[Path]:
    """Run directories under ``root`` (``root`` itself included), sorted."""
    return sorted(p.parent for p in root.rglob("metrics.jsonl")
                  if (p.parent / "config.yaml").is_file())


def read_run(run: Path) -> dict | None:
    """``{"dataset", "model", "metric", "value", "split", "seed", "device", "wall_s"}`` of one
    finished run (None while it has no test line). ``value`` is the test metric of the
    validation-selected weights (``best``), or of the last weights without a validation split.
    """
    row = read_progress(run)
    return row if row["value"] is not None else None


def read_progress(run: Path) -> dict:
    """:func:`read_run`'s row for any run, finished or not, with ``value`` None until the run
    has its test line, plus ``epochs`` (validated / trained so far), ``epochs_total`` (the
    config's schedule) and ``best_val`` (the best validation metric so far, None without)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    evaluation = cfg.get("eval") or {}
    metric = evaluation.get("metric") or "acc"
    selected = "best" if evaluation.get("split") else "last"
    # the direction the run selected by (a null mode: the metric's, as the graph tasks take it)
    better = best_of(metric, evaluation.get("mode"))
    value, best_val, epochs = None, None, 0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("split") == "test" and row.get("weights") == selected and metric in row:
            value = float(row[metric])
        elif row.get("split") == "train":
            epochs = max(epochs, int(row.get("epoch", 0)))
        elif row.get("split") == "val" and metric in row:
            val = float(row[metric])
            best_val = val if best_val is None else better(best_val, val)
    return {"dataset": cfg["data"]["name"], "model": cfg["model"]["name"], "metric": metric,
            "value": value, "split": cfg["data"].get("split"), "seed": cfg.get("seed"),
            "device": cfg.get("device"), "wall_s": wall_seconds(run / "train.log"),
            "selected": selected, "epochs": epochs,
            "epochs_total": (cfg.get("train") or {}).get("epochs"), "best_val": best_val}


def wall_seconds(log: Path) -> float:
    """Seconds of ``train.log``: the span from each run-start line (the first run, or a resume)
    to the last timestamped line before the next one, summed (0 if none)."""
    if not log.is_file():
        return 0.0
    parts: list[list[datetime]] = []
    for line in log.read_text().splitlines():
        stamp = TIME.match(line)
        if stamp is None:
            continue
        if not parts or RUN_START.search(line):
            parts.append([])
        parts[-1].append(datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S"))
    return sum((p[-1] - p[0]).total_seconds() for p in parts)


def summarize(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for one value)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def groups(runs: list[tuple[dict, str]]) -> dict[tuple[str, str], dict]:
    """Runs grouped by (dataset, model): metric, mean, std, seeds, splits, machine, wall."""
    out = columns(runs)
    for g in out.values():
        g["mean"], g["std"] = summarize(g["values"])
        g["n"] = len(g.pop("values"))
    return out


def columns(runs: list[tuple[dict, str]]) -> dict[tuple[str, str], dict]:
    """Runs grouped by (dataset, model), finished or not: metric, selection, ``values`` (their
    test metrics), seeds, splits, machines and summed wall time."""
    out: dict[tuple[str, str], dict] = {}
    for run, machine in runs:
        g = out.setdefault((run["dataset"], run["model"]), {
            "dataset": run["dataset"], "model": run["model"], "metric": run["metric"],
            "values": [], "seeds": set(), "splits": set(), "machines": set(), "wall_s": 0.0,
            "selected": run["selected"]})
        g["values"].append(run["value"])
        g["seeds"].add(run["seed"])
        g["splits"].add(run["split"])
        g["machines"].add(machine)
        g["wall_s"] += run["wall_s"]
    return out


def _ranges(values: set) -> str:
    nums = sorted(int(v) for v in values if v is not None)
    if not nums:
        return "-"
    return f"{nums[0]}-{nums[-1]}" if nums == list(range(nums[0], nums[-1] + 1)) and \
        len(nums) > 1 else ",".join(map(str, nums))


def _scaled(metric: str, value: float) -> str:
    """A metric as printed: AP and MAE with 4 decimals, percentages with 1."""
    return f"{value:.4f}" if metric in ("ap", "mae") else f"{value * 100:.1f}"


def _cell(g: dict | None, running: dict | None = None) -> str:
    if g is None:
        return _running_cell(running) if running else "not run"
    spread = f" ± {_scaled(g['metric'], g['std'])}" if g["n"] > 1 else ""
    return f"{_scaled(g['metric'], g['mean'])}{spread} ({g['model']}, n={g['n']})"


def _running_cell(rows: list[dict]) -> str:
    """Unfinished runs of one model (running, stopped to resume, or crashed): epochs so far
    and the mean best validation metric."""
    first, vals = rows[0], [r["best_val"] for r in rows if r["best_val"] is not None]
    done = sorted({r["epochs"] for r in rows})
    epochs = f"{done[0]}-{done[-1]}" if len(done) > 1 else f"{done[0]}"
    val = f", best val {_scaled(first['metric'], sum(vals) / len(vals))}" if vals else ""
    return (f"unfinished ({first['model']}, n={len(rows)}: epoch {epochs} of "
            f"{first['epochs_total']}{val}, no test yet)")


def table(grouped: dict[tuple[str, str], dict],
          running: dict[tuple[str, str], list[dict]] | None = None) -> str:
    """The markdown table, one row per dataset (``running``: unfinished runs by (dataset,
    model), each row with a ``machine``; shown where that model has no finished run)."""
    running = running or {}
    lines = ["| dataset | metric (test, selection) | geossm MPNN baseline | geossm Graph Mamba | "
             "published | seeds / splits | machine | wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for dataset in sorted({d for d, _ in grouped} | {d for d, _ in running}):
        rows = {m: g for (d, m), g in grouped.items() if d == dataset}
        waiting = {m: r for (d, m), r in running.items() if d == dataset}
        cells, shown = [], []
        for family in (BASELINES, MAMBAS):
            done = next((rows[m] for m in family if m in rows), None)
            unfinished = next((waiting[m] for m in family if m in waiting), None)
            cells.append(_cell(done, unfinished))
            if done is not None or unfinished is not None:
                shown.append(done if done is not None else next(iter(columns(
                    [(r, r["machine"]) for r in unfinished]).values())))
        if not shown:  # only models of neither family
            continue
        first = shown[0]
        seeds = "; ".join(dict.fromkeys(  # one entry when both models ran the same grid
            f"seeds {_ranges(g['seeds'])} × splits {_ranges(g['splits'])}" for g in shown))
        machines = "; ".join(sorted(set().union(*(g["machines"] for g in shown))))
        wall = " + ".join(f"{g['wall_s'] / 60:.1f} min" for g in shown)
        lines.append(f"| {dataset} | {first['metric']} ({first['selected']} weights) | "
                     f"{cells[0]} | {cells[1]} | {ANCHORS.get(dataset, '-')} | {seeds} | "
                     f"{machines} | {wall} |")
    return "\n".join(lines) + "\n"


def keep_rows(body: str, old: str, measured: set[str]) -> str:
    """``body`` (a table) with the rows of ``old`` (an earlier table) added whose dataset is
    not in ``measured``, all rows sorted by dataset."""
    def rows(text: str) -> dict[str, str]:
        lines = [ln for ln in text.splitlines() if ln.startswith("| ")
                 and not ln.startswith("| dataset |")]
        return {ln.split("|")[1].strip(): ln for ln in lines}
    head = body.splitlines()[:2]
    merged = {d: ln for d, ln in rows(old).items() if d not in measured} | rows(body)
    return "\n".join(head + [merged[d] for d in sorted(merged)]) + "\n"


def replace_section(text: str, body: str) -> str:
    """``text`` with the part between the markers replaced by ``body`` (appended, markers
    included, when absent)."""
    block = f"{BEGIN}\n{body}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", help="ROOT or ROOT:MACHINE")
    p.add_argument("--out", default="benchmarks/graph_results.md")
    p.add_argument("--readme", default=None, help="README to update between the markers")
    p.add_argument("--keep", action="store_true",
                   help="keep the --out rows of datasets that have no run under the roots")
    ns = p.parse_args(argv)
    runs, running = [], {}
    for spec in ns.roots:
        root, _, machine = spec.partition(":")
        for run in find_runs(Path(root)):
            row = read_progress(run)
            if row["value"] is not None:
                runs.append((row, machine or str(row["device"])))
            else:
                row["machine"] = machine or str(row["device"])
                running.setdefault((row["dataset"], row["model"]), []).append(row)
    if not runs and not running:
        raise SystemExit(f"no run directories under {ns.roots}")
    grouped = groups(runs)
    for g in grouped.values():
        sys.stdout.write(json.dumps({**g, "seeds": sorted(map(str, g["seeds"])),
                                     "splits": sorted(map(str, g["splits"])),
                                     "machines": sorted(g["machines"])}) + "\n")
    out = Path(ns.out)
    body = table(grouped, running)
    if ns.keep and out.is_file():
        body = keep_rows(body, out.read_text(), {d for d, _ in grouped} | {d for d, _ in running})
    out.write_text("# Graph results (written by benchmarks/graph_table.py)\n\n"
                   "Test metrics, mean ± std (ddof 1) over the runs; weights selected on "
                   "validation only (best) or the last epoch where there is no validation "
                   "split (TU folds).\n\n" + body)
    if ns.readme:
        readme = Path(ns.readme)
        readme.write_text(replace_section(readme.read_text(), body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
