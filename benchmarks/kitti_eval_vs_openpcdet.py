"""geossm's ``kitti_eval`` side by side with OpenPCDet's official-style KITTI evaluation.

The case of issue 17: the real KITTI frames of ``../shared/data/kitti``, their labels turned
into detections the way a LiDAR detector gives them (boxes in the LiDAR frame, jittered, some
missed, some confused with the neighbouring class, a few false positives, scores), repeated
``--repeats`` times with a fixed seed. The detections go through geossm's conversion to the
camera frame (``detections_to_anno``: ``lidar_to_camera_boxes``, image boxes projected from the
camera-frame corners, ``alpha``) and are written as KITTI submission ``.txt`` files with
``write_label``; the ground truth is the label files themselves. Both evaluations then read the
same files: OpenPCDet's ``kitti_common.get_label_anno`` and ``eval.get_official_eval_result``
(from the user's checkout, ``--openpcdet PATH``; nothing of it is copied here), geossm's
``read_label`` and ``kitti_eval`` (``empty_ap=0.0``, the official value where a class has no
ground truth at a difficulty).

Compared: every AP of both overlap settings of ``get_official_eval_result`` (0.7/0.5/0.5, and
0.7/0.5/0.5 for ``bbox`` / 0.5/0.25/0.25 for BEV and 3D), metrics ``bbox``, ``bev``, ``3d``,
``aos``, difficulties easy / moderate / hard, 11-point and 40-point, for Car, Pedestrian and
Cyclist. One JSON line per value (``openpcdet``, ``geossm``, ``abs_diff``), then a summary line
with the largest difference.

OpenPCDet's rotated IoU is a numba CUDA kernel; without a GPU it runs in numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, set here unless ``--cuda``): slow (minutes for 25 repeats) but the
same code. ``--tiny``: 2 repeats (a smoke run).

Command (CPU, ~3 min)::

    python benchmarks/kitti_eval_vs_openpcdet.py --openpcdet /path/to/OpenPCDet
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti" / \
    "kitti_object_6frames.tar.xz"
CLASSES = ("Car", "Pedestrian", "Cyclist")
METRICS = ("bbox", "bev", "3d", "aos")
DIFFICULTIES = ("easy", "moderate", "hard")
#: what a detector of the three classes reports for the neighbouring classes, when it confuses
CONFUSED_AS = {"Van": "Car", "Truck": "Car", "Person_sitting": "Pedestrian"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--openpcdet", required=True,
                   help="an OpenPCDet checkout (the folder holding pcdet/)")
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="KITTI frames: a folder with training/{label_2,calib} or a .tar.xz of it")
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cuda", action="store_true",
                   help="run OpenPCDet's IoU kernel on a GPU (default: numba's CUDA simulator)")
    p.add_argument("--tiny", action="store_true", help="2 repeats (smoke run)")
    return p.parse_args(argv)


def load_openpcdet_eval(root: str | os.PathLike):
    """``(eval, kitti_common)`` modules of ``kitti_object_eval_python`` in the checkout
    ``root``. ``kitti_common`` imports ``skimage.io`` at the top for image sizes only (not used
    here): an empty stand-in is given when scikit-image is absent."""
    folder = Path(root) / "pcdet" / "datasets" / "kitti"
    if not (folder / "kitti_object_eval_python" / "eval.py").is_file():
        raise FileNotFoundError(f"--openpcdet: no pcdet/datasets/kitti/kitti_object_eval_python/"
                                f"eval.py under {root}")
    try:
        import skimage.io  # noqa: F401
    except ImportError:
        stub = types.ModuleType("skimage")
        stub.io = types.ModuleType("skimage.io")
        sys.modules.setdefault("skimage", stub)
        sys.modules.setdefault("skimage.io", stub.io)
    sys.path.insert(0, str(folder))
    try:
        evaluation = importlib.import_module("kitti_object_eval_python.eval")
        common = importlib.import_module("kitti_object_eval_python.kitti_common")
    finally:
        sys.path.remove(str(folder))
    return evaluation, common


def frames_folder(data: str, scratch: Path) -> Path:
    """The ``training`` folder of ``data`` (a folder, or a .tar.xz unpacked into ``scratch``)."""
    path = Path(data)
    if path.is_file():
        with tarfile.open(path) as tar:
            tar.extractall(scratch / "frames", filter="data")
        path = scratch / "frames"
    training = path / "training" if (path / "training").is_dir() else path
    if not (training / "label_2").is_dir():
        raise FileNotFoundError(f"--data: no label_2 folder in {data}")
    return training


def jittered_detections(label: dict, calib, rng: np.random.Generator) -> dict:
    """LiDAR-frame detections of one frame's labelled objects, as a detector gives them:
    centres moved by ~0.1-0.3 m, sizes by ~6 %, headings by ~0.1 rad (5 % turned around), 10 %
    missed, neighbouring classes (Van, Truck, Person_sitting) reported as Car / Pedestrian 30 %
    of the time, two false positives in the field of view; scores fall with the error. Returns
    ``{"boxes" (D, 7), "labels" (D,) 1-based into CLASSES, "scores" (D,)}``."""
    from geossm.tasks.detection.kitti import camera_to_lidar_boxes

    names = label["name"]
    keep = np.array([n in CLASSES or (n in CONFUSED_AS and rng.random() < 0.3) for n in names],
                    dtype=bool)
    keep &= rng.random(len(names)) > 0.1
    boxes = camera_to_lidar_boxes(label["location"][keep], label["dimensions"][keep],
                                  label["rotation_y"][keep], calib)
    cls = np.array([CLASSES.index(CONFUSED_AS.get(n, n)) + 1 for n in names[keep]], dtype=int)
    n = len(boxes)
    spread = np.where(cls == 1, 0.3, 0.1)[:, None]
    error = rng.normal(0.0, 1.0, (n, 3)) * spread * np.array([1.0, 1.0, 0.5])
    boxes[:, :3] += error
    boxes[:, 3:6] *= np.exp(rng.normal(0.0, 0.06, (n, 3)))
    boxes[:, 6] += rng.normal(0.0, 0.1, n) + np.pi * (rng.random(n) < 0.05)
    scores = np.exp(-np.linalg.norm(error, axis=1)) * rng.uniform(0.5, 1.0, n)
    fp = 2
    fp_boxes = np.stack([rng.uniform(5, 45, fp), rng.uniform(-10, 10, fp), rng.uniform(-1.5, -0.5, fp),
                         rng.uniform(0.6, 4.5, fp), rng.uniform(0.5, 1.8, fp),
                         rng.uniform(1.4, 1.8, fp), rng.uniform(-np.pi, np.pi, fp)], 1)
    return {"boxes": np.concatenate([boxes, fp_boxes]),
            "labels": np.concatenate([cls, rng.integers(1, 4, fp)]),
            "scores": np.concatenate([scores, rng.uniform(0.05, 0.6, fp)])}


def write_case(training: Path, out: Path, repeats: int, seed: int) -> list[int]:
    """Ground-truth and detection ``.txt`` files under ``out/{gt,dt}`` (frame ids ``000000`` ..,
    ``repeats`` copies of every frame); returns the ids."""
    from geossm.tasks.detection.kitti import read_calib, read_label, write_label
    from geossm.tasks.detection.task import detections_to_anno

    rng = np.random.default_rng(seed)
    # every frame read once: (label file text, parsed label, calibration)
    labels = sorted((training / "label_2").glob("*.txt"), key=lambda path: path.stem)
    frames = [(path.read_text(), read_label(path),
               read_calib(training / "calib" / f"{path.stem}.txt")) for path in labels]
    ids = []
    for r in range(repeats):
        for text, label, calib in frames:
            det = jittered_detections(label, calib, rng)
            anno = detections_to_anno(det, calib.as_dict(), CLASSES)
            idx = len(ids)
            (out / "gt").mkdir(parents=True, exist_ok=True)
            (out / "gt" / f"{idx:06d}.txt").write_text(text)
            write_label(out / "dt" / f"{idx:06d}.txt", anno)
            ids.append(idx)
    return ids


def openpcdet_aps(evaluation, common, out: Path, ids: list[int]) -> dict:
    """``{(setting, cls, metric, difficulty, "R11" | "R40"): AP}`` from
    ``get_official_eval_result`` (its precision / orientation curves, averaged by its own
    ``get_mAP`` / ``get_mAP_R40``)."""
    gt = common.get_label_annos(str(out / "gt"), ids)
    dt = common.get_label_annos(str(out / "dt"), ids)
    curves: dict = {}
    evaluation.get_official_eval_result(gt, dt, list(CLASSES), PR_detail_dict=curves)
    aps = {}
    for metric in METRICS:
        r11, r40 = evaluation.get_mAP(curves[metric]), evaluation.get_mAP_R40(curves[metric])
        for c, cls in enumerate(CLASSES):
            for d, diff in enumerate(DIFFICULTIES):
                for setting in range(r11.shape[2]):
                    aps[setting, cls, metric, diff, "R11"] = float(r11[c, d, setting])
                    aps[setting, cls, metric, diff, "R40"] = float(r40[c, d, setting])
    return aps


#: class IoU thresholds of get_official_eval_result's two settings, per metric
SETTINGS = ({m: {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5} for m in METRICS},
            {"bbox": {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5},
             "aos": {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5},
             "bev": {"Car": 0.5, "Pedestrian": 0.25, "Cyclist": 0.25},
             "3d": {"Car": 0.5, "Pedestrian": 0.25, "Cyclist": 0.25}})


def geossm_aps(out: Path, ids: list[int]) -> dict:
    """The same keys as ``openpcdet_aps`` from geossm's ``read_label`` and ``kitti_eval``."""
    from geossm.tasks.detection.evaluation import kitti_eval
    from geossm.tasks.detection.kitti import read_label

    gt = [read_label(out / "gt" / f"{i:06d}.txt") for i in ids]
    dt = [read_label(out / "dt" / f"{i:06d}.txt") for i in ids]
    aps = {}
    for setting, thresholds in enumerate(SETTINGS):
        for metric in METRICS:
            res = kitti_eval(gt, dt, CLASSES, (metric,), iou_thresholds=thresholds[metric],
                             empty_ap=0.0)
            for cls in CLASSES:
                for diff in DIFFICULTIES:
                    for rule in ("R11", "R40"):
                        aps[setting, cls, metric, diff, rule] = res[f"{cls}/{metric}_{diff}_{rule}"]
    return aps


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.cuda:
        if "numba" in sys.modules and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
            raise RuntimeError("numba was imported before the CUDA simulator could be chosen: "
                               "run this script in a process of its own (or set "
                               "NUMBA_ENABLE_CUDASIM=1)")
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba is imported
    repeats = 2 if args.tiny else args.repeats
    evaluation, common = load_openpcdet_eval(args.openpcdet)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        training = frames_folder(args.data, scratch)
        ids = write_case(training, scratch / "case", repeats, args.seed)
        theirs = openpcdet_aps(evaluation, common, scratch / "case", ids)
        ours = geossm_aps(scratch / "case", ids)
    worst = 0.0
    for key, value in theirs.items():
        setting, cls, metric, diff, rule = key
        diff_abs = abs(ours[key] - value)
        worst = max(worst, diff_abs)
        print(json.dumps({"setting": setting, "class": cls, "metric": metric, "difficulty": diff,
                          "rule": rule, "openpcdet": value, "geossm": ours[key],
                          "abs_diff": diff_abs}))
    print(json.dumps({"summary": "max_abs_diff", "values": len(theirs), "frames": len(ids),
                      "repeats": repeats, "max_abs_diff": worst}))


if __name__ == "__main__":
    main()
