import math

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from geossm.tasks.graph.metrics import (Accuracy, AveragePrecision, MeanAbsoluteError, RocAuc,
                                        average_precision, mean_std, roc_auc, selection_mode,
                                        summarize)

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="reference values from sklearn")


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_auc_matches_sklearn_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    score = torch.randint(0, 7, (300,), generator=g).float()  # many ties
    target = (torch.rand(300, generator=g) < 0.3).long()
    ref = sklearn_metrics.roc_auc_score(target.numpy(), score.numpy())
    assert roc_auc(score, target) == pytest.approx(ref, abs=1e-12)
    assert math.isnan(roc_auc(score, torch.zeros(300)))


def test_average_precision_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    score = torch.randn(200, 4, generator=g).round(decimals=1)
    target = (torch.rand(200, 4, generator=g) < 0.2).float()
    target[:, 3] = 0  # a label without positives is skipped
    ref = np.mean([sklearn_metrics.average_precision_score(target[:, j], score[:, j])
                   for j in range(3)])
    assert average_precision(score, target) == pytest.approx(ref, abs=1e-12)


def test_mae_over_batches_matches_sklearn_and_skips_unlabelled_entries():
    g = torch.Generator().manual_seed(0)
    pred, y = torch.randn(12, 11, generator=g), torch.randn(12, 11, generator=g)
    mae = MeanAbsoluteError(prefix="val_")
    mae.update(pred[:5], Data(y=y[:5]))
    mae.update(pred[5:], Data(y=y[5:]))
    padded = torch.full((2, 11), float("nan"))  # padded graphs of a static batch
    mae.update(torch.full((2, 11), float("nan")), Data(y=padded))
    mae.reduce()
    ref = sklearn_metrics.mean_absolute_error(y.double().numpy(), pred.double().numpy())
    assert mae.compute()["val_mae"] == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match=r"predictions \(3, 11\) for targets \(3, 10\)"):
        mae.update(pred[:3], Data(y=y[:3, :10]))
    mae.reset()
    assert math.isnan(mae.compute()["val_mae"])


def test_masked_accuracy_and_auc_accumulate_over_batches():
    acc, auc = Accuracy(), RocAuc(prefix="val_")
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    batch = Data(y=torch.tensor([0, 1, 1, 1]), mask=torch.tensor([True, True, True, False]))
    for m in (acc, auc):
        m.update(logits, batch)
        m.update(logits[:2], Data(y=torch.tensor([1, 0])))  # no mask: every row counts
        m.reduce()
    assert acc.compute() == {"acc": pytest.approx(2 / 5)}
    s = torch.cat([logits[:3].softmax(-1)[:, 1], logits[:2].softmax(-1)[:, 1]])
    t = torch.tensor([0, 1, 1, 1, 0])
    assert auc.compute()["val_roc_auc"] == pytest.approx(
        sklearn_metrics.roc_auc_score(t.numpy(), s.numpy()))
    auc.reset()
    assert math.isnan(auc.compute()["val_roc_auc"])


def test_ap_metric_and_summary():
    ap = AveragePrecision()
    ap.update(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]),
              Data(y=torch.tensor([[1.0, 0.0], [0.0, 1.0]])))
    assert ap.compute() == {"ap": 1.0}
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert mean_std([5.0]) == (5.0, 0.0)
    s = summarize({0: {"acc": 0.8, "name": "x"}, 1: {"acc": 0.9, "name": "y"}})
    assert set(s) == {"acc"} and s["acc"]["mean"] == pytest.approx(0.85) and s["acc"]["n"] == 2
    with pytest.raises(ValueError, match="at least one run"):
        summarize({})


@pytest.mark.parametrize("metric, mode, want", [
    ("acc", None, "max"), ("best.roc_auc", None, "max"), ("ap", None, "max"),
    ("mae", None, "min"), ("best.mae", None, "min"), ("val_loss", None, "min"),
    ("best.test_mae", None, "min"), ("last.train_loss", None, "min"), ("acc", "min", "min"),
    ("best.mae", "max", "max")])
def test_selection_direction_follows_the_metric_unless_named(metric, mode, want):
    # the task, graph_sweep, graph_table and family_select all ask this one function
    assert selection_mode(metric, mode) == want
