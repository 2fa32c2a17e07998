import numpy as np
import pytest

from geossm import viz


def test_box_corners():
    corners = viz.box_corners(np.array([[1, 2, 3, 2, 4, 6, np.pi / 2]]))
    assert corners.shape == (1, 8, 3)
    # yaw 90 deg: the box's x extent (2) lies along world y
    np.testing.assert_allclose(corners[0].min(0), [1 - 2, 2 - 1, 0], atol=1e-9)
    np.testing.assert_allclose(corners[0].max(0), [1 + 2, 2 + 1, 6], atol=1e-9)


def test_show_without_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not viz.has_display()
    with pytest.raises(RuntimeError, match="no display"):
        viz.Scene().show()
    with pytest.raises(ValueError, match="the scene is empty"):
        viz.Scene().render("x.png")


def test_project_matches_the_render(needs_open3d):
    """``Scene.project`` puts a point where the renderer draws it (within 2 pixels)."""
    rng = np.random.default_rng(0)
    blob = rng.normal(size=(300, 3)) * 0.03 + np.array([0.6, 0.2, -0.3])
    scene = viz.Scene().add_points("blob", blob, colors=np.tile([255, 0, 0], (300, 1)))
    scene.add_points("cloud", rng.uniform(-1, 1, (2000, 3)), point_size=1.0)
    for view, (width, height) in (((-0.25, -1.0, 0.75), (320, 200)),
                                  (viz.DETECTION_VIEW, (200, 300))):
        image = scene.render_image(width, height, view=view)
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        rows, cols = np.nonzero(np.all(image == [255, 0, 0], axis=-1))
        col, row = scene.project(blob.mean(0), width, height, view=view)[0]
        assert abs(col - cols.mean()) < 2 and abs(row - rows.mean()) < 2
