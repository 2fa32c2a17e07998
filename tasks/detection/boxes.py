"""Box geometry in the OpenPCDet LiDAR convention.

A box is ``[x, y, z, dx, dy, dz, heading]``: centre ``(x, y, z)`` (z at the box centre), sizes
along the box's own axes (``dx`` = length, ``dy`` = width, ``dz`` = height) and ``heading`` the
yaw about +z (radians, counter-clockwise from +x).

- ``corners_bev``: the 4 BEV corners of boxes;
- ``iou_bev`` / ``iou_3d``: rotated IoU matrices, exact convex-polygon clipping (numba on CPU);
- ``points_in_boxes``: which points lie in which box;
- ``nms_bev``: greedy non-maximum suppression by rotated BEV IoU.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

__all__ = ["corners_bev", "iou_bev", "iou_3d", "intersection_bev", "points_in_boxes", "nms_bev",
           "limit_period"]


def _check_boxes(name: str, boxes) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 7:
        raise ValueError(f"{name}: expected shape (M, 7) = (x, y, z, dx, dy, dz, heading), "
                         f"got {arr.shape}")
    return np.ascontiguousarray(arr[:, :7])


def limit_period(angle, offset: float = 0.5, period: float = np.pi):
    """Wrap ``angle`` into ``[-offset * period, (1 - offset) * period)`` (numpy or torch).

    The defaults are OpenPCDet's (``offset=0.5, period=pi``: into ``[-pi/2, pi/2)``, which
    forgets a box's direction). Headings that keep their direction, as this library's
    augmentations do, pass ``period=2 * np.pi`` (into ``[-pi, pi)``)."""
    if isinstance(angle, torch.Tensor):
        return angle - torch.floor(angle / period + offset) * period
    return angle - np.floor(angle / period + offset) * period


def corners_bev(boxes) -> np.ndarray:
    """BEV corners ``(M, 4, 2)`` of ``boxes (M, 7)``, counter-clockwise."""
    b = _check_boxes("boxes", boxes)
    sx = np.array([-0.5, 0.5, 0.5, -0.5])
    sy = np.array([-0.5, -0.5, 0.5, 0.5])
    lx = sx[None] * b[:, 3:4]
    ly = sy[None] * b[:, 4:5]
    c, s = np.cos(b[:, 6:7]), np.sin(b[:, 6:7])
    return np.stack([lx * c - ly * s + b[:, 0:1], lx * s + ly * c + b[:, 1:2]], -1)


@numba.njit(cache=True)
def _cross(ax, ay, bx, by, px, py):
    # > 0 when p lies left of the directed edge a -> b
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


@numba.njit(cache=True)
def _poly_area(xs, ys, n):
    a = 0.0
    for i in range(n):
        j = (i + 1) % n
        a += xs[i] * ys[j] - xs[j] * ys[i]
    return abs(a) * 0.5


@numba.njit(cache=True)
def _convex_intersection(pa, pb):
    """Area of the intersection of two counter-clockwise convex quads ``(4, 2)`` (Sutherland-
    Hodgman: clip ``pa`` by each edge of ``pb``)."""
    xs = np.empty(16)
    ys = np.empty(16)
    nx = np.empty(16)
    ny = np.empty(16)
    n = 4
    for i in range(4):
        xs[i] = pa[i, 0]
        ys[i] = pa[i, 1]
    for e in range(4):
        ax, ay = pb[e, 0], pb[e, 1]
        bx, by = pb[(e + 1) % 4, 0], pb[(e + 1) % 4, 1]
        m = 0
        for i in range(n):
            px, py = xs[i], ys[i]
            qx, qy = xs[(i + 1) % n], ys[(i + 1) % n]
            cp = _cross(ax, ay, bx, by, px, py)
            cq = _cross(ax, ay, bx, by, qx, qy)
            if cp >= 0:
                nx[m] = px
                ny[m] = py
                m += 1
            if (cp >= 0) != (cq >= 0):
                t = cp / (cp - cq)
                nx[m] = px + t * (qx - px)
                ny[m] = py + t * (qy - py)
                m += 1
        n = m
        if n == 0:
            return 0.0
        for i in range(n):
            xs[i] = nx[i]
            ys[i] = ny[i]
    return _poly_area(xs, ys, n)


@numba.njit(cache=True)
def _intersection_matrix(ca, cb):
    out = np.zeros((ca.shape[0], cb.shape[0]))
    for i in range(ca.shape[0]):
        # cheap bounding-circle reject before clipping
        cxa = 0.25 * (ca[i, 0, 0] + ca[i, 1, 0] + ca[i, 2, 0] + ca[i, 3, 0])
        cya = 0.25 * (ca[i, 0, 1] + ca[i, 1, 1] + ca[i, 2, 1] + ca[i, 3, 1])
        ra = np.sqrt((ca[i, 0, 0] - cxa) ** 2 + (ca[i, 0, 1] - cya) ** 2)
        for j in range(cb.shape[0]):
            cxb = 0.25 * (cb[j, 0, 0] + cb[j, 1, 0] + cb[j, 2, 0] + cb[j, 3, 0])
            cyb = 0.25 * (cb[j, 0, 1] + cb[j, 1, 1] + cb[j, 2, 1] + cb[j, 3, 1])
            rb = np.sqrt((cb[j, 0, 0] - cxb) ** 2 + (cb[j, 0, 1] - cyb) ** 2)
            if (cxa - cxb) ** 2 + (cya - cyb) ** 2 > (ra + rb) ** 2:
                continue
            out[i, j] = _convex_intersection(ca[i], cb[j])
    return out


def intersection_bev(boxes_a, boxes_b) -> np.ndarray:
    """Rotated BEV intersection areas ``(M, K)`` of ``boxes_a (M, 7)`` and ``boxes_b (K, 7)``."""
    a = _check_boxes("boxes_a", boxes_a)
    b = _check_boxes("boxes_b", boxes_b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return _intersection_matrix(corners_bev(a), corners_bev(b))


def iou_bev(boxes_a, boxes_b) -> np.ndarray:
    """Rotated BEV IoU ``(M, K)``: ``area(A ∩ B) / (area(A) + area(B) - area(A ∩ B))``."""
    a = _check_boxes("boxes_a", boxes_a)
    b = _check_boxes("boxes_b", boxes_b)
    inter = intersection_bev(a, b)
    union = (a[:, 3] * a[:, 4])[:, None] + (b[:, 3] * b[:, 4])[None] - inter
    return inter / np.maximum(union, 1e-12)


def iou_3d(boxes_a, boxes_b) -> np.ndarray:
    """Rotated 3D IoU ``(M, K)``: BEV intersection times the overlap of the z ranges, over the
    union of the volumes (boxes rotate about z only, as in KITTI)."""
    a = _check_boxes("boxes_a", boxes_a)
    b = _check_boxes("boxes_b", boxes_b)
    inter = intersection_bev(a, b)
    top = np.minimum((a[:, 2] + a[:, 5] / 2)[:, None], (b[:, 2] + b[:, 5] / 2)[None])
    bottom = np.maximum((a[:, 2] - a[:, 5] / 2)[:, None], (b[:, 2] - b[:, 5] / 2)[None])
    inter = inter * np.clip(top - bottom, 0, None)
    vol = a[:, 3] * a[:, 4] * a[:, 5]
    volb = b[:, 3] * b[:, 4] * b[:, 5]
    return inter / np.maximum(vol[:, None] + volb[None] - inter, 1e-12)


def points_in_boxes(points, boxes) -> np.ndarray:
    """Mask ``(N, M)`` bool: point ``i`` lies inside box ``j`` (faces included).

    Shapes: ``points (N, >=3)``, ``boxes (M, 7)``."""
    p = np.asarray(points, dtype=np.float64)
    b = _check_boxes("boxes", boxes)
    if p.ndim != 2 or p.shape[1] < 3:
        raise ValueError(f"points: expected shape (N, >=3), got {p.shape}")
    d = p[:, None, :3] - b[None, :, :3]  # (N, M, 3)
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    lx = d[..., 0] * c + d[..., 1] * s
    ly = -d[..., 0] * s + d[..., 1] * c
    return ((np.abs(lx) <= b[:, 3] / 2 + 1e-6) & (np.abs(ly) <= b[:, 4] / 2 + 1e-6)
            & (np.abs(d[..., 2]) <= b[:, 5] / 2 + 1e-6))


def nms_bev(boxes, scores, iou_threshold: float, max_out: int | None = None) -> np.ndarray:
    """Greedy NMS by rotated BEV IoU: keep the best-scoring box, drop the others overlapping it
    by more than ``iou_threshold``, repeat. Returns kept indices ``(K,)`` by decreasing score."""
    b = _check_boxes("boxes", boxes)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(sc) != len(b):
        raise ValueError(f"scores: expected {len(b)} scores (one per box), got {len(sc)}")
    order = np.argsort(-sc, kind="stable")
    if len(order) == 0:
        return order.astype(np.int64)
    iou = iou_bev(b[order], b[order])
    keep = _greedy(iou, float(iou_threshold), len(order) if max_out is None else int(max_out))
    return order[keep].astype(np.int64)


@numba.njit(cache=True)
def _greedy(iou, thr, max_out):
    n = iou.shape[0]
    removed = np.zeros(n, dtype=np.bool_)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        if len(keep) >= max_out:
            break
        for j in range(i + 1, n):
            if iou[i, j] > thr:
                removed[j] = True
    return np.array(keep, dtype=np.int64)
