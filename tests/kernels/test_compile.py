"""A module that calls both ops compiles with ``torch.compile(fullgraph=True)`` (no graph break)."""

from __future__ import annotations

import pytest
import torch

from geossm.kernels import causal_conv1d, selective_scan

from .conftest import device_under_test, fast_backends


class ConvScan(torch.nn.Module):
    """causal_conv1d followed by selective_scan over packed segments."""

    def __init__(self, channels=8, state=4, backend=None):
        super().__init__()
        self.backend = backend
        self.conv = torch.nn.Parameter(torch.randn(channels, 4) * 0.3)
        self.A_log = torch.nn.Parameter(torch.rand(channels, state).log())
        self.proj = torch.nn.Linear(channels, 1 + 2 * state)
        self.state = state

    def forward(self, x, cu_seqlens):
        h = causal_conv1d(x, self.conv, cu_seqlens=cu_seqlens, activation="silu",
                          backend=self.backend)
        dt, B, C = self.proj(h).split([1, self.state, self.state], dim=-1)
        return selective_scan(h, dt.expand_as(h).contiguous(), -self.A_log.exp(), B, C,
                              z=x, delta_softplus=True, cu_seqlens=cu_seqlens,
                              backend=self.backend)


@pytest.mark.parametrize("backend", fast_backends())
@pytest.mark.parametrize("compiler", ["aot_eager"])
def test_fullgraph_compile_matches_eager(backend, compiler):
    device = device_under_test()
    torch._dynamo.reset()
    module = ConvScan(backend=backend).to(device)
    x = torch.randn(40, 8, device=device, requires_grad=True)
    cu = torch.tensor([0, 10, 10, 33, 40], dtype=torch.int32, device=device)
    eager = module(x, cu)
    compiled = torch.compile(module, fullgraph=True, backend=compiler)(x, cu)
    torch.testing.assert_close(compiled, eager)
    g_eager = torch.autograd.grad(eager.sum(), [x, module.conv, module.A_log])
    g_comp = torch.autograd.grad(compiled.sum(), [x, module.conv, module.A_log])
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)
