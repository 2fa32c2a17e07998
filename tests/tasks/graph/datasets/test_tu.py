import numpy as np

from geossm.tasks.graph.datasets import MUTAG
from geossm.tasks.graph.datasets.folds import stratified_folds


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


def test_a_tu_set_without_a_class_reads_by_its_name_and_pickles_into_a_new_process(tmp_path):
    # a spawned DataLoader worker unpickles the dataset in a process that never made its class
    import pickle
    import subprocess
    import sys

    import pytest

    from geossm.registry import DATASETS
    from geossm.tasks.graph.datasets import dataset_class
    from geossm.tasks.graph.datasets.tu import tu_set
    from geossm.tasks.graph.synthetic import write_tu_folder
    write_tu_folder(tmp_path / "data", "COX2", num_classes=2, num_graphs=20, attr_dim=3,
                    min_nodes=6, max_nodes=8)
    cls = dataset_class("COX2", tmp_path / "data")
    assert cls is tu_set("COX2") is DATASETS.get("COX2") and cls.name == "COX2"
    ds = cls(tmp_path / "data", split="test", cache_dir=tmp_path / "cache")
    code = ("import pickle, sys; ds = pickle.loads(sys.stdin.buffer.read()); "
            "print(type(ds).__name__, type(ds).name, len(ds), ds.num_classes, ds.num_features)")
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(ds),
                         capture_output=True, check=True).stdout.decode().split()
    assert out == ["COX2", "COX2", str(len(ds)), "2", str(ds.num_features)]
    assert tu_set("MUTAG") is MUTAG  # a set with its own class keeps it
    with pytest.raises(ValueError, match="'Cora': taken by Cora, not a TU set"):
        tu_set("Cora")
    with pytest.raises(ValueError, match="expected letters, digits"):
        tu_set("../COX2")
