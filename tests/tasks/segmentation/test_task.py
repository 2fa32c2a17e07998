"""End to end: a tiny synthetic-parts run through the trainer, then predict on one file."""

import json
import re

import numpy as np
import pytest
import torch

from geossm.cli import main
from geossm.config import find_config, load_config
from geossm.engine import Trainer
from geossm.packed import pack_collate
from geossm.registry import DATASETS, MODELS, TASKS
from geossm.tasks.segmentation import synthetic
from geossm.tasks.segmentation.models import knn
from geossm.tasks.segmentation.task import ClassificationTask, SegmentationTask

TINY = ["model.dims=[8,16]", "model.depths=[0,1]", "model.strides=[8]", "model.d_state=4",
        "model.k=6", "data.num_samples=8", "data.num_val_samples=4", "data.min_points=64",
        "data.max_points=96", "train.epochs=2", "train.batch_size=4", "train.progress=false",
        "device=cpu"]


def test_registered_names():
    assert {"PointCloudMambaSeg", "PointCloudMambaCls"} <= set(MODELS.names())
    assert {"SyntheticParts", "ShapeNetPart", "S3DIS", "ModelNet40",
            "SemanticKITTI"} <= set(DATASETS.names())
    assert TASKS.get("SegmentationTask") is SegmentationTask
    assert TASKS.get("ClassificationTask") is ClassificationTask


def test_default_config_is_synthetic_parts():
    cfg = load_config(find_config("default.yaml"))
    assert cfg.task == "SegmentationTask" and cfg.data.name == "SyntheticParts"
    assert cfg.model.name == "PointCloudMambaSeg" and cfg.data.root is None


@pytest.mark.parametrize("name", ["segmentation/shapenetpart_pcm.yaml",
                                  "segmentation/s3dis_pcm.yaml",
                                  "segmentation/semantickitti_pcm.yaml",
                                  "classification/modelnet40_pcm.yaml"])
def test_dataset_configs_build_their_models(name):
    cfg = load_config(find_config(name))
    task = TASKS.get(cfg.task)(cfg)
    model = task.build_model()
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
    assert task.build_metrics() is not None


