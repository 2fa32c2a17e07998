import numpy as np
import pytest

from geossm import viz
from geossm.tasks.events import viz as event_viz

from . import encoders as enc


def test_viewer_claims_event_files(tmp_path, samples):
    assert viz.find_viewer(samples / "sample_nmnist.bin") is event_viz.VIEWER
    assert viz.find_viewer(samples / "evt2_sample.raw") is event_viz.VIEWER
    kitti = tmp_path / "000000.bin"
    np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32).tofile(kitti)
    assert viz.find_viewer(kitti) is None  # a point cloud, not N-MNIST records
    assert viz.find_viewer(tmp_path / "x.ply") is None


def test_frame_strip_draws_boxes():
    ev = enc.random_events(500, seed=0, width=40, height=30, span=60_000)
    times = np.array([10_000, 55_000])
    boxes = np.array([[5, 5, 10, 8], [20, 10, 10, 8]], float)
    strip = event_viz.frame_strip(ev, (40, 30, 2), n_frames=3, width=400, boxes=boxes,
                                  pred_boxes=boxes + 2, times=times)
    assert strip.dtype == np.uint8 and strip.shape[1] <= 400 and strip.shape[0] == 30 * 3
    colors = {tuple(c) for c in strip.reshape(-1, 3)}
    assert tuple(event_viz.GT_COLOR) in colors and tuple(event_viz.PRED_COLOR) in colors


def test_render_event_file(tmp_path, samples):
    pytest.importorskip("open3d")
    out = viz.render_file(samples / "sample_nmnist.bin", tmp_path / "n.png", width=320,
                          height=240)
    assert out.is_file() and out.stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="viz: input file not found"):
        viz.render_file(tmp_path / "missing.raw")


def test_event_render_has_a_polarity_key(tmp_path):
    """Below the 3-D view (``height`` pixels) and the frame strip: a key band with the ON / OFF
    colours and, with tracking boxes, the ground-truth and prediction colours."""
    pytest.importorskip("open3d")
    ev = enc.random_events(2000, seed=0, width=40, height=30, span=60_000)
    boxes = np.array([[5, 5, 10, 8], [20, 10, 10, 8]], float)
    png = event_viz.render_events(ev, (40, 30, 2), tmp_path / "e.png", width=400, height=240,
                                  boxes=boxes, pred_boxes=boxes + 2,
                                  times=np.array([10_000, 55_000]))
    image = np.asarray(viz.require("open3d").io.read_image(str(png)))[..., :3].astype(int)
    strip = event_viz.frame_strip(ev, (40, 30, 2), 6, 400)
    band = viz.legend.band_height(viz.legend.font_size(240))
    assert image.shape == (240 + strip.shape[0] + 16 + band, 400, 3)
    key = image[-band:].reshape(-1, 3)
    for color in (event_viz.ON_COLOR, event_viz.OFF_COLOR, event_viz.GT_COLOR,
                  event_viz.PRED_COLOR):
        assert np.any(np.all(key == color, axis=1)), f"key colour {color} missing"
    assert [s.text for s in event_viz.event_key()] == ["ON events", "OFF events"]
