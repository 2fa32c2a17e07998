"""Helpers of benchmarks/peptides_parts.sh and peptides_seeds.sh (Peptides-func or -struct
trained in time-limited parts / several seeds at once).

    python3 benchmarks/peptides_parts.py epochs PREV_DIR TRAIN_S   # schedule length for a part
    python3 benchmarks/peptides_parts.py strip FULL.pt WEIGHTS.pt     # drop optimizer state
    python3 benchmarks/peptides_parts.py fit LOG LEFT_S               # epochs of a re-sized run
    python3 benchmarks/peptides_parts.py report LOG...                # per-run summary lines
"""

from __future__ import annotations

import datetime
import glob
import re
import sys

#: Seconds of a resumed part before its first epoch (data, encodings, workers: 29 s measured
#: on an H200 host with the Triton cache warm).
STARTUP_S = 35.0
#: Fraction of the measured time per epoch kept free, for slower epochs.
MARGIN = 0.97
_TRAIN_LINE = re.compile(r"(\d\d:\d\d:\d\d) INFO epoch (\d+) train:")


def epoch_stamps(log_path: str) -> dict[int, datetime.datetime]:
    """``{epoch: time of its 'epoch N train:' log line}`` of one trainer log."""
    stamps = {}
    with open(log_path) as fh:
        for line in fh:
            m = _TRAIN_LINE.match(line)
            if m:
                stamps[int(m.group(2))] = datetime.datetime.strptime(m.group(1), "%H:%M:%S")
    return stamps


def schedule_epochs(prev_dir: str, train_s: float) -> int:
    """Epochs already done in the previous parts plus the epochs that fit into ``train_s``.

    The wall time per epoch (training and validation) is measured between the 'epoch N
    train:' lines of each previous part's ``train*.log``, leaving out the part's first epoch
    (it holds the Triton compilation); the slowest part counts.
    """
    done, per_epoch = 0, []
    for log in sorted(glob.glob(f"{prev_dir}/train*.log")):
        stamps = epoch_stamps(log)
        if len(stamps) >= 3:
            first, last = sorted(stamps)[1], max(stamps)
            seconds = (stamps[last] - stamps[first]).total_seconds() % 86400
            per_epoch.append(seconds / (last - first))
        done = max([done, *stamps])
    if not per_epoch:
        raise SystemExit(f"no previous part with 3 epochs or more in {prev_dir}/train*.log")
    return done + int((train_s - STARTUP_S) / max(per_epoch) * MARGIN)


def fit_epochs(log_path: str, left_s: float) -> int:
    """Length of the schedule of a run that is stopped now and resumed with ``left_s`` seconds
    to go: its finished epochs plus the epochs that fit, at the pace of its last epoch (the
    first one holds the Triton compilation) with 8 % headroom, after ``STARTUP_S``."""
    stamps = epoch_stamps(log_path)
    if len(stamps) < 3:
        raise SystemExit(f"{log_path}: fewer than 3 epochs to measure")
    last = max(stamps)
    per_epoch = ((stamps[last] - stamps[last - 1]).total_seconds() % 86400) * 1.08
    return last + max(int((left_s - STARTUP_S) / max(per_epoch, 1.0)), 1)


def epoch_wall_seconds(text: str) -> float | None:
    """Mean wall time of an epoch after the first (training, validation and checkpoints):
    from one epoch's train line to the next one's, over consecutive epochs, leaving out the
    pairs longer than 3x the median (a stop and resume in between). None below 3 epochs."""
    stamps = {}
    for hms, epoch in re.findall(r"^(\d\d:\d\d:\d\d)\S* INFO epoch (\d+) train:", text, re.M):
        h, m, sec = map(int, hms.split(":"))
        stamps[int(epoch)] = h * 3600 + m * 60 + sec  # a resumed epoch: its last run counts
    gaps = [(stamps[e] - stamps[e - 1]) % 86400 for e in sorted(stamps) if e - 1 in stamps]
    if len(gaps) < 2:
        return None
    usual = sorted(gaps)[len(gaps) // 2]
    kept = [g for g in gaps if g <= 3 * usual]
    return round(sum(kept) / len(kept), 3)


def report(log_path: str) -> str:
    """One line per run: epochs, median training time of an epoch, the mean wall time of an
    epoch (``epoch_wall_seconds``), the best validation AP (Peptides-func) or lowest MAE
    (Peptides-struct), the final test lines (``weights=best`` / ``last``)."""
    text = open(log_path).read()
    metric = "mae" if re.search(r"epoch \d+ val: .*?\bmae=", text) else "ap"
    times = sorted(float(t) for t in re.findall(r"epoch \d+ train: .*?time_s=([\d.]+)", text))
    vals = [(int(e), float(a))
            for e, a in re.findall(rf"epoch (\d+) val: .*?\b{metric}=([\d.]+)", text)]
    best = (min if metric == "mae" else max)(vals, key=lambda v: v[1]) if vals else None
    tests = re.findall(rf"test: weights=(\w+) .*?\b{metric}=([\d.]+)", text)
    median = times[len(times) // 2] if times else None
    return (f"{log_path} epochs={len(vals)} median_epoch_s={median} "
            f"epoch_wall_s={epoch_wall_seconds(text)} best_val={best} test={dict(tests)}")


def strip_checkpoint(src: str, dst: str) -> None:
    """Keep the weights and the best-epoch record of a full training checkpoint."""
    import torch
    c = torch.load(src, map_location="cpu", weights_only=True)
    torch.save({k: c[k] for k in ("format", "version", "model", "epoch", "best") if k in c}, dst)


if __name__ == "__main__":
    if sys.argv[1:2] == ["epochs"] and len(sys.argv) == 4:
        print(schedule_epochs(sys.argv[2], float(sys.argv[3])))
    elif sys.argv[1:2] == ["strip"] and len(sys.argv) == 4:
        strip_checkpoint(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["fit"] and len(sys.argv) == 4:
        print(fit_epochs(sys.argv[2], float(sys.argv[3])))
    elif sys.argv[1:2] == ["report"] and len(sys.argv) >= 3:
        print("\n".join(report(log) for log in sys.argv[2:]))
    else:
        raise SystemExit(__doc__)
