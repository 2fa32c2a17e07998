import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from geossm.tasks.graph.datasets import PeptidesFunc, PeptidesStruct
from geossm.tasks.graph.transforms import add_positional_encodings


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


# Processes sharing the compact cache (tests/cache_workers.py): each reads the train split of
# $PEPTIDES_ROOT (cache: $GEOSSM_CACHE), counting conversions; the builder of the kill test
# stalls in the middle of writing the .npz.
SETUP = r'''
import numpy
import ogb.utils  # imported once, before the fork (the conversion needs it)
from geossm.tasks.graph.datasets import PeptidesFunc, PeptidesStruct

count_builds(PeptidesFunc, "convert")
if STALL:
    stall_writes(numpy, "savez_compressed")
'''
READ_TRAIN = r'''
ds = PeptidesFunc(os.environ["PEPTIDES_ROOT"], split="train")
print(digest(*[t for g in ds for t in (g.x, g.edge_index, g.edge_attr, g.y)]))
'''
SMILES = ["CC(=O)NC(C)C(=O)O", "NCC(=O)NCC(=O)O", "CC(C)C(N)C(=O)O", "c1ccccc1CC(N)C(=O)O",
          "OCC(N)C(=O)O", "CSCCC(N)C(=O)O"]


def _tiny_peptides(root: Path) -> Path:
    """Six small amino-acid-like molecules in the official layout (csv.gz + split pickle)."""
    (root / "raw").mkdir(parents=True)
    with gzip.open(root / PeptidesFunc.CSV, "wt") as fh:
        fh.write("smiles,labels\n")
        for i, smiles in enumerate(SMILES):
            labels = ", ".join(str((i + j) % 2) for j in range(10))
            fh.write(f'{smiles},"[{labels}]"\n')
    with open(root / PeptidesFunc.SPLITS_FILE, "wb") as fh:
        pickle.dump({"train": np.arange(4), "val": np.array([4]), "test": np.array([5])}, fh)
    return root


