"""``centerpoint_loss`` on the whole map equals the loss over the selected centre cells."""

import torch

from geossm.tasks.detection.losses import centerpoint_loss, focal_loss


def _loss_of_selected_cells(outputs, targets, reg_weight):
    """The regression term by its definition: L1 over the masked cells (boolean selection),
    heading up to a half turn, divided by the number of cells."""
    hm_t, reg_t, mask = targets
    reg = outputs["reg"].float().permute(0, 2, 3, 1)[mask]
    tgt = reg_t.permute(0, 2, 3, 1)[mask]
    err = (reg - tgt).abs()
    heading = torch.minimum(err[:, 6:8].sum(1), (reg[:, 6:8] + tgt[:, 6:8]).abs().sum(1))
    reg_loss = (err[:, :6].sum() + heading.sum()) / mask.sum().clamp(min=1)
    return focal_loss(outputs["heatmap"], hm_t) + reg_weight * reg_loss


def test_whole_map_loss_and_gradients_equal_the_selected_cells():
    g = torch.Generator().manual_seed(0)
    hm_t = torch.rand(2, 3, 9, 11, generator=g, dtype=torch.float64)
    reg_t = torch.randn(2, 8, 9, 11, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 9, 11, generator=g) < 0.2
    reg_t = reg_t * mask[:, None]     # the targets are zero outside the mask, as built
    for m in (mask, torch.zeros_like(mask)):
        grads = []
        for loss_fn in (lambda o: centerpoint_loss(o, (hm_t, reg_t, m), 2.0)["loss"],
                        lambda o: _loss_of_selected_cells(o, (hm_t, reg_t, m), 2.0)):
            torch.manual_seed(1)
            outputs = {"heatmap": torch.randn(2, 3, 9, 11, dtype=torch.float64),
                       "reg": torch.randn(2, 8, 9, 11, dtype=torch.float64, requires_grad=True)}
            loss = loss_fn(outputs)
            loss.backward()
            grads.append((loss.detach(), outputs["reg"].grad))
        torch.testing.assert_close(grads[0][0], grads[1][0])
        torch.testing.assert_close(grads[0][1], grads[1][1])
