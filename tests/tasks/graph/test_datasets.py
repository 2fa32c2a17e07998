import gzip
import pickle
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from geossm.tasks.graph.datasets import (MUTAG, ChameleonFiltered, Cora, KarateClub,
                                         PeptidesFunc, PubMed, Tolokers, add_positional_encodings,
                                         batched_positional_encodings, cache_copy,
                                         stratified_folds)


def _undirected(ei: torch.Tensor) -> bool:
    fwd = set(map(tuple, ei.t().tolist()))
    return all((b, a) in fwd for a, b in fwd)


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


def test_heterophilous_pyg_layout_synthetic(tmp_path, tolokers_npz):
    # The PyG layout root/tolokers/raw/tolokers.npz with the real keys, on a 6-node graph.
    with np.load(tolokers_npz) as real:
        keys = set(real.files)
    raw = tmp_path / "het" / "tolokers" / "raw"
    raw.mkdir(parents=True)
    masks = np.zeros((10, 6), dtype=bool)
    masks[:, :2] = True
    np.savez(raw / "tolokers.npz", node_features=np.eye(6, 3, dtype=np.float32),
             node_labels=np.array([0, 1, 0, 1, 1, 0]), edges=np.array([[0, 1], [1, 2], [3, 4]]),
             train_masks=masks, val_masks=np.roll(masks, 2, 1), test_masks=np.roll(masks, 4, 1))
    with np.load(raw / "tolokers.npz") as mine:
        assert set(mine.files) == keys
    ds = Tolokers(tmp_path / "het", split="val", split_index=9, cache_dir=tmp_path / "cache")
    g = ds[0]
    assert ds.num_splits == 10 and g.mask.tolist() == [False, False, True, True, False, False]
    assert g.edge_index.shape[1] == 6 and _undirected(g.edge_index)  # made undirected
    with pytest.raises(ValueError, match=r"split_index: expected an int in \[0, 10\), got 10"):
        Tolokers(tmp_path / "het", split_index=10, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="split: expected one of"):
        Tolokers(tmp_path / "het", split="dev", cache_dir=tmp_path / "cache")


def test_filtered_chameleon_real(heterophilous_extra_root):
    ds = ChameleonFiltered(heterophilous_extra_root, split="test", split_index=3,
                           pe={"degree": True})
    g = ds[0]
    assert g.x.shape[0] == 890 and ds.num_splits == 10 and g.pe.shape == (890, 1)
    assert _undirected(g.edge_index)


def test_karate_club_builtin():
    tr, te = KarateClub(split="train")[0], KarateClub(split="test")[0]
    assert int(tr.mask.sum()) == 4 and not (tr.mask & te.mask).any()


def test_mutag_folds_partition_and_stratify(tu_root, graph_cache):
    seen = []
    for fold in (0, 1):
        test = MUTAG(tu_root, split="test", split_index=fold, cache_dir=graph_cache)
        train = MUTAG(tu_root, split="train", split_index=fold, inner_val=0.0,
                      cache_dir=graph_cache)
        assert len(test) + len(train) == 188
        seen.append(len(test))
    assert all(18 <= s <= 19 for s in seen)
    ds = MUTAG(tu_root, split="val", split_index=0, cache_dir=graph_cache, pe={"random_walk": 4})
    g = ds[0]
    assert len(ds) in (16, 17, 18) and g.x.shape[1] == 7 and g.edge_attr.shape[1] == 4
    assert g.pe.shape == (g.num_nodes, 4) and g.y.shape == (1,)
    folds = stratified_folds(np.array([0] * 63 + [1] * 125), 10, 0)
    counts = np.bincount(folds, minlength=10)
    assert counts.max() - counts.min() <= 1


