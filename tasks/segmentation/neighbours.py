"""Nearest neighbours of packed point clouds: the kNN behind the PCM models' point embedding.

``knn(coord, cu_seqlens, k)`` finds each point's ``k`` nearest neighbours within its own sample
(``cu_seqlens`` delimits the samples), exactly, by one of three searches: brute force in chunks
of queries (small samples), SciPy's KD-tree (large samples on the CPU) or a block search
pruned by bounding boxes (large samples on a GPU). ``checked_neighbours`` validates neighbours
computed elsewhere (the data loader's ``train.knn_in_loader``).
"""

from __future__ import annotations

import torch

from geossm.serialization.traceable import tracing

from .traceable import knn_op

__all__ = ["KDTREE_MIN_POINTS", "checked_neighbours", "knn"]

#: below this many points per sample brute force beats building a KD-tree on the CPU
KDTREE_MIN_POINTS = 4096
#: from this many points per sample a GPU takes the block search; below, brute force's n²
#: distances are few (8,192² = 67M) and cost two launches (the crossover is not measured)
BLOCKS_MIN_POINTS = 8192
#: points per block of the block search (at least ``k``)
BLOCK_POINTS = 32
#: blocks (the nearest by centre) whose points bound a block's k-th neighbour distance
BOUND_BLOCKS = 4

METHODS = ("auto", "brute", "kdtree", "blocks")


