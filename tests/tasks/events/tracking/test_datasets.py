import numpy as np
import pytest
import torch

from geossm.tasks.events import tracking as tr

from .. import encoders as enc


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


# Processes sharing the simulation cache (tests/cache_workers.py): each builds the training
# split of two short sequences (cache: $GEOSSM_CACHE), counting simulations; the builder of the
# kill test stalls in the middle of writing the first .npz.
SETUP = r'''
import numpy
from geossm.tasks.events.tracking import datasets

count_builds(datasets, "simulate")
if STALL:
    stall_writes(numpy, "savez")
'''
TWO_SEQUENCES = r'''
ds = datasets.SyntheticTracking(split="train", num_sequences=2, sim={"num_frames": 6})
print(digest(*ds.frames, *ds.boxes))
'''


def _two_sequences_digest(cache_dir):
    import hashlib
    ds = tr.SyntheticTracking(split="train", num_sequences=2, sim={"num_frames": 6},
                              cache_dir=cache_dir)
    h = hashlib.sha256()
    for a in (*ds.frames, *ds.boxes):
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def test_eight_processes_on_a_fresh_cache_simulate_each_sequence_once(tmp_path):
    from tests.cache_workers import builds, run_together
    cache = tmp_path / "cache"
    out = run_together(SETUP, TWO_SEQUENCES, tmp_path / "work", env={"GEOSSM_CACHE": str(cache)})
    assert builds(tmp_path / "work") == 2  # one simulation per sequence, in all 8 processes
    assert out == [_two_sequences_digest(tmp_path / "ref")] * 8
    names = sorted(p.name for p in (cache / "synthetic_tracking").iterdir())
    assert names == [".num_frames6_seed0.npz.lock", ".num_frames6_seed1.npz.lock",
                     "num_frames6_seed0.npz", "num_frames6_seed1.npz"]


def test_a_builder_killed_mid_write_leaves_no_sequence_and_the_next_run_simulates_again(
        tmp_path, monkeypatch):
    from tests.cache_workers import kill_mid_write
    cache = tmp_path / "cache"
    kill_mid_write(SETUP, TWO_SEQUENCES, tmp_path / "work", env={"GEOSSM_CACHE": str(cache)})
    folder = cache / "synthetic_tracking"
    assert not (folder / "num_frames6_seed0.npz").exists()
    torn = list(folder.glob(".num_frames6_seed0.npz.*.tmp.npz"))
    assert len(torn) == 1 and torn[0].stat().st_size > 0
    monkeypatch.setenv("GEOSSM_CACHE", str(cache))
    assert _two_sequences_digest(None) == _two_sequences_digest(tmp_path / "ref")
    assert not list(folder.glob("*.tmp.npz"))


def test_a_sequence_an_older_version_left_torn_is_simulated_again(tmp_path):
    folder = tmp_path / "synthetic_tracking"
    folder.mkdir()
    (folder / "num_frames6_seed0.npz").write_bytes(b"PK\x03\x04 torn")
    assert _two_sequences_digest(tmp_path) == _two_sequences_digest(tmp_path / "ref")
