import numpy as np
import pytest
import torch

from geossm.registry import DATASETS
from geossm.tasks.graph.synthetic import FAMILIES, SyntheticGraphs, make_graph


def test_registered_deterministic_balanced_and_splits_differ():
    assert DATASETS.get("SyntheticGraphs") is SyntheticGraphs
    a = SyntheticGraphs(split="train", num_graphs=40)
    b = SyntheticGraphs(split="train", num_graphs=40)
    val = SyntheticGraphs(split="val", num_eval_graphs=40)
    assert len(a) == 40 and len(val) == 40
    assert all(torch.equal(g.edge_index, h.edge_index) for g, h in zip(a, b))
    assert not all(g.num_nodes == h.num_nodes and torch.equal(g.edge_index, h.edge_index)
                   for g, h in zip(a, val))
    labels = torch.cat([g.y for g in a])
    assert torch.bincount(labels).tolist() == [10] * len(FAMILIES)
    g = a[0]
    assert g.x.shape == (g.num_nodes, 9) and g.x.sum(1).eq(1).all()  # degree one-hot
    assert (a.num_features, a.num_classes, a.num_edge_features) == (9, 4, 0)
    assert 8 <= g.num_nodes <= 24 and g.edge_index.max() < g.num_nodes


@pytest.mark.parametrize("label", range(len(FAMILIES)))
def test_families_have_their_structure(label):
    rng = np.random.default_rng(label)
    edges, n = make_graph(rng, label, min_nodes=12, max_nodes=12, noise_edges=0)
    src, dst = edges
    assert edges.shape[1] % 2 == 0 and not (src == dst).any()
    pairs = {(int(a), int(b)) for a, b in zip(src, dst)}
    assert all((b, a) in pairs for a, b in pairs)  # undirected
    degree = np.bincount(src, minlength=n)
    undirected = edges.shape[1] // 2
    if FAMILIES[label] == "cycle":
        assert (degree == 2).all() and undirected == n
    elif FAMILIES[label] == "tree":
        assert undirected == n - 1 and degree.min() >= 1
    elif FAMILIES[label] == "ladder":
        assert undirected == 3 * (n // 2) - 2 and sorted(set(degree)) == [2, 3]
    else:  # barbell: two cliques and a path
        assert degree.max() >= 3 and undirected > n


def test_positional_encodings_and_bad_arguments():
    ds = SyntheticGraphs(split="test", num_eval_graphs=4, pe={"random_walk": 5})
    assert ds[0].pe.shape == (ds[0].num_nodes, 5)
    with pytest.raises(ValueError, match=r"SyntheticGraphs: root must be null \(the graphs are "
                                         r"generated\), got '/data'"):
        SyntheticGraphs(root="/data")
    with pytest.raises(ValueError, match=r"split_index: SyntheticGraphs has one fixed split"):
        SyntheticGraphs(split_index=3)
    with pytest.raises(ValueError, match=r"min_nodes: expected an int >= 7, got 3"):
        SyntheticGraphs(min_nodes=3)
    with pytest.raises(ValueError, match=r"split: expected one of \('train', 'val', 'test'\)"):
        SyntheticGraphs(split="dev")


def test_write_tu_folder_is_read_with_its_continuous_attributes(tmp_path):
    from geossm.tasks.graph.datasets import ENZYMES
    from geossm.tasks.graph.synthetic import write_tu_folder
    raw = write_tu_folder(tmp_path, "ENZYMES", num_classes=3, num_graphs=30, attr_dim=5,
                          min_nodes=8, max_nodes=10)
    assert (raw / "ENZYMES_node_attributes.txt").is_file()
    kept = ENZYMES(tmp_path, split="test", cache_dir=tmp_path / "cache")
    dropped = ENZYMES(tmp_path, split="test", cache_dir=tmp_path / "cache", use_node_attr=False)
    assert kept.num_classes == 3 and kept.num_features == 5 + 3 and dropped.num_features == 3
    g = kept[0]
    assert g.x.shape == (g.num_nodes, 8) and torch.equal(g.x[:, 5:], dropped[0].x)
    assert g.x[:, :5].abs().max() > 1.0  # raw measurements, not one-hot
    with pytest.raises(ValueError, match="num_classes >= 2"):
        write_tu_folder(tmp_path, num_classes=1)
