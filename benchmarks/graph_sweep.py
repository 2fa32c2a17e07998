"""Hyper-parameter selection for the graph configs, on validation only; test reported once.

Every variant (a list of ``key=value`` overrides of CONFIG) is trained on ``--splits`` x
``--seeds`` with ``geossm.tasks.graph.crossval``; the variant with the best mean of
``--select`` (a validation metric: ``best.acc`` = val accuracy of the best-val checkpoint,
``last.acc`` = val accuracy after the last epoch, ``best.roc_auc`` ...) is chosen, and then,
with ``--final-splits`` / ``--final-seeds``, retrained there and its test metrics printed.
Test metrics of the selection runs are printed too but never used to choose.

::

    python benchmarks/graph_sweep.py configs/graph/cora_gmn.yaml --seeds 0-2 \\
        --select best.acc --variants variants.json --final-seeds 0-9 [--budget-s 400]

``variants.json``: ``{"name": ["key=value", ...], ...}``. One JSON line per run
(``{"variant", "split", "seed", "best", "last"}``), per variant (``{"variant", "summary"}``),
then ``{"selected": name, "by": metric, "value": mean}`` and the final runs and summary.
``--budget-s`` stops starting new runs after that many seconds (time-boxed jobs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from geossm.tasks.graph.crossval import parse_range, run
from geossm.tasks.graph.metrics import summarize


def emit(row: dict) -> None:
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()


def metric(row: dict, key: str) -> float:
    """``best.acc`` -> ``row["best"]["acc"]``."""
    kind, name = key.split(".", 1)
    return float(row[kind][name])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--variants", required=True, help="JSON file {name: [overrides]}")
    p.add_argument("--splits", default="0")
    p.add_argument("--seeds", default="0")
    p.add_argument("--select", default="best.acc", help="validation metric, e.g. best.roc_auc")
    p.add_argument("--final-splits", default=None)
    p.add_argument("--final-seeds", default=None)
    p.add_argument("--final-overrides", default="", help="space-separated, for the final runs")
    p.add_argument("--out", default="runs/graph_sweep")
    p.add_argument("--budget-s", type=float, default=float("inf"))
    p.add_argument("overrides", nargs="*", help="key=value for every run")
    ns = p.parse_intermixed_args(argv)
    t0 = time.monotonic()
    with open(ns.variants) as fh:
        variants: dict[str, list[str]] = json.load(fh)
    scores: dict[str, float] = {}
    for name, extra in variants.items():
        rows = []
        for split in parse_range(ns.splits):
            for seed in parse_range(ns.seeds):
                if time.monotonic() - t0 > ns.budget_s:
                    break
                res = run(ns.config, [split], [seed], [*ns.overrides, *extra],
                          f"{ns.out}/{name}", emit=None)
                row = {"variant": name, **res["runs"][0]}
                rows.append(row)
                emit(row)
        if not rows:
            break
        summary = {kind: summarize({(r["split"], r["seed"]): r[kind] for r in rows})
                   for kind in ("best", "last")}
        scores[name] = sum(metric(r, ns.select) for r in rows) / len(rows)
        emit({"variant": name, "n": len(rows), "select": scores[name], "summary": summary})
    if not scores:
        return 1
    chosen = max(scores, key=scores.get)
    emit({"selected": chosen, "by": ns.select, "value": scores[chosen],
          "elapsed_s": time.monotonic() - t0})
    if ns.final_splits or ns.final_seeds:
        final = [*ns.overrides, *variants[chosen], *ns.final_overrides.split()]
        rows = []
        for split in parse_range(ns.final_splits or ns.splits):
            for seed in parse_range(ns.final_seeds or ns.seeds):
                if time.monotonic() - t0 > ns.budget_s:
                    break
                res = run(ns.config, [split], [seed], final, f"{ns.out}/final_{chosen}")
                row = {"final": chosen, **res["runs"][0]}
                rows.append(row)
                emit(row)
        if rows:
            emit({"final": chosen, "n": len(rows), "summary": {
                kind: summarize({(r["split"], r["seed"]): r[kind] for r in rows})
                for kind in ("best", "last")}, "elapsed_s": time.monotonic() - t0})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
