"""``synthetic_parts``: procedurally generated shapes made of labelled parts (the embedded default).

Every shape is one of four categories assembled from surface primitives (boxes, cylinders,
cones, tori), each primitive carrying a part label from a global 10-part index, in the spirit of
ShapeNetPart (category -> parts)::

    category  parts (global index)
    table     top (0), legs (1)
    lamp      base (2), pole (3), shade (4)
    mug       body (5), handle (6)
    rocket    body (7), nose (8), fins (9)

A sample is fully determined by ``(seed, split, index)``: part sizes, point count, per-part
density, pose (rotation about the up axis plus a small tilt), scale and noise are drawn from a
NumPy generator seeded by those three numbers, so the splits never share a shape and nothing is
stored on disk. Points are sampled on the primitives' surfaces (uniform by area inside a
primitive; parts get points in proportion to their area times a random density factor, with a
floor so that thin parts stay visible).

Run ``python -m geossm.tasks.segmentation OUT.npz [--split val] [--index 0] [--points N]`` to write
one sample as the input of ``geossm predict``.
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import numpy as np

CATEGORIES = ("table", "lamp", "mug", "rocket")
PART_NAMES = ("table_top", "table_leg", "lamp_base", "lamp_pole", "lamp_shade", "mug_body",
              "mug_handle", "rocket_body", "rocket_nose", "rocket_fin")
#: Global part indices of every category (ShapeNetPart-style ``category -> parts`` map).
CATEGORY_PARTS = ((0, 1), (2, 3, 4), (5, 6), (7, 8, 9))
NUM_PARTS = len(PART_NAMES)


# ------------------------------------------------------------------------------ primitives
# Each sampler returns ``(points (n, 3), area)``; ``rng`` draws the positions on the surface.

def _box(rng: np.random.Generator, n: int, size, center) -> np.ndarray:
    """Surface of an axis-aligned box ``size (3,)`` centred at ``center (3,)``."""
    sx, sy, sz = size
    areas = np.array([sy * sz, sy * sz, sx * sz, sx * sz, sx * sy, sx * sy])
    face = rng.choice(6, size=n, p=areas / areas.sum())
    p = rng.uniform(-0.5, 0.5, size=(n, 3))
    axis = face // 2
    p[np.arange(n), axis] = np.where(face % 2 == 0, -0.5, 0.5)
    return p * np.asarray(size) + np.asarray(center)


def _box_area(size) -> float:
    sx, sy, sz = size
    return 2 * (sx * sy + sy * sz + sx * sz)


def _frustum(rng: np.random.Generator, n: int, r0: float, r1: float, z0: float, z1: float,
             cap0: bool = False, cap1: bool = False) -> np.ndarray:
    """Side of a cone frustum around the z axis (radius ``r0`` at ``z0``, ``r1`` at ``z1``),
    with optional disc caps; a cylinder when ``r0 == r1``, a cone when one radius is 0."""
    h = z1 - z0
    side = np.pi * (r0 + r1) * np.hypot(h, r1 - r0)
    caps = [np.pi * r0 ** 2 * cap0, np.pi * r1 ** 2 * cap1]
    areas = np.array([side, *caps])
    which = rng.choice(3, size=n, p=areas / areas.sum())
    theta = rng.uniform(0, 2 * np.pi, size=n)
    # Side: area density grows linearly with the radius along the height.
    u = rng.uniform(size=n)
    if abs(r1 - r0) > 1e-9:
        t = (np.sqrt(r0 ** 2 + u * (r1 ** 2 - r0 ** 2)) - r0) / (r1 - r0)
    else:
        t = u
    r = r0 + t * (r1 - r0)
    z = z0 + t * h
    # Caps: uniform on discs.
    rc = np.sqrt(rng.uniform(size=n))
    r = np.where(which == 1, rc * r0, np.where(which == 2, rc * r1, r))
    z = np.where(which == 1, z0, np.where(which == 2, z1, z))
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], 1)


def _frustum_area(r0, r1, z0, z1, cap0=False, cap1=False) -> float:
    return float(np.pi * (r0 + r1) * np.hypot(z1 - z0, r1 - r0)
                 + np.pi * r0 ** 2 * cap0 + np.pi * r1 ** 2 * cap1)


def _torus_arc(rng: np.random.Generator, n: int, big: float, small: float, phi0: float,
               phi1: float) -> np.ndarray:
    """Tube of radius ``small`` around an arc of radius ``big`` in the x-z plane from angle
    ``phi0`` to ``phi1`` (about the y axis, centred at the origin)."""
    phi = rng.uniform(phi0, phi1, size=n)
    psi = rng.uniform(0, 2 * np.pi, size=n)
    # Rejection-free approximation of the area density (big >> small): uniform angles.
    ring = big + small * np.cos(psi)
    return np.stack([ring * np.cos(phi), small * np.sin(psi), ring * np.sin(phi)], 1)


# ------------------------------------------------------------------------------ categories
# Each builder returns a list of ``(part label, area, sampler(rng, n) -> (n, 3))``.

def _table(rng: np.random.Generator):
    w, d = rng.uniform(1.2, 2.0), rng.uniform(0.8, 1.4)
    t, h = rng.uniform(0.06, 0.12), rng.uniform(0.7, 1.1)
    leg = rng.uniform(0.07, 0.12)
    inset = rng.uniform(0.05, 0.15)
    top_size = (w, d, t)
    parts = [(0, _box_area(top_size), lambda r, n: _box(r, n, top_size, (0, 0, h - t / 2)))]
    leg_size = (leg, leg, h - t)
    corners = [(sx * (w / 2 - inset - leg / 2), sy * (d / 2 - inset - leg / 2))
               for sx in (-1, 1) for sy in (-1, 1)]

    def legs(r, n):
        which = r.integers(0, 4, size=n)
        pts = _box(r, n, leg_size, (0, 0, (h - t) / 2))
        pts[:, :2] += np.asarray(corners)[which]
        return pts

    parts.append((1, 4 * _box_area(leg_size), legs))
    return parts


def _lamp(rng: np.random.Generator):
    rb, hb = rng.uniform(0.3, 0.5), rng.uniform(0.05, 0.1)
    rp, hp = rng.uniform(0.03, 0.05), rng.uniform(0.8, 1.4)
    rs0, rs1, hs = rng.uniform(0.4, 0.6), rng.uniform(0.15, 0.3), rng.uniform(0.3, 0.5)
    z_shade = hb + hp - 0.1 * hs
    return [
        (2, _frustum_area(rb, rb, 0, hb, True, True),
         lambda r, n: _frustum(r, n, rb, rb, 0, hb, True, True)),
        (3, _frustum_area(rp, rp, hb, hb + hp),
         lambda r, n: _frustum(r, n, rp, rp, hb, hb + hp)),
        (4, _frustum_area(rs0, rs1, z_shade, z_shade + hs, False, True),
         lambda r, n: _frustum(r, n, rs0, rs1, z_shade, z_shade + hs, False, True)),
    ]


def _mug(rng: np.random.Generator):
    rm, hm = rng.uniform(0.35, 0.5), rng.uniform(0.7, 1.1)
    big, small = rng.uniform(0.2, 0.3) * hm / 0.9, rng.uniform(0.04, 0.06)

    def handle(r, n):
        pts = _torus_arc(r, n, big, small, -np.pi / 2, np.pi / 2)
        pts[:, 0] += rm - 0.02
        pts[:, 2] += hm / 2
        return pts

    return [
        (5, _frustum_area(rm, rm, 0, hm, True, False),
         lambda r, n: _frustum(r, n, rm, rm, 0, hm, True, False)),
        (6, float(4 * np.pi ** 2 * big * small / 2), handle),
    ]


def _rocket(rng: np.random.Generator):
    rr, hr = rng.uniform(0.15, 0.25), rng.uniform(1.2, 1.8)
    hn = rng.uniform(0.3, 0.5)
    nfins = int(rng.integers(3, 5))
    fl, fh, ft = rng.uniform(0.25, 0.4), rng.uniform(0.3, 0.5), rng.uniform(0.03, 0.05)
    fin_size = (fl, ft, fh)

    def fins(r, n):
        which = r.integers(0, nfins, size=n)
        pts = _box(r, n, fin_size, (rr + fl / 2 - 0.02, 0, fh / 2))
        ang = 2 * np.pi * which / nfins
        c, s = np.cos(ang), np.sin(ang)
        x, y = pts[:, 0] * c - pts[:, 1] * s, pts[:, 0] * s + pts[:, 1] * c
        return np.stack([x, y, pts[:, 2]], 1)

    return [
        (7, _frustum_area(rr, rr, 0, hr, True, False),
         lambda r, n: _frustum(r, n, rr, rr, 0, hr, True, False)),
        (8, _frustum_area(rr, 0.0, hr, hr + hn), lambda r, n: _frustum(r, n, rr, 0.0, hr, hr + hn)),
        (9, nfins * _box_area(fin_size), fins),
    ]


_BUILDERS = (_table, _lamp, _mug, _rocket)


def _rotation(yaw: float, tilt_x: float, tilt_y: float) -> np.ndarray:
    cz, sz = np.cos(yaw), np.sin(yaw)
    cx, sx = np.cos(tilt_x), np.sin(tilt_x)
    cy, sy = np.cos(tilt_y), np.sin(tilt_y)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ ry @ rx


def make_shape(rng: np.random.Generator, category: int | None = None, min_points: int = 1024,
               max_points: int = 2048, noise: float = 0.01, min_part_fraction: float = 0.08,
               max_tilt: float = 0.15) -> dict[str, np.ndarray | int]:
    """One random shape.

    Args:
        rng: NumPy generator (the only source of randomness).
        category: index into ``CATEGORIES``, default None (drawn uniformly).
        min_points, max_points: the point count is drawn uniformly in ``[min, max]``.
        noise: Gaussian jitter, as a fraction of the shape's size (default 0.01).
        min_part_fraction: floor of every part's share of the points (default 0.08).
        max_tilt: largest tilt about x and y in radians (default 0.15); the rotation about the
            up axis is uniform.

    Returns:
        ``{"coord": (N, 3) float32, "label": (N,) int64 global part index, "category": int}``,
        the shape centred near the origin with its largest extent near 2 (before the random scale
        in [0.8, 1.25]).
    """
    if not 1 <= min_points <= max_points:
        raise ValueError(f"min_points/max_points: expected 1 <= min_points <= max_points, got "
                         f"{min_points} and {max_points}")
    if category is None:
        category = int(rng.integers(len(CATEGORIES)))
    if not 0 <= category < len(CATEGORIES):
        raise ValueError(f"category: expected an index in [0, {len(CATEGORIES)}), got {category}")
    parts = _BUILDERS[category](rng)
    n = int(rng.integers(min_points, max_points + 1))
    share = np.array([a for _, a, _ in parts]) * rng.uniform(0.7, 1.3, size=len(parts))
    share = share / share.sum()
    share = np.maximum(share, min_part_fraction)
    counts = np.floor(share / share.sum() * n).astype(int)
    counts[np.argmax(counts)] += n - counts.sum()
    coords, labels = [], []
    for (label, _, sampler), k in zip(parts, counts):
        coords.append(sampler(rng, int(k)))
        labels.append(np.full(int(k), label, dtype=np.int64))
    coord = np.concatenate(coords)
    label = np.concatenate(labels)
    lo, hi = coord.min(0), coord.max(0)
    coord = (coord - (lo + hi) / 2) * (2.0 / max(float((hi - lo).max()), 1e-6))
    coord = coord + rng.normal(0, noise * 2.0, size=coord.shape)
    rot = _rotation(rng.uniform(0, 2 * np.pi), rng.uniform(-max_tilt, max_tilt),
                    rng.uniform(-max_tilt, max_tilt))
    coord = coord @ rot.T * rng.uniform(0.8, 1.25) + rng.uniform(-0.5, 0.5, size=3)
    perm = rng.permutation(n)
    return {"coord": coord[perm].astype(np.float32), "label": label[perm], "category": category}


def sample_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed sequence of sample ``index`` of ``split`` (splits are disjoint streams)."""
    return np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(index)])


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geossm.tasks.segmentation",
        description="Write one synthetic_parts sample (coord, label, category) to an .npz file.")
    parser.add_argument("output", help="output .npz path")
    parser.add_argument("--split", default="val")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--points", type=int, default=None,
                        help="number of points (default: drawn in [1024, 2048])")
    args = parser.parse_args(argv)
    counts = {} if args.points is None else {"min_points": args.points, "max_points": args.points}
    shape = make_shape(np.random.default_rng(sample_seed(args.seed, args.split, args.index)),
                       **counts)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, coord=shape["coord"], label=shape["label"],
                        category=np.int64(shape["category"]))
    # One JSON line, as the geossm commands print: what was written, and what it holds.
    print(json.dumps({"output": str(out), "points": len(shape["coord"]),
                      "category": CATEGORIES[int(shape["category"])], "split": args.split,
                      "index": args.index}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
