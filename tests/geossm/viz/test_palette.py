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
