"""``geossm::knn``: the eager ``knn`` behind a custom op, and ``knn`` tracing through it."""

import pytest
import torch

from geossm.packed import cu_seqlens_from_lengths
from geossm.tasks.segmentation.models import knn
from geossm.tasks.segmentation.traceable import knn_op


@pytest.mark.parametrize("method", ["brute", "kdtree"])
def test_knn_op_equals_knn(method):
    coord = torch.rand(70, 3, generator=torch.Generator().manual_seed(0))
    cu = cu_seqlens_from_lengths([50, 5, 15])  # one sample smaller than k (padded)
    assert torch.equal(knn_op(coord, cu, 8, 2 ** 10, method), knn(coord, cu, 8, 2 ** 10, method))


class _Neighbours(torch.nn.Module):
    def forward(self, coord, cu_seqlens):
        idx = knn(coord, cu_seqlens, 4)
        return coord[idx].mean(1)


def test_knn_exports_with_symbolic_points_and_samples():
    coord = torch.rand(30, 3, generator=torch.Generator().manual_seed(1))
    cu = cu_seqlens_from_lengths([10, 20])
    program = torch.export.export(_Neighbours(), (coord, cu), dynamic_shapes=(
        {0: torch.export.Dim.AUTO}, {0: torch.export.Dim.AUTO}))
    # knn runs under no_grad: its node sits in a submodule of the graph
    targets = {n.target for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)
               for n in m.graph.nodes}
    assert torch.ops.geossm.knn.default in targets
    other = torch.rand(41, 3, generator=torch.Generator().manual_seed(2))
    other_cu = cu_seqlens_from_lengths([3, 30, 8])
    torch.testing.assert_close(program.module()(other, other_cu), _Neighbours()(other, other_cu))
