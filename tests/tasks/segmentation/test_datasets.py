import json

import numpy as np
import pytest
import torch

from geossm.packed import pack_collate
from geossm.tasks.segmentation.datasets import (S3DIS, ModelNet40, SemanticKITTI, ShapeNetPart,
                                                SyntheticParts, semantickitti_learning_map)


def test_synthetic_parts_dataset():
    ds = SyntheticParts(split="train", num_samples=4, min_points=100, max_points=200,
                        augment=[{"name": "RandomRotate"}])
    val = SyntheticParts(split="val", num_val_samples=3, min_points=100, max_points=200)
    assert len(ds) == 4 and len(val) == 3
    s = val[1]
    assert s["feat"].shape == (len(s["coord"]), 3) and s["label"].dtype == np.int64
    assert abs(np.linalg.norm(s["coord"], axis=1).max() - 1) < 1e-4  # unit sphere
    np.testing.assert_array_equal(val[1]["coord"], s["coord"])  # deterministic evaluation
    batch = pack_collate([ds[0], ds[1], ds[2]])
    assert batch["cu_seqlens"][-1] == len(batch["coord"]) and batch["category"].shape == (3,)
    with pytest.raises(ValueError, match="SyntheticParts: root must be null"):
        SyntheticParts(root="/data")
    with pytest.raises(IndexError, match="index 9 out of range for 3 samples"):
        val[9]


def test_shapenetpart_real_caps(shapenetpart_root):
    ds = ShapeNetPart(shapenetpart_root, split="test", num_points=None)
    assert len(ds) == 11
    s = ds[0]
    assert s["category"] == 2  # Cap in the official 16-category order
    assert set(np.unique(s["label"])) <= {6, 7} and s["feat"].shape[1] == 6
    total = sum(len(ShapeNetPart(shapenetpart_root, "test", num_points=None).load(i)["coord"])
                for i in range(11))
    assert total == 27812
    sub = ShapeNetPart(shapenetpart_root, split="train",
                       split_lists={"train": ["02954340/geossm_cap_test_000"]})
    assert len(sub) == 1 and len(sub[0]["coord"]) <= 2048
    assert len(ShapeNetPart(shapenetpart_root, split="train")) == 0  # official train list empty
    with pytest.raises(ValueError, match=r"categories \['Chair'\] are not in"):
        ShapeNetPart(shapenetpart_root, categories=["Chair"])


def test_shapenetpart_layout_errors(tmp_path, shapenetpart_root):
    with pytest.raises(FileNotFoundError, match="ShapeNetPart category list: expected a file at "
                                                + str(tmp_path)):
        ShapeNetPart(tmp_path)
    (tmp_path / "synsetoffset2category.txt").write_text("Cap\t02954340\n")
    (tmp_path / "train_test_split").mkdir()
    (tmp_path / "train_test_split" / "shuffled_train_file_list.json").write_text(
        json.dumps(["shape_data/02954340/missing"]))
    with pytest.raises(FileNotFoundError, match="ShapeNetPart shape: expected a file at .*missing.txt"):
        ShapeNetPart(tmp_path)
    (tmp_path / "02954340").mkdir()
    (tmp_path / "02954340" / "missing.txt").write_text("0 0 0 1 0 0\n")
    with pytest.raises(ValueError, match="missing.txt: expected at least 7 columns, got 6"):
        ShapeNetPart(tmp_path)[0]
    with pytest.raises(ValueError, match="data.root is not set"):
        ShapeNetPart(None)


def write_s3dis(root, areas=(1, 5)):
    g = np.random.default_rng(0)
    for a in areas:
        for room in ("office_1", "hallway_2"):
            ann = root / f"Area_{a}" / room / "Annotations"
            ann.mkdir(parents=True)
            for name in ("ceiling_1", "chair_2", "stairs_1"):
                xyz = g.uniform(0, 3, (50, 3))
                rgb = g.integers(0, 256, (50, 3))
                np.savetxt(ann / f"{name}.txt", np.hstack([xyz, rgb]), fmt="%.3f")


