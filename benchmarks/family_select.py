"""One variant for a family of datasets, chosen on validation only, paired by split.

``graph_sweep.py`` picks a variant per dataset. A family config (e.g. the heterophilous
``tolokers_*`` configs, which must carry to Chameleon- and Squirrel-filtered by changing only
``data.name``) needs one choice for all of them. This script reads the per-run JSON lines that
``graph_sweep.py`` prints (one file per dataset) and, for every variant against a reference
variant (default ``base``), pairs the runs by ``(split, seed)``:

- per dataset: mean validation metric, mean paired gain against the reference (the difference,
  its sign turned for metrics where lower is better) and its standard error over the pairs,
  and the mean test metric (printed, never used to choose);
- the family gain: per pair key, the mean over the ``--select-on`` datasets of the paired
  gains, then its mean and standard error over the keys that every one of them has.

A variant replaces the reference only if its family gain exceeds ``--min-se`` standard errors
(default 1); the largest such gain wins. Small graphs (Chameleon-filtered tests ~180 nodes per
split) move by about a point between runs that validation cannot tell apart, so a gain inside
its own noise keeps the reference::

    python benchmarks/family_select.py ChameleonFiltered=cham.jsonl SquirrelFiltered=sq.jsonl \\
        Tolokers=tol.jsonl --select-on ChameleonFiltered,SquirrelFiltered [--metric best.acc]

The metric of a dataset is ``--metric`` when its rows have it, else ``best.roc_auc`` (binary
graphs). Output: one JSON line per variant, then ``{"selected": ..., "gain": ..., "se": ...}``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict

from geossm.tasks.graph.metrics import mean_std, selection_mode

Key = tuple[int, int]  # (split, seed)


def read_rows(path: str) -> dict[str, dict[Key, dict]]:
    """Per-run rows of a ``graph_sweep.py`` output file: ``{variant: {(split, seed): row}}``
    (summary and selection lines are skipped)."""
    out: dict[str, dict[Key, dict]] = defaultdict(dict)
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if "split" in row and "best" in row:
                out[row["variant"]][(int(row["split"]), int(row.get("seed", 0)))] = row
    return out


def metric_of(rows: dict[Key, dict], wanted: str) -> str:
    """``wanted`` (``kind.name``) if the rows have it, else ``best.roc_auc``."""
    kind, name = wanted.split(".", 1)
    first = next(iter(rows.values()))
    return wanted if name in first.get(kind, {}) else "best.roc_auc"


def value(row: dict, metric: str, test: bool = False) -> float:
    kind, name = metric.split(".", 1)
    return float(row[kind][("test_" if test else "") + name])


def mean_se(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (the sample std of ``metrics.mean_std`` over sqrt(n); 0 for a
    single value); None for no values (printed as JSON null: no pairs to compare)."""
    if not values:
        return None, None
    mean, std = mean_std(values)
    return mean, std / math.sqrt(len(values))


def paired(var: dict[Key, dict], ref: dict[Key, dict], metric: str) -> dict[Key, float]:
    """Validation gain of the variant over the reference for every pair key both have:
    variant - reference, or reference - variant for a metric where lower is better (MAE, loss:
    ``metrics.selection_mode``), so a positive gain is always an improvement."""
    sign = -1.0 if selection_mode(metric) == "min" else 1.0
    return {k: sign * (value(var[k], metric) - value(ref[k], metric))
            for k in var.keys() & ref.keys()}


def compare(data: dict[str, dict[str, dict[Key, dict]]], reference: str, select_on: list[str],
            wanted: str) -> list[dict]:
    """One summary dict per variant (see the module docstring)."""
    variants = sorted({v for rows in data.values() for v in rows})
    out = []
    for variant in variants:
        item: dict = {"variant": variant, "datasets": {}}
        per_key: dict[Key, list[float]] = defaultdict(list)
        for name, rows in data.items():
            if variant not in rows:
                continue
            metric = metric_of(rows[variant], wanted)
            runs = list(rows[variant].values())
            diffs = paired(rows[variant], rows.get(reference, {}), metric)
            d_mean, d_se = mean_se(list(diffs.values()))
            item["datasets"][name] = {
                "metric": metric, "n": len(runs),
                "val": statistics.fmean(value(r, metric) for r in runs),
                "test": statistics.fmean(value(r, metric, test=True) for r in runs),
                "val_diff": d_mean, "val_diff_se": d_se, "pairs": len(diffs)}
            if name in select_on:
                for k, d in diffs.items():
                    per_key[k].append(d)
        full = [statistics.fmean(ds) for ds in per_key.values() if len(ds) == len(select_on)]
        item["gain"], item["se"] = mean_se(full)
        item["keys"] = len(full)
        out.append(item)
    return out


def choose(summary: list[dict], reference: str, min_se: float) -> dict:
    """The variant with the largest family gain above ``min_se`` standard errors, else the
    reference (a gain measured on one key has no error estimate and never qualifies)."""
    best = {"selected": reference, "gain": 0.0, "se": 0.0}
    for item in summary:
        gain, se = item["gain"], item["se"]
        if item["variant"] == reference or gain is None or item["keys"] < 2:
            continue
        if gain > min_se * se and gain > best["gain"]:
            best = {"selected": item["variant"], "gain": gain, "se": se}
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="DATASET=FILE, one graph_sweep.py output per dataset")
    p.add_argument("--select-on", default=None,
                   help="comma-separated datasets whose validation chooses (default: all)")
    p.add_argument("--reference", default="base")
    p.add_argument("--metric", default="best.acc")
    p.add_argument("--min-se", type=float, default=1.0)
    args = p.parse_args(argv)
    data = {}
    for item in args.files:
        name, sep, path = item.partition("=")
        if not sep:
            p.error(f"expected DATASET=FILE, got {item!r}")
        data[name] = read_rows(path)
    select_on = args.select_on.split(",") if args.select_on else list(data)
    unknown = set(select_on) - set(data)
    if unknown:
        p.error(f"--select-on names datasets without a file: {sorted(unknown)}")
    missing = [name for name in select_on if args.reference not in data[name]]
    if missing:
        p.error(f"reference variant {args.reference!r} has no runs in {missing} (--reference)")
    summary = compare(data, args.reference, select_on, args.metric)
    for item in summary:
        print(json.dumps(item, allow_nan=False))
    print(json.dumps(choose(summary, args.reference, args.min_se)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
