import numpy as np
import pytest
import torch

from geossm.tasks.segmentation import transforms as T
from geossm.transforms import build_transforms


def sample(n=200, seed=0):
    g = np.random.default_rng(seed)
    normal = g.normal(size=(n, 3))
    return {"coord": g.uniform(-1, 1, (n, 3)).astype(np.float32),
            "normal": (normal / np.linalg.norm(normal, axis=1, keepdims=True)).astype(np.float32),
            "label": g.integers(0, 4, n), "category": 2}


def test_geometric_transforms_keep_points_and_normals():
    torch.manual_seed(0)
    s = sample()
    for t in (T.RandomRotate("z"), T.RandomFlip(("x", "y"), p=1.0), T.RandomScale((0.5, 2), True)):
        out = t(s)
        assert out["coord"].shape == s["coord"].shape and out["category"] == 2
        np.testing.assert_allclose(np.linalg.norm(out["normal"], axis=1), 1, atol=1e-5)
        np.testing.assert_array_equal(out["label"], s["label"])
    rot = T.RandomRotate("z")(s)
    np.testing.assert_allclose(rot["coord"][:, 2], s["coord"][:, 2], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rot["coord"][:, :2], axis=1),
                               np.linalg.norm(s["coord"][:, :2], axis=1), atol=1e-5)
    flip = T.RandomFlip(("x",), p=1.0)(s)
    np.testing.assert_allclose(flip["coord"][:, 0], -s["coord"][:, 0])


def test_seeded_by_torch():
    s = sample()
    torch.manual_seed(5)
    a = T.RandomJitter(0.01)(s)
    torch.manual_seed(5)
    b = T.RandomJitter(0.01)(s)
    np.testing.assert_array_equal(a["coord"], b["coord"])
    assert np.abs(a["coord"] - s["coord"]).max() <= 0.02 + 1e-6


def test_sampling_and_crops():
    s = sample(1000)
    g = T.GridSample(0.5, mode="first")(s)
    cells = np.floor((s["coord"] - s["coord"].min(0)) / 0.5)
    assert len(g["coord"]) == len(np.unique(cells, axis=0)) and len(g["label"]) == len(g["coord"])
    assert len(T.GridSample(0.5)(s)["coord"]) == len(g["coord"])
    assert len(T.SphereCrop(100)(s)["coord"]) == 100
    assert len(T.SphereCrop(100, "center")(s)["coord"]) == 100
    assert len(T.RandomSubsample(64)(s)["coord"]) == 64
    assert len(T.RandomSubsample(2000, pad=True)(s)["label"]) == 2000
    n = T.NormalizeCoord()(s)["coord"]
    assert abs(np.linalg.norm(n, axis=1).max() - 1) < 1e-5
    c = T.CenterShift()(s)["coord"]
    assert abs(c[:, 2].min()) < 1e-6


def test_build_transforms_and_errors():
    comp = build_transforms([{"name": "RandomScale", "scale": [0.9, 1.1]},
                             {"name": "RandomJitter"}])
    assert len(comp.transforms) == 2
    with pytest.raises(ValueError, match="unknown transform 'Nope'"):
        build_transforms([{"name": "Nope"}])
    with pytest.raises(ValueError, match="expected mappings with a 'name' key"):
        build_transforms(["RandomJitter"])
    with pytest.raises(ValueError, match="GridSample: grid_size must be > 0, got 0"):
        T.GridSample(0)
    with pytest.raises(ValueError, match="RandomRotate: axis must be 'x', 'y' or 'z', got 'w'"):
        T.RandomRotate("w")
    with pytest.raises(ValueError, match=r"RandomScale: scale must be \(low, high\)"):
        T.RandomScale((2, 1))
    with pytest.raises(ValueError, match="SphereCrop: max_points must be an int >= 1, got 0"):
        T.SphereCrop(0)


def test_point_preprocess_evaluation_and_training_paths():
    s = sample(1000)
    pre = T.PointPreprocess(feat_keys=("coord", "normal"), grid_size=0.2, max_points=300,
                            num_points=200, normalize=True)
    a, b = pre(s, index=3), pre(s, index=3)
    assert a["feat"].shape == (200, 6) and a["category"] == 2
    np.testing.assert_array_equal(a["coord"], b["coord"])      # evaluation: deterministic
    crop = pre.sample_points(s, np.random.default_rng(0), train=True)
    assert len(crop["coord"]) == 200 and len(crop["label"]) == 200
    with pytest.raises(KeyError, match="feat_keys names 'color'"):
        T.PointPreprocess(feat_keys=("color",))(s)
    with pytest.raises(ValueError, match="feat_keys: expected a non-empty list"):
        T.PointPreprocess(feat_keys="coord")
    with pytest.raises(ValueError, match="grid_size: expected a positive float or null, got 0"):
        T.PointPreprocess(grid_size=0)
    with pytest.raises(ValueError, match="num_points: expected an int >= 1 or null, got 0"):
        T.PointPreprocess(num_points=0)


