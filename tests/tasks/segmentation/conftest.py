"""Shared fixtures: the real samples in ../shared/data, unpacked once per session."""

import pytest

from tests.shared_data import shared_path, unpack


@pytest.fixture(scope="session")
def shapenetpart_root():
    return shared_path("shapenetpart", "shapenetcore_partanno_segmentation_benchmark_v0_normal")


@pytest.fixture(scope="session")
def kitti_npy_root(tmp_path_factory):
    return unpack(tmp_path_factory, "semantickitti", "semantickitti_npy_3scans.tar.xz") \
        / "semantickitti_npy"
