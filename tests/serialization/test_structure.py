import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geossm.serialization import Serialization, apply, insert_tokens, undo


def _valid(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n)
    cu = torch.tensor([0, 2, n], dtype=torch.int32)
    return order, inverse, cu


def test_valid_construction_and_properties():
    order, inverse, cu = _valid()
    s = Serialization(order, inverse, cu, {"code": torch.arange(5)})
    assert s.num_tokens == 5 and s.num_segments == 2
    assert s.seqlens.tolist() == [2, 3]
    assert s.segment_ids().tolist() == [0, 0, 1, 1, 1]
    x = torch.randn(5, 3)
    assert torch.equal(s.undo(s.apply(x)), x)
    assert torch.equal(s.apply(x), x[order])
    assert torch.equal(apply(x.T, s, dim=1), x[order].T)
    assert torch.equal(undo(x.T, s, dim=-1), x[inverse].T)
    t = s.to("cpu")
    assert torch.equal(t.order, order) and "code" in t.extras


def test_frozen_and_readonly_extras():
    s = Serialization(*_valid(), {"code": torch.arange(5)})
    with pytest.raises(Exception):
        s.order = torch.arange(5)
    with pytest.raises(TypeError):
        s.extras["new"] = torch.zeros(1)


def test_from_order_computes_inverse():
    order, inverse, cu = _valid(7, seed=3)
    cu = torch.tensor([0, 7], dtype=torch.int32)
    s = Serialization.from_order(order, cu, group_id=torch.zeros(7))
    assert torch.equal(s.inverse, inverse)
    assert "group_id" in s.extras


def test_empty_serialization():
    s = Serialization(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                      torch.zeros(1, dtype=torch.int32))
    assert s.num_tokens == 0 and s.num_segments == 0


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda o, i, c: (o.float(), i, c), ValueError, r"order: expected dtype torch.int64.*float32"),
    (lambda o, i, c: (o, i.int(), c), ValueError, r"inverse: expected dtype torch.int64.*int32"),
    (lambda o, i, c: (o.tolist(), i, c), TypeError, r"order: expected a torch.Tensor, got list"),
    (lambda o, i, c: (o[None], i, c), ValueError, r"order: expected a 1-D tensor, got shape \(1, 5\)"),
    (lambda o, i, c: (o, i[:4], c), ValueError, r"inverse: expected shape \(5,\) like order, got \(4,\)"),
    (lambda o, i, c: (o, i, c.long()), ValueError, r"cu_seqlens: expected dtype torch.int32, got torch.int64"),
    (lambda o, i, c: (o, i, c + 1), ValueError, r"cu_seqlens: expected a leading 0, got cu_seqlens\[0\] = 1"),
    (lambda o, i, c: (o, i, torch.tensor([0, 4, 3, 5], dtype=torch.int32)), ValueError,
     r"non-decreasing.*cu_seqlens\[1\] = 4 > cu_seqlens\[2\] = 3"),
    (lambda o, i, c: (o, i, torch.tensor([0, 4], dtype=torch.int32)), ValueError,
     r"cu_seqlens: expected the last value to be N = 5, got 4"),
    (lambda o, i, c: (o, i, torch.zeros(0, dtype=torch.int32)), ValueError, r"cu_seqlens: expected shape \(S\+1,\)"),
    (lambda o, i, c: (o + 1, i, c), ValueError, r"order: expected indices in \[0, 5\), got values in \[1, 5\]"),
    (lambda o, i, c: (o, i.flip(0), c), ValueError, r"order/inverse: expected a permutation"),
    (lambda o, i, c: (torch.zeros(5, dtype=torch.long), i, c), ValueError, r"order/inverse: expected a permutation"),
])
def test_validation_errors(mutate, exc, match):
    with pytest.raises(exc, match=match):
        Serialization(*mutate(*_valid()))


def test_extras_validation():
    with pytest.raises(TypeError, match=r"extras\['code'\]: expected a torch.Tensor, got list"):
        Serialization(*_valid(), {"code": [1, 2]})
    with pytest.raises(TypeError, match=r"extras: expected string keys, got 3"):
        Serialization(*_valid(), {3: torch.zeros(1)})
    with pytest.raises(TypeError, match=r"extras: expected a mapping"):
        Serialization(*_valid(), [torch.zeros(1)])


def test_apply_undo_errors():
    s = Serialization(*_valid())
    with pytest.raises(ValueError, match=r"x: expected size 5 \(the serialization's N\) along dim 0, got shape \(4, 2\)"):
        s.apply(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"y: expected size 5"):
        s.undo(torch.zeros(3))
    with pytest.raises(TypeError, match=r"x: expected a torch.Tensor, got list"):
        s.apply([1, 2, 3, 4, 5])


