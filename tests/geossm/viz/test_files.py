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