def test_s3dis_written_layout(tmp_path):
    write_s3dis(tmp_path)
    train = S3DIS(tmp_path, split="train", areas=[1], grid_size=None)
    test = S3DIS(tmp_path, split="test", test_area=5, grid_size=0.5,
                 cache_dir=tmp_path / "cache")
    assert len(train) == 2 and len(test) == 2
    s = train[0]
    assert len(s["coord"]) == 150 and s["feat"].shape == (150, 6)
    assert set(np.unique(s["label"])) == {0, 8, 12}  # ceiling, chair, stairs -> clutter
    assert s["feat"][:, 3:].max() <= 1.0
    a = test[0]
    assert len(a["coord"]) < 150 and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    np.testing.assert_array_equal(test[0]["coord"], a["coord"])  # from the cache
    crop = S3DIS(tmp_path, split="train", areas=[1], grid_size=None, max_points=40)
    assert len(crop[0]["coord"]) == 40


def test_s3dis_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="S3DIS area: expected a folder at .*Area_1"):
        S3DIS(tmp_path, split="train")
    write_s3dis(tmp_path, areas=(2,))
    (tmp_path / "Area_2" / "office_1" / "Annotations" / "dragon_1.txt").write_text("0 0 0 1 1 1\n")
    ds = S3DIS(tmp_path, split="train", areas=[2])
    with pytest.raises(ValueError, match="dragon_1.txt: unknown S3DIS class 'dragon'"):
        ds[1]
    (tmp_path / "Area_3" / "room_1").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="S3DIS room annotations: expected a folder at "
                                                ".*Area_3/room_1/Annotations"):
        S3DIS(tmp_path, split="train", areas=[3])


# Processes sharing a room cache (tests/cache_workers.py): each loads the first room of area 1
# at $S3DIS_ROOT through the cache $S3DIS_CACHE, counting parses; the builder of the kill test
# stalls in the middle of writing the room's .npz.
SETUP = r'''
import numpy
from geossm.tasks.segmentation.datasets import S3DIS

count_builds(S3DIS, "_read_room")
if STALL:
    stall_writes(numpy, "savez")
'''
FIRST_ROOM = r'''
ds = S3DIS(os.environ["S3DIS_ROOT"], split="train", areas=[1], cache_dir=os.environ["S3DIS_CACHE"])
room = ds.load(0)
print(digest(*(room[key] for key in S3DIS.ROOM_KEYS)))
'''


def _room_digest(room: dict) -> str:
    import hashlib
    h = hashlib.sha256()
    for key in S3DIS.ROOM_KEYS:
        h.update(f"{room[key].dtype}{room[key].shape}".encode())
        h.update(room[key].tobytes())
    return h.hexdigest()


def test_s3dis_eight_processes_on_a_fresh_room_cache_parse_it_once(tmp_path):
    from tests.cache_workers import builds, run_together
    write_s3dis(tmp_path / "s3dis", areas=(1,))
    cache = tmp_path / "cache"
    out = run_together(SETUP, FIRST_ROOM, tmp_path / "work",
                       env={"S3DIS_ROOT": str(tmp_path / "s3dis"), "S3DIS_CACHE": str(cache)})
    assert builds(tmp_path / "work") == 1
    reference = S3DIS._read_room(tmp_path / "s3dis" / "Area_1" / "hallway_2")  # rooms sorted
    assert out == [_room_digest(reference)] * 8
    name = _room_cache(tmp_path / "s3dis", cache).name
    assert sorted(p.name for p in cache.iterdir()) == [f".{name}.lock", name]


