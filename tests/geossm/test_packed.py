"""The packed-sequence contract: int32 limit, conversions, the one cu_seqlens validator and
its rules, and ``pack_collate``."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geossm.packed import (INDEX, INT32_MAX, KERNEL, LAYER, SERIALIZATION, TOKENS,
                           _VALIDATED_CU, batch_to_cu_seqlens, canonical_cu_seqlens,
                           check_cu_seqlens, check_int32_tokens, cu_seqlens_from_lengths,
                           cu_seqlens_to_batch, dense_cu_seqlens, mark_cu_seqlens_valid,
                           pack_collate)


def _expanded(n, *rest, dtype=torch.long):
    """A tensor of ``n`` rows that owns one element (stride 0): checks run, no memory is used."""
    return torch.zeros((), dtype=dtype).expand(n, *rest)


def _cu(*values, dtype=torch.int32):
    return torch.tensor(values, dtype=dtype)


# ------------------------------------------------------------------- int32 limit, conversions

def test_cu_seqlens_from_lengths_sums_in_int64_and_refuses_int32_overflow():
    assert cu_seqlens_from_lengths([2, 0, 3]).tolist() == [0, 2, 2, 5]
    assert cu_seqlens_from_lengths(torch.tensor([2, 0, 3])).dtype == torch.int32
    assert cu_seqlens_from_lengths([]).tolist() == [0]
    fits = cu_seqlens_from_lengths([2**30, 2**30 - 1])  # exactly INT32_MAX
    assert int(fits[-1]) == INT32_MAX
    with pytest.raises(ValueError, match=r"lengths: 2147483648 tokens do not fit int32 cu_seqlens"):
        cu_seqlens_from_lengths([2**30, 2**30])
    with pytest.raises(ValueError, match=r"sizes: 4294967296 tokens do not fit"):
        cu_seqlens_from_lengths(torch.tensor([2**32]), "sizes")  # would wrap to 0
    with pytest.raises(ValueError, match=r"lengths: expected non-negative lengths, got min -1"):
        cu_seqlens_from_lengths([3, -1])
    with pytest.raises(TypeError, match=r"lengths: expected an integer tensor, got dtype"):
        cu_seqlens_from_lengths(torch.tensor([1.0]))


def test_batch_to_cu_seqlens_refuses_2_31_tokens():
    with pytest.raises(ValueError, match=r"batch: 2147483648 tokens do not fit int32 cu_seqlens"):
        batch_to_cu_seqlens(_expanded(2**31))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=0, max_size=8))
def test_batch_cu_roundtrip(lengths):
    batch = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths, dtype=torch.long))
    cu = batch_to_cu_seqlens(batch, len(lengths))
    assert cu.dtype == torch.int32 and cu.shape == (len(lengths) + 1,)
    assert torch.equal(cu[1:] - cu[:-1], torch.tensor(lengths, dtype=torch.int32))
    assert torch.equal(cu_seqlens_to_batch(cu), batch)
    assert torch.equal(cu_seqlens_to_batch(cu, int(batch.numel())), batch)


def test_batch_to_cu_seqlens_default_and_errors():
    assert batch_to_cu_seqlens(torch.tensor([0, 0, 2])).tolist() == [0, 2, 2, 3]
    assert batch_to_cu_seqlens(torch.zeros(0, dtype=torch.long)).tolist() == [0]
    with pytest.raises(TypeError, match=r"batch: expected an integer tensor, got dtype torch.float32"):
        batch_to_cu_seqlens(torch.zeros(3))
    with pytest.raises(ValueError, match=r"batch: expected non-negative sample indices, got min -1"):
        batch_to_cu_seqlens(torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"batch: expected values < num_segments = 2, got max 2"):
        batch_to_cu_seqlens(torch.tensor([0, 2]), 2)
    with pytest.raises(ValueError, match=r"batch: expected a 1-D tensor, got shape \(2, 1\)"):
        batch_to_cu_seqlens(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"cu_seqlens: expected shape \(S\+1,\)"):
        cu_seqlens_to_batch(torch.zeros(0, dtype=torch.int32))


def test_int32_check_names_what_it_counts():
    check_int32_tokens(INT32_MAX)
    with pytest.raises(ValueError, match=r"^T=2147483648 tokens do not fit int32 cu_seqlens "
                                         r"\(max 2147483647 = 2\^31 - 1\)"):
        check_int32_tokens(2**31)
    with pytest.raises(ValueError, match=r"^coords: 2147483648 tokens do not fit"):
        check_int32_tokens(2**31, "coords")


def test_dense_cu_seqlens_are_equal_lengths_and_refuse_2_31_tokens():
    cu = dense_cu_seqlens(3, 4, torch.device("cpu"))
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 4, 8, 12]
    with pytest.raises(ValueError, match=r"T=2147483648 tokens do not fit int32 cu_seqlens"):
        dense_cu_seqlens(2, 2**30, torch.device("cpu"))


# -------------------------------------------------------------------------- the validator

def test_serialization_refuses_a_cu_seqlens_total_beyond_int32():
    """The constructor's check names the overflow rather than a mismatched last value."""
    cu = torch.tensor([0, 5], dtype=torch.int32)  # any int32 array: N = 2^31 cannot end it
    with pytest.raises(ValueError, match=r"cu_seqlens: 2147483648 tokens do not fit int32"):
        check_cu_seqlens(cu, SERIALIZATION, 2**31)