def test_train_then_predict(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config(find_config("default.yaml"), TINY + [f"output_dir={run}"])
    trainer = Trainer(cfg, config_name="default")
    summary = trainer.fit()
    assert {"config.yaml", "metrics.jsonl", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    best = summary["best"]
    assert 0.0 <= best["miou"] <= 1.0 and "ins_miou" in best and "oa" in best
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("split") == "val" for r in rows)

    sample = tmp_path / "shape.npz"
    synthetic._main([str(sample), "--split", "val", "--index", "1"])
    written = trainer.predict(sample, tmp_path / "pred.npz", checkpoint=run / "best.pt")
    assert [p.suffix for p in written] == [".npz", ".ply"]
    with np.load(written[0]) as z, np.load(sample) as s:
        assert z["pred"].shape == s["label"].shape
        # Category-conditioned: every prediction is one of the shape's own parts.
        assert set(np.unique(z["pred"])) <= set(synthetic.CATEGORY_PARTS[int(s["category"])])
    from geossm.io.ply import read_ply
    ply = read_ply(written[1])
    assert "label" in ply and "pred" in ply

    # An out-of-range category: one line and status 2, not IndexError deep in the model.
    bad = tmp_path / "bad.npz"
    with np.load(sample) as s:
        np.savez(bad, coord=s["coord"], category=7)
    capsys.readouterr()  # the training log
    code = main(["predict", "default", *TINY, f"checkpoint={run / 'best.pt'}", f"input={bad}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert re.fullmatch(r"geossm predict: error: input file .*bad\.npz: category: expected an "
                        r"integer in \[0, 4\) \(model\.num_categories=4\), got 7\n", err)


def test_classification_task_metrics_and_prediction(tmp_path):
    cfg = load_config(find_config("classification/modelnet40_pcm.yaml"),
                      ["model.num_classes=3"])
    task = ClassificationTask(cfg)
    logits = torch.tensor([[3.0, 0, 0], [0, 0, 3.0]])
    batch = {"label": torch.tensor([0, 1])}
    assert float(task.loss(logits, batch)) > 0
    m = task.build_metrics()
    m.update(logits, batch)
    assert m.compute() == {"oa": 0.5, "macc": 0.5}
    sample = {"coord": np.zeros((5, 3), np.float32), "label": 1}
    out = task.write_prediction(sample, task.postprocess(logits[:1], pack_collate([sample])),
                                tmp_path / "p.npz")
    assert out[1].suffix == ".ply"


@pytest.mark.parametrize("overrides", [[], ["+data.grid_size=0.05", "model.in_channels=6",
                                             "+data.feat_keys=[coord,coord]"]])
def test_predict_prepares_inputs_as_the_evaluation_dataset(tmp_path, overrides):
    """``preprocess`` / ``load_input`` and the validation split give the same arrays."""
    cfg = load_config(find_config("default.yaml"), overrides + ["data.num_val_samples=3"])
    task = SegmentationTask(cfg)
    val = task.build_dataset("val")
    for index in range(3):
        raw = val.load(index)
        np.savez(tmp_path / "raw.npz", **raw)
        from_dataset = val[index]
        for prepared in (task.preprocess(raw), task.load_input(tmp_path / "raw.npz")):
            assert prepared.keys() == from_dataset.keys()
            for key in prepared:
                np.testing.assert_array_equal(prepared[key], from_dataset[key])


# ------------------------------------------------------- predict inputs: one-line refusals

COORD = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)


def _write(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, message", [
    (dict(coord=COORD, category=7), r"^input file .*bad\.npz: category: expected an integer in "
                                    r"\[0, 4\) \(model\.num_categories=4\), got 7$"),
    (dict(coord=COORD, category=-1), r"category: expected an integer in \[0, 4\) .*, got -1$"),
    (dict(coord=COORD, category=1.5), r"category: expected integers, got 1.5 \(dtype float64\)"),
    (dict(coord=COORD, category=[1, 2]),
     r"category: expected a single value \(shape \(\)\), got shape \(2,\)"),
    (dict(coord=COORD), r"bad\.npz: expected 'category' \(model\.num_categories=4\), got keys "
                        r"\['coord'\]"),
    # the shape is the first problem, not the missing category
    (dict(coord=COORD[:10, :2]), r"^input file .*bad\.npz: coord: expected shape \(N, 3\), "
                                 r"got shape \(10, 2\)$"),
    (dict(coord=COORD.ravel(), category=1), r"coord: expected shape \(N, 3\), got shape \(900,\)"),
    (dict(coord=np.where(COORD > 2, np.nan, COORD), category=1),
     r"coord: expected finite values, got NaN or inf"),
    (dict(coord=np.array([["a", "b", "c"]]), category=1), r"coord: expected numbers, got dtype"),
    (dict(coord=np.zeros((0, 3)), category=1),
     r"coord: expected at least one point, got shape \(0, 3\)"),
    (dict(points=COORD), r"expected 'coord' of shape \(N, 3\), got keys \['points'\]"),
    (dict(coord=COORD, category=1, label=np.full(300, 99)),
     r"label: expected values in \[0, 10\) or -1 \(ignored\) \(model\.num_classes=10\), "
     r"got \[99, 99\]"),
    (dict(coord=COORD, category=1, label=np.zeros(5, np.int64)),
     r"label: expected shape \(300,\), got shape \(5,\)"),
])
def test_segmentation_predict_input_refused_in_one_line(tmp_path, arrays, message):
    task = SegmentationTask(load_config(find_config("default.yaml")))
    with pytest.raises(ValueError, match=message):
        task.load_input(_write(tmp_path, **arrays))


def test_predict_input_columns_after_xyz_are_dropped_and_ignored_labels_pass(tmp_path):
    task = SegmentationTask(load_config(find_config("default.yaml")))
    label = np.full(300, -1)
    sample = task.load_input(_write(tmp_path, coord=np.c_[COORD, COORD[:, :1]], category=1,
                                    label=label))
    assert sample["coord"].shape[1] == 3 and sample["category"] == 1


