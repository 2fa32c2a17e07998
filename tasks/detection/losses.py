"""CenterPoint-style targets and losses.

Heatmap targets are Gaussians at the box centres' BEV cells (radius from CenterNet's rule for
the box footprint at ``min_overlap``, at least ``min_radius`` cells); regression targets at the
centre cell are ``(x - ix, y - iy, z, log dx, log dy, log dz, sin heading, cos heading)``.
Loss = penalty-reduced focal loss on the heatmaps (CenterNet, alpha 2, beta 4) + ``reg_weight``
x L1 on the regression at the centre cells, both normalised by the number of objects.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["gaussian_radius", "centerpoint_targets", "centerpoint_loss", "focal_loss"]


def gaussian_radius(height: float, width: float, min_overlap: float = 0.1) -> float:
    """CenterNet's radius: the largest corner shift of a ``height x width`` box (cells) that
    keeps IoU >= ``min_overlap`` with the original (minimum of the three quadratic cases)."""
    a1, b1 = 1, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def centerpoint_targets(gt_boxes: Tensor, gt_labels: Tensor, gt_cu: Tensor, grid: dict,
                        num_classes: int, batch_size: int, min_radius: int = 2,
                        min_overlap: float = 0.1, reg_neighbours: int = 0):
    """Targets on the BEV grid ``grid`` (``x0, y0, cx, cy, nx, ny``).

    ``reg_neighbours = n`` also gives the cells within ``n`` of the centre cell (a
    ``(2n+1)^2`` square) a regression target, with offsets measured from each cell (so a
    heatmap peak one cell off still decodes to the right box); a cell claimed by two objects
    keeps the one whose centre is nearer. Default 0: the centre cell only (CenterPoint).

    Shapes: ``gt_boxes (M, 7)``, ``gt_labels (M,)`` 1-based, ``gt_cu (B+1,)`` ->
    ``heatmap (B, K, Y, X)``, ``reg (B, 8, Y, X)``, ``mask (B, Y, X) bool``."""
    ny, nx = grid["ny"], grid["nx"]
    dev = gt_boxes.device
    # built on the host (one small write per cell) and moved to ``dev`` once at the end
    hm = torch.zeros(batch_size, num_classes, ny, nx)
    reg = torch.zeros(batch_size, 8, ny, nx)
    mask = torch.zeros(batch_size, ny, nx, dtype=torch.bool)
    n = int(reg_neighbours)
    owner = torch.full((batch_size, ny, nx), math.inf)   # squared distance of the cell's object
    boxes = gt_boxes.detach().float().cpu()
    labels = gt_labels.cpu()
    cu = gt_cu.cpu().tolist()
    ys = torch.arange(ny, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(nx, dtype=torch.float32).view(1, -1)
    for b in range(batch_size):
        for j in range(cu[b], cu[b + 1]):
            x, y, z, dx, dy, dz, h = boxes[j].tolist()
            c = int(labels[j]) - 1
            if not 0 <= c < num_classes or dx <= 0 or dy <= 0:
                continue
            fx, fy = (x - grid["x0"]) / grid["cx"], (y - grid["y0"]) / grid["cy"]
            ix, iy = int(math.floor(fx)), int(math.floor(fy))
            if not (0 <= ix < nx and 0 <= iy < ny):
                continue
            r = max(min_radius, int(gaussian_radius(dx / grid["cx"], dy / grid["cy"], min_overlap)))
            sigma = (2 * r + 1) / 6
            g = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma ** 2))
            g = torch.where(((xs - ix).abs() <= r) & ((ys - iy).abs() <= r), g, torch.zeros(()))
            hm[b, c] = torch.maximum(hm[b, c], g)
            box = [z, math.log(dx), math.log(dy), math.log(max(dz, 1e-3)), math.sin(h),
                   math.cos(h)]
            for jy in range(max(iy - n, 0), min(iy + n + 1, ny)):
                for jx in range(max(ix - n, 0), min(ix + n + 1, nx)):
                    d = (jx + 0.5 - fx) ** 2 + (jy + 0.5 - fy) ** 2
                    if d >= owner[b, jy, jx]:
                        continue
                    owner[b, jy, jx] = d
                    reg[b, :, jy, jx] = torch.tensor([fx - jx, fy - jy, *box])
                    mask[b, jy, jx] = True
    return hm.to(dev), reg.to(dev), mask.to(dev)


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet's penalty-reduced focal loss, summed and divided by the number of peaks
    (``target == 1``, at least 1). Shapes: ``logits, target (B, K, Y, X)``."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = -torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = -torch.log(1 - p) * p ** alpha * (1 - target) ** beta * neg
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp_min(1)


def centerpoint_loss(outputs: dict, targets: tuple[Tensor, Tensor, Tensor],
                     reg_weight: float = 2.0) -> dict[str, Tensor]:
    """``{"loss", "hm_loss", "reg_loss"}`` from model outputs (``heatmap``, ``reg``) and
    ``centerpoint_targets``."""
    hm_t, reg_t, mask = targets
    hm_loss = focal_loss(outputs["heatmap"], hm_t)
    # on the whole (B, 8, Y, X) map with the cells outside the mask set to zero, not on the
    # selected cells: no output whose size the host has to read (no sync), same sum
    reg = outputs["reg"].float()
    err = (reg - reg_t).abs()
    # heading up to a half turn: a box and its 180-degree turn are the same box (same IoU), and
    # a symmetric object (a synthetic car, a distant real one) cannot tell them apart, so the
    # (sin, cos) target of either direction is accepted (as SECOND's sin(a - b) loss does)
    flipped = (reg[:, 6:8] + reg_t[:, 6:8]).abs().sum(1)
    heading = torch.minimum(err[:, 6:8].sum(1), flipped)
    per_cell = torch.where(mask, err[:, :6].sum(1) + heading, 0.0)          # (B, Y, X)
    reg_loss = per_cell.sum() / mask.sum().clamp(min=1)
    return {"loss": hm_loss + reg_weight * reg_loss, "hm_loss": hm_loss.detach(),
            "reg_loss": reg_loss.detach()}