def test_positional_encodings_small_graph():
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    from torch_geometric.data import Data
    g = add_positional_encodings(Data(edge_index=ei, num_nodes=3), laplacian=4, random_walk=3,
                                 degree=True)
    assert g.pe.shape == (3, 8)
    assert torch.allclose(g.pe[:, 2:4], torch.zeros(3, 2))  # only 2 non-trivial eigenvectors
    with pytest.raises(ValueError, match="pe.laplacian: expected an int >= 0, got -1"):
        add_positional_encodings(Data(edge_index=ei, num_nodes=3), laplacian=-1)


def test_cache_copy_skips_fresh_files(tmp_path):
    src = tmp_path / "src" / "a.txt"
    src.parent.mkdir()
    src.write_text("abc")
    cache_copy([src], tmp_path / "src", tmp_path / "dst")
    dst = tmp_path / "dst" / "a.txt"
    mtime = dst.stat().st_mtime_ns
    cache_copy([src], tmp_path / "src", tmp_path / "dst")
    assert dst.read_text() == "abc" and dst.stat().st_mtime_ns == mtime
    with pytest.raises(FileNotFoundError, match="b.txt"):
        cache_copy([tmp_path / "src" / "b.txt"], tmp_path / "src", tmp_path / "dst")


def _peptides_sample(peptides_root, tmp_path, splits: dict) -> Path:
    """The first real rows of Peptides-func (as many as ``splits`` index) in the official layout:
    csv.gz with its header line + the split pickle."""
    root = tmp_path / "peptides"
    (root / "raw").mkdir(parents=True)
    rows = 1 + max(max(v) for v in splits.values())
    with gzip.open(peptides_root / PeptidesFunc.CSV, "rt") as fh:
        lines = [next(fh) for _ in range(rows + 1)]
    with gzip.open(root / PeptidesFunc.CSV, "wt") as fh:
        fh.writelines(lines)
    with open(root / PeptidesFunc.SPLITS_FILE, "wb") as fh:
        pickle.dump({k: np.array(v) for k, v in splits.items()}, fh)
    return root


def test_peptides_reader_on_real_molecules(peptides_root, tmp_path):
    pytest.importorskip("rdkit", reason="Peptides-func needs RDKit (pip install rdkit)")
    pytest.importorskip("ogb", reason="Peptides-func needs OGB (pip install ogb)")
    # The first 6 real rows in the official layout (csv.gz + split pickle).
    root = _peptides_sample(peptides_root, tmp_path, {"train": [0, 1, 2, 3], "val": [4],
                                                      "test": [5]})
    ds = PeptidesFunc(root, split="train", cache_dir=tmp_path / "cache")
    assert len(ds) == 4
    g = ds[0]
    assert g.x.dtype == torch.long and g.x.shape[1] == 9 and g.edge_attr.shape[1] == 3
    assert g.y.shape == (1, 10) and set(g.y.unique().tolist()) <= {0.0, 1.0}
    assert g.edge_index.max() < g.num_nodes and g.num_nodes > 50  # peptides are large
    for j, v in enumerate(PeptidesFunc.ATOM_DIMS):
        assert int(g.x[:, j].max()) < v
    cached = list((tmp_path / "cache").rglob("peptides_func_all.npz"))
    assert len(cached) == 1
    again = PeptidesFunc(root, split="test", cache_dir=tmp_path / "cache", pe={"laplacian": 4})
    assert len(again) == 1 and again[0].pe.shape == (again[0].num_nodes, 4)
    with pytest.raises(FileNotFoundError, match="splits_random_stratified_peptide.pickle"):
        PeptidesFunc(root / "raw", cache_dir=tmp_path / "cache")


