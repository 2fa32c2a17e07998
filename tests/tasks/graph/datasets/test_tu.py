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
