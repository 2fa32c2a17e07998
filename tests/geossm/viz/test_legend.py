import numpy as np
import pytest

from geossm import viz
from geossm.viz import legend

WHITE = (255, 255, 255)


def _has_color(image, color, tolerance=0):
    rgb = image.reshape(-1, 3).astype(int)
    return bool(np.any(np.abs(rgb - np.asarray(color)).max(1) <= tolerance))


def test_sizes_follow_the_height():
    assert legend.font_size(768) == 24 and legend.font_size(100) == 12
    assert legend.band_height(24) == 43


def test_key_band_draws_swatches_and_text():
    key = (viz.Swatch("classes:"), viz.Swatch("0", (31, 119, 180)),
           viz.Swatch("ground truth", (0, 191, 0), outline=True))
    band = viz.key_band(400, key, 16)
    assert band.shape == (legend.band_height(16), 400, 3) and band.dtype == np.uint8
    assert _has_color(band, (31, 119, 180)) and _has_color(band, (0, 191, 0))
    assert _has_color(band, legend.TEXT_COLOR, tolerance=10), "no text drawn"
    # drawn pixels are centred: the outer margins stay background
    drawn = np.nonzero(~np.all(band == WHITE, axis=-1).all(0))[0]
    assert drawn.min() > 16 and drawn.max() < 400 - 16
    assert abs((drawn.min() + drawn.max()) / 2 - 200) < 3
    # the same input draws the same pixels
    np.testing.assert_array_equal(band, viz.key_band(400, key, 16))


def test_key_band_wraps_into_two_rows_and_counts_the_rest():
    key = [viz.Swatch(str(k), tuple(int(c) for c in viz.PALETTE[k % 20])) for k in range(60)]
    rows = legend._key_rows(key, 300, 14)
    assert len(rows) == legend.MAX_KEY_ROWS
    shown = [s for row in rows for s in row]
    assert shown[-1].text == f"+{60 - (len(shown) - 1)} more" and shown[-1].color is None
    assert [s.text for s in shown[:-1]] == [str(k) for k in range(len(shown) - 1)]
    assert all(legend._row_width(row, 14) <= 300 - 14 for row in rows)
    band = viz.key_band(300, key, 14)
    assert band.shape == (2 * legend.band_height(14), 300, 3)
    assert len(legend._key_rows(key[:3], 300, 14)) == 1


def test_caption_band_centres_captions_on_their_columns():
    band = viz.caption_band(600, [("ground truth", 150.0), ("prediction", 450.0)], 20)
    assert band.shape == (legend.band_height(20), 600, 3)
    drawn = ~np.all(band == WHITE, axis=-1)
    left, right = np.nonzero(drawn[:, :300].any(0))[0], np.nonzero(drawn[:, 300:].any(0))[0] + 300
    assert abs((left.min() + left.max()) / 2 - 150) < 4
    assert abs((right.min() + right.max()) / 2 - 450) < 4
    # a caption at the border is moved inwards, whole
    edge = viz.caption_band(200, [("prediction", 195.0)], 20)
    columns = np.nonzero((~np.all(edge == WHITE, axis=-1)).any(0))[0]
    assert columns.max() < 200 - 5



def test_render_with_legend_keeps_the_size_and_draws_bands(needs_open3d, tmp_path):
    rng = np.random.default_rng(0)
    coord = rng.uniform(-1, 1, (2000, 3))
    label = (coord[:, 0] > 0).astype(np.int64)
    scene = viz.side_by_side(coord, label, label)
    key = (viz.Swatch("x", (255, 0, 255)),)
    png = viz.render_with_legend(scene, viz.Legend({"label": "ground truth"}, key),
                                 tmp_path / "l.png", 320, 240)
    image = np.asarray(viz.require("open3d").io.read_image(str(png)))[..., :3]
    assert image.shape == (240, 320, 3)
    band = legend.band_height(legend.font_size(240))
    top, bottom = image[:band], image[-band:]
    assert not np.all(top == WHITE), "caption band empty"
    assert _has_color(bottom, (255, 0, 255)), "key swatch missing"
    # only the caption named: the right half of the caption band stays empty
    assert np.all(top[:, 200:] == WHITE)
    # the 3-D view between the bands is the scene rendered at the height left
    body = scene.render_image(320, 240 - 2 * band)
    np.testing.assert_array_equal(image[band:-band], body)
    # tiny images have no room for bands: the whole PNG is the 3-D view
    tiny = viz.render_with_legend(scene, viz.Legend({"label": "x"}, key), tmp_path / "t.png",
                                  64, 48)
    tiny_image = np.asarray(viz.require("open3d").io.read_image(str(tiny)))[..., :3]
    np.testing.assert_array_equal(tiny_image, scene.render_image(64, 48))