@pytest.mark.parametrize("rule, cu, total", [
    (KERNEL, _cu(0, 3, 3, 7, dtype=torch.int64), 7),   # int64, an empty segment
    (SERIALIZATION, _cu(0), 0),                         # zero segments: an empty batch
    (LAYER, _cu(5, 3, dtype=torch.int64), None),        # kind only: values are the kernels'
    (TOKENS, _cu(0, 9), None),
    (INDEX, _cu(0, 2, dtype=torch.int64), None),
])
def test_each_rule_accepts_what_its_callers_pass(rule, cu, total):
    check_cu_seqlens(cu, rule, total)


@pytest.mark.parametrize("rule, cu, error, message", [
    # dtypes: int32 only, or int32 and int64; the exception is the rule's
    (SERIALIZATION, _cu(0, 7, dtype=torch.int64), ValueError,
     r"^cu_seqlens: expected dtype torch.int32, got torch.int64$"),
    (TOKENS, _cu(0, 7, dtype=torch.int64), ValueError, r"expected dtype torch.int32, got"),
    (INDEX, torch.tensor([0.0, 7.0]), TypeError,
     r"^cu_seqlens: expected dtype torch.int32 or torch.int64, got torch.float32$"),
    (KERNEL, torch.tensor([0.0, 7.0]), TypeError,
     r"^cu_seqlens must be int32 or int64, got dtype torch.float32$"),
    (LAYER, torch.tensor([0.0, 7.0]), ValueError,
     r"^cu_seqlens must be a 1-D int32 tensor \(S\+1,\) with a leading 0, got shape \(2,\) "
     r"and dtype torch.float32$"),
    # segments: the kernels need one, the others allow none
    (KERNEL, _cu(0), ValueError,
     r"^cu_seqlens must be 1-D with at least 2 entries \(S\+1,\), got shape \(1,\)$"),
    (SERIALIZATION, _cu(), ValueError,
     r"^cu_seqlens: expected shape \(S\+1,\) with S >= 0, got shape \(0,\)$"),
    (LAYER, _cu(), ValueError, r"cu_seqlens must be a 1-D int32 tensor"),
    # rank and type
    (INDEX, _cu(0, 7)[None], ValueError, r"^cu_seqlens: expected a 1-D tensor, got shape \(1, 2\)$"),
    (KERNEL, _cu(0, 7)[None], ValueError, r"^cu_seqlens must be 1-D with at least 2 entries"),
    (LAYER, [0, 7], TypeError, r"^cu_seqlens must be a torch.Tensor or None, got list$"),
    (KERNEL, [0, 7], TypeError, r"^cu_seqlens must be a torch.Tensor, got list$"),
    (SERIALIZATION, [0, 7], TypeError, r"^cu_seqlens: expected a torch.Tensor, got list \[0, 7\]$"),
])
def test_each_rule_refuses_a_wrong_kind_with_its_wording(rule, cu, error, message):
    with pytest.raises(error, match=message):
        check_cu_seqlens(cu, rule, 7)


