"""``check_field``: one line per bad field, naming the source, the field, the expectation and
what came; shapes before values."""

import numpy as np
import pytest
import torch

from geossm.engine.inputs import as_array, check_field

SAMPLE = {"coord": np.zeros((5, 3), np.float32), "category": np.int64(2),
          "label": np.arange(5), "points": np.zeros((5, 4), np.float32)}


def test_a_good_field_comes_back_as_the_same_array():
    out = check_field(SAMPLE, "coord", shape=("N", 3), kind="number", finite=True)
    assert out is SAMPLE["coord"]
    assert check_field(SAMPLE, "points", shape=("N", ">=4")) is SAMPLE["points"]
    assert check_field(SAMPLE, "category", shape=(), kind="int", low=0, high=3) == 2
    assert check_field({}, "label", required=False) is None


@pytest.mark.parametrize("sample, kwargs, message", [
    ({"x": 1}, {"shape": ("N", 3)}, r"^x\.npz: expected 'coord' of shape \(N, 3\) "
                                     r"\(the points\), got keys \['x'\]$"),
    ({}, {}, r"^x\.npz: expected 'coord' \(the points\), got no arrays$"),
    ({"coord": np.zeros((10, 2))}, {"shape": ("N", 3)},
     r"^x\.npz: coord: expected shape \(N, 3\), got shape \(10, 2\)$"),
    ({"coord": np.zeros((10, 3))}, {"shape": ("N", ">=4")},
     r"coord: expected shape \(N, >=4\), got shape \(10, 3\)"),
    ({"coord": np.zeros(3)}, {"shape": ()},
     r"coord: expected a single value \(shape \(\)\), got shape \(3,\)"),
    ({"coord": np.array(["a", "b"])}, {"kind": "number"},
     r"coord: expected numbers, got dtype <U1"),
    ({"coord": np.array([1.0, 2.5])}, {"kind": "int"},
     r"coord: expected integers, got 2.5 \(dtype float64\)"),
    ({"coord": np.array([1.0, np.nan])}, {"kind": "number", "finite": True},
     r"coord: expected finite values, got NaN or inf"),
    ({"coord": np.array(7)}, {"kind": "int", "low": 0, "high": 4},
     r"coord: expected an integer in \[0, 4\) \(the points\), got 7$"),
    ({"coord": np.array([0, 9, -1])}, {"kind": "int", "low": 0, "high": 4, "ignore": -1},
     r"coord: expected values in \[0, 4\) or -1 \(ignored\) \(the points\), got \[0, 9\]$"),
    ({"coord": np.array([0.0, 255.0])}, {"kind": "number", "low": 0.0, "high": 1.0},
     r"coord: expected values in \[0, 1\] \(the points\), got \[0, 255\]$"),
])
def test_bad_fields_are_one_line_errors(sample, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_field(sample, "coord", source="x.npz", note="(the points)", **kwargs)


def test_whole_floats_pass_as_integers_and_the_ignore_value_is_outside_the_range():
    label = np.array([0.0, 3.0, -1.0])
    assert check_field({"label": label}, "label", kind="int", low=0, high=4, ignore=-1) is label


def test_torch_tensors_read_as_arrays_bfloat16_included():
    exact = torch.tensor([[0.5, -2.0, 3.0]])  # values bfloat16 holds exactly
    for tensor in (exact, exact.bfloat16(), exact.half(), exact.requires_grad_(True)):
        out = check_field({"coord": tensor}, "coord", shape=("N", 3), kind="number")
        assert isinstance(out, np.ndarray)
        np.testing.assert_array_equal(out, exact.detach().numpy())
    assert as_array(torch.arange(3)).dtype == np.int64
    assert as_array([1, 2]).tolist() == [1, 2]


def test_a_missing_field_lists_only_the_fields_that_are_set():
    """A PyG ``Data`` built without ``x`` has ``x=None`` among its keys: not listed as there."""
    with pytest.raises(ValueError, match=r"expected 'x', got keys \['edge_index'\]$"):
        check_field({"x": None, "edge_index": np.zeros((2, 0))}, "x")
    with pytest.raises(ValueError, match=r"expected 'x', got no arrays$"):
        check_field({"x": None}, "x")
