"""Shared fixtures: the 6 real KITTI object frames in ../shared/data, unpacked once per session."""

import pytest

from tests.shared_data import unpack


@pytest.fixture(scope="session")
def kitti_root(tmp_path_factory):
    return unpack(tmp_path_factory, "kitti", "kitti_object_6frames.tar.xz")
