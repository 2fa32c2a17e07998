import numpy as np
import pytest

from geossm import viz


def test_render_known_cloud_png(needs_open3d, tmp_path):
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


def test_render_detection_npz_draws_box_colours(needs_open3d, tmp_path):
    """A ``geossm predict`` detection output (.npz with coord, gt_boxes, pred_boxes, pred_scores)
    renders through ``render_file`` with both box sets in their colours; a low-scoring
    prediction is left out."""
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


def test_side_by_side_legend_names_views_and_classes_present():
    label, pred = np.array([3, 0, -1, 3]), np.array([0, 0, 21, 3])
    legend = viz.side_by_side_legend(label, pred)
    assert dict(legend.captions) == {"label": "ground truth", "pred": "prediction"}
    assert [s.text for s in legend.key] == ["classes:", "0", "3", "21", "ignored"]
    assert legend.key[0].color is None
    assert legend.key[3].color == tuple(int(c) for c in viz.PALETTE[1])  # 21 % 20
    assert legend.key[4].color == tuple(int(c) for c in viz.IGNORE_COLOR)
    only_pred = viz.side_by_side_legend(pred=pred)
    assert dict(only_pred.captions) == {"pred": "prediction"}
    assert viz.side_by_side_legend() == viz.Legend()


def test_detection_legend_keys_what_is_drawn():
    coord = np.zeros((5, 3))
    boxes = np.zeros((1, 7))
    full = viz.detection_legend(coord, boxes, boxes, np.ones(1), score_threshold=0.25)
    assert [s.text for s in full.key] == ["points", "ground truth", "prediction (score >= 0.25)"]
    assert full.key[0].color == (115, 115, 128) and not full.key[0].outline
    assert full.key[1].color == (0, 191, 0) and full.key[1].outline
    assert full.key[2].color == (230, 0, 0) and full.key[2].outline
    assert not full.captions
    assert [s.text for s in viz.detection_legend(coord, pred_boxes=boxes).key] == ["points",
                                                                                   "prediction"]
