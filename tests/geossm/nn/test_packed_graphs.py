"""``PackedGraphs``: packed BiMamba layers on padded sizes, as CUDA graphs on the GPU; on the CPU
the same padded buffers run eagerly (``capture=False``) and must equal ``packed_bimamba``."""
from pathlib import Path

import pytest
import torch

from geossm.nn.packed_graphs import PackedGraphs, padded_size
from geossm.nn.packed_mixer import bidirectional_indices, packed_bimamba
from geossm.serialization import window_groups_multi
from geossm.tasks.detection.models import LinearGroupLayer, group_reversal
from geossm.tasks.detection.sparse import SparseVoxels
from tests.sparse_samples import random_voxels

REPO = Path(__file__).resolve().parents[3]


def test_padded_size_steps():
    assert padded_size(1) == 64 and padded_size(64) == 64 and padded_size(65) == 72
    for n in (100, 1000, 4097, 150_001, 2 ** 20 + 1):
        p = padded_size(n)
        assert n <= p <= n * 1.125 + 1
    assert [padded_size(n, 2, least=8) for n in (1, 9, 13, 17)] == [8, 12, 16, 24]


def _run(layer, sp, graphs, backend, autocast, device):
    ser = window_groups_multi(sp.indices, sp.spatial_shape, (4, 4, 2), 16,
                              [(layer.axis, layer.shift)])[0]
    rev = group_reversal(sp, ser, 16)
    block = layer.mixer
    x = sp.features.clone().requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        if graphs is None:
            out = packed_bimamba(x, block.norm1.weight, block.mixer,
                                 bidirectional_indices(ser.order, ser.inverse, rev),
                                 ser.cu_seqlens, block.norm1.eps, backend)
        else:
            out = graphs(x, block.norm1.weight, block.mixer, ser.order, ser.inverse, rev,
                         ser.cu_seqlens, block.norm1.eps, backend)
    layer.zero_grad()
    weight = torch.linspace(-1, 1, out.numel(), device=device).view_as(out)
    (out.float() * weight).sum().backward()
    return [out.detach(), x.grad] + [p.grad.clone() for p in layer.parameters()]


def _compare(layers, voxel_sets, graphs, backend, autocast, device):
    for layer in layers:
        for sp in voxel_sets:
            ref = _run(layer, sp, None, backend, autocast, device)
            got = _run(layer, sp, graphs, backend, autocast, device)
            for a, b in zip(got, ref):
                if autocast:
                    torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-2 * float(b.abs().max()))
                else:
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _layers(device, backend="numba"):
    torch.manual_seed(0)
    layers = [LinearGroupLayer(8, (4, 4, 2), 16, "x", False, d_state=4, expand=2,
                               backend=backend),
              LinearGroupLayer(8, (4, 4, 2), 16, "y", True, d_state=4, expand=2,
                               conv_bias=False, backend=backend),
              LinearGroupLayer(8, (4, 4, 2), 16, "y", True, d_state=4, expand=2,
                               backend=backend)]
    with torch.no_grad():
        for layer in layers:
            for p in layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return [layer.to(device) for layer in layers]


def test_padded_eager_path_equals_packed_bimamba():
    """Three layers (one without conv bias) share the buffers of each size; voxel sets of
    different counts fall into one size and into different ones; the results of one call
    never leak into the next."""
    graphs = PackedGraphs(capture=False)
    sets = [random_voxels(n, seed=seed) for n, seed in ((300, 1), (280, 2), (120, 3))]
    _compare(_layers("cpu"), sets, graphs, "numba", False, "cpu")
    assert graphs.stats["padded_eager"] == 9 and graphs.stats["replayed"] == 0
    assert 2 <= len(graphs.sizes) <= 6       # sizes by voxel count x weight layout


def test_past_max_sizes_runs_unpadded():
    graphs = PackedGraphs(capture=False, max_sizes=1)
    sets = [random_voxels(300, seed=1), random_voxels(120, seed=3)]
    with pytest.warns(UserWarning, match="run eagerly"):
        _compare(_layers("cpu")[:1], sets, graphs, "numba", False, "cpu")
    assert graphs.stats["eager"] == 1 and len(graphs.sizes) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CUDA graphs)")
