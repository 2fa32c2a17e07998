"""Point-cloud transforms on sample dicts (NumPy, per sample, before packing), and
``PointPreprocess``, the deterministic preparation every point-cloud dataset and ``predict``
apply.

A sample is a dict of arrays whose first dimension indexes points (``coord (N, 3)``,
``feat (N, C)``, ``label (N,)``, ``normal (N, 3)``, ``color (N, 3)``...) plus per-sample values
(``category``). Transforms that select points (grid sampling, crops) apply the same index to
every per-point array; geometric ones rotate ``coord`` and ``normal`` together.

Transforms follow ``geossm.transforms`` (``t(sample, rng=None)``; configs list them as
``augment: [{name: RandomRotate, axis: z}, ...]``). The point-cloud datasets call them with
``rng=None``: each transform that draws makes its own generator from torch's global RNG, so the
trainer's seeding (and exact resume) covers them like any torch random op.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from geossm.registry import TRANSFORMS
from geossm.transforms import Compose, Sample, generator

#: Per-point key carrying each point's original index through the evaluation sampling.
_SOURCE_INDEX = "_source_index"

#: Per-point keys that rotate with the coordinates.
VECTOR_KEYS = ("normal",)


def num_points(sample: Mapping[str, Any]) -> int:
    """``N`` of a sample (the length of ``coord``)."""
    if "coord" not in sample:
        raise KeyError(f"sample: expected a 'coord' array, got keys {sorted(sample)}")
    return len(sample["coord"])


def select(sample: Mapping[str, Any], index: np.ndarray) -> Sample:
    """Apply the point index ``index`` (indices or a boolean mask) to every per-point array."""
    n = num_points(sample)
    out = {}
    for k, v in sample.items():
        if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == n:
            out[k] = v[index]
        else:
            out[k] = v
    return out


def grid_cells(coord: np.ndarray, grid_size: float) -> np.ndarray:
    """Integer cell of every point of a ``grid_size`` grid anchored at the cloud's minimum.

    Shapes: ``coord (N, 3)`` -> ``(N, 3) int64``."""
    return np.floor((coord - coord.min(0)) / grid_size).astype(np.int64)


def grid_pick(coord: np.ndarray, grid_size: float, k: int = 0) -> np.ndarray:
    """Indices (ascending) of the ``k``-th point, in input order, of every occupied cell; a cell
    of ``c`` points gives its ``k mod c``-th. ``k=0`` is ``GridSample(mode="first")``; ``k`` over
    ``0..max c - 1`` visits every point (Pointcept's test-time fragments).

    Shapes: ``coord (N, 3)`` -> ``(number of occupied cells,) int64``."""
    if len(coord) == 0:
        return np.zeros(0, dtype=np.int64)
    return _pick_in_cells(*_cell_ids(coord, grid_size), k)


def _cell_ids(coord: np.ndarray, grid_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Occupied cell of every point ``(N,)`` (numbered in sorted cell order) and the points
    per occupied cell ``(number of occupied cells,)``. ``coord`` has at least one point."""
    _, cell_id, counts = np.unique(grid_cells(coord, grid_size), axis=0, return_inverse=True,
                                   return_counts=True)
    return cell_id.reshape(-1), counts


def _pick_in_cells(cell_id: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """``grid_pick`` from the cells of ``_cell_ids``."""
    by_cell = np.argsort(cell_id, kind="stable")  # input order inside each cell
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.sort(by_cell[starts + k % counts])


@TRANSFORMS.register
class GridSample:
    """Keep one point per cell of a ``grid_size`` grid (voxel downsampling).

    ``mode="random"`` keeps a random point of every cell (training: a different subset each
    epoch); ``mode="first"`` keeps the first point in input order (deterministic, evaluation).
    Adds nothing; ``N`` shrinks to the number of occupied cells.
    """

    def __init__(self, grid_size: float, mode: str = "random") -> None:
        if not grid_size > 0:
            raise ValueError(f"GridSample: grid_size must be > 0, got {grid_size!r}")
        if mode not in ("random", "first"):
            raise ValueError(f"GridSample: mode must be 'random' or 'first', got {mode!r}")
        self.grid_size, self.mode = float(grid_size), mode

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        coord = np.asarray(sample["coord"])
        if len(coord) == 0:
            return sample
        cell = grid_cells(coord, self.grid_size)
        order = np.arange(len(coord))
        if self.mode == "random":
            order = generator(rng).permutation(len(coord))
        _, first = np.unique(cell[order], axis=0, return_index=True)
        return select(sample, np.sort(order[first]))

    def __repr__(self) -> str:
        return f"GridSample({self.grid_size}, {self.mode!r})"


@TRANSFORMS.register
class RandomRotate:
    """Rotate ``coord`` (and normals) about ``axis`` by an angle uniform in ``angle`` (radians)."""

    def __init__(self, axis: str = "z", angle: tuple[float, float] = (-np.pi, np.pi)) -> None:
        if axis not in ("x", "y", "z"):
            raise ValueError(f"RandomRotate: axis must be 'x', 'y' or 'z', got {axis!r}")
        self.axis, self.angle = axis, tuple(angle)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        a = generator(rng).uniform(*self.angle)
        c, s = np.cos(a), np.sin(a)
        i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[self.axis]
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        return _linear(sample, rot)


@TRANSFORMS.register
class RandomScale:
    """Scale ``coord`` by a factor uniform in ``scale`` (per axis when ``anisotropic``)."""

    def __init__(self, scale: tuple[float, float] = (0.9, 1.1), anisotropic: bool = False) -> None:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"RandomScale: scale must be (low, high) with 0 < low <= high, "
                             f"got {scale!r}")
        self.scale, self.anisotropic = tuple(scale), anisotropic

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        f = generator(rng).uniform(*self.scale, size=3 if self.anisotropic else 1)
        out = dict(sample)
        out["coord"] = (np.asarray(sample["coord"]) * f).astype(np.float32)
        if self.anisotropic:
            for k in VECTOR_KEYS:
                if k in out:  # normals transform with the inverse scale
                    n = np.asarray(out[k]) / f
                    out[k] = (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
                              ).astype(np.float32)
        return out


@TRANSFORMS.register
class RandomFlip:
    """Mirror ``coord`` (and normals) along each axis in ``axes`` with probability ``p``."""

    def __init__(self, axes: Sequence[str] = ("x", "y"), p: float = 0.5) -> None:
        for a in axes:
            if a not in ("x", "y", "z"):
                raise ValueError(f"RandomFlip: axes must be among 'x', 'y', 'z', got {a!r}")
        self.axes, self.p = tuple(axes), float(p)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        g = generator(rng)
        diag = np.ones(3)
        for a in self.axes:
            if g.uniform() < self.p:
                diag["xyz".index(a)] = -1
        return _linear(sample, np.diag(diag))


@TRANSFORMS.register
class RandomJitter:
    """Add Gaussian noise ``N(0, sigma²)`` clipped to ``±clip`` to ``coord``."""

    def __init__(self, sigma: float = 0.005, clip: float = 0.02) -> None:
        if sigma < 0 or clip < 0:
            raise ValueError(f"RandomJitter: sigma and clip must be >= 0, got {sigma}, {clip}")
        self.sigma, self.clip = float(sigma), float(clip)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        coord = np.asarray(sample["coord"])
        noise = np.clip(generator(rng).normal(0, self.sigma, size=coord.shape),
                        -self.clip, self.clip)
        return {**sample, "coord": (coord + noise).astype(np.float32)}


@TRANSFORMS.register
class NormalizeCoord:
    """Centre ``coord`` on its bounding-box centre (``"center"``) or mean (``"mean"``) and scale
    it into the unit sphere (objects: ShapeNetPart, ModelNet40, synthetic parts)."""

    def __init__(self, center: str = "center", unit_sphere: bool = True) -> None:
        if center not in ("center", "mean"):
            raise ValueError(f"NormalizeCoord: center must be 'center' or 'mean', got {center!r}")
        self.center, self.unit_sphere = center, unit_sphere

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        coord = np.asarray(sample["coord"], dtype=np.float64)
        if len(coord) == 0:
            return sample
        c = coord.mean(0) if self.center == "mean" else (coord.min(0) + coord.max(0)) / 2
        coord = coord - c
        if self.unit_sphere:
            coord = coord / max(float(np.linalg.norm(coord, axis=1).max()), 1e-12)
        return {**sample, "coord": coord.astype(np.float32)}


@TRANSFORMS.register
class CenterShift:
    """Shift ``coord`` so its x-y bounding-box centre is at 0 and its lowest z at 0 (scenes)."""

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        coord = np.asarray(sample["coord"])
        if len(coord) == 0:
            return sample
        lo, hi = coord.min(0), coord.max(0)
        shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
        return {**sample, "coord": (coord - shift).astype(np.float32)}


@TRANSFORMS.register
class RandomSubsample:
    """Keep at most ``num_points`` points, drawn without replacement (``mode="random"``) or the
    first ones (``"first"``); with ``pad=True`` smaller clouds are topped up by repeating points
    (fixed-size inputs, e.g. the published ShapeNetPart protocol of 2048 points)."""

    def __init__(self, num_points: int, mode: str = "random", pad: bool = False) -> None:
        if not isinstance(num_points, int) or num_points < 1:
            raise ValueError(f"RandomSubsample: num_points must be an int >= 1, got {num_points!r}")
        if mode not in ("random", "first"):
            raise ValueError(f"RandomSubsample: mode must be 'random' or 'first', got {mode!r}")
        self.num_points, self.mode, self.pad = num_points, mode, pad

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        n = num_points(sample)
        if n > self.num_points:
            idx = (generator(rng).choice(n, self.num_points, replace=False)
                   if self.mode == "random" else np.arange(self.num_points))
            return select(sample, np.sort(idx))
        if self.pad and 0 < n < self.num_points:
            extra = generator(rng).choice(n, self.num_points - n, replace=True)
            return select(sample, np.concatenate([np.arange(n), extra]))
        return sample


@TRANSFORMS.register
class SphereCrop:
    """Crop large scenes to at most ``max_points``: the points nearest to a centre (a random
    point when ``mode="random"``, the scene centre when ``"center"``). Smaller scenes pass."""

    def __init__(self, max_points: int, mode: str = "random") -> None:
        if not isinstance(max_points, int) or max_points < 1:
            raise ValueError(f"SphereCrop: max_points must be an int >= 1, got {max_points!r}")
        if mode not in ("random", "center"):
            raise ValueError(f"SphereCrop: mode must be 'random' or 'center', got {mode!r}")
        self.max_points, self.mode = max_points, mode

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        coord = np.asarray(sample["coord"])
        n = len(coord)
        if n <= self.max_points:
            return sample
        if self.mode == "random":
            center = coord[generator(rng).integers(n)]
        else:
            center = (coord.min(0) + coord.max(0)) / 2
        d = np.sum((coord - center) ** 2, axis=1)
        idx = np.argpartition(d, self.max_points - 1)[:self.max_points]
        return select(sample, np.sort(idx))


def _linear(sample: Sample, mat: np.ndarray) -> Sample:
    out = dict(sample)
    out["coord"] = (np.asarray(sample["coord"]) @ mat.T).astype(np.float32)
    for k in VECTOR_KEYS:
        if k in out:
            out[k] = (np.asarray(out[k]) @ mat.T).astype(np.float32)
    return out


class PointPreprocess:
    """What every point-cloud dataset does to a raw sample besides augmentation, in order::

        grid sampling (grid_size) -> crop (max_points, training) -> subset (num_points)
            -> normalisation (normalize) -> [augmentation, training] -> feat (feat_keys)

    Evaluation (``__call__``) is deterministic: grid sampling keeps each cell's first point
    and the subset is drawn from ``numpy.random.default_rng(index)`` (reproducible metrics).
    Training (``sample_points`` with a generator, then ``features``) keeps a random point per
    cell, crops around a random point and draws a random subset. ``geossm predict`` uses the
    evaluation path with ``num_points=None``: every grid-sampled point is predicted.

    With ``full_resolution`` the evaluation path also keeps the way back to every original
    point (what the benchmarks score, as Pointcept's tester does): ``inverse (N_orig, votes)``,
    for each original point and pass the row of the point that stands for it (the one kept from
    its grid cell; the nearest kept point when a subset or crop dropped that one), and
    ``full_label (N_orig,)``. With ``votes = V > 1`` the sample holds ``V`` passes one after
    another (pass ``k`` keeps the ``k``-th point of every cell, ``grid_pick``, and draws its subset
    from ``default_rng([index, k])``; pass 0 is the plain evaluation sample) and
    ``vote_lengths (V,)`` their sizes; the task sums the passes' logits on the original points.

    Args:
        feat_keys: per-point arrays concatenated into ``feat`` (``coord``, ``normal``, ``color``,
            ``strength``), default ``("coord",)``.
        grid_size: voxel size of grid sampling (one point per cell), default None (off).
        max_points: crop training samples to this many points around a random point, default
            None (off); evaluation keeps whole scenes.
        num_points: random subset of this size, default None (all points).
        normalize: centre and scale into the unit sphere (objects), default False.
        full_resolution: evaluation samples keep ``inverse`` and ``full_label``, default False.
        votes: evaluation passes per sample (test-time voting; needs ``full_resolution``),
            default 1.
    """

    def __init__(self, feat_keys: Sequence[str] = ("coord",), grid_size: float | None = None,
                 max_points: int | None = None, num_points: int | None = None,
                 normalize: bool = False, full_resolution: bool = False, votes: int = 1) -> None:
        if isinstance(feat_keys, str) or not feat_keys:
            raise ValueError(f"feat_keys: expected a non-empty list of array names, got "
                             f"{feat_keys!r}")
        if not isinstance(votes, int) or isinstance(votes, bool) or votes < 1:
            raise ValueError(f"votes: expected an int >= 1, got {votes!r}")
        if votes > 1 and not full_resolution:
            raise ValueError(f"votes: {votes} passes are summed on the original points, which "
                             "needs full_resolution=True (eval.full_resolution), got False")
        self.full_resolution, self.votes = bool(full_resolution), votes
        if grid_size is not None and not grid_size > 0:
            raise ValueError(f"grid_size: expected a positive float or null, got {grid_size!r}")
        for name, v in (("max_points", max_points), ("num_points", num_points)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}: expected an int >= 1 or null, got {v!r}")
        self.feat_keys = tuple(feat_keys)
        self.grid_size, self.max_points, self.num_points = grid_size, max_points, num_points
        self.normalize = normalize

    def __call__(self, sample: Sample, index: int = 0) -> Sample:
        """The evaluation path: points of ``sample`` chosen deterministically (from ``index``),
        then ``feat``."""
        if not self.full_resolution:
            chosen = self.sample_points(sample, np.random.default_rng(index), train=False)
            return self.features(chosen)
        return self.full_resolution_sample(sample, index)

    def full_resolution_sample(self, sample: Sample, index: int = 0) -> Sample:
        """The evaluation sample of ``votes`` passes with ``inverse (N_orig, votes)`` (rows of
        the packed passes), ``vote_lengths (votes,)`` and ``full_label (N_orig,)`` (when the
        sample has per-point labels); see the class doc."""
        n = num_points(sample)
        tagged = {**sample, _SOURCE_INDEX: np.arange(n)}
        coord = np.asarray(sample["coord"])
        # the original points' grid cells, shared by every pass (computed once per sample)
        cells = _cell_ids(coord, self.grid_size) if self.grid_size is not None and n else None
        passes, columns, offset = [], [], 0
        for vote in range(self.votes):
            chosen = self._vote_points(tagged, index, vote, cells)
            kept = chosen[_SOURCE_INDEX]
            columns.append(self._inverse(coord, kept, cells) + offset)
            offset += len(kept)
            passes.append(self.features(chosen))
        out = {k: (np.concatenate([p[k] for p in passes]) if isinstance(v, np.ndarray) else v)
               for k, v in passes[0].items()}
        out["inverse"] = np.stack(columns, 1)
        out["vote_lengths"] = np.array([len(p["coord"]) for p in passes], dtype=np.int64)
        label = sample.get("label")
        if isinstance(label, np.ndarray) and label.ndim >= 1:
            out["full_label"] = label.astype(np.int64).reshape(-1)
        return out

    def _vote_points(self, sample: Sample, index: int, vote: int,
                     cells: tuple[np.ndarray, np.ndarray] | None) -> Sample:
        """Pass ``vote`` of the evaluation sampling (pass 0: ``sample_points``); ``cells``: the
        ``_cell_ids`` of ``sample`` (None without grid sampling or points)."""
        if vote == 0:
            return self.sample_points(sample, np.random.default_rng(index), train=False)
        if self.grid_size is not None:
            sample = select(sample, grid_pick(np.asarray(sample["coord"]), self.grid_size, vote)
                            if cells is None else _pick_in_cells(*cells, vote))
        rng = np.random.default_rng([index, vote])
        steps = [RandomSubsample(self.num_points)] if self.num_points is not None else []
        if self.normalize:
            steps.append(NormalizeCoord())
        return Compose(steps)(sample, rng)

    def _inverse(self, coord: np.ndarray, kept: np.ndarray,
                 cells: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """Row (in the kept points) standing for every original point: the kept point of its
        grid cell (``cells``: the ``_cell_ids`` of ``coord``, None without grid sampling),
        else (cell dropped by a subset) the nearest kept point.

        Shapes: ``coord (N, 3)``, ``kept (M,)`` original indices -> ``(N,) int64``."""
        inverse = np.full(len(coord), -1, dtype=np.int64)
        if cells is not None:
            cell_id = cells[0]
            row_of_cell = np.full(cell_id.max() + 1, -1, dtype=np.int64)
            row_of_cell[cell_id[kept]] = np.arange(len(kept))
            inverse = row_of_cell[cell_id]
        inverse[kept] = np.arange(len(kept))
        missing = np.flatnonzero(inverse < 0)
        if len(missing) and len(kept):
            from scipy.spatial import cKDTree
            _, nearest = cKDTree(coord[kept]).query(coord[missing])
            inverse[missing] = nearest
        return inverse

    def sample_points(self, sample: Sample, rng: np.random.Generator, train: bool) -> Sample:
        """Grid sampling, crop (``train`` only), subset and normalisation, drawing from ``rng``."""
        steps = []
        if self.grid_size is not None:
            steps.append(GridSample(self.grid_size, "random" if train else "first"))
        if train and self.max_points is not None:
            steps.append(SphereCrop(self.max_points))
        if self.num_points is not None:
            steps.append(RandomSubsample(self.num_points))
        if self.normalize:
            steps.append(NormalizeCoord())
        return Compose(steps)(sample, rng)

    def features(self, sample: Sample) -> Sample:
        """``coord``, ``feat`` (the ``feat_keys`` arrays side by side), ``label`` and
        ``category``: the keys the task packs. ``KeyError`` names a missing ``feat_keys`` entry."""
        parts = []
        for k in self.feat_keys:
            if k not in sample:
                raise KeyError(f"feat_keys names '{k}', which the sample does not provide (it "
                               f"has {sorted(sample)})")
            v = np.asarray(sample[k], dtype=np.float32)
            parts.append(v.reshape(len(v), -1))
        out = {"coord": np.ascontiguousarray(sample["coord"], dtype=np.float32),
               "feat": np.ascontiguousarray(np.concatenate(parts, 1), dtype=np.float32)}
        label = sample.get("label")
        if isinstance(label, np.ndarray) and label.ndim >= 1:
            out["label"] = label.astype(np.int64).reshape(-1)
        elif label is not None:
            out["label"] = int(label)
        if "category" in sample:
            out["category"] = int(sample["category"])
        return out

    def __repr__(self) -> str:
        return (f"PointPreprocess(feat_keys={self.feat_keys}, grid_size={self.grid_size}, "
                f"max_points={self.max_points}, num_points={self.num_points}, "
                f"normalize={self.normalize}, full_resolution={self.full_resolution}, "
                f"votes={self.votes})")
