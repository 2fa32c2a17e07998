import pytest
import torch

from geossm.serialization import window_groups_multi
from geossm.tasks.detection.models import LION, LinearGroupLayer
from geossm.nn.packed_mixer import (bidirectional_indices, packed_bimamba,
                                                 segment_reversal)
from geossm.tasks.detection.sparse import SparseVoxels
from tests.sparse_samples import random_voxels


def test_segment_reversal_reads_every_segment_backwards():
    cu = torch.tensor([0, 3, 3, 4, 8], dtype=torch.int32)
    assert segment_reversal(cu, 8).tolist() == [2, 1, 0, 3, 7, 6, 5, 4]
    assert segment_reversal(torch.tensor([0], dtype=torch.int32), 0).numel() == 0


def test_bidirectional_indices_are_inverse_permutations():
    sp = random_voxels()
    sers = window_groups_multi(sp.indices, sp.spatial_shape, (4, 4, 2), 16)
    rev = segment_reversal(sers[0].cu_seqlens, sers[0].num_tokens)
    n = sers[0].num_tokens
    stacked = bidirectional_indices(torch.stack([s.order for s in sers]),
                                    torch.stack([s.inverse for s in sers]), rev)
    for k, ser in enumerate(sers):
        into, scatter, grad_gather, from_grad = bidirectional_indices(ser.order, ser.inverse, rev)
        for one, many in zip((into, scatter, grad_gather, from_grad), stacked):
            assert torch.equal(one, many[k])
        assert torch.equal(grad_gather[scatter], torch.arange(2 * n))
        assert torch.equal(into[from_grad], torch.arange(4 * n))
        assert torch.equal(grad_gather[0::2], 2 * ser.order)
        assert torch.equal(grad_gather[1::2], 2 * ser.order[rev] + 1)
        # (x|z, T, direction): row 4 * source + 2 * direction + (x|z) of the (4V, E) view
        assert torch.equal(into.view(2, n, 2)[1, :, 1], 4 * ser.order[rev] + 3)


@pytest.mark.parametrize("axis,shift,group", [("x", False, 16), ("y", True, 7), ("x", True, 1)])
@pytest.mark.parametrize("d_state,expand,conv_bias,recompute",
                         [(8, 1, True, False), (4, 2, False, True)])
def test_packed_layer_equals_the_two_mamba_calls(axis, shift, group, d_state, expand,
                                                 conv_bias, recompute):
    """Outputs and every gradient of the packed path match the mixer's own forward and
    reversed Mamba calls (float32: the paths differ in rounding only)."""
    torch.manual_seed(0)
    layer = LinearGroupLayer(8, (4, 4, 2), group, axis, shift, d_state=d_state,
                             expand=expand, conv_bias=conv_bias)
    layer.packed_recompute = recompute
    with torch.no_grad():   # distinct, non-trivial weights everywhere
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sp = random_voxels()
    results = []
    for packed in (False, True):
        layer.packed = packed
        assert (layer.packed_backend(sp.features) is not None) == packed
        x = sp.features.clone().requires_grad_()
        out = layer(sp.replace(x)).features
        weight = torch.randn_like(out, generator=torch.Generator().manual_seed(2))
        layer.zero_grad()
        (out * weight).sum().backward()
        grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
        results.append((out.detach(), x.grad, grads))
    (o0, x0, g0), (o1, x1, g1) = results
    torch.testing.assert_close(o1, o0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x1, x0, rtol=1e-4, atol=1e-5)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-5, msg=name)


def test_packed_path_is_skipped_where_it_does_not_apply():
    x = torch.randn(4, 8)
    assert LinearGroupLayer(8, (4, 4, 2), 16, "x", False).packed_backend(x) == "numba"
    assert LinearGroupLayer(8, (4, 4, 2), 16, "x", False, bidirectional=False
                            ).packed_backend(x) is None
    assert LinearGroupLayer(8, (4, 4, 2), 16, "x", False, mlp_ratio=2.0
                            ).packed_backend(x) is None
    assert LinearGroupLayer(8, (4, 4, 2), 16, "x", False, backend="torch"
                            ).packed_backend(x) is None
    assert LinearGroupLayer(8, (4, 4, 2), 16, "x", False, mixer="mamba2"
                            ).packed_backend(x) is None
    dropping = LinearGroupLayer(8, (4, 4, 2), 16, "x", False, drop_path=0.1)
    assert dropping.packed_backend(x) is None
    assert dropping.eval().packed_backend(x) == "numba"


