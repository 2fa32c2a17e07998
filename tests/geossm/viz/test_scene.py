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