def test_peptides_compact_cache_round_trip_without_rdkit(peptides_root, tmp_path, monkeypatch):
    pytest.importorskip("rdkit", reason="Peptides-func needs RDKit (pip install rdkit)")
    pytest.importorskip("ogb", reason="Peptides-func needs OGB (pip install ogb)")
    root = _peptides_sample(peptides_root, tmp_path, {"train": [0, 2, 4, 6], "val": [1, 3],
                                                      "test": [5, 7]})
    graphs = PeptidesFunc.convert(root / PeptidesFunc.CSV)
    path = PeptidesFunc.save_compact(graphs, tmp_path / "moved" / "peptides.npz")
    back = PeptidesFunc.load_compact(path)
    for key, value in graphs.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key

    def no_rdkit(*args, **kwargs):
        raise AssertionError("the compact cache must be read without converting")

    # A machine without RDKit: only the split pickle and the cache are needed.
    monkeypatch.setattr(PeptidesFunc, "convert", staticmethod(no_rdkit))
    (root / PeptidesFunc.CSV).unlink()
    ds = PeptidesFunc(root, split="val", cache=path, pe={"random_walk": 3})
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), graphs["n_nodes"].long().cumsum(0)])
    eptr = torch.cat([torch.zeros(1, dtype=torch.long), graphs["n_edges"].long().cumsum(0)])
    for item, g in zip(ds, (1, 3)):
        assert torch.equal(item.x, graphs["x"][ptr[g]:ptr[g + 1]].long())
        assert torch.equal(item.edge_index, graphs["edge_index"][:, eptr[g]:eptr[g + 1]].long())
        assert torch.equal(item.y, graphs["y"][g:g + 1].float())
        ref = add_positional_encodings(item.clone(), random_walk=3).pe
        assert torch.allclose(item.pe, ref, atol=1e-5)
    graphs["x"][0, 0] = 300
    with pytest.raises(ValueError, match="x spans"):
        PeptidesFunc.save_compact(graphs, tmp_path / "bad.npz")


def test_batched_encodings_match_pyg_per_graph():
    # Graphs of mixed sizes (one smaller than k + 1, one with an isolated node), padded
    # together in one chunk and in several.
    gen = torch.Generator().manual_seed(0)
    graphs = []
    for n in (3, 7, 12, 12, 20):
        src = torch.randint(0, n - 1, (2 * n,), generator=gen)
        dst = torch.randint(0, n - 1, (2 * n,), generator=gen)
        keep = src != dst
        ei = torch.stack([torch.cat([src[keep], dst[keep]]), torch.cat([dst[keep], src[keep]])])
        graphs.append((torch.unique(ei, dim=1), n))  # node n - 1 stays isolated
    edge_index = torch.cat([e for e, _ in graphs], 1)
    num_nodes = torch.tensor([n for _, n in graphs])
    num_edges = torch.tensor([e.shape[1] for e, _ in graphs])
    k = 4
    for chunk in (1 << 20, 200):
        pe = batched_positional_encodings(edge_index, num_nodes, num_edges, laplacian=k,
                                          random_walk=5, degree=True, chunk_nodes=chunk)
        start = 0
        for e, n in graphs:
            mine = pe[start:start + n]
            start += n
            ref = add_positional_encodings(Data(edge_index=e, num_nodes=n), random_walk=5,
                                           degree=True).pe
            assert torch.allclose(mine[:, k:], ref, atol=1e-5)
            # Eigenvectors are defined up to sign / rotation: check L v = lambda v with the
            # eigenvalues 2..k+1 of the symmetric normalised Laplacian, unit norm.
            adj = torch.zeros(n, n, dtype=torch.float64)
            adj[e[0], e[1]] = 1.0
            deg = adj.sum(1)
            dinv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
            lap = torch.eye(n, dtype=torch.float64) - dinv[:, None] * adj * dinv[None, :]
            expected = torch.linalg.eigvalsh(lap)[1:k + 1]
            vec = mine[:, :k].double()[:, :len(expected)]
            lam = (vec * (lap @ vec)).sum(0)
            assert torch.allclose(lam, expected, atol=1e-4)
            assert torch.allclose(lap @ vec, vec * lam, atol=1e-4)
            assert torch.allclose(vec.norm(dim=0), torch.ones(len(expected), dtype=torch.float64),
                                  atol=1e-4)
            if n - 1 < k:
                assert torch.all(mine[:, n - 1:k] == 0)
