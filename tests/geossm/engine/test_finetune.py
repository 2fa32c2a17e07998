import pytest
import torch

from geossm.config import load_config
from geossm.engine import CheckpointError, Trainer, load_checkpoint
from geossm.engine.finetune import init_from_checkpoint
from geossm.registry import MODELS
from toy_task import write_toy_config


def make_cfg(tmp_path, *overrides):
    return load_config(write_toy_config(tmp_path / "toy.yaml"), list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny 3-class run to fine-tune from."""
    tmp = tmp_path_factory.mktemp("pretrain")
    Trainer(make_cfg(tmp, f"output_dir={tmp / 'run'}", "train.epochs=1")).fit()
    return tmp / "run" / "last.pt"


def test_init_from_loads_backbone_and_reports_the_new_head(tmp_path, trained):
    cfg = make_cfg(tmp_path, f"output_dir={tmp_path / 'ft'}", f"model.init_from={trained}",
                   "+model.num_classes=5", "train.epochs=1", "train.lr=0")
    trainer = Trainer(cfg)
    fresh_head = trainer.model.head.weight.detach().clone()
    source = load_checkpoint(trained)["model"]
    trainer.fit()
    state = trainer.model.state_dict()
    for key in ("inp.weight", "inp.bias", "mix.weight", "norm.weight"):
        torch.testing.assert_close(state[key], source[key], rtol=0, atol=0, msg=key)
    assert state["head.weight"].shape == (5, 16)
    # lr=0: the head is still its fresh initialisation, not the checkpoint's (3, 16) rows.
    torch.testing.assert_close(state["head.weight"], fresh_head, rtol=0, atol=0)
    table = (tmp_path / "ft" / "train.log").read_text()
    assert "shape mismatch 2, missing 0, unexpected 0" in table
    assert "head.weight" in table and "(3, 16)" in table and "(5, 16)" in table
    assert "head.bias" in table and "inp.weight" not in table


def test_init_from_is_ignored_when_resuming(tmp_path, trained):
    run = tmp_path / "run"
    Trainer(make_cfg(tmp_path, f"output_dir={run}", "train.epochs=2")).fit(until_epoch=1)
    resumed_weights = load_checkpoint(run / "last.pt")["model"]
    cfg = make_cfg(tmp_path, f"output_dir={run}", "train.epochs=2", "resume=true",
                   f"model.init_from={trained}")
    trainer = Trainer(cfg)
    trainer.fit(until_epoch=1)  # already at epoch 1: nothing trains, the weights are loaded
    log = (run / "train.log").read_text().splitlines()
    assert any("ignored: resuming from" in line for line in log)
    # each start or resume of a run begins its part of train.log with the run line (the
    # results table sums the parts' spans, not the pauses between them)
    starts = [i for i, line in enumerate(log) if " INFO run " in line]
    ignored = next(i for i, line in enumerate(log) if "ignored: resuming from" in line)
    assert len(starts) == 2 and starts[0] == 0 and starts[1] < ignored
    for key, value in resumed_weights.items():
        torch.testing.assert_close(trainer.model.state_dict()[key], value, rtol=0, atol=0)


def test_init_from_plain_state_dict_with_unexpected_and_missing_keys(tmp_path):
    model = MODELS.build({"name": "ToyPointNet", "hidden": 4})
    state = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items() if k != "norm.bias"}
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "sd.pt")
    match = init_from_checkpoint(model, tmp_path / "sd.pt")
    assert match.missing == ["norm.bias"] and match.unexpected == ["extra.weight"]
    assert not match.mismatched
    assert torch.all(model.inp.weight == 0.5)
    table = match.table()
    assert "missing 1, unexpected 1" in table
    assert "norm.bias" in table and "extra.weight" in table


def test_init_from_errors(tmp_path):
    model = MODELS.build({"name": "ToyPointNet", "hidden": 4})
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        init_from_checkpoint(model, tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a valid checkpoint"):
        init_from_checkpoint(model, tmp_path / "junk.pt")
    torch.save({"other.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no weight of checkpoint .* fits model"):
        init_from_checkpoint(model, tmp_path / "other.pt")