def test_s3dis_room_builder_killed_mid_write_leaves_no_cache_and_the_next_run_parses_again(
        tmp_path):
    from tests.cache_workers import kill_mid_write
    write_s3dis(tmp_path / "s3dis", areas=(1,))
    cache = tmp_path / "cache"
    kill_mid_write(SETUP, FIRST_ROOM, tmp_path / "work",
                   env={"S3DIS_ROOT": str(tmp_path / "s3dis"), "S3DIS_CACHE": str(cache)})
    name = _room_cache(tmp_path / "s3dis", cache).name
    assert not (cache / name).exists()
    torn = list(cache.glob(f".{name}.*.tmp.npz"))
    assert len(torn) == 1 and torn[0].stat().st_size > 0
    ds = S3DIS(tmp_path / "s3dis", split="train", areas=[1], cache_dir=cache)
    reference = S3DIS._read_room(tmp_path / "s3dis" / "Area_1" / "hallway_2")
    assert _room_digest(ds.load(0)) == _room_digest(reference)
    assert sorted(p.name for p in cache.iterdir()) == [f".{name}.lock", name]


def test_s3dis_room_an_older_version_left_torn_is_parsed_again(tmp_path):
    write_s3dis(tmp_path / "s3dis", areas=(1,))
    (tmp_path / "cache").mkdir()
    _room_cache(tmp_path / "s3dis", tmp_path / "cache").write_bytes(b"PK\x03\x04 torn")
    ds = S3DIS(tmp_path / "s3dis", split="train", areas=[1], cache_dir=tmp_path / "cache")
    reference = S3DIS._read_room(tmp_path / "s3dis" / "Area_1" / "hallway_2")
    assert _room_digest(ds.load(0)) == _room_digest(reference)


def test_two_s3dis_copies_or_an_edited_room_never_share_a_room_cache(tmp_path):
    # Two copies of area 1, one room differing: each reads its own points through one cache.
    for copy in ("a", "b"):
        write_s3dis(tmp_path / copy, areas=(1,))
    chair = tmp_path / "b" / "Area_1" / "hallway_2" / "Annotations" / "chair_2.txt"
    np.savetxt(chair, np.hstack([np.full((7, 3), 9.0), np.zeros((7, 3))]), fmt="%.3f")
    cache = tmp_path / "cache"
    for copy in ("a", "b"):
        ds = S3DIS(tmp_path / copy, split="train", areas=[1], cache_dir=cache)
        reference = S3DIS._read_room(tmp_path / copy / "Area_1" / "hallway_2")
        assert _room_digest(ds.load(0)) == _room_digest(reference), copy
    assert len(list(cache.glob("Area_1_hallway_2_*.npz"))) == 2
    # A room edited in place (its size changes): parsed again by a new dataset.
    np.savetxt(chair, np.hstack([np.full((5, 3), 8.0), np.zeros((5, 3))]), fmt="%.3f")
    ds = S3DIS(tmp_path / "b", split="train", areas=[1], cache_dir=cache)
    assert (ds.load(0)["coord"] == 8.0).all(axis=1).sum() == 5


def _room_cache(root, cache):
    """The cache file of room 0 of area 1 (``hallway_2``, rooms sorted)."""
    ds = S3DIS(root, split="train", areas=[1], cache_dir=cache)
    return ds.room_cache(ds.rooms[0])


def write_modelnet(root):
    g = np.random.default_rng(1)
    (root / "modelnet40_shape_names.txt").write_text("airplane\nbathtub\n")
    (root / "modelnet40_train.txt").write_text("airplane_0001\nbathtub_0001\n")
    (root / "modelnet40_test.txt").write_text("bathtub_0107\n")
    for name in ("airplane_0001", "bathtub_0001", "bathtub_0107"):
        folder = root / name.rsplit("_", 1)[0]
        folder.mkdir(exist_ok=True)
        np.savetxt(folder / f"{name}.txt", g.normal(size=(300, 6)), fmt="%.6f", delimiter=",")


