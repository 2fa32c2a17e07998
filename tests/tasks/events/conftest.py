"""Shared fixtures: the real event samples in ../shared/data/events, unpacked once per session
(the shared copy is read-only, so archives go to a temporary folder)."""

import tarfile
from pathlib import Path

import pytest

EVENTS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "events"
NMNIST_TAR = EVENTS / "nmnist_600train_100test.tar.xz"
SAMPLES_TAR = EVENTS / "event_samples.tar.xz"


def _unpack(archive: Path, out: Path) -> Path:
    with tarfile.open(archive) as tar:
        # data filter: no links, devices or absolute paths from the archive
        tar.extractall(out, filter="data")
    return out


@pytest.fixture(scope="session")
def nmnist_root(tmp_path_factory):
    if not NMNIST_TAR.is_file():
        pytest.skip(f"real N-MNIST archive not found at {NMNIST_TAR} (../shared/data is absent)")
    return _unpack(NMNIST_TAR, tmp_path_factory.mktemp("nmnist"))


@pytest.fixture(scope="session")
def samples(tmp_path_factory):
    if not SAMPLES_TAR.is_file():
        pytest.skip(f"real event samples not found at {SAMPLES_TAR} (../shared/data is absent)")
    return _unpack(SAMPLES_TAR, tmp_path_factory.mktemp("event_samples")) / "samples"


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
