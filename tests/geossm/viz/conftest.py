"""Fixtures of the viz tests: renders need Open3D, and say so when it cannot be imported."""

import pytest

from geossm import viz


@pytest.fixture
def needs_open3d():
    """Skip, printing the reason, when Open3D (and so offscreen rendering) is unavailable."""
    try:
        viz.require("open3d", "test")
    except ImportError as err:
        print(f"SKIP reason: {err}")
        pytest.skip(f"open3d cannot be imported: {err}")