@pytest.mark.parametrize("autocast", [False, True])
def test_graphs_on_cuda_equal_packed_bimamba(autocast):
    """Recorded once per size and weight layout, replayed for every later call: the same
    results as ``packed_bimamba`` (float32: rounding only; bf16 autocast: relative to scale).
    The second case records into a new instance after the first one's graphs are gone (a
    pool shared across instances broke there)."""
    graphs = PackedGraphs()
    sets = []
    for n, seed in ((300, 1), (280, 2), (120, 3)):
        sp = random_voxels(n, seed=seed)
        sets.append(SparseVoxels(sp.features.cuda(), sp.indices.cuda(), sp.spatial_shape,
                                 sp.batch_size))
    layers = _layers("cuda", backend="triton")
    _compare(layers, sets, graphs, "triton", autocast, "cuda")
    _compare(layers, sets[::-1], graphs, "triton", autocast, "cuda")   # replays only
    assert graphs.stats["captured"] == len(graphs.sizes)
    assert graphs.stats["replayed"] == 18


def test_lion_graph_layers_equal_the_packed_path():
    """``LION(graph_layers="padded")``: every group layer goes through the model's
    ``PackedGraphs``, its padded buffers run eagerly (on CUDA ``True`` replays them as graphs),
    with the packed path's results; the stacked gathers of ``run_level`` are then not built."""
    from geossm.tasks.detection.models import LION

    kwargs, inputs = LION.example()
    results = []
    for graph_layers in (False, "padded"):
        torch.manual_seed(0)
        model = LION(**kwargs, graph_layers=graph_layers)
        if graph_layers:
            assert not model.layer_graphs.capture
            layers = [m for m in model.modules() if isinstance(m, LinearGroupLayer)]
            assert layers and all(m.graphs is model.layer_graphs for m in layers)
        out = model(inputs["points"], inputs["cu_seqlens"])
        (out["heatmap"].sum() + out["reg"].square().sum()).backward()
        results.append((out["heatmap"].detach(), [p.grad.clone() for p in model.parameters()]))
    assert model.layer_graphs.stats["padded_eager"] == len(layers)
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))


def test_lion_graph_layers_on_cpu_take_the_plain_path():
    """``graph_layers=True`` (``kitti_lion.yaml``'s default) records graphs on CUDA only: on the
    CPU every group layer runs the plain packed path, so outputs and gradients are bitwise
    those of ``graph_layers=False`` and the graphs see no call."""
    from geossm.tasks.detection.models import LION

    kwargs, inputs = LION.example()
    results = []
    for graph_layers in (False, True):
        torch.manual_seed(0)
        model = LION(**kwargs, graph_layers=graph_layers)
        out = model(inputs["points"], inputs["cu_seqlens"])
        (out["heatmap"].sum() + out["reg"].square().sum()).backward()
        results.append([out["heatmap"].detach(), out["reg"].detach(),
                        *(p.grad.clone() for p in model.parameters())])
    assert model.layer_graphs.capture and not any(model.layer_graphs.stats.values())
    assert not model.layer_graphs.sizes
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_lion_graph_layers_rejects_unknown_values():
    from geossm.tasks.detection.models import LION

    with pytest.raises(ValueError, match="graph_layers"):
        LION(**LION.example()[0], graph_layers="yes")


def test_graph_layers_override_takes_a_bool_or_padded():
    from geossm.config import apply_overrides, load_config

    cfg = load_config(REPO / "configs" / "detection" / "kitti_lion.yaml")
    assert cfg.model.graph_layers is True
    assert apply_overrides(cfg, ["model.graph_layers=padded"]).model.graph_layers == "padded"
    assert apply_overrides(cfg, ["model.graph_layers=false"]).model.graph_layers is False


def test_recorded_passes_have_no_host_sync():
    """What a CUDA graph needs of the two passes once a size is warm: no host read (the
    kernels' ``cu_seqlens`` check ran in the warm-up, the launch plan reads shapes only). The
    Triton path runs on CUDA where there is one, else in its CPU interpreter (the host code
    the GPU runs)."""
    from tests.benchmarks.conftest import load_benchmark

    device = "cuda" if torch.cuda.is_available() else "cpu"
    step_ops = load_benchmark("step_ops")
    layer = _layers(device, backend="triton")[0]
    sp = random_voxels(120, seed=3)
    sp = SparseVoxels(sp.features.to(device), sp.indices.to(device), sp.spatial_shape,
                      sp.batch_size)
    graphs = PackedGraphs(capture=False)
    _run(layer, sp, graphs, "triton", False, device)          # warm-up: the size's first call
    (size,) = graphs.sizes.values()
    counter = step_ops.OpCounter()
    with counter:
        size.forward_pass()
        size.backward_pass()
    assert dict(counter.syncs) == {}
