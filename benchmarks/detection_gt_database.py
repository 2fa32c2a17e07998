"""Epoch time of a KITTI training DataLoader with GT sampling and non-persistent workers.

With ``persistent_workers=False`` every epoch starts fresh workers, each holding a copy of the
dataset as the main process has it. Before the GT-sampling database was cached, each worker
rebuilt it (re-reading every training frame) in every epoch; now it is built once into
``$GEOSSM_CACHE/detection/kitti_gt_database_<key>.npz`` and the workers load that file.

Runs ``--epochs`` passes over ``KittiDataset(root, "train", augment=[GTSampling])`` with
``--workers`` workers and prints one JSON line per epoch (seconds, batches, which geossm was
imported). ``GEOSSM_CACHE`` is a fresh temporary folder unless set, so the first epoch includes
the one build. ``--repeat K`` lists every frame K times (``ImageSets/train.txt`` in a copy of
the root): a larger training split for the same files.

    python benchmarks/detection_gt_database.py --root KITTI [--workers 4] [--epochs 2]
        [--batch-size 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _root_with_repeats(root: Path, repeat: int, scratch: Path) -> Path:
    if repeat <= 1:
        return root
    copy = scratch / "kitti"
    shutil.copytree(root, copy)
    ids = sorted(p.stem for p in (copy / "training" / "velodyne").glob("*.bin"))
    (copy / "ImageSets").mkdir(exist_ok=True)
    (copy / "ImageSets" / "train.txt").write_text("\n".join(ids * repeat) + "\n")
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="gtdb_bench_"))
    os.environ.setdefault("GEOSSM_CACHE", str(scratch / "cache"))
    import torch

    import geossm
    from geossm.tasks.detection.datasets import KittiDataset

    root = _root_with_repeats(args.root, args.repeat, scratch)
    dataset = KittiDataset(root, "train", augment=[{"name": "GTSampling"}])
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size,
                                         num_workers=args.workers, persistent_workers=False,
                                         collate_fn=list)
    for epoch in range(args.epochs):
        start = time.perf_counter()
        batches = sum(1 for _ in loader)
        print(json.dumps({"epoch": epoch, "seconds": round(time.perf_counter() - start, 3),
                          "batches": batches, "frames": len(dataset),
                          "workers": args.workers, "geossm": str(Path(geossm.__file__).parent)}))
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
