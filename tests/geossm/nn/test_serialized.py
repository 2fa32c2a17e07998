"""SerializedBlock over a random serialization with mixed segment lengths."""

import pytest
import torch

from geossm.nn import BiMamba, Mamba, SerializedBlock
from geossm.serialization import Serialization, insert_tokens

LENGTHS = [4, 0, 1, 8, 3]
DIM = 8


def make_serialization(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    order = torch.randperm(n, generator=g)
    cu = torch.tensor([0] + list(lengths)).cumsum(0).to(torch.int32)
    return Serialization.from_order(order, cu)


def block(**kw):
    torch.manual_seed(0)
    kw.setdefault("d_state", 4)
    return SerializedBlock(DIM, **kw)


@pytest.fixture
def data():
    torch.manual_seed(1)
    ser = make_serialization()
    return torch.randn(ser.num_tokens, DIM), ser


def test_matches_formula(data):
    x, ser = data
    b = block()
    h = x + b.mixer(b.norm1(x)[ser.order], ser.cu_seqlens)[ser.inverse]
    expected = h + b.mlp(b.norm2(h))
    torch.testing.assert_close(b(x, ser), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(b.mixer, BiMamba)


def test_each_segment_alone(data):
    x, ser = data
    b = block()
    y = b(x, ser)
    cu = ser.cu_seqlens.tolist()
    for a, e in zip(cu[:-1], cu[1:]):
        if e == a:
            continue
        src = ser.order[a:e]
        n = e - a
        alone = Serialization(torch.arange(n), torch.arange(n),
                              torch.tensor([0, n], dtype=torch.int32))
        torch.testing.assert_close(y[src], b(x[src], alone), atol=1e-5, rtol=1e-5)


def test_gradient_reaches_every_parameter(data):
    x, ser = data
    x = x.clone().requires_grad_(True)
    b = block(drop_path=0.2, bias=True)
    b.train()
    torch.manual_seed(5)  # draws that keep at least one segment in both branches
    b(x, ser).pow(2).sum().backward()
    for name, p in b.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_unidirectional_without_mlp(data):
    x, ser = data
    b = block(bidirectional=False, mlp_ratio=0)
    assert isinstance(b.mixer, Mamba) and b.mlp is None and b.norm2 is None
    expected = x + b.mixer(b.norm1(x)[ser.order], ser.cu_seqlens)[ser.inverse]
    torch.testing.assert_close(b(x, ser), expected, atol=1e-5, rtol=1e-5)


def test_drop_path_is_per_segment_and_off_in_eval(data):
    x, ser = data
    b = block(drop_path=0.5, mlp_ratio=0)
    b.eval()
    torch.testing.assert_close(b(x, ser), block(mlp_ratio=0)(x, ser))
    b.train()
    branch = b.mixer(b.norm1(x)[ser.order], ser.cu_seqlens)
    torch.manual_seed(7)
    out = b(x, ser)[ser.order] - x[ser.order]
    cu = ser.cu_seqlens.tolist()
    for a, e in zip(cu[:-1], cu[1:]):
        if e > a:
            dropped = torch.allclose(out[a:e], torch.zeros_like(out[a:e]))
            scaled = torch.allclose(out[a:e], 2 * branch[a:e], atol=1e-5)
            assert dropped != scaled


def test_prompts_inserted_for_the_mixer_and_stripped(data):
    x, ser = data
    b = block(mlp_ratio=0)
    prefix, suffix = torch.randn(2, DIM), torch.randn(2, DIM)
    ins = insert_tokens(b.norm1(x)[ser.order], ser.cu_seqlens, prefix=prefix, suffix=suffix)
    expected = x + b.mixer(ins.x, ins.cu_seqlens)[ins.keep][ser.inverse]
    out = b(x, ser, prompts=(prefix, suffix))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, b(x, ser))
    only_prefix = b(x, ser, prompts=(prefix, None))
    assert only_prefix.shape == x.shape


def test_errors(data):
    x, ser = data
    b = block()
    with pytest.raises(TypeError, match="serialization must be a geossm.serialization"):
        b(x, (ser.order, ser.cu_seqlens))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 8\), got \(16, 4\)"):
        b(x[:, :4], ser)
    with pytest.raises(ValueError, match="one row per serialized item: N=16 rows, got 15"):
        b(x[:15], ser)
    with pytest.raises(TypeError, match="prompts must be a \\(prefix, suffix\\) pair"):
        b(x, ser, prompts=torch.zeros(2, DIM))
    with pytest.raises(ValueError, match="mlp_ratio must be a number >= 0"):
        SerializedBlock(DIM, mlp_ratio=-1)
    with pytest.raises(ValueError, match="p must be a float in \\[0, 1\\)"):
        SerializedBlock(DIM, drop_path=1.0)


def _saved_bytes_and_grads(b, x, ser, prompts=None):
    """Bytes of the tensors autograd keeps for backward, and every gradient after backward."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = b(x, ser, prompts)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    grads = [x.grad] + [p.grad for p in b.parameters()]
    return sum(saved.values()), y.detach(), grads


def test_grad_checkpoint_same_outputs_and_gradients_less_memory():
    torch.manual_seed(1)
    ser = make_serialization([40, 0, 25, 60])
    x = torch.randn(ser.num_tokens, DIM)
    prompts = (torch.randn(2, DIM), torch.randn(1, DIM))
    plain, ckpt = block(drop_path=0.5).train(), block(drop_path=0.5, grad_checkpoint=True).train()
    torch.manual_seed(7)  # the same drop-path masks: checkpointing must replay them in backward
    bytes_plain, y_plain, g_plain = _saved_bytes_and_grads(plain, x, ser, prompts)
    torch.manual_seed(7)
    bytes_ckpt, y_ckpt, g_ckpt = _saved_bytes_and_grads(ckpt, x, ser, prompts)
    torch.testing.assert_close(y_ckpt, y_plain)
    for a, b in zip(g_ckpt, g_plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # Only the block's input stays alive for backward (the outer hook sees none of the inner
    # activations); without checkpointing every intermediate of the mixer and MLP does.
    assert bytes_ckpt * 10 < bytes_plain, (bytes_ckpt, bytes_plain)


def test_grad_checkpoint_inactive_in_eval_and_without_grad(data):
    x, ser = data
    b = block(grad_checkpoint=True).eval()
    torch.testing.assert_close(b(x, ser), block()(x, ser))
    with torch.no_grad():
        torch.testing.assert_close(b.train()(x, ser), block().train()(x, ser))