def _train_digest(root: Path, cache_dir: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    for g in PeptidesFunc(root, split="train", cache_dir=cache_dir):
        for t in (g.x, g.edge_index, g.edge_attr, g.y):
            h.update(f"{t.numpy().dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def test_eight_processes_on_a_fresh_cache_convert_once(tmp_path):
    pytest.importorskip("rdkit", reason="Peptides-func needs RDKit (pip install rdkit)")
    pytest.importorskip("ogb", reason="Peptides-func needs OGB (pip install ogb)")
    from tests.cache_workers import builds, run_together
    root = _tiny_peptides(tmp_path / "peptides")
    cache = tmp_path / "cache"
    out = run_together(SETUP, READ_TRAIN, tmp_path / "work",
                       env={"GEOSSM_CACHE": str(cache), "PEPTIDES_ROOT": str(root)})
    assert builds(tmp_path / "work") == 1
    assert out == [_train_digest(root, tmp_path / "ref")] * 8
    folder = next(cache.glob("graphs/peptides/*"))
    assert sorted(p.name for p in folder.iterdir()) == [".peptides_func_all.npz.lock",
                                                        "peptides_func_all.npz"]


def test_a_builder_killed_mid_write_leaves_no_cache_and_the_next_run_converts_again(
        tmp_path, monkeypatch):
    pytest.importorskip("rdkit", reason="Peptides-func needs RDKit (pip install rdkit)")
    pytest.importorskip("ogb", reason="Peptides-func needs OGB (pip install ogb)")
    from tests.cache_workers import kill_mid_write
    root = _tiny_peptides(tmp_path / "peptides")
    cache = tmp_path / "cache"
    kill_mid_write(SETUP, READ_TRAIN, tmp_path / "work",
                   env={"GEOSSM_CACHE": str(cache), "PEPTIDES_ROOT": str(root)})
    folder = next(cache.glob("graphs/peptides/*"))
    assert not (folder / "peptides_func_all.npz").exists()
    torn = list(folder.glob(".peptides_func_all.npz.*.tmp.npz"))
    assert len(torn) == 1 and torn[0].stat().st_size > 0
    monkeypatch.setenv("GEOSSM_CACHE", str(cache))
    assert _train_digest(root, None) == _train_digest(root, tmp_path / "ref")
    assert sorted(p.name for p in folder.iterdir()) == [".peptides_func_all.npz.lock",
                                                        "peptides_func_all.npz"]


def test_a_compact_cache_an_older_version_left_torn_is_converted_again(tmp_path):
    pytest.importorskip("rdkit", reason="Peptides-func needs RDKit (pip install rdkit)")
    pytest.importorskip("ogb", reason="Peptides-func needs OGB (pip install ogb)")
    root = _tiny_peptides(tmp_path / "peptides")
    cache = tmp_path / "given.npz"
    cache.write_bytes(b"PK\x03\x04 torn")
    assert len(PeptidesFunc(root, split="val", cache=cache)) == 1
    assert PeptidesFunc.load_compact(cache)["n_nodes"].shape == (6,)


def write_tiny_peptides_struct(root: Path, rows: int = 8) -> Path:
    """``rows`` small molecules (``SMILES`` repeated) in LRGB's Peptides-struct layout: csv.gz
    with the 11 target columns (raw values, a column LRGB does not read in between) + the split
    pickle (train 0-3, val 4, test 5; the last rows in no split)."""
    (root / "raw").mkdir(parents=True)
    rng = np.random.default_rng(0)
    raw = rng.normal(loc=np.arange(11) * 10.0, scale=np.arange(1, 12), size=(rows, 11))
    names = list(PeptidesStruct.TARGETS)
    with gzip.open(root / PeptidesStruct.CSV, "wt") as fh:
        fh.write(",".join(["smiles", "peptide_seq"] + names) + "\n")
        for i in range(rows):
            values = ",".join(repr(float(v)) for v in raw[i])
            fh.write(f"{SMILES[i % len(SMILES)]},SEQ{i},{values}\n")
    with open(root / PeptidesStruct.SPLITS_FILE, "wb") as fh:
        pickle.dump({"train": np.arange(4), "val": np.array([4]), "test": np.array([5])}, fh)
    return root


def test_peptides_struct_targets_are_standardised_over_the_whole_csv(tmp_path):
    pytest.importorskip("rdkit", reason="Peptides-struct needs RDKit (pip install rdkit)")
    pytest.importorskip("ogb", reason="Peptides-struct needs OGB (pip install ogb)")
    root = write_tiny_peptides_struct(tmp_path / "peptides-structural")
    with gzip.open(root / PeptidesStruct.CSV, "rt") as fh:
        header, *lines = fh.read().splitlines()
    columns = header.split(",")
    raw = np.array([[float(line.split(",")[columns.index(n)]) for n in PeptidesStruct.TARGETS]
                    for line in lines])
    # LRGB's loader: (x - mean) / std per column over every row (pandas: ddof 1), rows 6 and 7
    # included although no split holds them
    want = (raw - raw.mean(0)) / raw.std(0, ddof=1)
    ds = PeptidesStruct(root, split="train", cache_dir=tmp_path / "cache")
    assert len(ds) == 4 and ds.num_classes == 11 and ds.target_kind == "regression"
    for i, item in enumerate(ds):
        assert item.y.dtype == torch.float32 and item.y.shape == (1, 11)
        np.testing.assert_allclose(item.y[0].numpy(), want[i], rtol=1e-6, atol=1e-6)
        assert item.x.shape[1] == 9 and item.edge_attr.shape[1] == 3
    cached = list((tmp_path / "cache").rglob("peptides_struct_all.npz"))
    assert len(cached) == 1
    back = PeptidesStruct.load_compact(cached[0])
    assert back["y"].dtype == torch.float32
    assert torch.equal(back["y"][:4], torch.cat([item.y for item in ds]))
    test = PeptidesStruct(root, split="test", cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(test[0].y[0].numpy(), want[5], rtol=1e-6, atol=1e-6)


def test_peptides_caches_and_csvs_of_the_other_set_are_refused(tmp_path):
    pytest.importorskip("rdkit", reason="Peptides-func needs RDKit (pip install rdkit)")
    pytest.importorskip("ogb", reason="Peptides-func needs OGB (pip install ogb)")
    func_root = _tiny_peptides(tmp_path / "func")
    graphs = PeptidesFunc.convert(func_root / PeptidesFunc.CSV)
    path = PeptidesFunc.save_compact(graphs, tmp_path / "func.npz")
    with pytest.raises(ValueError, match="targets stored as uint8, a Peptides-struct cache has "
                                         "float32"):
        PeptidesStruct.load_compact(path)
    with pytest.raises(ValueError, match=r"missing target columns \['Inertia_mass_a'"):
        PeptidesStruct.convert(func_root / PeptidesFunc.CSV)
    struct_root = write_tiny_peptides_struct(tmp_path / "struct")
    with pytest.raises(ValueError, match="expected columns 'smiles' and 'labels'"):
        PeptidesFunc.convert(struct_root / PeptidesStruct.CSV)
    with pytest.raises(FileNotFoundError, match="splits_random_stratified_peptide_structure"):
        PeptidesStruct(func_root, cache_dir=tmp_path / "cache")


def _write_labels(root: Path, flip: bool = False) -> None:
    """Rewrite the csv of ``_tiny_peptides`` with the same molecules, labels flipped or not."""
    with gzip.open(root / PeptidesFunc.CSV, "wt") as fh:
        fh.write("smiles,labels\n")
        for i, smiles in enumerate(SMILES):
            labels = ", ".join(str((i + j + flip) % 2) for j in range(10))
            fh.write(f'{smiles},"[{labels}]"\n')


def test_a_changed_csv_is_converted_again_a_cache_without_csv_or_digest_read_as_is(
        tmp_path, monkeypatch):
    pytest.importorskip("rdkit", reason="Peptides-func needs RDKit (pip install rdkit)")
    pytest.importorskip("ogb", reason="Peptides-func needs OGB (pip install ogb)")
    root = _tiny_peptides(tmp_path / "peptides")
    cache = tmp_path / "cache"
    first = PeptidesFunc(root, split="val", cache_dir=cache)[0].y
    _write_labels(root, flip=True)  # the csv replaced in place
    assert torch.equal(PeptidesFunc(root, split="val", cache_dir=cache)[0].y, 1 - first)
    cached = next(cache.rglob("peptides_func_all.npz"))
    assert PeptidesFunc.source_digest(cached) is not None

    def no_rdkit(*args, **kwargs):
        raise AssertionError("the compact cache must be read without converting")

    monkeypatch.setattr(PeptidesFunc, "convert", staticmethod(no_rdkit))
    # A machine without the csv (nor RDKit): the cache is all there is, read as it is.
    csv = (root / PeptidesFunc.CSV).read_bytes()
    (root / PeptidesFunc.CSV).unlink()
    assert torch.equal(PeptidesFunc(root, split="val", cache_dir=cache)[0].y, 1 - first)
    # A cache an older version wrote keeps no digest: read as it is, the csv beside it or not.
    (root / PeptidesFunc.CSV).write_bytes(csv)
    old = PeptidesFunc.save_compact(PeptidesFunc.load_compact(cached), tmp_path / "old.npz")
    assert PeptidesFunc.source_digest(old) is None
    _write_labels(root, flip=False)
    assert torch.equal(PeptidesFunc(root, split="val", cache=old)[0].y, 1 - first)


def test_split_ids_beyond_the_csv_are_refused_not_dropped(tmp_path):
    pytest.importorskip("rdkit", reason="Peptides-func needs RDKit (pip install rdkit)")
    pytest.importorskip("ogb", reason="Peptides-func needs OGB (pip install ogb)")
    root = _tiny_peptides(tmp_path / "peptides")  # 6 rows
    with open(root / PeptidesFunc.SPLITS_FILE, "wb") as fh:
        pickle.dump({"train": np.arange(9), "val": np.array([4]), "test": np.array([5])}, fh)
    with pytest.raises(ValueError, match=r"splits_random_stratified_peptide\.pickle: split "
                                         r"'train' names graphs 0\.\.8, but .*peptides_func_all"
                                         r"\.npz holds n=6 graphs"):
        PeptidesFunc(root, split="train", cache_dir=tmp_path / "cache")
    # max_graphs reads the first rows on purpose: the ids beyond them are left out
    assert len(PeptidesFunc(root, split="train", cache_dir=tmp_path / "cache",
                            max_graphs=4)) == 4
