"""PointPrompts and CoordinateEncoding on packed input of mixed lengths."""

import pytest
import torch

from geossm.nn import BiMamba, CoordinateEncoding, PointPrompts

LENGTHS = [3, 0, 1, 6]
CU = torch.tensor([0] + LENGTHS).cumsum(0).to(torch.int32)
DIM = 8


def prompts():
    torch.manual_seed(0)
    return PointPrompts(num_orders=3, num_prompts=2, dim=DIM)


def test_insert_layout_and_strip():
    pp = prompts()
    x = torch.randn(CU[-1].item(), DIM)
    out = pp.insert(x, CU, order_index=1)
    assert out.x.shape == (10 + 4 * 4, DIM)
    assert out.cu_seqlens.tolist() == [0, 7, 11, 16, 26]
    assert out.cu_seqlens.dtype == torch.int32
    starts, ends = out.cu_seqlens[:-1].tolist(), out.cu_seqlens[1:].tolist()
    for s, (a, e) in enumerate(zip(starts, ends)):
        torch.testing.assert_close(out.x[a:a + 2], pp.prefix[1])
        torch.testing.assert_close(out.x[e - 2:e], pp.suffix[1])
        torch.testing.assert_close(out.x[a + 2:e - 2], x[CU[s]:CU[s + 1]])
    torch.testing.assert_close(pp.strip(out.x, out.positions), x)
    prefix, suffix = pp.tokens(2)
    assert prefix is not None and torch.equal(suffix, pp.suffix[2])


def test_with_bimamba_matches_each_sequence_and_trains_prompts():
    pp = prompts()
    torch.manual_seed(1)
    # Bidirectional, so the suffix (after every token) reaches the outputs too.
    m = BiMamba(DIM, d_state=4)
    x = torch.randn(CU[-1].item(), DIM)
    ins = pp.insert(x, CU, order_index=0)
    y = pp.strip(m(ins.x, ins.cu_seqlens), ins.positions)
    assert y.shape == x.shape
    for a, b in zip(CU[:-1].tolist(), CU[1:].tolist()):
        if b > a:
            alone = torch.cat([pp.prefix[0], x[a:b], pp.suffix[0]])
            torch.testing.assert_close(y[a:b], m(alone)[2:-2], atol=1e-5, rtol=1e-5)
    y.pow(2).sum().backward()
    assert pp.prefix.grad[0].abs().sum() > 0 and pp.suffix.grad[0].abs().sum() > 0
    assert pp.prefix.grad[1:].abs().sum() == 0  # other orders untouched


def test_prompt_errors():
    pp = prompts()
    x = torch.randn(10, DIM)
    with pytest.raises(ValueError, match=r"order_index must be an int in \[0, 3\), got 3"):
        pp.insert(x, CU, order_index=3)
    with pytest.raises(ValueError, match=r"x must have shape \(T, 8\), got \(10, 4\)"):
        pp.insert(x[:, :4], CU, 0)
    with pytest.raises(ValueError, match="cu_seqlens: expected dtype torch.int32"):
        pp.insert(x, CU.long(), 0)
    with pytest.raises(ValueError, match="num_prompts must be a positive int, got 0"):
        PointPrompts(2, 0, DIM)


def test_coordinate_encoding():
    torch.manual_seed(3)
    enc = CoordinateEncoding(in_dim=3, dim=DIM)
    x, coord = torch.randn(10, DIM), torch.randn(10, 3)
    y = enc(x, coord)
    torch.testing.assert_close(y, x + coord @ enc.proj.weight.T + enc.proj.bias)
    y.sum().backward()
    assert enc.proj.weight.grad.abs().sum() > 0 and enc.proj.bias.grad.abs().sum() > 0
    assert CoordinateEncoding(3, 16).proj.out_features == 16
    assert enc(x.bfloat16(), coord).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"coord must have shape \(10, 3\)"):
        enc(x, coord[:, :2])
    with pytest.raises(TypeError, match="needs the feature width"):
        CoordinateEncoding()
