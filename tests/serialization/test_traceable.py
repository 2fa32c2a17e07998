"""The serialization custom ops: the same results as the eager functions, and the functions
trace under ``torch.export`` through them (shapes that follow the input's)."""

import pytest
import torch

from geossm.serialization import (fit_depth, grid_coordinates, pool_grid, sample_depths,
                                  serialize_grid)
from geossm.serialization.events import serialize_events
from geossm.serialization.traceable import (grid_coordinates_op, grid_pooling_op,
                                            serialize_events_op, serialize_grid_op, tracing)


def _cloud(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    coord = torch.rand(sum(lengths), 3, generator=g) * 3
    batch = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return coord, batch


def test_not_tracing_in_eager():
    assert tracing() is False


@pytest.mark.parametrize("order", ["hilbert", "z", "xzy"])
def test_ops_equal_the_eager_functions(order):
    coord, batch = _cloud((30, 0, 45), 0)
    grid = grid_coordinates(coord, 0.25)
    assert torch.equal(grid_coordinates_op(coord, 0.25), grid)
    ser = serialize_grid(grid, order, batch, None, 3)
    for got, want in zip(serialize_grid_op(grid, batch, order, None, 3),
                         (ser.order, ser.inverse, ser.cu_seqlens)):
        assert torch.equal(got, want)
    pooled = pool_grid(grid, batch, fit_depth(grid), 1, 3)
    got = grid_pooling_op(grid, batch, None, 1, 3)
    want = (pooled.cluster, pooled.counts, pooled.code, pooled.grid_coord, pooled.batch,
            pooled.head, pooled.serialization.cu_seqlens)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("order", ["hilbert", "xzy"])
def test_ops_with_per_sample_depths_equal_the_eager_functions(order):
    coord, batch = _cloud((30, 0, 45), 0)
    coord[batch == 2] *= 8  # a deeper grid for sample 2
    grid = grid_coordinates(coord, 0.25)
    depths = sample_depths(grid, batch, 3)
    assert depths.tolist() == [4, 1, 7]
    ser = serialize_grid(grid, order, batch, depths, 3)
    for got, want in zip(serialize_grid_op(grid, batch, order, None, 3, depths),
                         (ser.order, ser.inverse, ser.cu_seqlens)):
        assert torch.equal(got, want)
    pooled = pool_grid(grid, batch, depths, 3, 3)
    got = grid_pooling_op(grid, batch, None, 3, 3, depths)
    want = (pooled.cluster, pooled.counts, pooled.code, pooled.grid_coord, pooled.batch,
            pooled.head, pooled.serialization.cu_seqlens)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


class _PerSample(torch.nn.Module):
    """Serialize along hilbert and pool twice with per-sample depths (as ``PCMEncoder``)."""

    def forward(self, coord, feat, batch, num_samples_like):
        s = num_samples_like.shape[0]
        grid = grid_coordinates(coord, 0.2)
        depths = sample_depths(grid, batch, s)
        ser = serialize_grid(grid, "hilbert", batch, depths, s)
        x = feat.index_select(0, ser.order).cumsum(0).index_select(0, ser.inverse)
        pooling = pool_grid(grid, batch, depths, 2, s)
        ser2 = serialize_grid(pooling.grid_coord, "hilbert", pooling.batch, pooling.depth, s)
        y = pooling.pool(x, "max")
        y = y.index_select(0, ser2.order).cumsum(0).index_select(0, ser2.inverse)
        coarse = pool_grid(pooling.grid_coord, pooling.batch, pooling.depth, 3, s)
        return x + pooling.unpool(y + coarse.unpool(coarse.pool(y))), coarse.depth


def test_per_sample_depths_export_and_match_eager_on_other_inputs():
    module = _PerSample()
    coord, batch = _cloud((40, 25), 2)
    feat = torch.randn(coord.shape[0], 4)
    dims = {"coord": {0: torch.export.Dim.AUTO}, "feat": {0: torch.export.Dim.AUTO},
            "batch": {0: torch.export.Dim.AUTO}, "num_samples_like": {0: torch.export.Dim.AUTO}}
    program = torch.export.export(module, (coord, feat, batch, torch.zeros(2)),
                                  dynamic_shapes=dims)
    coord, batch = _cloud((70, 0, 9, 1), 3)
    coord[batch == 0] *= 10
    feat = torch.randn(coord.shape[0], 4)
    want = module(coord, feat, batch, torch.zeros(4))
    got = program.module()(coord, feat, batch, torch.zeros(4))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_serialize_events_op_equals_the_function():
    g = torch.Generator().manual_seed(1)
    cols = {"x": torch.randint(0, 8, (50,), generator=g), "y": torch.randint(0, 6, (50,), generator=g),
            "t": torch.randint(0, 10_000, (50,), generator=g), "p": torch.randint(0, 2, (50,), generator=g)}
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([20, 30]))
    ser = serialize_events(cols, (8, 6, 2), 1e-3, "hilbert", batch)
    got = serialize_events_op(cols["x"], cols["y"], cols["t"], cols["p"], batch, [8, 6, 2], 1e-3,
                              "hilbert", None)
    for a, b in zip(got, (ser.order, ser.inverse, ser.cu_seqlens)):
        assert torch.equal(a, b)


class _SerializeAndPool(torch.nn.Module):
    """Quantise, serialize along hilbert, pool twice along z, and use every result: the
    serialization steps a point model runs inside its forward."""

    def forward(self, coord, feat, batch, num_samples_like):
        s = num_samples_like.shape[0]
        grid = grid_coordinates(coord, 0.2)
        ser = serialize_grid(grid, "hilbert", batch, None, s)
        x = feat.index_select(0, ser.order).cumsum(0).index_select(0, ser.inverse)
        pooling = pool_grid(grid, batch, None, 1, s)
        y = pooling.pool(x, "max")
        coarse = pool_grid(pooling.grid_coord, pooling.batch, pooling.depth, 1, s)
        z = coarse.pool(y, "mean")
        ser2 = serialize_grid(pooling.grid_coord, "z", pooling.batch, pooling.depth, s)
        y = y.index_select(0, ser2.order).cumsum(0).index_select(0, ser2.inverse)
        return x + pooling.unpool(y + coarse.unpool(z)), ser.cu_seqlens


def test_serialization_steps_export_and_match_eager_on_other_inputs():
    module = _SerializeAndPool()
    coord, batch = _cloud((40, 25), 2)
    feat = torch.randn(coord.shape[0], 4)
    dims = {"coord": {0: torch.export.Dim.AUTO}, "feat": {0: torch.export.Dim.AUTO},
            "batch": {0: torch.export.Dim.AUTO}, "num_samples_like": {0: torch.export.Dim.AUTO}}
    program = torch.export.export(module, (coord, feat, batch, torch.zeros(2)),
                                  dynamic_shapes=dims)
    targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert {torch.ops.geossm.grid_coordinates.default, torch.ops.geossm.serialize_grid.default,
            torch.ops.geossm.grid_pooling.default} <= targets
    # Another number of points and of samples (one empty), and a larger extent (deeper grid).
    coord, batch = _cloud((70, 0, 9), 3)
    coord = coord * torch.tensor([4.0, 1.0, 2.0])
    feat = torch.randn(coord.shape[0], 4)
    want = module(coord, feat, batch, torch.zeros(3))
    got = program.module()(coord, feat, batch, torch.zeros(3))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