def _insert_reference(x, cu, prefix, suffix):
    parts, new_cu, keep = [], [0], []
    pos = 0
    for s in range(len(cu) - 1):
        seg = x[cu[s]:cu[s + 1]]
        parts += [prefix, seg, suffix]
        pos += prefix.shape[0]
        keep += list(range(pos, pos + seg.shape[0]))
        pos += seg.shape[0] + suffix.shape[0]
        new_cu.append(pos)
    return (torch.cat(parts) if parts else x.new_zeros((0, *x.shape[1:]))), new_cu, keep


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=0, max_size=5), st.integers(0, 3), st.integers(0, 2))
def test_insert_tokens_matches_reference(lengths, p, q):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    x = torch.randn(int(cu[-1]), 4)
    prefix = torch.randn(p, 4)
    suffix = torch.randn(q, 4)
    out = insert_tokens(x, cu, prefix if p else None, suffix if q else None)
    ref, ref_cu, ref_keep = _insert_reference(x, cu.tolist(), prefix, suffix)
    assert torch.equal(out.x, ref)
    assert out.cu_seqlens.dtype == torch.int32 and out.cu_seqlens.tolist() == ref_cu
    assert out.keep.tolist() == ref_keep
    assert torch.equal(out.x[out.keep], x)
    assert out.prefix_index.shape == (len(lengths), p) and out.suffix_index.shape == (len(lengths), q)
    if p and lengths:
        assert torch.equal(out.x[out.prefix_index], prefix.expand(len(lengths), p, 4))
    if q and lengths:
        assert torch.equal(out.x[out.suffix_index], suffix.expand(len(lengths), q, 4))


def test_insert_tokens_single_token_and_gradients():
    cu = torch.tensor([0, 2, 2, 5], dtype=torch.int32)
    x = torch.randn(5, 3, requires_grad=True)
    prompt = torch.randn(3, requires_grad=True)
    out = insert_tokens(x, cu, prefix=prompt, suffix=prompt)
    assert out.x.shape == (11, 3)
    assert out.cu_seqlens.tolist() == [0, 4, 6, 11]
    out.x.sum().backward()
    # the same prompt appears twice in each of the 3 segments
    assert torch.allclose(prompt.grad, torch.full((3,), 6.0))
    assert torch.allclose(x.grad, torch.ones(5, 3))


def test_insert_tokens_errors():
    cu = torch.tensor([0, 2], dtype=torch.int32)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"prefix: expected shape \(P, 3\) or \(3\).*got \(2, 4\)"):
        insert_tokens(x, cu, prefix=torch.zeros(2, 4))
    with pytest.raises(TypeError, match=r"suffix: expected dtype torch.float32 \(that of x\), got torch.float64"):
        insert_tokens(x, cu, suffix=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"cu_seqlens: expected dtype torch.int32, got torch.int64"):
        insert_tokens(x, cu.long())
    with pytest.raises(TypeError, match=r"prefix: expected a torch.Tensor, got list"):
        insert_tokens(x, cu, prefix=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"x: expected a packed \(T, \*F\) tensor, got a 0-D tensor"):
        insert_tokens(torch.tensor(1.0), cu)


def test_equality_is_identity():
    s = Serialization(*_valid())
    t = Serialization(s.order, s.inverse, s.cu_seqlens)
    assert s == s and s != t


# ------------------------------------------------------------------ int32 overflow is refused

def _expanded(n, *rest, dtype=torch.long):
    """A tensor of ``n`` rows that owns one element (stride 0): checks run, no memory is used."""
    return torch.zeros((), dtype=dtype).expand(n, *rest)


def test_insert_tokens_refuses_a_result_of_2_31_tokens():
    t = 2**31 - 2  # fits; two inserted tokens (one segment) make 2^31
    x = _expanded(t, 1, dtype=torch.float32)
    cu = torch.tensor([0, t], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"insert_tokens: 2147483648 tokens do not fit int32"):
        insert_tokens(x, cu, prefix=torch.zeros(1), suffix=torch.zeros(1))


@pytest.mark.parametrize("order", ["xyz", "yxz", "hilbert"])
@pytest.mark.parametrize("times", [1, 3])
def test_repeat_equals_serializing_the_batch_of_copies(order, times):
    from geossm.serialization.points import serialize_grid
    g = torch.Generator().manual_seed(0)
    cells = torch.randint(0, 6, (10, 3), generator=g)
    one = serialize_grid(cells, order)
    batch = torch.arange(times).repeat_interleave(10)
    expected = serialize_grid(cells.repeat(times, 1), order, batch, num_samples=times)
    got = one.repeat(times)
    assert torch.equal(got.order, expected.order) and torch.equal(got.inverse, expected.inverse)
    assert torch.equal(got.cu_seqlens, expected.cu_seqlens)
    assert got.cu_seqlens.dtype == expected.cu_seqlens.dtype
    Serialization(got.order, got.inverse, got.cu_seqlens)  # valid by the checked constructor
