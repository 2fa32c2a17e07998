"""Train one config on several splits / folds / seeds and summarise (mean ± std).

::

    python -m geossm.tasks.graph.crossval CONFIG --splits 0-9 [--seeds 0] [key=value ...]
    python -m geossm.tasks.graph.crossval configs/graph/cora_gmn.yaml --splits 0 --seeds 0-4

Each run is ``geossm train CONFIG data.split=K seed=S key=value ...`` with its run directory
``<out>/split{K}_seed{S}`` (``--out``, default ``runs/<config name>/crossval``). One JSON line
is printed per run (``{"split", "seed", "best": {...}, "last": {...}}``) and a last line
``{"summary": {"best": {metric: {"mean", "std", "n"}}, "last": {...}}}`` over all runs
(``test_*`` entries are the test metrics; ``best`` uses the checkpoint chosen on ``eval.split``,
``last`` the final weights).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .metrics import summarize

__all__ = ["parse_range", "run", "summaries", "emit", "main"]


def parse_range(text: str) -> list[int]:
    """``"0-9"`` -> ``[0, ..., 9]``, ``"0,3,5"`` -> ``[0, 3, 5]``, ``"2"`` -> ``[2]``."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = part.split("-")
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"expected a range like '0-9' or '0,2,5', got {text!r}") from None
    return out


def emit(row: dict) -> None:
    """Print ``row`` as one JSON line (flushed: rows appear as runs finish)."""
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()


def summaries(rows: list[dict]) -> dict:
    """``{"best": summary, "last": summary}`` (``metrics.summarize``) over run rows."""
    return {kind: summarize({(r["split"], r["seed"]): r[kind] for r in rows})
            for kind in ("best", "last")}


def run(config: str, splits: list[int], seeds: list[int], overrides: list[str],
        out: str | None = None, emit=None) -> dict:
    """Train every (split, seed); returns ``{"runs": [...], "summary": {...}}``.

    ``emit(row)`` is called after each run (the command line prints it as a JSON line).
    """
    from geossm.config import config_name, find_config, load_config
    from geossm.engine import Trainer

    path = find_config(config)
    name = config_name(path)
    base = Path(out) if out else Path("runs") / name / "crossval"
    rows = []
    for split in splits:
        for seed in seeds:
            cfg = load_config(path, [*overrides, f"data.split={split}", f"seed={seed}",
                                     f"output_dir={base / f'split{split}_seed{seed}'}"])
            trainer = Trainer(cfg, config_name=name)
            try:
                result = trainer.fit()
            finally:
                trainer.close()
            row = {"split": split, "seed": seed, "best": result["best"], "last": result["last"]}
            rows.append(row)
            if emit is not None:
                emit(row)
    return {"runs": rows, "summary": summaries(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geossm.tasks.graph.crossval",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--splits", default="0", help="split / fold numbers, e.g. 0-9")
    parser.add_argument("--seeds", default="0", help="seeds, e.g. 0-4")
    parser.add_argument("--out", default=None, help="parent folder of the run directories")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    ns = parser.parse_intermixed_args(argv)
    result = run(ns.config, parse_range(ns.splits), parse_range(ns.seeds), ns.overrides,
                 ns.out, emit)
    sys.stdout.write(json.dumps({"summary": result["summary"]}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
