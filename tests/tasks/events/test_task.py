import json

import numpy as np
import pytest

from geossm.config import load_config
from geossm.engine.trainer import Trainer
from geossm.tasks.events.task import EventClassificationTask

from .encoders import random_events


def test_nmnist_config_loads():
    cfg = load_config("events/nmnist_mamba")
    assert cfg.task == "EventClassificationTask" and cfg.model.mode == "windowed"
    assert cfg.model.in_channels == 2 * cfg.data.n_time_bins
    ser = load_config("events/nmnist_serialized")
    assert ser.model.mode == "serialized" and ser.data.representation == "events"
    # the two modes share data, augmentation and optimiser settings
    assert ser.data.augment == cfg.data.augment and ser.train.lr == cfg.train.lr


def test_dvs_gesture_config_runs_on_written_files(tmp_path):
    """The DVS128 Gesture config's model and task on tonic-layout files written here (no real
    recordings offline): logits of the right shape, and a finite loss."""
    from geossm.registry import TASKS

    from .encoders import random_events
    user = tmp_path / "ibmGestureTrain" / "user01_led"
    user.mkdir(parents=True)
    for label in (0, 7):
        ev = random_events(400, seed=label, width=128, height=128, span=1_000_000)
        np.save(user / f"{label}.npy", np.stack([ev["x"], ev["y"], ev["p"], ev["t"] / 1e3], 1))
    cfg = load_config("events/dvs128_gesture_mamba", [
        f"data.root={tmp_path}", "model.dim=16", "model.depth=1", "model.stem_channels=4"])
    assert cfg.model.in_channels == 2 * cfg.data.n_time_bins
    task = TASKS.get(cfg.task)(cfg)
    batch = task.collate([task.build_dataset("train")[i] for i in range(2)])
    logits = task.forward(task.build_model(), batch)
    assert logits.shape == (2, 11) and np.isfinite(float(task.loss(logits, batch).detach()))


@pytest.mark.parametrize("mode,representation", [("windowed", "frames"),
                                                 ("serialized", "events")])
