"""Run logging: console (``logging``), TensorBoard scalars and ``metrics.jsonl``.

Only rank 0 writes files; other ranks get a logger that keeps warnings on the console.
``metrics.jsonl`` holds one JSON object per line: ``{"epoch", "split", **metrics}`` for every
evaluation, plus one ``"split": "train"`` line per epoch (mean loss, lr, throughput).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

LOGGER_NAME = "geossm"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_console(level: int = logging.INFO, rank: int = 0) -> logging.Logger:
    """Send the ``geossm`` logger to stderr (``INFO`` on rank 0, ``WARNING`` elsewhere)."""
    logger = get_logger()
    logger.setLevel(level if rank == 0 else logging.WARNING)
    if not any(getattr(h, "_geossm_console", False) for h in logger.handlers):
        handler = _TqdmHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s [rank {rank}] %(levelname)s %(message)s" if rank else
            "%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler._geossm_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
    return logger


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints through ``tqdm.write`` so log lines do not break the bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must never raise into the training loop
            self.handleError(record)


def _row_epoch(line: str) -> int | None:
    """Epoch of one ``metrics.jsonl`` line; None for a blank or torn line (a process killed
    while appending leaves half a line, which a resumed run drops)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return int(row.get("epoch", 0)) if isinstance(row, dict) else None


def _json_value(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; null keeps every line parseable
    return v


class RunLogger:
    """Writes a run's logs under ``run_dir`` (rank 0 only; a no-op elsewhere).

    Args:
        run_dir: the run directory.
        enabled: whether this process writes (rank 0).
        tensorboard: also write TensorBoard event files under ``run_dir/tb``.
        resume_epoch: when resuming, ``metrics.jsonl`` keeps only lines with ``epoch <=`` it
            (lines past the checkpoint would be written again); ``None`` starts it afresh.
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True,
                 resume_epoch: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.logger = get_logger()
        self._tb = None
        self._file_handler: logging.Handler | None = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.run_dir / "metrics.jsonl"
        if resume_epoch is None:
            self.jsonl.write_text("")
        elif self.jsonl.exists():
            kept = [ln for ln in self.jsonl.read_text().splitlines()
                    if _row_epoch(ln) is not None and _row_epoch(ln) <= resume_epoch]
            # Atomic: a crash while resuming must not truncate the rows of finished epochs.
            tmp = self.jsonl.with_name(f".{self.jsonl.name}.tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, self.jsonl)
        handler = logging.FileHandler(self.run_dir / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.logger.addHandler(handler)
        self._file_handler = handler
        if tensorboard:
            # Imported here: tensorboard takes ~1 s to import and is unused by eval/predict.
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # a declared dependency, but a run must not die for logs
                self.logger.warning("TensorBoard logging off: %s (pip install tensorboard)", err)
            else:
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        """TensorBoard scalars ``prefix/name`` at ``step``."""
        if self._tb is None:
            return
        for k, v in values.items():
            v = _json_value(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def evaluation(self, epoch: int, split: str, metrics: dict[str, Any], step: int) -> None:
        """One ``metrics.jsonl`` line, TensorBoard scalars and a console line."""
        if not self.enabled:
            return
        row = {"epoch": epoch, "split": split, **{k: _json_value(v) for k, v in metrics.items()}}
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.scalars(split, metrics, step)
        shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in row.items() if k not in ("epoch", "split"))
        self.logger.info("epoch %d %s: %s", epoch, split, shown)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._file_handler is not None:
            self.logger.removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None
