import pickle
import shutil
import stat

import numpy as np
import pytest
import torch

from geossm.tasks.graph.datasets import Cora, PubMed

from . import _undirected


def test_cora_public_split_from_a_read_only_copy(planetoid_root, graph_cache, tmp_path):
    # A read-only root (as in CI): the reader copies the raw files and processes the copy.
    ro = tmp_path / "Planetoid"
    shutil.copytree(planetoid_root, ro)
    for p in ro.rglob("*"):
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    sizes = {}
    for split in ("train", "val", "test"):
        ds = Cora(ro, split=split, normalize_features=True, cache_dir=graph_cache)
        g = ds[0]
        sizes[split] = int(g.mask.sum())
        assert len(ds) == 1 and g.x.shape == (2708, 1433) and ds.num_classes == 7
    assert sizes == {"train": 140, "val": 500, "test": 1000}
    assert torch.allclose(g.x.sum(1)[g.x.sum(1) > 0], torch.ones(1))
    assert not (ro / "Cora" / "processed").exists()
    with pytest.raises(IndexError, match="holds one graph"):
        ds[1]


def _write_planetoid(raw, name: str, n: int = 520, f: int = 5, c: int = 3):
    """Small files in the official Planetoid layout (pickled scipy matrices and a dict graph);
    PyG's public split takes the 500 nodes after the labelled ones for validation."""
    import scipy.sparse as sp
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x_all = sp.csr_matrix((rng.random((n, f)) > 0.5).astype(np.float32))
    y_all = np.eye(c)[rng.integers(0, c, n)]
    num_test = 10
    parts = {"x": x_all[:3], "y": y_all[:3], "allx": x_all[:n - num_test],
             "ally": y_all[:n - num_test], "tx": x_all[n - num_test:], "ty": y_all[n - num_test:],
             "graph": {i: [(i + d) % n for d in (1, 5, -1, -5)] for i in range(n)}}
    for key, value in parts.items():
        with open(raw / f"ind.{name}.{key}", "wb") as fh:
            pickle.dump(value, fh)
    np.savetxt(raw / f"ind.{name}.test.index", np.arange(n - num_test, n)[::-1], fmt="%d")


def test_same_reader_for_other_planetoid_names(tmp_path):
    _write_planetoid(tmp_path / "Planetoid" / "PubMed" / "raw", "pubmed")
    sizes = [int(PubMed(tmp_path / "Planetoid", split=s, cache_dir=tmp_path / "cache")[0]
                 .mask.sum()) for s in ("train", "val", "test")]
    g = PubMed(tmp_path / "Planetoid", cache_dir=tmp_path / "cache")[0]
    assert g.x.shape == (520, 5) and sizes == [3, 500, 10] and _undirected(g.edge_index)
    assert g.edge_index.shape[1] == 4 * 520


def test_missing_raw_file_is_named(tmp_path):
    (tmp_path / "Cora" / "raw").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"ind\.cora\.x"):
        Cora(tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        Cora(tmp_path / "nowhere")
