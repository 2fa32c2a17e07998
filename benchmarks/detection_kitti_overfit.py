"""Does a LION checkpoint trained on the 6 real KITTI frames reproduce them? (reader, voxeliser,
backbone, head, decoder, NMS and evaluation agree).

Runs the checkpoint on every frame of ``<root>/training`` (no augmentation), decodes, and prints
the KITTI AP (BEV and 3D, R40 and R11) two ways:

- ``devkit``: the official procedure on the frames as they are. R40 samples the precision at
  the score thresholds where recall passes k/40; with fewer than 40 valid ground truths there are
  fewer thresholds than sample points and the rest count as precision 0, so perfect detections
  of the 3 moderate Cars of these frames score (3 - 1) / 40 = 5 %, not 100 %;
- ``repeated``: the same frames each counted ``--repeat`` times (default 40, so every class
  with one valid object has >= 40). Precision and recall are ratios, so the precision-recall
  curve is unchanged; only its sampling becomes fine enough for R40 / R11.

Also writes ``predictions.npz`` (per frame ``<id>/boxes|scores|labels`` and ground truth) and,
with ``--export``, the weights in half precision (a checkpoint ``geossm predict`` loads).

    python benchmarks/detection_kitti_overfit.py --root DIR --checkpoint last.pt --out OUTDIR
        [--export weights.pt] [key=value config overrides ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from geossm.config import apply_overrides, load_config, to_container
from geossm.engine.checkpoint import load_checkpoint, save_checkpoint
from geossm.registry import TASKS

import geossm.tasks.detection  # noqa: F401  (registers the task)
from geossm.tasks.detection.evaluation import kitti_eval
from geossm.tasks.detection.task import detections_to_anno

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="unpacked KITTI object folder")
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=REPO / "configs/detection/kitti_lion.yaml")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--export", type=Path, default=None, help="half-precision weights to write")
    ap.add_argument("overrides", nargs="*")
    ns = ap.parse_args()
    cfg = apply_overrides(load_config(ns.config),
                          [f"data.root={ns.root}", "data.split=training", "data.augment=[]",
                           *ns.overrides])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task = TASKS.get("DetectionTask")(cfg)
    model = task.build_model()
    ckpt = load_checkpoint(ns.checkpoint, map_location="cpu")
    model.load_state_dict({k.removeprefix("module."): v.float() if v.is_floating_point() else v
                           for k, v in ckpt["model"].items()})
    model.to(device).eval()
    ds = task.build_dataset("training")
    gts, dts, arrays = [], [], {}
    with torch.no_grad():
        for i in range(len(ds)):
            batch = task.collate([ds[i]])
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            det = task._decode(task.forward(model, batch))[0]
            fid = batch["frame_id"][0]
            gts.append(batch["annos"][0])
            dts.append(detections_to_anno(det, batch["calib"][0], task.classes()))
            arrays.update({f"{fid}/boxes": det["boxes"], f"{fid}/scores": det["scores"],
                           f"{fid}/labels": det["labels"],
                           f"{fid}/gt_boxes": np.asarray(ds[i]["gt_boxes"])})
    ns.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(ns.out / "predictions.npz", **arrays)
    result = {"checkpoint": str(ns.checkpoint), "frames": len(ds),
              "devkit": kitti_eval(gts, dts, task.classes()),
              f"repeated_x{ns.repeat}": kitti_eval(gts * ns.repeat, dts * ns.repeat,
                                                    task.classes())}
    for name in ("devkit", f"repeated_x{ns.repeat}"):
        short = {k: round(v, 2) for k, v in result[name].items() if k.startswith("Car/")}
        print(json.dumps({"eval": name, **short}), flush=True)
    (ns.out / "kitti_overfit_eval.json").write_text(json.dumps(result, indent=1))
    if ns.export:
        half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        save_checkpoint({"model": half, "config": to_container(cfg)}, ns.export)


if __name__ == "__main__":
    main()
