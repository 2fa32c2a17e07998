import numpy as np
import pytest
import torch

from geossm.config import load_config
from geossm.tasks.events import tracking as tr
from geossm.tasks.events.simulator import simulate

from . import encoders as enc


def test_metrics_by_hand():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], float)
    pred = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [30, 30, 10, 10], [0, 0, 20, 10]], float)
    np.testing.assert_allclose(tr.iou_xywh(pred, gt), [1.0, 50 / 150, 0.0, 0.5])
    curve = tr.success_curve(pred, gt)
    assert curve[0] == 0.75 and curve[-1] == 0.0  # IoU > 0: three frames; IoU > 1: none
    # thresholds 0, .05, ..., 1: counts of IoU > thr among (1, 1/3, 0, 0.5)
    expect = [np.mean(np.array([1, 1 / 3, 0, 0.5]) > t) for t in np.linspace(0, 1, 21)]
    assert tr.success_auc(pred, gt) == pytest.approx(np.mean(expect))
    # centre errors 0, 5, 42.43, 5 px
    assert tr.precision(pred, gt, 20) == 0.75 and tr.precision(pred, gt, 4.9) == 0.25
    # normalised by the ground-truth size (10 px): 0, .5, 4.24, .5
    assert tr.normalized_precision(pred, gt, 0.2) == 0.25
    assert tr.normalized_precision(pred, gt, 0.5) == 0.75


def test_simulator_is_deterministic_and_boxes_hold_events():
    a = simulate(3, num_frames=6, dt_us=2000)
    b = simulate(3, num_frames=6, dt_us=2000)
    np.testing.assert_array_equal(a.events, b.events)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.boxes.shape == (6, 4) and a.times.tolist() == [10_000 * (i + 1) for i in range(6)]
    assert np.all(np.diff(a.events["t"]) >= 0)
    assert not np.array_equal(simulate(4, num_frames=6, dt_us=2000).boxes, a.boxes)
    # The target (brighter texture, moving) fires more densely than the background.
    frames = tr.event_frames(a.events, a.times, a.sensor_size, 10_000).sum(1)
    x, y, w, h = a.boxes[3].round().astype(int)
    inside = frames[3, y:y + h, x:x + w].mean()
    assert inside > 2 * frames[3].mean()


def test_crop_labels_decode_back_to_the_box():
    """Decoding a one-hot head placed at the dataset's label gives the ground-truth box."""
    ds = tr.SyntheticTracking(split="train", num_sequences=1, samples_per_sequence=4,
                              sim={"num_frames": 6, "dt_us": 2000}, memory_size=2,
                              cache_dir=None, center_jitter=0.0, scale_jitter=0.0)
    boxes = torch.from_numpy(ds.boxes[0])
    item = ds[0]
    g = ds.grid
    logits = torch.full((1, g * g), -10.0)
    logits[0, item["cell"]] = 10.0
    out = {"logits": logits, "offset": torch.from_numpy(item["offset"]).expand(1, g * g, 2),
           "size": torch.from_numpy(item["size"]).expand(1, g * g, 2)}
    dec = [tr.decode_boxes(out, *tr.box_center_side(boxes[i:i + 1], 4.0, 16.0), g)[0]
           for i in range(len(boxes))]
    # Without jitter the search crop is centred on the target: one of the frames matches.
    best = min(float((d - boxes[i]).abs().max()) for i, d in enumerate(dec))
    assert best < 1e-3
    assert item["memory"].shape == (2, 2, 32, 32) and item["search"].shape == (2, 64, 64)


def test_tracker_model_and_track_loop():
    torch.manual_seed(0)
    init, inputs = tr.MambaEVTTracker.example()
    m = tr.MambaEVTTracker(**init)
    out = m(**inputs)
    assert out["logits"].shape == (2, 16) and out["size"].shape == (2, 16, 2)
    frames = torch.rand(2, 5, 2, 40, 40)
    boxes = torch.tensor([[10.0, 12.0, 8.0, 6.0], [20.0, 5.0, 6.0, 9.0]])
    tracks = tr.track(m, frames, boxes, interval=2)
    assert tracks.shape == (2, 5, 4) and torch.equal(tracks[:, 0], boxes)
    assert torch.isfinite(tracks).all()
    with pytest.raises(ValueError, match=r"search: expected \(B, C, 32, 32\), got"):
        m(inputs["template"], torch.rand(2, 2, 16, 16))
    with pytest.raises(ValueError, match="search_size: expected a multiple of patch_size=8"):
        tr.MambaEVTTracker(search_size=60)


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


def _write_sequence(folder, events_file, gt_name, ev, boxes, csv_header=True):
    folder.mkdir(parents=True)
    if events_file.endswith(".csv"):
        rows = np.stack([ev["t"], ev["x"], ev["y"], ev["p"].astype(int)], 1)
        header = "t,x,y,p" if csv_header else ""
        np.savetxt(folder / events_file, rows, fmt="%d", delimiter=",", header=header,
                   comments="")
    (folder / gt_name).write_text("\n".join(",".join(f"{v:g}" for v in b) for b in boxes))


def test_eventvot_and_fe108_layouts(tmp_path, samples):
    ev = enc.random_events(2000, seed=3, width=1280, height=720, span=1_000_000)
    boxes = np.array([[100, 100, 40, 30], [110, 102, 40, 30], [120, 104, 41, 30]], float)
    root = tmp_path / "EventVOT"
    _write_sequence(root / "test" / "recording_a", "recording_a.csv", "groundtruth.txt", ev,
                    boxes)
    (root / "test" / "recording_a" / "img").mkdir()
    ds = tr.EventVOT(root, "test")
    assert ds.names == ["recording_a"] and len(ds) == 1
    item = ds[0]
    assert item["frames"].shape == (3, 2, 720, 1280)
    np.testing.assert_allclose(item["boxes"], boxes)
    assert item["frames"].sum() > 0
    with pytest.raises(FileNotFoundError, match="EventVOT: none of"):
        tr.EventVOT(root, "train")
    # FE108 with the real AEDAT4 sample as its event file.
    fe = tmp_path / "FE108" / "test" / "airplane_mul222"
    fe.mkdir(parents=True)
    (fe / "events.aedat4").write_bytes((samples / "sample.aedat4").read_bytes())
    (fe / "groundtruth_rect.txt").write_text("10,10,20,20\n12,11,20,20\n")
    ds = tr.FE108(tmp_path / "FE108", "test")
    assert ds[0]["frames"].shape == (2, 2, 240, 320)
    (fe / "groundtruth_rect.txt").write_text("10,10,20\n")
    with pytest.raises(ValueError, match=r"groundtruth_rect.txt: line 1: expected 4 numbers"):
        tr.FE108(tmp_path / "FE108", "test")