@pytest.mark.parametrize("overrides, arrays, message", [
    (["+data.feat_keys=[coord,normal]", "model.in_channels=6"], dict(category=0),
     r"expected 'normal' of shape \(300, 3\) \(data\.feat_keys names 'normal'\), got keys"),
    (["+data.feat_keys=[coord,normal]", "model.in_channels=6"],
     dict(category=0, normal=COORD[:, :2]), r"normal: expected shape \(300, 3\), got shape "
                                            r"\(300, 2\)"),
    (["+data.feat_keys=[coord,normal]"], dict(category=0, normal=COORD),
     r"feat: data\.feat_keys give coord 3 \+ normal 3 = 6 channels per point, "
     r"model\.in_channels expects 3"),
])
def test_feature_arrays_match_feat_keys_and_in_channels(tmp_path, overrides, arrays, message):
    task = SegmentationTask(load_config(find_config("default.yaml"), overrides))
    with pytest.raises(ValueError, match=message):
        task.load_input(_write(tmp_path, coord=COORD, **arrays))


def test_colours_in_0_255_are_refused():
    task = SegmentationTask(load_config(find_config("segmentation/s3dis_pcm.yaml")))
    with pytest.raises(ValueError, match=r"^sample: color: expected values in \[0, 1\] "
                                         r"\(data\.feat_keys names 'color'\), got \[0, 255\]"):
        task.preprocess({"coord": COORD, "color": np.tile([0.0, 128.0, 255.0], (300, 1))})


def test_preprocess_validates_like_load_input():
    """The Python route (``preprocess``) refuses what ``predict`` refuses, naming "sample"."""
    task = SegmentationTask(load_config(find_config("default.yaml")))
    with pytest.raises(ValueError, match=r"^sample: category: expected an integer in \[0, 4\)"):
        task.preprocess({"coord": COORD, "category": 4})


@pytest.mark.parametrize("label, message", [
    (np.zeros(2, np.int64), r"label: expected a single value \(shape \(\)\), got shape \(2,\)"),
    (40, r"label: expected an integer in \[0, 40\) or -1 \(ignored\) \(model\.num_classes=40\), "
         r"got 40"),
])
def test_classification_predict_input_label_is_one_class(tmp_path, label, message):
    task = ClassificationTask(load_config(find_config("classification/modelnet40_pcm.yaml")))
    with pytest.raises(ValueError, match=message):
        task.load_input(_write(tmp_path, coord=COORD, label=label))
    assert task.load_input(_write(tmp_path, coord=COORD, label=3))["label"] == 3


# ------------------------------------------- full resolution: metrics and predict on every point

class _LeftIsZero(torch.nn.Module):
    """Logits of 3 classes: class 0 where x < 0.5, else class 1 (never class 2)."""

    def forward(self, coord, feat, cu_seqlens, category=None):
        right = (coord[:, 0] >= 0.5).long()
        return torch.nn.functional.one_hot(right, 3).float()


SCENE = {"coord": np.array([[0, 0, 0], [0.01, 0, 0], [0.02, 0, 0], [1, 0, 0], [2, 0, 0]],
                           np.float32),  # points 0-2 share one 0.5 m voxel
         "label": np.array([0, 0, 1, 1, 2])}
SCENE_CONFIG = ["+data.grid_size=0.5", "+data.normalize=false", "model.num_categories=0",
                "model.num_classes=3"]


