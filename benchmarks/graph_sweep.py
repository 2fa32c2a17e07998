"""Hyper-parameter selection for the graph configs, on validation only; test reported once.

Every variant (a list of ``key=value`` overrides of CONFIG) is trained on ``--splits`` x
``--seeds`` with ``geossm.tasks.graph.crossval``; the variant with the best mean of
``--select`` (a validation metric: ``best.acc`` = val accuracy of the best-val checkpoint,
``last.acc`` = val accuracy after the last epoch, ``best.roc_auc`` ...) is chosen, and then,
with ``--final-splits`` / ``--final-seeds``, retrained there and its test metrics printed.
Test metrics of the selection runs are printed too but never used to choose.

::

    python benchmarks/graph_sweep.py configs/graph/cora_gmn.yaml --seeds 0-2 \\
        --select best.acc --variants variants.json --final-seeds 0-9 [--budget-s 400] \\
        [--jobs 8]

``variants.json``: ``{"name": ["key=value", ...], ...}``. One JSON line per run
(``{"variant", "split", "seed", "best", "last", "cpu_s", "wall_s"}``), per variant
(``{"variant", "summary"}``), then ``{"selected": name, "by": metric, "value": mean}`` and the
final runs and summary. ``--budget-s`` stops starting new runs after that many seconds
(time-boxed jobs). ``--jobs N`` trains N runs at once in separate processes, each with one
thread (CPU: one core per run; GPU: runs share the card); ``--threads T`` gives each run T
threads (set ``NUMBA_NUM_THREADS`` to T as well).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from geossm.tasks.graph.crossval import emit, parse_range, run, summaries
from geossm.tasks.graph.metrics import best_of


def metric(row: dict, key: str) -> float:
    """``best.acc`` -> ``row["best"]["acc"]``."""
    kind, name = key.split(".", 1)
    return float(row[kind][name])


def _set_threads(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def train_one(config: str, split: int, seed: int, overrides: list[str], out: str) -> dict:
    """One crossval run; returns its row with the process CPU and wall seconds added."""
    t0, c0 = time.monotonic(), time.process_time()
    res = run(config, [split], [seed], overrides, out, emit=None)
    row = dict(res["runs"][0])
    row.update(cpu_s=round(time.process_time() - c0, 1), wall_s=round(time.monotonic() - t0, 1))
    return row


def run_all(items: list[tuple[str, dict]], jobs: int, deadline: float,
            threads: int = 1) -> list[tuple[str, dict]]:
    """Train every ``(tag, kwargs of train_one)`` item, ``jobs`` at a time; items not started
    before ``deadline`` (monotonic seconds) are skipped. Rows are emitted as they finish."""
    done: list[tuple[str, dict]] = []
    if jobs <= 1:
        _set_threads(threads)
        for tag, kw in items:
            if time.monotonic() > deadline:
                break
            row = train_one(**kw)
            done.append((tag, row))
            emit({"variant": tag, **row})
        return done
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_set_threads,
                             initargs=(threads,)) as pool:
        pending, queue = {}, list(items)
        while queue or pending:
            while queue and len(pending) < jobs and time.monotonic() <= deadline:
                tag, kw = queue.pop(0)
                pending[pool.submit(train_one, **kw)] = tag
            if time.monotonic() > deadline:
                queue.clear()
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                tag = pending.pop(fut)
                row = fut.result()
                done.append((tag, row))
                emit({"variant": tag, **row})
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--variants", required=True, help="JSON file {name: [overrides]}")
    p.add_argument("--splits", default="0")
    p.add_argument("--seeds", default="0")
    p.add_argument("--select", default="best.acc", help="validation metric, e.g. best.roc_auc")
    p.add_argument("--mode", choices=("max", "min"), default=None,
                   help="max or min of --select wins; default min for MAE and losses, else max")
    p.add_argument("--final-splits", default=None)
    p.add_argument("--final-seeds", default=None)
    p.add_argument("--final-overrides", default="", help="space-separated, for the final runs")
    p.add_argument("--out", default="runs/graph_sweep")
    p.add_argument("--budget-s", type=float, default=float("inf"))
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run process")
    p.add_argument("--split-major", action="store_true",
                   help="train every variant on the first split before the next split; "
                        "variants are compared on the splits all of them finished")
    p.add_argument("overrides", nargs="*", help="key=value for every run")
    ns = p.parse_intermixed_args(argv)
    t0 = time.monotonic()
    deadline = t0 + ns.budget_s
    with open(ns.variants) as fh:
        variants: dict[str, list[str]] = json.load(fh)
    # Within a variant: every split of one seed before the next seed (a time box then leaves
    # whole cross-validations, not every fold of a few splits).
    grid = [(name, split, seed) for name in variants
            for seed in parse_range(ns.seeds) for split in parse_range(ns.splits)]
    if ns.split_major:
        grid.sort(key=lambda g: (g[1], g[2]))  # stable: variants keep their order
    items = [(name, {"config": ns.config, "split": split, "seed": seed,
                     "overrides": [*ns.overrides, *variants[name]], "out": f"{ns.out}/{name}"})
             for name, split, seed in grid]
    done = run_all(items, ns.jobs, deadline, ns.threads)
    runs = [(split, seed) for split in parse_range(ns.splits) for seed in parse_range(ns.seeds)]
    if ns.split_major:
        # Compare on the (split, seed) pairs that every variant finished.
        finished = [{(r["split"], r["seed"]) for tag, r in done if tag == name}
                    for name in variants]
        runs = [k for k in runs if all(k in f for f in finished)]
        done = [(tag, r) for tag, r in done if (r["split"], r["seed"]) in runs]
    expected = len(runs)
    scores: dict[str, float] = {}
    for name in variants:
        rows = [r for tag, r in done if tag == name]
        if not rows or len(rows) < expected:
            if rows:
                emit({"variant": name, "incomplete": len(rows), "of": expected})
            continue  # a partial variant is not compared with complete ones
        scores[name] = sum(metric(r, ns.select) for r in rows) / len(rows)
        emit({"variant": name, "n": len(rows), "select": scores[name],
              "summary": summaries(rows)})
    if not scores:
        return 1
    chosen = best_of(ns.select, ns.mode)(scores, key=scores.get)
    emit({"selected": chosen, "by": ns.select, "value": scores[chosen],
          "elapsed_s": time.monotonic() - t0})
    if ns.final_splits or ns.final_seeds:
        final = [*ns.overrides, *variants[chosen], *ns.final_overrides.split()]
        items = [(f"final_{chosen}", {"config": ns.config, "split": split, "seed": seed,
                                      "overrides": final, "out": f"{ns.out}/final_{chosen}"})
                 for split in parse_range(ns.final_splits or ns.splits)
                 for seed in parse_range(ns.final_seeds or ns.seeds)]
        rows = [r for _, r in run_all(items, ns.jobs, deadline, ns.threads)]
        if rows:
            emit({"final": chosen, "n": len(rows), "summary": summaries(rows),
                  "elapsed_s": time.monotonic() - t0})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