def test_modelnet40_written_layout(tmp_path):
    write_modelnet(tmp_path)
    train = ModelNet40(tmp_path, split="train", num_points=128, use_normals=True)
    assert len(train) == 2 and train.CLASS_NAMES == ("airplane", "bathtub")
    s = train[1]
    assert s["label"] == 1 and s["coord"].shape == (128, 3) and s["feat"].shape == (128, 6)
    test = ModelNet40(tmp_path, split="test")
    assert len(test) == 1 and test[0]["feat"].shape == (300, 3)
    batch = pack_collate([train[0], train[1]])
    assert batch["label"].tolist() == [0, 1]
    (tmp_path / "modelnet40_test.txt").write_text("chair_0001\n")
    with pytest.raises(ValueError, match="shape 'chair_0001' has class 'chair', not listed"):
        ModelNet40(tmp_path, split="test")
    (tmp_path / "modelnet40_test.txt").write_text("airplane_0009\n")
    with pytest.raises(FileNotFoundError, match="ModelNet40 shape: expected a file at "
                                                ".*airplane/airplane_0009.txt"):
        ModelNet40(tmp_path, split="test")


def test_semantickitti_learning_map():
    raw = np.array([0, 10, 252, 40, 60, 99, 81 | (7 << 16), 1234], dtype=np.uint32)
    assert semantickitti_learning_map(raw).tolist() == [-1, 0, 0, 8, 8, -1, 18, -1]


def test_semantickitti_official_written_layout(tmp_path):
    g = np.random.default_rng(2)
    for seq in ("00", "08"):
        for frame in ("000000", "000001"):
            velo = tmp_path / "sequences" / seq / "velodyne"
            labels = tmp_path / "sequences" / seq / "labels"
            velo.mkdir(parents=True, exist_ok=True)
            labels.mkdir(exist_ok=True)
            g.normal(size=(500, 4)).astype(np.float32).tofile(velo / f"{frame}.bin")
            raw = g.choice([0, 10, 40, 48, 70, 252], 500).astype(np.uint32) | (3 << 16)
            raw.tofile(labels / f"{frame}.label")
    train = SemanticKITTI(tmp_path, split="train", sequences={"train": [0]}, grid_size=None)
    val = SemanticKITTI(tmp_path, split="val", frames={"val": ["000001"]}, grid_size=None)
    assert len(train) == 2 and len(val) == 1 and train.layout == "official"
    s = val[0]
    assert s["feat"].shape == (500, 4) and set(np.unique(s["label"])) <= {-1, 0, 8, 10, 14}
    with pytest.raises(FileNotFoundError, match="SemanticKITTI scans: expected a folder at "
                                                ".*sequences/01/velodyne"):
        SemanticKITTI(tmp_path, split="train", sequences={"train": [1]})
    (tmp_path / "sequences" / "00" / "labels" / "000001.label").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match="000001.label: expected 500 labels"):
        train[1]
    with pytest.raises(FileNotFoundError, match="expected .*sequences \\(official layout\\) or "
                                                ".*points \\(npy layout\\)"):
        SemanticKITTI(tmp_path / "sequences")


def test_semantickitti_npy_real_scans(kitti_npy_root):
    train = SemanticKITTI(kitti_npy_root, split="train",
                          frames={"train": ["000000", "000001"], "val": ["000002"]},
                          grid_size=0.05)
    assert train.layout == "npy" and len(train) == 2
    raw = train.load(0)
    assert raw["coord"].shape[1] == 3 and len(raw["label"]) == len(raw["coord"]) > 50000
    assert raw["label"].min() >= -1 and raw["label"].max() <= 18
    torch.manual_seed(0)
    s = train[0]
    assert s["feat"].shape == (len(s["coord"]), 4) and len(s["coord"]) < len(raw["coord"])
    with pytest.raises(FileNotFoundError, match=r"frames \['000009'\] of split 'val' not found"):
        SemanticKITTI(kitti_npy_root, split="val", frames={"val": ["000009"]})