@pytest.mark.parametrize("full", [True, False])
def test_full_resolution_metric_equals_a_hand_computation(full):
    """Kept points 0, 3, 4 predict 0, 1, 1. Every point: pred [0 0 0 1 1] vs label [0 0 1 1 2]:
    IoU 2/3, 1/3, 0; the kept points alone: pred [0 1 1] vs [0 1 2]: IoU 1, 1/2, 0."""
    cfg = load_config(find_config("default.yaml"),
                      SCENE_CONFIG + [f"eval.full_resolution={str(full).lower()}"])
    task = SegmentationTask(cfg)
    batch = task.collate([task.preprocess(SCENE)])
    outputs = task.predict_step(_LeftIsZero(), batch)
    assert float(task.loss(outputs, batch)) > 0
    metrics = task.build_metrics()
    metrics.update(outputs, batch)
    got = metrics.compute()
    want_iou = [2 / 3, 1 / 3, 0.0] if full else [1.0, 0.5, 0.0]
    assert got["miou"] == pytest.approx(np.mean(want_iou))
    assert got["oa"] == pytest.approx(3 / 5 if full else 2 / 3)
    pred = task.postprocess(outputs, batch)["pred"]
    assert pred.tolist() == ([0, 0, 0, 1, 1] if full else [0, 1, 1])


def test_one_vote_is_no_voting_and_votes_sum_the_passes():
    coord = np.random.default_rng(3).uniform(0, 1, (200, 3)).astype(np.float32)
    raw = {"coord": coord, "label": np.arange(200) % 3}
    model = torch.nn.Linear(3, 3)
    tasks = {v: SegmentationTask(load_config(find_config("default.yaml"), [
        "+data.grid_size=0.2", "model.num_categories=0", "model.num_classes=3",
        "eval.full_resolution=true", f"eval.votes={v}"])) for v in (1, 2)}
    plain = SegmentationTask(load_config(find_config("default.yaml"), [
        "+data.grid_size=0.2", "model.num_categories=0", "model.num_classes=3"]))
    forward = lambda batch: model(batch["feat"])  # noqa: E731 - a per-point stand-in model
    for task in (*tasks.values(), plain):
        task.forward = lambda m, batch: forward(batch)
    plain_batch = plain.collate([plain.preprocess(raw)])
    plain_logits = plain.predict_step(model, plain_batch)
    one_batch = tasks[1].collate([tasks[1].preprocess(raw)])
    one = tasks[1].predict_step(model, one_batch)
    torch.testing.assert_close(one["logits"], plain_logits)
    torch.testing.assert_close(one["full_logits"], plain_logits[one_batch["inverse"][:, 0]])
    two_batch = tasks[2].collate([tasks[2].preprocess(raw)])
    two = tasks[2].predict_step(model, two_batch)
    assert two_batch["cu_seqlens"].numel() == 3  # one segment per pass
    rows = two_batch["inverse"]
    torch.testing.assert_close(two["full_logits"],
                               two["logits"][rows[:, 0]] + two["logits"][rows[:, 1]])


def test_eval_votes_config_refused():
    with pytest.raises(ValueError, match=r"'eval\.votes' = 2 sums passes on the original points: "
                                         r"set eval\.full_resolution=true too"):
        SegmentationTask(load_config(find_config("default.yaml"),
                                     ["eval.votes=2"])).build_dataset("val")


def test_full_resolution_part_segmentation_scores_every_point_of_each_shape():
    """ShapeNetPart-style: a subset of points per shape (num_points) is predicted, the instance
    mIoU counts every point of every shape (category-conditioned, two shapes in one batch)."""
    cfg = load_config(find_config("default.yaml"), ["+data.num_points=40",
                                                    "eval.full_resolution=true",
                                                    "data.num_val_samples=2"])
    task = SegmentationTask(cfg)
    val = task.build_dataset("val")
    samples = [val[0], val[1]]
    assert all(len(s["coord"]) == 40 < len(s["full_label"]) for s in samples)
    batch = task.collate(samples)
    # A model right on every kept point: the full-resolution score counts the others too.
    oracle = torch.nn.functional.one_hot(batch["label"], 10).float() * 5
    outputs = {"logits": oracle, "full_logits": oracle[batch["inverse"]].sum(1)}
    metrics = task.build_metrics()
    metrics.update(outputs, batch)
    got = metrics.compute()
    full_pred = batch["label"][batch["inverse"][:, 0]]
    accuracy = float((full_pred == batch["full_label"]).float().mean())
    assert got["oa"] == pytest.approx(accuracy) and accuracy < 1.0
    assert 0 < got["ins_miou"] < 1.0


