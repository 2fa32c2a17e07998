import pytest
import torch

from geossm.tasks.segmentation.losses import cross_entropy


def test_cross_entropy_ignores_and_smooths():
    logits = torch.randn(6, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, -1, -1, 1])
    ref = torch.nn.functional.cross_entropy(logits[[0, 1, 2, 5]], target[[0, 1, 2, 5]])
    torch.testing.assert_close(cross_entropy(logits, target), ref)
    assert cross_entropy(logits, target, label_smoothing=0.2) > 0
    empty = cross_entropy(logits, torch.full((6,), -1))
    empty.backward()
    assert float(empty.detach()) == 0 and logits.grad is not None


def test_cross_entropy_errors():
    with pytest.raises(ValueError, match=r"expected logits \(N, C\) and target \(N,\), got"):
        cross_entropy(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"label_smoothing: expected a float in \[0, 1\), got 1.5"):
        cross_entropy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), label_smoothing=1.5)
    with pytest.raises(ValueError, match="class_weights: expected 3 values"):
        cross_entropy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), class_weights=[1, 2])
