import numpy as np
import pytest

from geossm.tasks.segmentation import synthetic


def test_shapes_are_deterministic_and_labelled():
    a = synthetic.make_shape(np.random.default_rng(synthetic.sample_seed(0, "train", 3)))
    b = synthetic.make_shape(np.random.default_rng(synthetic.sample_seed(0, "train", 3)))
    c = synthetic.make_shape(np.random.default_rng(synthetic.sample_seed(0, "val", 3)))
    np.testing.assert_array_equal(a["coord"], b["coord"])
    assert not np.array_equal(a["coord"][:10], c["coord"][:10])
    for cat in range(len(synthetic.CATEGORIES)):
        s = synthetic.make_shape(np.random.default_rng(cat), category=cat, min_points=300,
                                 max_points=300)
        assert s["coord"].shape == (300, 3) and s["coord"].dtype == np.float32
        assert set(np.unique(s["label"])) == set(synthetic.CATEGORY_PARTS[cat])
        assert np.abs(s["coord"]).max() < 3


def test_make_shape_errors():
    with pytest.raises(ValueError, match="expected 1 <= min_points <= max_points, got 10 and 5"):
        synthetic.make_shape(np.random.default_rng(0), min_points=10, max_points=5)
    with pytest.raises(ValueError, match=r"category: expected an index in \[0, 4\), got 7"):
        synthetic.make_shape(np.random.default_rng(0), category=7)


def test_cli_writes_a_sample(tmp_path):
    out = tmp_path / "s.npz"
    assert synthetic._main([str(out), "--split", "val", "--index", "2"]) == 0
    with np.load(out) as z:
        assert z["coord"].shape[1] == 3 and len(z["label"]) == len(z["coord"])
        assert int(z["category"]) in range(4)