KITTI_TINY = ["model.dims=[8,16]", "model.depths=[0,1]", "model.strides=[8]", "model.d_state=4",
              "model.k=6", "train.progress=false", "data.grid_size=0.4"]


def _official_scan(tmp_path, kitti_npy_root):
    """The real scan 000002 written as ``sequences/08/velodyne/000002.bin``: its coordinates."""
    coord = np.load(kitti_npy_root / "points" / "000002.npy").astype(np.float32)[:, :3]
    velodyne = tmp_path / "kitti" / "sequences" / "08" / "velodyne"
    velodyne.mkdir(parents=True)
    np.c_[coord, np.zeros(len(coord))].astype(np.float32).tofile(velodyne / "000002.bin")
    return coord


def test_predict_writes_one_label_per_original_point_and_semantickitti_label_files(
        tmp_path, kitti_npy_root):
    """``geossm predict`` on a real SemanticKITTI scan written in the official layout: the
    .npz, the .ply and the .label (raw ids, submission layout) hold every input point."""
    from geossm.tasks.segmentation.datasets import (SEMANTICKITTI_LEARNING_MAP_INV,
                                                    semantickitti_learning_map)
    coord = _official_scan(tmp_path, kitti_npy_root)
    velodyne = tmp_path / "kitti" / "sequences" / "08" / "velodyne"
    cfg = load_config(find_config("segmentation/semantickitti_sample.yaml"),
                      KITTI_TINY + [f"output_dir={tmp_path / 'run'}"])
    trainer = Trainer(cfg, config_name="semantickitti_sample")
    written = trainer.predict(velodyne / "000002.bin", tmp_path / "out" / "scan.npz")
    assert [p.suffix for p in written] == [".npz", ".ply", ".label"]
    assert written[2] == tmp_path / "out" / "sequences" / "08" / "predictions" / "000002.label"
    with np.load(written[0]) as z:
        pred = z["pred"]
    assert pred.shape == (len(coord),)
    raw = np.fromfile(written[2], dtype=np.uint32)
    assert raw.shape == (len(coord),) and set(np.unique(raw)) <= set(
        SEMANTICKITTI_LEARNING_MAP_INV.values())
    np.testing.assert_array_equal(semantickitti_learning_map(raw), pred)


def test_eval_write_predictions_writes_the_split_as_label_files(tmp_path, kitti_npy_root):
    """``eval.write_predictions=DIR``: evaluating the split writes one .label per scan, every
    original point, in the submission layout, equal to the prediction of ``predict``."""
    from geossm.tasks.segmentation.datasets import semantickitti_learning_map
    coord = _official_scan(tmp_path, kitti_npy_root)
    labels = tmp_path / "kitti" / "sequences" / "08" / "labels"
    labels.mkdir()
    np.full(len(coord), 40, np.uint32).tofile(labels / "000002.label")  # all road
    cfg = load_config(find_config("segmentation/semantickitti_sample.yaml"), KITTI_TINY + [
        f"output_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'kitti'}",
        f"eval.write_predictions={tmp_path / 'submission'}"])
    trainer = Trainer(cfg, config_name="semantickitti_sample")
    metrics = trainer.evaluate("val")
    written = tmp_path / "submission" / "sequences" / "08" / "predictions" / "000002.label"
    pred = semantickitti_learning_map(np.fromfile(written, dtype=np.uint32))
    assert pred.shape == (len(coord),)
    assert metrics["oa"] == pytest.approx(float((pred == 8).mean()))  # road is class 8
    out = trainer.predict(tmp_path / "kitti" / "sequences" / "08" / "velodyne" / "000002.bin",
                          tmp_path / "out" / "scan.npz")
    with np.load(out[0]) as z:
        np.testing.assert_array_equal(z["pred"], pred)
    with pytest.raises(ValueError, match=r"'eval\.write_predictions' writes SemanticKITTI \.label "
                                         r"files; data\.name is SyntheticParts"):
        SegmentationTask(load_config(find_config("default.yaml"),
                                     ["eval.write_predictions=x"])).build_metrics()


