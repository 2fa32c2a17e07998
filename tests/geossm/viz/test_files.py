import numpy as np
import pytest

from geossm import viz


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



def _read_rgb(path):
    return np.asarray(viz.require("open3d").io.read_image(str(path)))[..., :3].astype(int)


def _has_color(image, color, tolerance=0):
    rgb = np.asarray(image).reshape(-1, 3)
    return bool(np.any(np.abs(rgb - np.asarray(color)).max(1) <= tolerance))


def test_render_file_side_by_side_draws_the_legend(needs_open3d, tmp_path):
    """``geossm viz pred.npz``: a PNG of exactly width x height; "ground truth" / "prediction"
    captions above their clouds in the top band; the colours of the classes present in a key at
    the bottom; the clouds in between."""
    rng = np.random.default_rng(0)
    coord = rng.uniform(-1, 1, (3000, 3))
    label = (coord[:, 0] > 0).astype(np.int64)
    pred = np.where(coord[:, 1] > 0, 4, 0)
    np.savez(tmp_path / "p.npz", coord=coord, label=label, pred=pred)
    width, height = 480, 320
    png = viz.render_file(tmp_path / "p.npz", tmp_path / "p.png", width=width, height=height)
    image = _read_rgb(png)
    assert image.shape == (height, width, 3)
    band = viz.legend.band_height(viz.legend.font_size(height))
    white = np.all(image == 255, axis=-1)
    top, body, bottom = white[:band], white[band:-band], white[-band:]
    # both captions drawn, one over each cloud: text in the band above each half of the body
    body_columns = np.nonzero(~body.all(0))[0]
    middle = (body_columns.min() + body_columns.max()) / 2
    assert not top[:, :int(middle)].all() and not top[:, int(middle):].all()
    assert _has_color(image[:band], viz.legend.TEXT_COLOR, tolerance=10)
    # the key: palette colours of labels 0, 1 and 4 as swatches, and nothing of other classes
    for k in (0, 1, 4):
        assert _has_color(image[-band:], viz.PALETTE[k]), f"key swatch of class {k} missing"
    assert not _has_color(image[-band:], viz.PALETTE[2])
    assert not bottom.all() and 0.02 < 1 - body.mean() < 0.95
    scene = viz.side_by_side(coord, label, pred)
    np.testing.assert_array_equal(image[band:-band], scene.render_image(width, height - 2 * band))
    # deterministic: the same file renders to the same pixels
    again = viz.render_file(tmp_path / "p.npz", tmp_path / "q.png", width=width, height=height)
    np.testing.assert_array_equal(_read_rgb(again), image)


def test_render_file_detection_draws_the_key(needs_open3d, tmp_path):
    """A detection ``.npz``: no captions, a key band at the bottom with the point, ground-truth
    and prediction colours; the boxes are drawn in the 3-D view above it."""
    rng = np.random.default_rng(0)
    coord = np.c_[rng.uniform(0, 30, 4000), rng.uniform(-10, 10, 4000), np.full(4000, -1.7)]
    gt = np.array([[10.0, -3.0, -0.9, 4.0, 1.7, 1.5, 0.3]])
    pred = np.array([[20.0, 4.0, -0.9, 4.0, 1.7, 1.5, -0.2]])
    np.savez(tmp_path / "det.npz", coord=coord, gt_boxes=gt, pred_boxes=pred,
             pred_scores=np.array([0.9]))
    png = viz.render_file(tmp_path / "det.npz", tmp_path / "det.png", width=400, height=300)
    image = _read_rgb(png)
    assert image.shape == (300, 400, 3)
    band = viz.legend.band_height(viz.legend.font_size(300))
    key, body = image[-band:], image[:-band]
    for color in (viz.DETECTION_POINT_COLOR, viz.GT_BOX_COLOR, viz.PRED_BOX_COLOR):
        expected = viz.legend.rgb255(color)
        assert _has_color(key, expected), f"key swatch {color} missing"
        assert (np.abs(body.reshape(-1, 3) - expected).max(1) <= 2).sum() > 20, \
            f"colour {color} missing in the view"
    assert _has_color(key, viz.legend.TEXT_COLOR, tolerance=10), "key text missing"
    scene = viz.detection_scene(coord, gt, pred, np.array([0.9]))
    view = scene.render_image(400, 300 - band, view=viz.DETECTION_VIEW)
    np.testing.assert_array_equal(body, view)
