"""Shared fixtures: the 6 real KITTI object frames in ../shared/data, unpacked once per session."""

import pytest

from tests.shared_data import unpack


@pytest.fixture(scope="session")
def kitti_root(tmp_path_factory):
    return unpack(tmp_path_factory, "kitti", "kitti_object_6frames.tar.xz")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Caches the detection tests build (the KITTI GT-sampling database) go to a fresh folder."""
    monkeypatch.setenv("GEOSSM_CACHE", str(tmp_path / "geossm_cache"))
