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


def _relabel(root, labels, name="MUTAG"):
    """Replace the graph labels of the set ``write_tu`` wrote (one line per graph)."""
    (root / name / "raw" / f"{name}_graph_labels.txt").write_text(
        "".join(f"{v}\n" for v in labels))


def test_tu_regression_targets_are_refused(tmp_path):
    import pytest

    from .test_cache import write_tu
    root = write_tu(tmp_path / "TU")
    (root / "MUTAG" / "raw" / "MUTAG_graph_attributes.txt").write_text("0.25\n" * 20)
    # PyG reads these float targets instead of the labels; taken as classes they were truncated
    with pytest.raises(ValueError, match=r"MUTAG_graph_attributes\.txt: graph regression targets; "
                                         r"geossm's TU reader serves graph classification"):
        MUTAG(root, cache_dir=tmp_path / "cache")


def test_a_truncated_graph_labels_file_is_refused_not_dropping_graphs(tmp_path):
    import pytest

    from .test_cache import write_tu
    root = write_tu(tmp_path / "TU")
    _relabel(root, [g % 2 for g in range(17)])  # 17 labels, 20 graphs in the indicator
    with pytest.raises(ValueError, match=r"MUTAG_graph_labels\.txt: 17 labels for 20 graphs"):
        MUTAG(root, split="test", cache_dir=tmp_path / "cache")
    (root / "MUTAG" / "raw" / "MUTAG_graph_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"MUTAG_graph_labels\.txt \(the TU graph labels"):
        MUTAG(root, split="test", cache_dir=tmp_path / "cache")


def test_inner_val_holds_out_the_fraction_it_names(tmp_path):
    import pytest

    from .test_cache import write_tu
    root = write_tu(tmp_path / "TU", graphs=100)  # classes 0 and 1, 50 graphs each
    sizes = {}
    for frac in (0.1, 0.4, 0.6, 0.7):
        val, train = (MUTAG(root, split=s, inner_val=frac, cache_dir=tmp_path / "cache")
                      for s in ("val", "train"))
        for c in (0, 1):  # 45 graphs of each class in the nine training folds
            held = sum(int(g.y) == c for g in val.graphs)
            assert int(frac * 45) <= held <= int(frac * 45) + 1, (frac, c, held)
        assert len(train) + len(val) == 90
        sizes[frac] = len(val)
    assert sizes[0.4] < 45 < sizes[0.6] and sizes[0.7] == 63  # 0.4 and 0.6 used to be 50 %
    # A fraction that holds out a class's only training graph: 99 graphs of class 0, one of
    # class 1 (dealt last, into fold 9; with fold 0 the test fold it has place 89 of the inner
    # deal, held out by 0.96 since floor(89 * 0.96) > floor(88 * 0.96), kept by 0.1)
    _relabel(root, [0] * 99 + [1])
    MUTAG(root, split="train", inner_val=0.1, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"inner_val=0.96: holds out every training graph of "
                                         r"class \[1\] .*expected a smaller inner_val"):
        MUTAG(root, split="train", inner_val=0.96, cache_dir=tmp_path / "cache")


def test_inner_val_0_1_keeps_the_published_mutag_splits(tu_root, graph_cache):
    # The MUTAG results were published with inner_val=0.1: one of ten stratified inner folds
    # of a second shuffle. The exact-fraction rule must give the same graphs, fold by fold.
    raw = tu_root / "MUTAG" / "raw" / "MUTAG_graph_labels.txt"
    labels = np.unique(np.loadtxt(raw, dtype=np.int64), return_inverse=True)[1]
    for fold in range(10):
        test = stratified_folds(labels, 10, 0) == fold
        rest = np.flatnonzero(~test)
        val = np.sort(rest[stratified_folds(labels[rest], 10, 1) == 0])
        ds = MUTAG(tu_root, split="val", split_index=fold, cache_dir=graph_cache)
        assert ds.indices.tolist() == val.tolist(), fold


def test_dropped_edge_attributes_are_told_once(tmp_path):
    import logging

    from geossm.engine.logging import get_logger

    from .test_cache import write_tu
    root = write_tu(tmp_path / "TU")
    raw = root / "MUTAG" / "raw"
    edges = len((raw / "MUTAG_A.txt").read_text().splitlines())
    (raw / "MUTAG_edge_attributes.txt").write_text("0.5, 2.0\n" * edges)
    records, handler, logger = [], logging.Handler(), get_logger()
    handler.emit = records.append
    level, logger.level = logger.level, logging.INFO
    logger.addHandler(handler)
    try:
        for split in ("train", "val", "test"):
            dropped = MUTAG(root, split=split, cache_dir=tmp_path / "cache")
            assert dropped.num_edge_features == 0
        kept = MUTAG(root, use_edge_attr=True, cache_dir=tmp_path / "cache")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    told = [r.getMessage() for r in records if "edge attributes" in r.getMessage()]
    assert len(told) == 1, told  # one line, not one per split
    assert "MUTAG_edge_attributes.txt: continuous edge attributes dropped" in told[0]
    assert "data.use_edge_attr=true" in told[0]
    assert kept.num_edge_features == 2 and kept[0].edge_attr.shape[1] == 2
