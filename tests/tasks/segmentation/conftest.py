"""Shared fixtures: the real samples in ../shared/data, unpacked once per session."""

import tarfile
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"
SHAPENETPART = SHARED / "shapenetpart" / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
KITTI_NPY = SHARED / "semantickitti" / "semantickitti_npy_3scans.tar.xz"


@pytest.fixture(scope="session")
def shapenetpart_root():
    if not SHAPENETPART.is_dir():
        pytest.skip(f"real ShapeNetPart caps not found at {SHAPENETPART} (../shared/data is absent)")
    return SHAPENETPART


@pytest.fixture(scope="session")
def kitti_npy_root(tmp_path_factory):
    if not KITTI_NPY.is_file():
        pytest.skip(f"SemanticKITTI npy archive not found at {KITTI_NPY} (../shared/data is absent)")
    out = tmp_path_factory.mktemp("semantickitti")
    with tarfile.open(KITTI_NPY) as tar:
        # The shared copy is read-only: unpack into a temporary folder (data filter: no links
        # or absolute paths).
        tar.extractall(out, filter="data")
    return out / "semantickitti_npy"
