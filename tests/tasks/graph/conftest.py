"""Shared fixtures: paths of the real graphs in ../shared/data/graphs and a per-session cache
(PyG writes ``processed/`` beside the copied raw files, never into the read-only share)."""

from pathlib import Path

import pytest

GRAPHS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "graphs"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real graph data not found at {path} (../shared/data is absent)")
    return path


@pytest.fixture(scope="session")
def graph_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("graph_cache")


@pytest.fixture(scope="session")
def planetoid_root():
    return _need(GRAPHS / "Planetoid")


@pytest.fixture(scope="session")
def tu_root():
    return _need(GRAPHS / "TU")


@pytest.fixture(scope="session")
def heterophilous_extra_root():
    return _need(GRAPHS / "heterophilous_extra")


@pytest.fixture(scope="session")
def tolokers_npz():
    return _need(GRAPHS / "heterophilous" / "tolokers" / "raw" / "tolokers.npz")


@pytest.fixture(scope="session")
def peptides_root():
    return _need(GRAPHS / "peptides-functional")
