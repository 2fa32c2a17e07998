"""Helpers of benchmarks/peptides_parts.sh (Peptides-func trained in time-limited parts).

    python3 benchmarks/peptides_parts.py epochs PREV_DIR TRAIN_S   # schedule length for a part
    python3 benchmarks/peptides_parts.py strip FULL.pt WEIGHTS.pt     # drop optimizer state
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
    else:
        raise SystemExit(__doc__)
