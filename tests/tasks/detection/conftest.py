"""Shared fixtures: the 6 real KITTI object frames in ../shared/data, unpacked once per session."""

import tarfile
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"
KITTI_TAR = SHARED / "kitti" / "kitti_object_6frames.tar.xz"


@pytest.fixture(scope="session")
def kitti_root(tmp_path_factory):
    if not KITTI_TAR.is_file():
        pytest.skip(f"KITTI archive not found at {KITTI_TAR} (../shared/data is absent)")
    out = tmp_path_factory.mktemp("kitti")
    with tarfile.open(KITTI_TAR) as tar:
        # the shared copy is read-only: unpack into a temporary folder (data filter: no links or
        # absolute paths)
        tar.extractall(out, filter="data")
    return out