@torch.no_grad()
def knn(coord: torch.Tensor, cu_seqlens: torch.Tensor, k: int,
        max_elements: int | None = None, method: str = "auto") -> torch.Tensor:
    """Indices of the ``k`` nearest neighbours (self included) of every point, within its sample,
    nearest first.

    Exact whichever ``method``:

    - ``"brute"``: pairwise distances per sample in chunks of queries of at most
      ``max_elements`` distances each (default 2^28 on CUDA, 2^24 on CPU), so memory stays
      bounded for scenes of any size. O(n²) work: the right choice for small samples.
    - ``"kdtree"`` (CPU tensors only): SciPy's ``cKDTree`` on all cores (one per data-loader
      worker), O(n log n): a whole 120k-point LiDAR scan in seconds instead of minutes.
    - ``"blocks"``: brute force pruned by space, in torch on any device (``_knn_blocks``):
      the points are cut into the equal leaves (``BLOCK_POINTS`` to twice that) of a balanced
      k-d tree, and each leaf of queries is compared only with the leaves whose bounding boxes
      can hold one of its ``k`` nearest neighbours. Near O(n·k) work for surfaces and volumes.
    - ``"auto"``: per sample, the KD-tree on the CPU from ``KDTREE_MIN_POINTS`` points, the
      block search on a GPU from ``BLOCKS_MIN_POINTS``, brute force below.

    A sample with fewer than ``k`` points repeats its farthest neighbour. Host syncs:
    ``cu_seqlens`` is read on the host (one loop iteration per sample); the block search adds
    one per sample (its candidate counts plan the chunks).

    Shapes: ``coord (N, 3)``, ``cu_seqlens (B+1,)`` -> ``(N, k) long`` (global indices).
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if method not in METHODS:
        raise ValueError(f"knn method must be one of {METHODS}, got {method!r}")
    if method == "kdtree" and coord.is_cuda:
        raise ValueError("knn method='kdtree' runs on the CPU; use 'blocks', 'brute' or 'auto' "
                         "for CUDA tensors")
    if max_elements is None:
        max_elements = 2 ** 28 if coord.is_cuda else 2 ** 24
    if tracing():
        return knn_op(coord, cu_seqlens, k, max_elements, method)
    out = torch.empty(coord.shape[0], k, dtype=torch.long, device=coord.device)
    bounds = cu_seqlens.tolist()
    pts_all = coord.float()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b == a:
            continue
        search = _SEARCHES[_sample_method(method, coord.is_cuda, b - a)]
        out[a:b] = _pad_neighbours(search(pts_all[a:b], min(k, b - a), max_elements) + a, k)
    return out


def _sample_method(method: str, cuda: bool, points: int) -> str:
    """The search ``method`` resolves to for one sample of ``points`` points."""
    if method != "auto":
        return method
    if cuda:
        return "blocks" if points >= BLOCKS_MIN_POINTS else "brute"
    return "kdtree" if points >= KDTREE_MIN_POINTS else "brute"


def _knn_brute(pts: torch.Tensor, k: int, max_elements: int) -> torch.Tensor:
    """``(n, 3) float`` -> ``(n, k) long`` local indices, nearest first: all pairwise distances,
    in chunks of queries of at most ``max_elements`` distances."""
    n = pts.shape[0]
    step = max(1, max_elements // n)
    return torch.cat([torch.cdist(pts[q:q + step], pts).topk(k, dim=1, largest=False).indices
                      for q in range(0, n, step)])


def _knn_blocks(pts: torch.Tensor, k: int, max_elements: int,
                block_points: int | None = None) -> torch.Tensor:
    """``(n, 3) float`` -> ``(n, k) long`` local indices, nearest first: brute force between
    blocks of nearby points, pruned by their bounding boxes. Exact.

    1. ``_kd_blocks`` cuts the points into ``nb`` blocks of ``s`` points, ``max(block_points,
       k) <= s < 2 max(block_points, k)`` (default ``BLOCK_POINTS``): compact boxes, for flat
       scenes too (a space-filling curve of 3D cells jumps on a plane).
    2. Each block's radius: the largest, over its points, ``k``-th neighbour distance among the
       points of its ``BOUND_BLOCKS`` nearest blocks by box centre. It bounds the true ``k``-th
       neighbour distance of every point in the block from above.
    3. Each block of queries is compared with every block whose box comes within that radius
       of its own box (the others cannot hold a neighbour); blocks with about as many
       candidates go together, at most ``max_elements`` distances at a time.

    Distances are squared coordinate differences in float32, summed per axis: no
    ``|x|² + |y|² - 2xy`` cancellation as in ``torch.cdist`` on large inputs, so the ranking is
    the KD-tree's (float64) up to ties, and closer to it than brute force's.
    """
    n = pts.shape[0]
    leaf_points = max(block_points or BLOCK_POINTS, k)
    if n < (BOUND_BLOCKS + 1) * leaf_points:
        return _knn_brute(pts, k, max_elements)  # too few blocks to prune anything
    perm, blocks = _kd_blocks(pts, leaf_points)
    nb, size, _ = blocks.shape
    real = (perm < n).view(nb, size)
    lo, hi = blocks.amin(1), blocks.amax(1)  # (nb, 3) bounding boxes
    centre = (lo + hi) / 2
    rows = max(1, min(max_elements // (4 * nb), max_elements // (BOUND_BLOCKS * size * size)))
    radius2, counts = [], []
    for r in range(0, nb, rows):  # steps 2 and 3's candidate counts, a chunk of blocks at a time
        sl = slice(r, min(r + rows, nb))
        near = torch.cdist(centre[sl], centre).topk(BOUND_BLOCKS, dim=1, largest=False).indices
        dist2, _ = _nearest_in_blocks(blocks[sl], blocks, real, near, None, k)
        bound = dist2[..., -1].amax(1) * (1 + 1e-5) + 1e-12  # rounding: never prune a tie
        radius2.append(bound)
        counts.append((_box_gap2(lo[sl], hi[sl], lo, hi) <= bound[:, None]).sum(1))
    radius2, counts = torch.cat(radius2), torch.cat(counts)
    by_count = counts.argsort()
    found = torch.empty(nb, size, k, dtype=torch.long, device=pts.device)
    for start, stop, count in _chunks(counts[by_count].tolist(), size * size, max_elements):
        q = by_count[start:stop]
        gap2 = _box_gap2(lo[q], hi[q], lo, hi)  # (R, nb)
        gap2.masked_fill_(gap2 > radius2[q, None], float("inf"))
        gap2, cand = gap2.topk(count, dim=1, largest=False)
        _, found[q] = _nearest_in_blocks(blocks[q], blocks, real, cand, gap2.isfinite(), k)
    real = real.view(-1)
    result = torch.empty(n, k, dtype=torch.long, device=pts.device)
    result[perm[real]] = perm[found.view(nb * size, k)[real]]
    return result


def _kd_blocks(pts: torch.Tensor, block_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The points cut into ``2^L`` blocks of equal size ``s`` (``block_points <= s <
    2 block_points``) by ``L`` rounds of median splits, each group along its widest axis: the
    leaves of a balanced k-d tree, built by batched sorts (no per-group loop).

    ``pts (n, 3)`` -> ``(perm (2^L s,) long, blocks (2^L, s, 3))``: ``blocks`` flattened is
    ``pts`` padded to ``2^L s`` points, in the order ``perm`` (``perm >= n``: a padding copy;
    each box still holds every real point of its block). The fewer than ``2^L`` pads copy points
    spread over the input, so they scatter over the leaves: copies of one point would fill whole
    leaves of nothing but padding, whose bounds see no real point and prune nothing.
    """
    n = pts.shape[0]
    levels = max(0, (n // block_points).bit_length() - 1)  # 2^L <= n / block_points
    size = -(-n // 2 ** levels)
    pads = 2 ** levels * size - n
    perm = torch.arange(n + pads, device=pts.device)
    coords = torch.cat([pts, pts[torch.arange(pads, device=pts.device) * n // max(pads, 1)]])
    for level in range(levels):
        groups = coords.view(2 ** level, -1, 3)
        axis = (groups.amax(1) - groups.amin(1)).argmax(1)  # (groups,) widest extent
        key = groups.gather(2, axis[:, None, None].expand(-1, groups.shape[1], 1)).squeeze(2)
        order = key.argsort(dim=1)  # the lower half of each group, then the upper half
        coords = groups.gather(1, order[..., None].expand(-1, -1, 3)).view(-1, 3)
        perm = perm.view(2 ** level, -1).gather(1, order).view(-1)
    return perm, coords.view(2 ** levels, size, 3)


def _chunks(counts: list[int], cost: int, max_elements: int) -> list[tuple[int, int, int]]:
    """Query blocks sorted by candidate count ``counts`` (ascending), grouped into ``(start,
    stop, count)`` chunks: at most ``max_elements`` distances each (``cost`` per block and
    candidate), and no block padded to more than 1.25x its own candidates (or one more)."""
    out, start = [], 0
    while start < len(counts):
        stop = start + 1
        while (stop < len(counts) and counts[stop] <= max(counts[start] * 1.25, counts[start] + 1)
               and (stop + 1 - start) * cost * counts[stop] <= max_elements):
            stop += 1
        out.append((start, stop, counts[stop - 1]))
        start = stop
    return out


def _box_gap2(lo_a: torch.Tensor, hi_a: torch.Tensor, lo_b: torch.Tensor,
              hi_b: torch.Tensor) -> torch.Tensor:
    """Squared distances between boxes ``a`` (R, 3) and ``b`` (M, 3) given by their corners:
    ``(R, M)``, 0 where they overlap. No point of ``a`` is nearer than this to one of ``b``."""
    gap = (lo_a[:, None] - hi_b[None]).clamp_min(0) + (lo_b[None] - hi_a[:, None]).clamp_min(0)
    return gap.square().sum(-1)


def _nearest_in_blocks(queries: torch.Tensor, blocks: torch.Tensor, real: torch.Tensor,
                       cand: torch.Tensor, cand_ok: torch.Tensor | None,
                       k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest points to each query among its candidate blocks.

    ``queries (R, s, 3)``, ``blocks (nb, s, 3)``, ``real (nb, s)`` bool (False: padding),
    ``cand (R, C)`` block indices per query block, ``cand_ok (R, C)`` bool or None (all) ->
    ``(dist2 (R, s, k), index (R, s, k))``, nearest first; ``index`` counts points over the
    flattened blocks (``block * s + j``).
    """
    rows, count = cand.shape
    s = blocks.shape[1]
    points = blocks[cand].view(rows, 1, count * s, 3)
    usable = real[cand] if cand_ok is None else real[cand] & cand_ok[..., None]
    dist2 = (queries[..., 0, None] - points[..., 0]).square_()  # (R, s, C*s)
    dist2 += (queries[..., 1, None] - points[..., 1]).square_()
    dist2 += (queries[..., 2, None] - points[..., 2]).square_()
    dist2.masked_fill_(~usable.view(rows, 1, count * s), float("inf"))
    dist2, j = dist2.topk(k, dim=2, largest=False)
    block = cand.gather(1, (j // s).view(rows, -1)).view(rows, s, k)
    return dist2, block * s + j % s


_SEARCHES = {"brute": _knn_brute, "blocks": _knn_blocks,
             "kdtree": lambda pts, k, max_elements: _knn_kdtree(pts, k)}


def _knn_kdtree(pts: torch.Tensor, k: int) -> torch.Tensor:
    """``(n, 3) float`` -> ``(n, k) long`` local indices, nearest first, via SciPy's cKDTree."""
    from scipy.spatial import cKDTree

    xyz = pts.detach().cpu().double().numpy()  # float64: no rounding in the ranking
    # one core per data-loader worker (the workers share the machine), all cores elsewhere
    workers = 1 if torch.utils.data.get_worker_info() is not None else -1
    _, idx = cKDTree(xyz).query(xyz, k=k, workers=workers)
    return torch.from_numpy(idx.reshape(len(xyz), k).astype("int64"))


def checked_neighbours(neighbours: torch.Tensor, coord: torch.Tensor, k: int) -> torch.Tensor:
    """``neighbours`` as given to the kNN embedding: ``(N, k)`` integer indices of the points
    ``coord (N, 3)``, returned long on their device; other shapes and dtypes raise
    ``ValueError``. The values are not read (no host sync): ``knn`` made them."""
    points = coord.shape[0]
    if neighbours.dim() != 2 or tuple(neighbours.shape) != (points, k) or \
            neighbours.dtype.is_floating_point or neighbours.dtype == torch.bool:
        raise ValueError(f"neighbours must be ({points}, {k}) integer indices (knn of the "
                         f"batch's points), got {tuple(neighbours.shape)} {neighbours.dtype}")
    return neighbours.to(coord.device, torch.long)


def _pad_neighbours(idx: torch.Tensor, k: int) -> torch.Tensor:
    """Repeat the last (farthest) column of ``idx (n, kk)`` up to ``k`` columns."""
    if idx.shape[1] < k:
        idx = torch.cat([idx, idx[:, -1:].expand(-1, k - idx.shape[1])], 1)
    return idx
