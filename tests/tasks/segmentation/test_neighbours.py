import pytest
import torch

import geossm.tasks.segmentation.neighbours as neighbours
from geossm.tasks.segmentation.models import _example_inputs
from geossm.tasks.segmentation.neighbours import knn


def dist2(coord: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``(N, k)`` squared distances from each point to its neighbours ``idx``, nearest first."""
    return (coord[idx] - coord[:, None]).square().sum(-1)


def test_knn_matches_brute_force_per_sample():
    coord, _, cu = _example_inputs(3, lengths=(30, 5, 12))
    idx = knn(coord, cu, k=8, max_elements=64)  # tiny chunks: exercises the chunk loop
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        pts = coord[a:b]
        d = torch.cdist(pts, pts)
        for i in range(b - a):
            got = idx[a + i]
            assert ((got >= a) & (got < b)).all()  # never crosses samples
            kk = min(8, b - a)
            ref = d[i].topk(kk, largest=False).values
            torch.testing.assert_close(d[i][got - a][:kk].sort().values, ref.sort().values)
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        knn(coord, cu, 0)


@pytest.mark.parametrize("lengths", [(30, 5, 12), (700, 0, 3)])
def test_knn_kdtree_finds_the_same_neighbour_distances_as_brute_force(lengths):
    coord, _, cu = _example_inputs(3, lengths=lengths)
    brute = knn(coord, cu, k=8, method="brute")
    tree = knn(coord, cu, k=8, method="kdtree")
    torch.testing.assert_close(dist2(coord, tree), dist2(coord, brute), atol=1e-5, rtol=0)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        assert ((tree[a:b] >= a) & (tree[a:b] < b)).all()


def test_knn_auto_takes_the_tree_for_large_cpu_samples(monkeypatch):
    calls = []
    real = neighbours._knn_kdtree
    monkeypatch.setitem(neighbours._SEARCHES, "kdtree",
                        lambda pts, k, max_elements: calls.append(len(pts)) or real(pts, k))
    monkeypatch.setattr(neighbours, "KDTREE_MIN_POINTS", 20)
    coord, _, cu = _example_inputs(3, lengths=(30, 5))
    knn(coord, cu, k=4)
    assert calls == [30]  # the 5-point sample stays brute force
    with pytest.raises(ValueError, match=r"knn method must be one of \('auto', 'brute', "
                                         r"'kdtree', 'blocks'\), got 'ball'"):
        knn(coord, cu, k=4, method="ball")


def test_knn_auto_on_a_gpu_takes_the_block_search_for_large_samples():
    """Which search ``auto`` picks per sample, without a GPU: the resolution is host logic."""
    big, small = neighbours.BLOCKS_MIN_POINTS, neighbours.BLOCKS_MIN_POINTS - 1
    assert neighbours._sample_method("auto", True, big) == "blocks"
    assert neighbours._sample_method("auto", True, small) == "brute"
    assert neighbours._sample_method("auto", False, big) == "kdtree"
    assert neighbours._sample_method("brute", True, big) == "brute"


def scenes() -> dict[str, torch.Tensor]:
    """Point sets the block search must get right: a volume, a thin plane, far-apart clusters
    (empty space between the blocks), a LiDAR-like ring density, and heavy duplicates."""
    g = torch.Generator().manual_seed(0)
    n = 3000
    radius = torch.rand(n, generator=g) ** 2 * 80 + 2
    angle = torch.rand(n, generator=g) * 6.283
    return {
        "cube": torch.rand(n, 3, generator=g),
        "plane": torch.cat([torch.rand(n, 2, generator=g) * 50,
                            torch.randn(n, 1, generator=g) * 0.01], 1),
        "clusters": torch.randn(n, 3, generator=g) * 0.3
                    + torch.randint(0, 4, (n, 1), generator=g).float() * 25,
        "rings": torch.stack([radius * angle.cos(), radius * angle.sin(),
                              torch.randn(n, generator=g) * 0.2], 1),
        "duplicates": torch.randint(0, 6, (n, 3), generator=g).float(),
    }


@pytest.mark.parametrize("name", list(scenes()))
@pytest.mark.parametrize("block_points,max_elements", [(8, 2 ** 14), (32, 2 ** 24)])
def test_knn_blocks_finds_the_kdtree_neighbour_distances(name, block_points, max_elements,
                                                         monkeypatch):
    """Exact: the same distances as SciPy's float64 KD-tree, in order, for every point; small
    blocks and a small budget exercise many chunks; the last block is padded (3000 % 32 != 0)."""
    monkeypatch.setattr(neighbours, "BLOCK_POINTS", block_points)
    pts = scenes()[name]
    cu = torch.tensor([0, 1000, 1000, 3000])  # an empty sample in between
    got = knn(pts, cu, k=10, max_elements=max_elements, method="blocks")
    tree = knn(pts, cu, k=10, method="kdtree")
    torch.testing.assert_close(dist2(pts, got), dist2(pts, tree), atol=1e-6, rtol=1e-6)
    assert ((got[:1000] < 1000).all() and (got[1000:] >= 1000).all())  # within each sample
    if name != "duplicates":  # a point is its own nearest neighbour unless it has twins
        assert (got[:, 0] == torch.arange(3000)).all()


def test_knn_blocks_compares_far_fewer_points_than_brute_force(monkeypatch):
    """The pruning works: on a plane of 8,192 points with blocks of 32, the block search
    computes under a tenth of brute force's n² distances (bound included)."""
    computed = []
    real = neighbours._nearest_in_blocks

    def counting(queries, blocks, real_points, cand, cand_ok, k):
        computed.append(queries.shape[0] * queries.shape[1] * cand.shape[1] * blocks.shape[1])
        return real(queries, blocks, real_points, cand, cand_ok, k)

    monkeypatch.setattr(neighbours, "_nearest_in_blocks", counting)
    g = torch.Generator().manual_seed(1)
    pts = torch.cat([torch.rand(8192, 2, generator=g) * 10, torch.zeros(8192, 1)], 1)
    idx = neighbours._knn_blocks(pts, 16, 2 ** 24, block_points=32)
    assert 0 < sum(computed) < 8192 ** 2 / 10
    tree = neighbours._knn_kdtree(pts, 16)
    torch.testing.assert_close(dist2(pts, idx), dist2(pts, tree), atol=1e-6, rtol=1e-6)


def test_knn_blocks_scatters_the_padding_over_the_leaves(monkeypatch):
    """530 points in 64 leaves of 9 need 46 pads. Copies of one point would fill five leaves
    with padding alone, whose bounds see no real point and take every leaf as a candidate;
    spread copies leave every leaf mostly real and no leaf compared with all the others."""
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(530, 3, generator=g)
    perm, blocks = neighbours._kd_blocks(pts, 8)
    assert blocks.shape == (64, 9, 3) and (perm >= 530).sum() == 46
    assert (perm < 530).view(64, 9).sum(1).min() >= 5
    candidates = []
    real = neighbours._nearest_in_blocks

    def counting(queries, blocks, real_points, cand, cand_ok, k):
        candidates.append(cand.shape[1])
        return real(queries, blocks, real_points, cand, cand_ok, k)

    monkeypatch.setattr(neighbours, "_nearest_in_blocks", counting)
    idx = neighbours._knn_blocks(pts, 4, 2 ** 24, block_points=8)
    assert max(candidates) < 32
    tree = neighbours._knn_kdtree(pts, 4)
    torch.testing.assert_close(dist2(pts, idx), dist2(pts, tree), atol=1e-6, rtol=1e-6)


def test_knn_blocks_small_samples_and_k_above_the_block_size():
    """Fewer points than ``k`` (the farthest repeated), ``k`` larger than ``BLOCK_POINTS``
    (blocks grow to ``k`` points) and samples too small to prune all match the KD-tree."""
    coord, _, cu = _example_inputs(3, lengths=(5, 130, 700))
    got = knn(coord, cu, k=80, method="blocks")
    tree = knn(coord, cu, k=80, method="kdtree")
    torch.testing.assert_close(dist2(coord, got), dist2(coord, tree), atol=1e-6, rtol=1e-6)
    assert (got[:5, :5].sort(dim=1).values == torch.arange(5)).all()  # all 5, then repeats
    assert (got[:5, 5:] == got[:5, 4:5]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the block search "
                    "is the GPU's default for large samples; CPU runs of it are tested above)")
def test_knn_auto_on_cuda_matches_the_kdtree():
    """On a GPU, ``auto`` takes the block search for a LiDAR-like 20k-point sample and brute
    force for a small one; both give the KD-tree's neighbour distances."""
    pts = torch.cat([scenes()["rings"]] * 7)[:20_000] + torch.randn(20_000, 3) * 1e-3
    pts = torch.cat([pts, torch.rand(500, 3)])
    cu = torch.tensor([0, 20_000, 20_500])
    got = knn(pts.cuda(), cu.cuda(), k=16).cpu()
    tree = knn(pts, cu, k=16, method="kdtree")
    torch.testing.assert_close(dist2(pts, got), dist2(pts, tree), atol=1e-4, rtol=1e-5)


hypothesis = pytest.importorskip("hypothesis", reason="hypothesis not installed: no property test")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SHAPES = ("volume", "plane", "line", "grid", "offset")


def shaped_points(shape: str, n: int, seed: int) -> torch.Tensor:
    """``n`` points of one kind the block search must handle: a volume, a plane, a line (boxes
    of zero width), integer cells (many exact ties and twins), or a cloud far from the origin
    (float32 rounding of the coordinates)."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=g)
    if shape == "plane":
        pts[:, 2] = 0.5
    elif shape == "line":
        pts = pts[:, :1] * torch.tensor([1.0, 2.0, -3.0])
    elif shape == "grid":
        pts = (pts * 4).floor()
    elif shape == "offset":
        pts = pts * 10 + 1000
    return pts


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from(SHAPES), n=st.integers(1, 700), k=st.integers(1, 20),
       block_points=st.integers(1, 24), budget=st.sampled_from([2 ** 10, 2 ** 14, 2 ** 24]),
       seed=st.integers(0, 2 ** 16))
def test_knn_blocks_property_equals_the_kdtree(shape, n, k, block_points, budget, seed):
    """Any size, ``k``, leaf size and distance budget: the block search returns, rank by rank,
    the KD-tree's neighbour distances (ties may pick other points at the same distance)."""
    pts = shaped_points(shape, n, seed)
    cu = torch.tensor([0, n])
    got = neighbours._knn_blocks(pts, min(k, n), budget, block_points=block_points)
    tree = neighbours._knn_kdtree(pts, min(k, n))
    scale = float(pts.abs().max()) ** 2 + 1
    torch.testing.assert_close(dist2(pts, got), dist2(pts, tree), atol=1e-6 * scale, rtol=1e-5)
    assert got.shape == (n, min(k, n)) and int(got.min()) >= 0 and int(got.max()) < n
    assert knn(pts, cu, k, max_elements=budget, method="blocks").shape == (n, k)  # k > n: padded
