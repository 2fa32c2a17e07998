"""End to end: a tiny synthetic-parts run through the trainer, then predict on one file."""

import json

import numpy as np
import pytest
import torch

from geossm.config import find_config, load_config
from geossm.engine import Trainer
from geossm.packed import pack_collate
from geossm.registry import DATASETS, MODELS, TASKS
from geossm.tasks.segmentation import synthetic
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


def test_train_then_predict(tmp_path):
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


@pytest.mark.parametrize("overrides", [[], ["+data.grid_size=0.05",
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
