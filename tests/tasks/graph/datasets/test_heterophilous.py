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
