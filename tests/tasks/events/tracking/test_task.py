from geossm.config import load_config


def test_tracking_task_one_step_and_eval(tmp_path):
    cfg = load_config("events/tracking_synthetic", [
        "data.num_sequences=2", "data.num_test_sequences=2", "data.samples_per_sequence=4",
        "+data.sim.num_frames=6", "model.dim=16", "model.depth=1", "train.epochs=1",
        "train.batch_size=8", "train.progress=false", f"output_dir={tmp_path / 'run'}",
        f"data.cache_dir={tmp_path / 'cache'}"])
    from geossm.engine.trainer import Trainer
    trainer = Trainer(cfg, config_name="track_tiny")
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    best = summary["best"]
    assert 0.0 <= best["test_success_auc"] <= 1.0 and "test_precision_20" in best
    assert len(list((tmp_path / "cache" / "synthetic_tracking").glob("*.npz"))) == 4


def test_evaluation_and_prediction_track_whole_sequences_without_a_loss(tmp_path):
    """Evaluation and ``predict`` run ``track`` through ``predict_step``; evaluation takes no
    loss (``evaluation_loss`` is False) and training batches go through ``forward``."""
    import numpy as np
    import torch

    from geossm.registry import TASKS
    cfg = load_config("events/tracking_synthetic", [
        "data.num_test_sequences=2", "+data.sim.num_frames=5", "model.dim=16",
        "model.depth=1", f"data.cache_dir={tmp_path / 'cache'}"])
    task = TASKS.get("EventTrackingTask")(cfg)
    torch.manual_seed(0)
    model = task.build_model()
    test_set = task.build_dataset("test")
    batch = task.collate([test_set[0], test_set[1]])
    outputs = task.predict_step(model, batch)
    assert not task.evaluation_loss and outputs["tracks"].shape == (2, 5, 4)
    metrics = task.build_metrics()
    metrics.update(outputs, batch)
    assert set(metrics.compute()) == {"success_auc", "precision_20", "norm_precision"}
    sample = {"frames": np.asarray(test_set[0]["frames"]), "boxes": test_set[0]["boxes"]}
    result = task.postprocess(task.predict_step(model, task.collate([sample])), batch)
    written = task.write_prediction(sample, result, tmp_path / "pred.npz")
    assert written == [tmp_path / "pred.npz"]
    with np.load(written[0]) as z:
        assert z.files == ["tracks"] and z["tracks"].shape == (1, 5, 4)
    train_set = task.build_dataset("train")
    pairs = task.collate([train_set[0], train_set[1]])
    assert "cu_seqlens" not in pairs and pairs["template"].shape == (2, 2, 32, 32)
    assert task.forward(model, pairs)["logits"].shape == (2, 64)


def test_trainer_evaluation_reports_no_loss_for_tracking(tmp_path):
    cfg = load_config("events/tracking_synthetic", [
        "data.num_sequences=1", "data.num_test_sequences=2", "+data.sim.num_frames=5",
        "model.dim=16", "model.depth=1", "train.progress=false", f"output_dir={tmp_path / 'run'}",
        f"data.cache_dir={tmp_path / 'cache'}"])
    from geossm.engine.trainer import Trainer
    trainer = Trainer(cfg, config_name="track_eval")
    try:
        metrics = trainer.evaluate("test")
    finally:
        trainer.close()
    assert set(metrics) == {"success_auc", "precision_20", "norm_precision"}


def test_predict_inputs_are_checked_field_by_field(tmp_path):
    """``frames`` without the polarity axis, ``boxes`` of two columns and an empty sequence
    each give one line naming the field (not an unpacking, index or runtime error)."""
    import numpy as np
    import pytest

    from geossm.registry import TASKS
    task = TASKS.get("EventTrackingTask")(load_config("events/tracking_synthetic"))
    good = {"frames": np.zeros((3, 2, 8, 8), np.float32), "boxes": np.ones((3, 4))}
    prepared = task.preprocess(good)
    assert prepared["frames"].shape == (3, 2, 8, 8) and prepared["boxes"].shape == (3, 4)
    assert task.preprocess({**good, "boxes": np.ones((1, 4))})["boxes"].shape == (1, 4)
    cases = [({"frames": np.zeros((3, 8, 8))}, r"frames: expected shape \(K, 2, H, W\), got "
                                                r"shape \(3, 8, 8\)"),
             ({"boxes": np.ones((3, 2))}, r"boxes: expected shape \(M, 4\), got shape \(3, 2\)"),
             ({"frames": np.zeros((0, 2, 8, 8)), "boxes": np.ones((0, 4))},
              r"frames: expected at least one frame, got shape \(0, 2, 8, 8\)"),
             ({"boxes": np.ones((0, 4))}, r"boxes: expected 1 to K=3 boxes"),
             ({"boxes": np.full((3, 4), np.nan)}, r"boxes: expected finite values"),
             ({"boxes": np.array([[2.0, 2.0, -5.0, 3.0]])},
              r"boxes\[0\]: expected a positive width and height \(x, y, w, h\), got w=-5, h=3"),
             ({"boxes": np.array([[2.0, 2.0, 3.0, 0.0]])}, r"boxes\[0\]: expected a positive"),
             ({"boxes": np.array([[50.0, 2.0, 4.0, 4.0]])},
              r"boxes\[0\]: expected a box overlapping the 8 x 8 frame \(x, y the top-left "
              r"corner\), got x=50, y=2, w=4, h=4"),
             ({"boxes": np.array([[-6.0, 2.0, 4.0, 4.0]])}, r"boxes\[0\]: expected a box "
                                                            r"overlapping")]
    # a box partly off the frame still overlaps it: tracked
    assert task.preprocess({**good, "boxes": np.array([[-2.0, 6.0, 4.0, 4.0]])})
    for change, match in cases:
        with pytest.raises(ValueError, match=r"^sample: " + match):
            task.preprocess({**good, **change})
    path = tmp_path / "seq.npz"
    np.savez(path, frames=np.zeros((3, 8, 8)), boxes=np.ones((3, 4)))
    with pytest.raises(ValueError, match=rf"^input file {path}: frames: expected shape"):
        task.load_input(path)
    np.savez(path, frames=np.zeros((3, 2, 8, 8)))
    with pytest.raises(ValueError, match=r"expected 'boxes' of shape \(M, 4\), got keys"):
        task.load_input(path)