def test_tiny_end_to_end_train(nmnist_root, tmp_path, mode, representation):
    """A few real recordings, one epoch, tiny model: the pipeline runs and reports accuracy."""
    cfg = load_config("events/nmnist_mamba", [
        f"data.root={nmnist_root}", f"output_dir={tmp_path / 'run'}", "train.epochs=1",
        "train.batch_size=10", "train.progress=false", f"model.mode={mode}",
        f"data.representation={representation}", "data.max_events=128", "model.dim=16",
        "model.depth=1", "model.stem_channels=8", "+data.limit=20", "eval.batch_size=10"])
    trainer = Trainer(cfg, config_name="nmnist_tiny")
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    assert 0.0 <= summary["best"]["test_acc"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    assert any("acc" in r for r in rows)


def test_load_input_reads_event_files(nmnist_root):
    cfg = load_config("events/nmnist_mamba", [f"data.root={nmnist_root}"])
    task = EventClassificationTask(cfg)
    path = next((nmnist_root / "Test" / "3").glob("*.bin"))
    sample = task.load_input(path)
    assert sample["frames"].shape == (6, 34, 34)
    batch = task.collate([sample])
    assert batch["frames"].shape == (1, 6, 34, 34)
    with pytest.raises(FileNotFoundError, match="input file not found"):
        task.load_input(nmnist_root / "nope.bin")
    assert np.isfinite(sample["frames"]).all()


# ------------------------------------------------------- predict inputs: one-line refusals

def _task(*overrides):
    return EventClassificationTask(load_config("events/nmnist_mamba", list(overrides)))


SERIALIZED = ("model.mode=serialized", "data.representation=events")
FRAMES = np.zeros((6, 34, 34), np.float32)


@pytest.mark.parametrize("overrides, arrays, message", [
    ((), dict(frames=FRAMES[:5]), r"^input file .*bad\.npz: frames: expected shape "
                                  r"\(6, 34, 34\), got shape \(5, 34, 34\)$"),
    ((), dict(frames=np.zeros((6, 40, 40))), r"frames: expected shape \(6, 34, 34\), got shape "
                                             r"\(6, 40, 40\)"),
    ((), dict(frames=FRAMES + np.nan), r"frames: expected finite values, got NaN or inf"),
    ((), dict(frames=FRAMES, label=40), r"label: expected an integer in \[0, 10\) "
                                        r"\(model\.num_classes=10\), got 40"),
    ((), dict(events=np.zeros((10, 4), np.int64)),
     r"expected 'frames' of shape \(6, 34, 34\) \(data\.representation=frames or voxel\), got "
     r"keys \['events'\]"),
    (SERIALIZED, dict(events=np.zeros((10, 3), np.int64)),
     r"events: expected shape \(N, 4\), got shape \(10, 3\)"),
    (SERIALIZED, dict(events=np.full((10, 4), 0.5)),
     r"events: expected integers, got 0.5 \(dtype float64\)"),
    (SERIALIZED, dict(events=np.array([[50, 0, 0, 1]])),
     r"events\[:, 0\] \(x\): expected values in \[0, 34\) \(sensor 34 x 34\), got \[50, 50\]"),
    (SERIALIZED, dict(events=np.array([[5, 0, -3, 1]])),
     r"events\[:, 2\] \(t\): expected values in \[0, inf\), got \[-3, -3\]"),
    (SERIALIZED, dict(events=np.zeros((0, 4), np.int64)),
     r"events: expected at least one event, got shape \(0, 4\)"),
    (SERIALIZED, dict(frames=FRAMES),
     r"expected 'events' of shape \(N, 4\) \(data\.representation=events: columns x, y, t, "
     r"p\), got keys \['frames'\]"),
    ((), dict(events=random_events(50, width=60, height=34)),  # a recording, off the sensor
     r"^input file .*bad\.npz: events\['x'\]: expected values in \[0, 34\) \(sensor 34 x 34\), "
     r"got \[\d+, 5\d\]$"),
])
def test_predict_input_refused_in_one_line(tmp_path, overrides, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        _task(*overrides).load_input(tmp_path / "bad.npz")


@pytest.mark.parametrize("overrides, key, shape", [((), "frames", (6, 34, 34)),
                                                   (SERIALIZED, "events", (50, 4))])
def test_a_structured_recording_in_an_npz_is_prepared(tmp_path, overrides, key, shape):
    """An .npz holding a recording (structured events) used to reach torch as records."""
    np.savez(tmp_path / "rec.npz", events=random_events(50, width=34, height=34))
    assert _task(*overrides).load_input(tmp_path / "rec.npz")[key].shape == shape


def test_preprocess_needs_a_structured_recording():
    with pytest.raises(ValueError, match=r"^sample: events: expected a structured array with "
                                         r"fields x, y, t, p \(EVENT_DTYPE\), got dtype int64"):
        _task().preprocess({"events": np.zeros(5, np.int64)})


@pytest.mark.parametrize("overrides", [(), SERIALIZED])
def test_an_unsorted_recording_is_refused_for_what_it_is(overrides):
    """Reversed timestamps: the serialized model used to report negative times (after the shift
    to the first event), the windowed one the real cause; both now name the order."""
    events = random_events(50, width=34, height=34)[::-1]
    with pytest.raises(ValueError, match=r"^sample: events\['t'\]: expected timestamps sorted "
                                         r"ascending \(as the readers return them\), got t\[0\]"):
        _task(*overrides).preprocess({"events": events})


def test_signed_polarities_prepare_as_zero_one_for_the_serialized_model():
    """Polarity -1 / 1 (as some readers and simulators write it) is accepted by both models:
    the serialized model's columns read it as 0 / 1, like bool polarities."""
    events = random_events(50, width=34, height=34)
    signed = np.zeros(50, [("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "<i2")])
    for key in ("x", "y", "t"):
        signed[key] = events[key]
    signed["p"] = np.where(events["p"], 1, -1)
    task = _task(*SERIALIZED)
    got = task.preprocess({"events": signed})["events"]
    expected = task.preprocess({"events": events})["events"]
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(got[:, 3])) <= {0, 1}