@pytest.mark.parametrize("cu, kernel_message, serialization_message", [
    (_cu(1, 7), r"^cu_seqlens must start with 0, got 1$",
     r"^cu_seqlens: expected a leading 0, got cu_seqlens\[0\] = 1$"),
    (_cu(0, 6), r"^cu_seqlens must end with the number of tokens T=7, got 6$",
     r"^cu_seqlens: expected the last value to be N = 7, got 6$"),
    (_cu(0, 5, 3, 7), r"^cu_seqlens must be non-decreasing, got cu_seqlens\[1\]=5 > "
                      r"cu_seqlens\[2\]=3$",
     r"^cu_seqlens: expected non-decreasing values, got cu_seqlens\[1\] = 5 > "
     r"cu_seqlens\[2\] = 3$"),
])
def test_value_checks_have_one_rule_and_two_wordings(cu, kernel_message, serialization_message):
    with pytest.raises(ValueError, match=kernel_message):
        check_cu_seqlens(cu, KERNEL, 7)
    with pytest.raises(ValueError, match=serialization_message):
        check_cu_seqlens(cu, SERIALIZATION, 7)


def test_rules_without_value_checks_read_no_values():
    """The layers' and helpers' rules check the kind only: no host sync, wrong values pass."""
    for rule in (LAYER, TOKENS, INDEX):
        check_cu_seqlens(_cu(3, 1), rule, 7)


def test_int32_values_that_wrap_when_subtracted_are_still_decreasing():
    cu = _cu(0, INT32_MAX, -2**31, -1, 5)  # int32 differences would all look >= 0
    with pytest.raises(ValueError, match=r"non-decreasing, got cu_seqlens\[1\]=2147483647 > "
                                         r"cu_seqlens\[2\]=-2147483648"):
        check_cu_seqlens(cu, KERNEL, 5)


def test_device_is_checked_against_what_sets_it():
    cu = _cu(0, 7)
    meta = torch.device("meta")
    with pytest.raises(ValueError, match=r"^cu_seqlens must be on meta like the input, got cpu$"):
        check_cu_seqlens(cu, KERNEL, 7, device=meta)
    with pytest.raises(ValueError,
                       match=r"^cu_seqlens: expected device meta \(that of order\), got cpu$"):
        check_cu_seqlens(cu, SERIALIZATION, 7, device=meta, like="order")


def test_a_rule_with_value_checks_needs_the_token_count():
    with pytest.raises(TypeError, match="needs total"):
        check_cu_seqlens(_cu(0, 7), KERNEL)


def test_canonical_cu_seqlens_for_packed_none_and_dense_input():
    cpu = torch.device("cpu")
    assert canonical_cu_seqlens(None, (7,), cpu).tolist() == [0, 7]
    assert canonical_cu_seqlens(None, (3, 4), cpu).tolist() == [0, 4, 8, 12]
    with pytest.raises(ValueError, match=r"cu_seqlens must be None for dense \(Bt, L, D\) input"):
        canonical_cu_seqlens(_cu(0, 12), (3, 4), cpu)
    with pytest.raises(ValueError, match=r"T=2147483648 tokens do not fit"):
        canonical_cu_seqlens(None, (2**31,), cpu)
    cu = _cu(0, 3, 7, dtype=torch.int64)
    first = canonical_cu_seqlens(cu, (7,), cpu)
    assert first.dtype == torch.int32 and first.tolist() == [0, 3, 7]
    assert canonical_cu_seqlens(cu, (7,), cpu) is first  # one int32 copy per checked tensor


def test_the_value_check_is_paid_once_per_tensor_until_changed_in_place():
    cu = _cu(0, 3, 7)
    check_cu_seqlens(cu, SERIALIZATION, 7)
    assert any(entry[0] is cu for entry in _VALIDATED_CU.values())
    cu[1] = 9
    with pytest.raises(ValueError, match=r"non-decreasing"):
        check_cu_seqlens(cu, SERIALIZATION, 7)


def test_a_tensor_marked_valid_skips_the_check_until_changed_in_place():
    cu = _cu(0, 3, 7)
    mark_cu_seqlens_valid(cu, 7)
    assert canonical_cu_seqlens(cu, (7,), torch.device("cpu")) is cu   # from the record
    cu[1] = 9   # a new version: checked again
    with pytest.raises(ValueError, match=r"non-decreasing"):
        check_cu_seqlens(cu, SERIALIZATION, 7)
    with pytest.raises(ValueError, match=r"cu_seqlens: expected a contiguous int32 tensor, got "
                                         r"torch.int64"):
        mark_cu_seqlens_valid(_cu(0, 7, dtype=torch.int64), 7)