def test_lion_packed_equals_unpacked():
    kwargs, inputs = LION.example()
    torch.manual_seed(0)
    model = LION(**kwargs)
    other = LION(**kwargs, packed_scan=False, packed_recompute=False).blocks[0].full[1]
    assert other.packed is False and other.packed_recompute is False
    outs = []
    for packed, recompute in ((False, True), (True, True), (True, False)):
        for m in model.modules():
            if isinstance(m, LinearGroupLayer):
                m.packed, m.packed_recompute = packed, recompute
        model.zero_grad()
        out = model(inputs["points"], inputs["cu_seqlens"])
        (out["heatmap"].sum() + out["reg"].square().sum()).backward()
        outs.append((out["heatmap"].detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(outs[1][1], outs[0][1]):
        # batch-normed convs after the Mamba layers amplify float rounding: relative to scale
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))
    # keeping the scan inputs instead of recomputing them: the same operations, the same bits
    assert torch.equal(outs[2][0], outs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(outs[2][1], outs[1][1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (triton kernels)")
def test_packed_layer_on_cuda_under_bf16_autocast_equals_the_two_mamba_calls():
    torch.manual_seed(0)
    layer = LinearGroupLayer(64, (13, 13, 4), 512, "y", True, d_state=16, expand=2).cuda()
    g = torch.Generator().manual_seed(1)
    idx = torch.unique(torch.stack([torch.randint(0, 2, (20000,), generator=g)] +
                                   [torch.randint(0, s, (20000,), generator=g)
                                    for s in (8, 100, 100)], 1), dim=0).cuda()
    sp = SparseVoxels(torch.randn(len(idx), 64, generator=g).cuda(), idx, (8, 100, 100), 2)
    results = []
    for packed in (False, True):
        layer.packed = packed
        assert (layer.packed_backend(sp.features) == "triton") == packed
        x = sp.features.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = layer(sp.replace(x)).features
        layer.zero_grad()
        out.square().sum().backward()
        results.append((out.detach(), x.grad, [p.grad.clone() for p in layer.parameters()]))
    (o0, x0, g0), (o1, x1, g1) = results
    # bf16 matmuls: the paths round differently; compare relative to each tensor's scale
    for a, b in [(o1, o0), (x1, x0), *zip(g1, g0)]:
        torch.testing.assert_close(a, b, rtol=5e-2, atol=2e-2 * float(b.abs().max()))


@pytest.mark.parametrize("autocast", [False, True])
def test_packed_layer_on_the_triton_backend_equals_the_two_mamba_calls(autocast):
    """The GPU kernels' path (G = 2 groups of B/C, 2E channels), run here in Triton's CPU
    interpreter (TRITON_INTERPRET=1, set by the test conftest without CUDA); with bf16
    autocast the paths round differently, so the comparison is relative to scale."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    layer = LinearGroupLayer(8, (4, 4, 2), 16, "y", True, d_state=4, expand=2,
                             backend="triton").to(device)
    sp = random_voxels(n=120)
    sp = SparseVoxels(sp.features.to(device), sp.indices.to(device), sp.spatial_shape,
                      sp.batch_size)
    results = []
    for packed in (False, True):
        layer.packed = packed
        assert (layer.packed_backend(sp.features) == "triton") == packed
        x = sp.features.clone().requires_grad_()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out = layer(sp.replace(x)).features
        layer.zero_grad()
        (out * torch.linspace(-1, 1, out.numel(), device=device).view_as(out)).sum().backward()
        results.append((out.detach(), x.grad, [p.grad.clone() for p in layer.parameters()]))
    (o0, x0, g0), (o1, x1, g1) = results
    for a, b in [(o1, o0), (x1, x0), *zip(g1, g0)]:
        if autocast:   # seen: 4e-3 of the scale at most
            torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-2 * float(b.abs().max()))
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_packed_bimamba_needs_stacked_weights():
    from geossm.nn import BiMamba

    with pytest.raises(ValueError, match="separate weights"):
        packed_bimamba(torch.zeros(3, 8), torch.ones(8), BiMamba(8), [], torch.zeros(2))


@pytest.mark.parametrize("recompute,most", [(True, 120), (False, 100)])
def test_packed_layer_step_dispatches_few_operators(recompute, most):
    """Operators of one packed layer's forward + backward (``benchmarks/step_ops.py``'s
    counter; each a launch's host time on the GPU): the weights are neither stacked in the
    forward (no ``cat``/``stack`` per pair) nor their gradients split or copied in the backward
    (no ``unbind``, one ``detach`` per parameter: autograd keeps every gradient as it is).
    Before the weights were stored stacked: 152 and 131 operators."""
    from geossm.tasks.detection.models import group_reversal
    from tests.benchmarks.conftest import load_benchmark

    step_ops = load_benchmark("step_ops")
    torch.manual_seed(0)
    layer = LinearGroupLayer(8, (4, 4, 2), 16, "x", False, d_state=4)
    layer.packed_recompute = recompute
    sp = random_voxels()
    ser = window_groups_multi(sp.indices, sp.spatial_shape, (4, 4, 2), 16)[0]
    indices = bidirectional_indices(ser.order, ser.inverse, group_reversal(sp, ser, 16))
    x = sp.features.clone().requires_grad_()
    counter = step_ops.OpCounter()
    with counter:
        layer(sp.replace(x), ser, indices).features.sum().backward()
    ops = counter.ops
    params = len(list(layer.parameters()))
    assert params == 10
    assert ops["cat"] <= 1 and ops["stack"] <= 1 and ops["unbind"] <= 2 - (not recompute)
    assert ops["detach"] == params + 1 and ops["new_empty_strided"] == 0   # + x's gradient
    assert sum(ops.values()) <= most, dict(ops)


@pytest.mark.parametrize("extra_tokens,extra_segments,backend",
                         [(0, 3, "numba"), (37, 1, "numba"), (64, 5, "numba"), (37, 2, "triton")])
def test_packed_layer_on_padded_serialization_equals_the_unpadded_one(extra_tokens,
                                                                      extra_segments, backend):
    """A layer run on a fixed size (pad tokens in a segment of their own, then empty segments)
    gives the real tokens' outputs, their gradients and every weight gradient of the unpadded
    run: the pad rows' zero features and dropped outputs send nothing back. The Triton case
    runs on CUDA where there is one, else in its CPU interpreter (TRITON_INTERPRET=1, set by
    the test conftest without CUDA)."""
    from geossm.nn.packed_mixer import padded_serialization
    from geossm.tasks.detection.models import group_reversal

    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    layer = LinearGroupLayer(8, (4, 4, 2), 16, "y", True, d_state=4, expand=2)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    layer = layer.to(device)
    sp = random_voxels()
    sp = SparseVoxels(sp.features.to(device), sp.indices.to(device), sp.spatial_shape,
                      sp.batch_size)
    ser = window_groups_multi(sp.indices, sp.spatial_shape, (4, 4, 2), 16)[0]
    rev = group_reversal(sp, ser, 16)
    v, s = ser.num_tokens, ser.cu_seqlens.numel() - 1
    block = layer.mixer
    weight = torch.linspace(-1, 1, v * 8, device=device).view(v, 8)
    results = []
    for pad in (False, True):
        order, inverse, reversal, cu = ser.order, ser.inverse, rev, ser.cu_seqlens
        x = sp.features.clone().requires_grad_()
        feats = x
        if pad:
            order, inverse, reversal, cu = padded_serialization(
                order, inverse, reversal, cu, v + extra_tokens,
                s + (extra_tokens > 0) + extra_segments)
            assert cu.numel() == s + (extra_tokens > 0) + extra_segments + 1
            feats = torch.cat([x, x.new_zeros(extra_tokens, 8)])
        indices = bidirectional_indices(order, inverse, reversal)
        out = packed_bimamba(feats, block.norm1.weight, block.mixer, indices, cu,
                             block.norm1.eps, backend)[:v]
        layer.zero_grad()
        (out * weight).sum().backward()
        results.append((out.detach(), x.grad, [p.grad.clone() for p in layer.parameters()]))
    (o0, x0, g0), (o1, x1, g1) = results
    for a, b in [(o1, o0), (x1, x0), *zip(g1, g0)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_padded_serialization_checks_the_size():
    from geossm.nn.packed_mixer import padded_serialization

    order = torch.arange(5)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    o, i, r, c = padded_serialization(order, order, torch.tensor([1, 0, 4, 3, 2]), cu, 8, 4)
    assert o.tolist() == [0, 1, 2, 3, 4, 5, 6, 7] and r.tolist()[5:] == [7, 6, 5]
    assert c.tolist() == [0, 2, 5, 8, 8] and c.dtype == torch.int32
    with pytest.raises(ValueError, match="do not fit"):
        padded_serialization(order, order, order, cu, 8, 2)   # no segment left for the pads
    with pytest.raises(ValueError, match="do not fit"):
        padded_serialization(order, order, order, cu, 4, 3)
