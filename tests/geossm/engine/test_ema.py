import pytest
import torch

from geossm.engine.ema import build_weight_average, check_ema_decay


@pytest.mark.parametrize("off", [None, False, 0, 0.0])
def test_off_values_build_nothing(off):
    assert check_ema_decay(off) is None
    assert build_weight_average(torch.nn.Linear(2, 2), off) is None


@pytest.mark.parametrize("bad", [1, 1.0, -0.5, 1.5, True, "0.9"])
def test_bad_decay_is_an_error(bad):
    with pytest.raises(ValueError, match="train.ema must be null"):
        check_ema_decay(bad)


def test_average_follows_parameters_and_batchnorm_statistics():
    """First update copies, later ones lerp by 1 - decay: parameters and BN running stats."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = build_weight_average(model, 0.75)
    expected = None
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()
        model(torch.randn(8, 3))  # moves the running statistics
        current = {k: v.clone() for k, v in model.state_dict().items()
                   if v.is_floating_point()}
        expected = current if expected is None else {
            k: 0.75 * expected[k] + 0.25 * current[k] for k in current}
        ema.update_parameters(model)
    averaged = ema.module.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(averaged[key], value, msg=key)
    assert not torch.equal(averaged["1.running_mean"], model.state_dict()["1.running_mean"])