# ------------------------------------------- the kNN embedding's neighbours from the loader

def _knn_task(loader: bool, *extra: str) -> SegmentationTask:
    return SegmentationTask(load_config(find_config("default.yaml"), TINY + [
        f"+train.knn_in_loader={str(loader).lower()}", *extra]))


def _scenes(task, count=3, seed=0):
    dataset = task.build_dataset("train")
    return [dataset[i] for i in range(seed, seed + count)]


def test_knn_in_loader_gives_the_models_own_neighbours_and_the_same_step():
    """``train.knn_in_loader=true``: the collate adds ``knn(coord, cu_seqlens, model.k)``, and
    the model reading them gives bitwise the loss and gradients of computing them itself."""
    plain, loaded = _knn_task(False), _knn_task(True)
    samples = _scenes(plain)
    batch, batch_n = plain.collate(samples), loaded.collate(samples)
    assert "neighbours" not in batch
    assert torch.equal(batch_n["neighbours"], knn(batch["coord"].float(), batch["cu_seqlens"], 6))
    results = []
    for task, b in ((plain, batch), (loaded, batch_n)):
        torch.manual_seed(0)
        model = task.build_model().train()
        torch.manual_seed(1)   # drop-path draws
        loss = task.loss(task.forward(model, b), b)
        loss.backward()
        results.append([loss.detach(), *(p.grad for p in model.parameters())])
    for a, b in zip(*results):
        assert (a is None and b is None) or torch.equal(a, b)
    n = batch["coord"].shape[0]   # and the model reads them: every point its own neighbour
    own = dict(batch_n, neighbours=torch.arange(n)[:, None].expand(n, 6))
    model.eval()
    assert not torch.equal(task.forward(model, own), task.forward(model, batch_n))


def test_knn_in_loader_follows_the_passes_of_full_resolution_voting():
    """With ``eval.votes=2`` every pass is one segment of the batch: the neighbours are those
    of each pass, never across passes."""
    task = _knn_task(True, "+data.grid_size=0.2", "eval.full_resolution=true", "eval.votes=2",
                     "model.num_categories=0")
    raw = {"coord": np.random.default_rng(3).uniform(0, 1, (200, 3)).astype(np.float32),
           "label": np.arange(200) % 4}
    batch = task.collate([task.preprocess(raw)])
    cu = batch["cu_seqlens"]
    assert cu.numel() == 3
    assert torch.equal(batch["neighbours"], knn(batch["coord"].float(), cu, 6))
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        rows = batch["neighbours"][a:b]
        assert ((rows >= a) & (rows < b)).all()


def test_knn_in_loader_needs_model_k_and_the_model_checks_the_shape():
    task = _knn_task(True, "model.k=null")
    with pytest.raises(ValueError, match=r"train.knn_in_loader needs .* model.k"):
        task.collate(_scenes(task, 1))
    model = _knn_task(False).build_model()
    batch = _knn_task(True).collate(_scenes(task, 2))
    with pytest.raises(ValueError, match=r"neighbours must be \(\d+, 6\) integer indices"):
        model(batch["coord"], batch["feat"], batch["cu_seqlens"], batch.get("category"),
              neighbours=batch["neighbours"][:, :5])


def test_knn_in_loader_trains_through_loader_workers_to_the_same_metrics(tmp_path):
    """Two epochs with one loader worker: neighbours computed in the worker (one KD-tree core)
    and read by the model give the run of the model computing them, to the last bit."""
    summaries = []
    for loader in (False, True):
        cfg = load_config(find_config("default.yaml"), TINY + [
            f"output_dir={tmp_path / str(loader)}", "train.num_workers=1",
            f"+train.knn_in_loader={str(loader).lower()}"])
        summaries.append(Trainer(cfg, config_name="default").fit())
    plain, loaded = summaries
    for key in ("train_loss", "loss", "miou"):
        assert loaded["last"][key] == plain["last"][key], key