# ------------------------------------------------- full resolution: inverse index and votes

def test_grid_pick_first_is_grid_sample_first_and_votes_visit_every_point():
    from geossm.tasks.segmentation.transforms import GridSample, grid_pick
    coord = np.random.default_rng(0).uniform(0, 1, (400, 3)).astype(np.float32)
    first = GridSample(0.2, "first")({"coord": coord, "i": np.arange(400)})["i"]
    np.testing.assert_array_equal(grid_pick(coord, 0.2, 0), first)
    visited = np.concatenate([grid_pick(coord, 0.2, k) for k in range(40)])
    assert set(visited.tolist()) == set(range(400))


def test_full_resolution_inverse_maps_every_point_to_its_cell_then_the_nearest_kept():
    from geossm.tasks.segmentation.transforms import PointPreprocess
    # Cells (grid 0.5): {0, 1, 2} duplicates of one voxel, {3}, {4}.
    coord = np.array([[0, 0, 0], [0.01, 0, 0], [0.02, 0, 0], [1, 0, 0], [2, 0, 0]], np.float32)
    sample = {"coord": coord, "label": np.array([0, 0, 1, 1, 2])}
    out = PointPreprocess(grid_size=0.5, full_resolution=True)(sample)
    np.testing.assert_array_equal(out["coord"], coord[[0, 3, 4]])
    assert out["inverse"].tolist() == [[0], [0], [0], [1], [2]]
    assert out["full_label"].tolist() == [0, 0, 1, 1, 2] and out["label"].tolist() == [0, 1, 2]
    # A subset that drops a cell's point: its points go to the nearest kept point.
    out = PointPreprocess(grid_size=0.5, num_points=2, full_resolution=True)(sample, index=3)
    kept = [int(np.flatnonzero((coord == c).all(1))[0]) for c in out["coord"]]
    inverse = out["inverse"][:, 0]
    assert [inverse[k] for k in kept] == [0, 1]
    for i in range(5):
        d = np.linalg.norm(coord[kept] - coord[i], axis=1)
        assert d[inverse[i]] == d.min()


def test_votes_stack_passes_and_pass_zero_is_the_plain_evaluation_sample():
    from geossm.tasks.segmentation.transforms import PointPreprocess
    coord = np.random.default_rng(1).uniform(0, 1, (300, 3)).astype(np.float32)
    sample = {"coord": coord, "label": np.arange(300) % 4}
    plain = PointPreprocess(grid_size=0.25)(sample, index=5)
    one = PointPreprocess(grid_size=0.25, full_resolution=True)(sample, index=5)
    three = PointPreprocess(grid_size=0.25, full_resolution=True, votes=3)(sample, index=5)
    n = len(plain["coord"])
    for key in ("coord", "feat", "label"):
        np.testing.assert_array_equal(one[key], plain[key])
        np.testing.assert_array_equal(three[key][:n], plain[key])
    np.testing.assert_array_equal(three["inverse"][:, :1], one["inverse"])
    assert three["vote_lengths"].tolist() == [n] * 3 and three["inverse"].shape == (300, 3)
    # Every pass's row of a point lies in its own pass and holds a point of the same cell.
    cell = np.floor((coord - coord.min(0)) / 0.25)
    offsets = np.r_[0, np.cumsum(three["vote_lengths"])]
    for k in range(3):
        rows = three["inverse"][:, k]
        assert ((rows >= offsets[k]) & (rows < offsets[k + 1])).all()
        picked = three["coord"][rows]
        np.testing.assert_array_equal(np.floor((picked - coord.min(0)) / 0.25), cell)


@pytest.mark.parametrize("kwargs, message", [
    (dict(votes=0, full_resolution=True), r"votes: expected an int >= 1, got 0"),
    (dict(votes=2), r"votes: 2 passes are summed on the original points, which needs "
                    r"full_resolution=True"),
])
def test_votes_refused(kwargs, message):
    from geossm.tasks.segmentation.transforms import PointPreprocess
    with pytest.raises(ValueError, match=message):
        PointPreprocess(**kwargs)
