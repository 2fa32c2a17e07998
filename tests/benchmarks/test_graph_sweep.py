import pytest

from tests.benchmarks.conftest import load_benchmark

graph_sweep = load_benchmark("graph_sweep")


@pytest.mark.parametrize("select, mode, want", [
    ("best.acc", None, "max"), ("best.roc_auc", None, "max"), ("best.ap", None, "max"),
    ("best.mae", None, "min"), ("best.loss", None, "min"), ("best.acc", "min", "min"),
    ("best.mae", "max", "max")])
def test_selection_direction_follows_the_metric_unless_named(select, mode, want):
    # a sweep over Peptides-struct picks the lowest validation MAE, not the highest
    assert graph_sweep.selection_mode(select, mode) == want
