import numpy as np
import pytest

from geossm.tasks.graph.datasets import ChameleonFiltered, Tolokers

from . import _undirected


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


def _write_het(path, **changes):
    """A 6-node graph with 10 splits in the heterophilous layout at ``path`` (``changes``
    replace or, given None, leave out arrays)."""
    masks = np.zeros((10, 6), dtype=bool)
    masks[:, :2] = True
    arrays = dict(node_features=np.eye(6, 3, dtype=np.float32),
                  node_labels=np.array([0, 1, 0, 1, 1, 0]),
                  edges=np.array([[0, 1], [1, 2], [3, 4]]), train_masks=masks,
                  val_masks=np.roll(masks, 2, 1), test_masks=np.roll(masks, 4, 1))
    arrays.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize("key, value, message", [
    ("train_masks", np.zeros((6, 10), bool),
     r"train_masks: expected shape \(splits, N\) = \(splits, 6\), got \(6, 10\) \(stored "
     r"transposed\?\)"),
    ("test_masks", np.zeros((9, 6), bool),
     r"test_masks: expected shape \(10, 6\) \(as many splits as train_masks\), got \(9, 6\)"),
    ("node_labels", np.zeros((6, 1)), r"node_labels: expected shape \(N,\) = \(6,\)"),
    ("node_features", np.zeros(6), r"node_features: expected shape \(N, F\), got \(6,\)"),
    ("edges", np.array([[0, 1, 3], [1, 2, 4]]),
     r"edges: expected shape \(E, 2\), got \(2, 3\) \(stored transposed\?\)"),
])
def test_heterophilous_misshapen_arrays_are_refused_naming_file_and_key(tmp_path, key, value,
                                                                         message):
    _write_het(tmp_path / "het" / "chameleon_filtered.npz", **{key: value})
    with pytest.raises(ValueError, match=r"chameleon_filtered\.npz: " + message):
        ChameleonFiltered(tmp_path / "het")
    # PyG's layout, checked before PyG transposes the arrays
    _write_het(tmp_path / "het" / "tolokers" / "raw" / "tolokers.npz", **{key: value})
    with pytest.raises(ValueError, match=r"tolokers\.npz: " + message):
        Tolokers(tmp_path / "het", cache_dir=tmp_path / "cache")


def test_heterophilous_corrupt_or_incomplete_files_are_named(tmp_path):
    path = _write_het(tmp_path / "het" / "chameleon_filtered.npz", test_masks=None)
    with pytest.raises(ValueError, match=r"chameleon_filtered\.npz: missing arrays "
                                         r"\['test_masks'\] \(a heterophilous \.npz holds"):
        ChameleonFiltered(tmp_path / "het")
    whole = _write_het(path).read_bytes()
    path.write_bytes(whole[:len(whole) // 2])  # a copy cut short
    with pytest.raises(ValueError, match=r"chameleon_filtered\.npz: not a readable \.npz archive "
                                         r"\(BadZipFile: .*expected np\.savez's archive"):
        ChameleonFiltered(tmp_path / "het")
    pyg = _write_het(tmp_path / "het" / "tolokers" / "raw" / "tolokers.npz")
    pyg.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match=r"tolokers\.npz: not a readable \.npz archive"):
        Tolokers(tmp_path / "het", cache_dir=tmp_path / "cache")
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"dataset file not found: .*chameleon_filtered"):
        ChameleonFiltered(tmp_path / "het")
    # the arrays whole: the graph loads, splits as stored
    _write_het(path)
    assert ChameleonFiltered(tmp_path / "het", split="test").num_splits == 10


def test_node_dataset_refuses_masks_of_another_shape_than_its_nodes():
    import torch
    from torch_geometric.data import Data

    from geossm.tasks.graph.datasets import NodeDataset

    class Transposed(NodeDataset):
        def load(self):
            masks = torch.zeros(6, 10, dtype=torch.bool)
            return (Data(x=torch.zeros(6, 3), edge_index=torch.zeros(2, 0, dtype=torch.long),
                         y=torch.zeros(6, dtype=torch.long)),
                    {"train": masks, "val": masks, "test": masks.t()})

    with pytest.raises(ValueError, match=r"Transposed: masks: expected shape \(N, S\) = \(6, S\) "
                                         r"with one S for train, val, test, got .*'test': "
                                         r"\(10, 6\)"):
        Transposed()
