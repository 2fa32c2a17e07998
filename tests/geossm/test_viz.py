import numpy as np
import pytest

from geossm import viz


def test_palette_is_fixed():
    assert viz.PALETTE.shape == (20, 3) and viz.PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in viz.PALETTE}) == 20
    colors = viz.label_colors(np.array([0, 1, 21, -1]))
    np.testing.assert_array_equal(colors[0], [31, 119, 180])
    np.testing.assert_array_equal(colors[2], viz.PALETTE[1])
    np.testing.assert_array_equal(colors[3], viz.IGNORE_COLOR)
    with pytest.raises(ValueError, match="1-D integer array"):
        viz.label_colors(np.array([0.5]))


def test_ply_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    coord = rng.normal(size=(10, 3)).astype(np.float32)
    label = rng.integers(0, 5, 10)
    pred = rng.integers(0, 5, 10)
    path = viz.write_labeled_ply(tmp_path / "a.ply", coord, pred=pred, label=label)
    data = viz.read_ply(path)
    np.testing.assert_allclose(data["coord"], coord)
    np.testing.assert_array_equal(data["label"], label)
    np.testing.assert_array_equal(data["pred"], pred)
    np.testing.assert_array_equal(data["color"], viz.label_colors(pred))
    with pytest.raises(ValueError, match=r"coord: expected shape \(N, 3\)"):
        viz.write_ply(tmp_path / "b.ply", np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"label: expected shape \(10,\)"):
        viz.write_ply(tmp_path / "b.ply", coord, label=np.zeros(3))


def test_read_ascii_ply(tmp_path):
    p = tmp_path / "a.ply"
    p.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                 "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
                 "end_header\n0 0 0 255 0 0\n1 2 3 0 255 0\n")
    data = viz.read_ply(p)
    np.testing.assert_allclose(data["coord"], [[0, 0, 0], [1, 2, 3]])
    np.testing.assert_array_equal(data["color"], [[255, 0, 0], [0, 255, 0]])
    (tmp_path / "bad.ply").write_text("nope\n")
    with pytest.raises(ValueError, match="not a PLY file"):
        viz.read_ply(tmp_path / "bad.ply")


def test_box_corners():
    corners = viz.box_corners(np.array([[1, 2, 3, 2, 4, 6, np.pi / 2]]))
    assert corners.shape == (1, 8, 3)
    # yaw 90 deg: the box's x extent (2) lies along world y
    np.testing.assert_allclose(corners[0].min(0), [1 - 2, 2 - 1, 0], atol=1e-9)
    np.testing.assert_allclose(corners[0].max(0), [1 + 2, 2 + 1, 6], atol=1e-9)


def test_render_known_cloud_png(tmp_path):
    try:
        viz.require("open3d", "test")
    except ImportError as err:
        print(f"SKIP reason: {err}")
        pytest.skip(f"open3d cannot be imported: {err}")
    rng = np.random.default_rng(0)
    coord = rng.uniform(-1, 1, (3000, 3))
    label = (coord[:, 0] > 0).astype(np.int64)
    pred = (coord[:, 1] > 0).astype(np.int64)
    scene = viz.side_by_side(coord, label, pred, point_size=4)
    scene.add_boxes("box", np.array([[0, 0, 0, 2, 2, 2, 0.0]]))
    png = scene.render(tmp_path / "r.png", width=320, height=200)
    image = np.asarray(viz.require("open3d").io.read_image(str(png)))
    assert image.shape[:2] == (200, 320)
    rgb = image[..., :3].reshape(-1, 3)
    background = np.all(rgb == 255, axis=1)
    assert 0.02 < 1 - background.mean() < 0.95, "render is blank or full"
    # Unlit, no tone mapping: the palette colours of labels 0 and 1 appear as they are.
    for k in (0, 1):
        assert np.any(np.all(rgb == viz.PALETTE[k], axis=1)), f"palette colour {k} missing"
    # Ground truth left, prediction right: both halves hold drawn pixels.
    drawn = ~background.reshape(200, 320)
    assert drawn[:, :160].any() and drawn[:, 160:].any()


def test_load_for_view_npz_uses_ply_beside(tmp_path):
    coord = np.zeros((4, 3), np.float32)
    viz.write_labeled_ply(tmp_path / "a.ply", coord, pred=np.arange(4), label=np.ones(4, int))
    np.savez(tmp_path / "a.npz", pred=np.arange(4)[::-1], logits=np.zeros((4, 2)))
    data = viz.load_for_view(tmp_path / "a.npz")
    np.testing.assert_array_equal(data["pred"], [3, 2, 1, 0])  # the .npz wins for pred
    np.testing.assert_array_equal(data["label"], [1, 1, 1, 1])
    np.savez(tmp_path / "b.npz", pred=np.arange(4))
    with pytest.raises(ValueError, match="no 'coord' array and no b.ply"):
        viz.load_for_view(tmp_path / "b.npz")
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(ValueError, match="expected a .ply or .npz"):
        viz.load_for_view(tmp_path / "c.txt")


def test_show_without_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not viz.has_display()
    with pytest.raises(RuntimeError, match="no display"):
        viz.Scene().show()
    with pytest.raises(ValueError, match="the scene is empty"):
        viz.Scene().render("x.png")


def test_render_detection_npz_draws_box_colours(tmp_path):
    """A ``geossm predict`` detection output (.npz with coord, gt_boxes, pred_boxes, pred_scores)
    renders through ``render_file`` with both box sets in their colours; a low-scoring
    prediction is left out."""
    try:
        viz.require("open3d", "test")
    except ImportError as err:
        print(f"SKIP reason: {err}")
        pytest.skip(f"open3d cannot be imported: {err}")
    rng = np.random.default_rng(0)
    coord = np.c_[rng.uniform(0, 30, 4000), rng.uniform(-10, 10, 4000), np.full(4000, -1.7)]
    gt = np.array([[10.0, -3.0, -0.9, 4.0, 1.7, 1.5, 0.3]])
    pred = np.array([[20.0, 4.0, -0.9, 4.0, 1.7, 1.5, -0.2], [5.0, 5.0, -0.9, 4.0, 1.7, 1.5, 0]])
    npz = tmp_path / "det.npz"
    np.savez(npz, coord=coord, gt_boxes=gt, pred_boxes=pred, pred_scores=np.array([0.9, 0.1]))
    png = viz.render_file(npz, tmp_path / "det.png", width=400, height=300)
    image = np.asarray(viz.require("open3d").io.read_image(str(png)))
    assert image.shape[:2] == (300, 400)
    rgb = image[..., :3].reshape(-1, 3).astype(int)
    assert 0.02 < 1 - np.all(rgb == 255, axis=1).mean() < 0.95, "render is blank or full"
    for color in (viz.GT_BOX_COLOR, viz.PRED_BOX_COLOR):
        expected = np.round(np.asarray(color) * 255).astype(int)
        assert (np.abs(rgb - expected).max(1) <= 2).sum() > 20, f"box colour {color} missing"
    # the prediction scored 0.1 is below the default threshold 0.3: 12 edges (one box) drawn
    default = viz.detection_scene(coord, gt, pred, np.array([0.9, 0.1]))
    assert set(default.items) == {"points", "gt_boxes", "pred_boxes"}
    assert len(np.asarray(default.items["pred_boxes"].geometry.lines)) == 12
    both = viz.detection_scene(coord, gt, pred, np.array([0.9, 0.1]), score_threshold=0.05)
    assert len(np.asarray(both.items["pred_boxes"].geometry.lines)) == 24
