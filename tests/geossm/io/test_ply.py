import numpy as np
import pytest

from geossm import viz


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