# ---------------------------------------------------------------------------- pack_collate

def test_pack_collate_concatenates_without_padding():
    samples = [
        {"coord": np.zeros((3, 3), np.float32), "label": np.arange(3), "boxes": np.ones((1, 7)),
         "image": np.zeros((2, 2)), "scale": 1.5, "name": "a"},
        {"coord": np.ones((5, 3), np.float32), "label": np.arange(5), "boxes": np.ones((4, 7)),
         "image": np.ones((2, 2)), "scale": 2.0, "name": "b"},
    ]
    b = pack_collate(samples, stack_keys=("image",))
    assert b["coord"].shape == (8, 3) and b["label"].shape == (8,)
    assert b["cu_seqlens"].dtype == torch.int32 and b["cu_seqlens"].tolist() == [0, 3, 8]
    assert b["batch"].tolist() == [0] * 3 + [1] * 5
    assert b["boxes"].shape == (5, 7) and b["boxes_cu_seqlens"].tolist() == [0, 1, 5]
    assert "label_cu_seqlens" not in b
    assert b["image"].shape == (2, 2, 2)
    assert b["scale"].tolist() == [1.5, 2.0] and b["name"] == ["a", "b"]


def test_pack_collate_errors():
    with pytest.raises(ValueError, match="at least one sample"):
        pack_collate([])
    with pytest.raises(ValueError, match="sample 1 has keys"):
        pack_collate([{"a": np.zeros(2)}, {"b": np.zeros(2)}])
    with pytest.raises(ValueError, match="may not carry the key 'batch'"):
        pack_collate([{"batch": np.zeros(2)}])
    with pytest.raises(ValueError, match="length_key 'x' is not a concatenated key"):
        pack_collate([{"a": np.zeros(2)}], length_key="x")


def test_pack_collate_empty_samples():
    """One empty sample is an empty segment; a batch of only empty samples is refused, even
    when another key (boxes) has rows, since the lengths follow ``length_key``."""
    empty = {"coord": np.zeros((0, 3)), "boxes": np.ones((1, 7))}
    full = {"coord": np.ones((2, 3)), "boxes": np.ones((0, 7))}
    b = pack_collate([full, empty, full])
    assert b["cu_seqlens"].tolist() == [0, 2, 2, 4] and b["batch"].tolist() == [0, 0, 2, 2]
    assert b["boxes_cu_seqlens"].tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"every sample of the batch has zero rows of 'coord' "
                                         r"\(2 empty samples\)"):
        pack_collate([empty, empty])
    # boxes-only batches are fine when boxes are the length key and some sample has one
    assert pack_collate([empty, full], length_key="boxes")["cu_seqlens"].tolist() == [0, 1, 1]
    # stacked keys carry no lengths, so a batch with only stacked arrays is never "empty"
    assert pack_collate([{"image": np.zeros((0, 2))}], stack_keys=("image",))["image"].shape \
        == (1, 0, 2)


def test_pack_collate_refuses_int32_overflow_before_concatenating():
    """2^31 rows in total would wrap the int32 cu_seqlens: refused from the lengths alone
    (broadcast views of 2^30 rows: nothing is allocated)."""
    half = np.broadcast_to(np.zeros((), np.float32), (2**30, 3))
    with pytest.raises(ValueError, match=r"pack_collate: 'coord': 2147483648 tokens do not fit "
                                         r"int32 cu_seqlens \(max 2147483647"):
        pack_collate([{"coord": half}, {"coord": half}])
    small = {"coord": np.zeros((1, 3), np.float32)}
    with pytest.raises(ValueError, match=r"'boxes': 2147483649 tokens do not fit"):
        pack_collate([{**small, "boxes": half}, {**small, "boxes": half},
                      {**small, "boxes": half[:1]}])


def test_pack_collate_rows_of_every_sample_are_checked():
    b = pack_collate([{"a": np.zeros((2, 1))}, {"a": [[1.0]]}])  # a list counts its rows
    assert b["cu_seqlens"].tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match=r"sample 1 'a' must be an array with rows like sample "
                                         r"0's, got ndarray \(\)"):
        pack_collate([{"a": np.zeros((2, 1))}, {"a": np.array(1.0)}])  # 0-d: no rows
