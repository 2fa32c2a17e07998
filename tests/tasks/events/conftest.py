"""Shared fixtures: the real event samples in ../shared/data/events, unpacked once per session
(the shared copy is read-only, so archives go to a temporary folder)."""

import pytest

from tests.shared_data import unpack


@pytest.fixture(scope="session")
def nmnist_root(tmp_path_factory):
    return unpack(tmp_path_factory, "events", "nmnist_600train_100test.tar.xz")


@pytest.fixture(scope="session")
def samples(tmp_path_factory):
    return unpack(tmp_path_factory, "events", "event_samples.tar.xz") / "samples"


@pytest.fixture(scope="session", autouse=True)
def _keep_torch_threads():
    """The first numba kernel call resets torch's intra-op thread count to the core count; on a
    shared CPU that makes small matmuls orders of magnitude slower. Warm the kernels once and
    restore the count torch had (the kernels' owner is told)."""
    import torch

    from geossm.nn import Mamba
    before = torch.get_num_threads()
    with torch.no_grad():
        Mamba(8)(torch.rand(1, 3, 8))
    torch.set_num_threads(before)
    yield