def test_semantickitti_npy_without_frames_warns_that_the_splits_are_the_same(kitti_npy_root):
    with pytest.warns(UserWarning, match=r"SemanticKITTI: npy layout under .* without frames: "
                                         r"split 'val' reads every scan \(train, val and test "
                                         r"are then the same scans\)"):
        every = SemanticKITTI(kitti_npy_root, split="val")
    assert len(every) == 3


def test_semantickitti_label_writer_round_trips_through_the_reader(tmp_path):
    """Predictions (training labels) written as .label files in the submission layout, then
    read back by the dataset (learning map): the same labels; the ids are the raw ones."""
    from geossm.tasks.segmentation.datasets import (semantickitti_prediction_path,
                                                    semantickitti_raw_labels,
                                                    write_semantickitti_label)
    pred = np.r_[np.arange(19), np.arange(19)[::-1], -1]
    raw = semantickitti_raw_labels(pred)
    assert raw.dtype == np.uint32 and raw[:3].tolist() == [10, 11, 15] and raw[-1] == 0
    path = write_semantickitti_label(semantickitti_prediction_path(tmp_path, 8, 3), pred)
    assert path == tmp_path / "sequences" / "08" / "predictions" / "000003.label"
    assert path.stat().st_size == 4 * len(pred)
    # The reader expects labels/ beside velodyne/: present the predictions as labels.
    velodyne = tmp_path / "sequences" / "08" / "velodyne"
    velodyne.mkdir()
    np.zeros((len(pred), 4), np.float32).tofile(velodyne / "000003.bin")
    path.parent.rename(tmp_path / "sequences" / "08" / "labels")
    back = SemanticKITTI(tmp_path, split="val", grid_size=None).load(0)["label"]
    np.testing.assert_array_equal(back, pred)
    with pytest.raises(ValueError, match=r"pred: expected SemanticKITTI training labels in "
                                         r"-1\.\.18, got 0\.\.19"):
        semantickitti_raw_labels(np.array([0, 19]))


def test_semantickitti_real_scan_full_resolution_sample(kitti_npy_root):
    """The real scan 000002 at 0.1 m: every original point keeps its label and a row."""
    val = SemanticKITTI(kitti_npy_root, split="val", frames={"val": ["000002"]}, grid_size=0.1,
                        full_resolution=True)
    raw, s = val.load(0), val[0]
    assert len(s["coord"]) < len(raw["coord"]) == len(s["inverse"]) == len(s["full_label"])
    np.testing.assert_array_equal(s["full_label"], raw["label"])
    # The row standing for a point holds a point of the same 0.1 m cell.
    cell = np.floor((raw["coord"] - raw["coord"].min(0)) / 0.1)
    rows = s["inverse"][:, 0]
    np.testing.assert_array_equal(np.floor((s["coord"][rows] - raw["coord"].min(0)) / 0.1), cell)


def test_shapenetpart_real_caps_full_resolution(shapenetpart_root):
    """Evaluation on 1024 of each cap's points keeps every point of the shape for the score."""
    ds = ShapeNetPart(shapenetpart_root, split="test", num_points=1024, full_resolution=True)
    raw, s = ds.load(0), ds[0]
    assert len(s["coord"]) == 1024 < len(raw["coord"]) == len(s["full_label"]) == len(s["inverse"])
    np.testing.assert_array_equal(s["full_label"], raw["label"])
    kept = np.asarray(s["inverse"][:, 0])
    assert kept.min() == 0 and kept.max() == 1023 and s["category"] == raw["category"]


@pytest.mark.parametrize("name", ["ShapeNetPart", "S3DIS", "ModelNet40", "SemanticKITTI"])
def test_missing_root_says_what_to_set(tmp_path, name):
    from geossm.registry import DATASETS
    from geossm.tasks.segmentation.datasets import ROOT_LAYOUTS
    with pytest.raises(FileNotFoundError, match=r"set data\.root=PATH to the folder holding") as err:
        DATASETS.get(name)(root=tmp_path / "missing")
    assert ROOT_LAYOUTS[name] in str(err.value)
