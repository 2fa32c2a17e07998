import math

import pytest
import torch

from geossm.config import load_config
from geossm.engine import Task, Trainer, build_optimizer, build_scheduler, cosine_warmup_factor
from geossm.engine.optim import apply_param_group_rules, optimizer_names
from geossm.registry import RegistryError
from toy_task import ToyPointNet, write_toy_config

CPU = torch.device("cpu")


def train_cfg(*overrides):
    return load_config(None, list(overrides)).train


def groups_of(model, weight_decay=0.05):
    return Task(load_config(None)).parameter_groups(model, weight_decay)


def lrs(optimizer, scheduler, steps):
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def test_default_config_is_adamw_with_the_task_groups_and_cosine_warmup():
    torch.manual_seed(0)
    model = ToyPointNet()
    train = train_cfg("train.lr=0.01", "train.min_lr=0.001", "train.warmup_epochs=1")
    groups = groups_of(model)
    optimizer = build_optimizer(model, groups, train, CPU)
    scheduler = build_scheduler(optimizer, train, epochs=6, steps_per_epoch=2)
    # What the trainer built before optimisers came from config.
    reference = torch.optim.AdamW(groups_of(model), lr=0.01, fused=None)
    expected = torch.optim.lr_scheduler.LambdaLR(
        reference, lambda s: cosine_warmup_factor(s, 12, 2, 0.1))
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.state_dict() == reference.state_dict()
    assert lrs(optimizer, scheduler, 12) == lrs(reference, expected, 12)
    assert scheduler.state_dict() == expected.state_dict()


def test_sgd_with_step_and_multistep_schedules():
    model = ToyPointNet()
    train = train_cfg("train.optimizer.name=SGD", "+train.optimizer.momentum=0.9",
                      "train.schedule.name=step", "+train.schedule.every_epochs=2",
                      "+train.schedule.gamma=0.5", "train.warmup_epochs=0", "train.lr=0.1",
                      "train.min_lr=0.02")
    optimizer = build_optimizer(model, groups_of(model), train, CPU)
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.9
    curve = [g[0] for g in lrs(optimizer, build_scheduler(optimizer, train, 8, 2), 16)]
    # 2 steps per epoch: 0.1 for epochs 0-1, 0.05 for 2-3, then the floor min_lr = 0.02
    assert curve == pytest.approx([0.1] * 4 + [0.05] * 4 + [0.025] * 4 + [0.02] * 4)

    train = train_cfg("train.schedule.name=multistep", "+train.schedule.milestones=[1, 3]",
                      "train.warmup_epochs=1", "train.lr=1.0")
    optimizer = build_optimizer(model, groups_of(model), train, CPU)
    curve = [g[0] for g in lrs(optimizer, build_scheduler(optimizer, train, 4, 2), 8)]
    assert curve == pytest.approx([0.5, 1.0, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_constant_schedule_after_warmup():
    model = ToyPointNet()
    train = train_cfg("train.schedule.name=constant", "train.warmup_epochs=1", "train.lr=0.2")
    optimizer = build_optimizer(model, groups_of(model), train, CPU)
    curve = [g[0] for g in lrs(optimizer, build_scheduler(optimizer, train, 3, 4), 12)]
    assert curve == pytest.approx([0.05, 0.1, 0.15] + [0.2] * 9)


def test_param_groups_override_lr_and_decay_by_name():
    model = ToyPointNet()
    train = train_cfg("train.lr=0.01", "train.weight_decay=0.1",
                      "train.param_groups=[{params: '^head\\.', lr_scale: 10.0},"
                      " {params: 'norm', weight_decay: 0.5}]")
    optimizer = build_optimizer(model, groups_of(model, 0.1), train, CPU)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        group = by_param[id(p)]
        if name.startswith("head."):
            assert group["lr"] == pytest.approx(0.1)
            assert group["weight_decay"] == (0.1 if p.ndim >= 2 else 0.0)  # the task's rule
        elif "norm" in name:
            assert group["lr"] == 0.01 and group["weight_decay"] == 0.5
        else:
            assert group["lr"] == 0.01 and group["weight_decay"] == (0.1 if p.ndim >= 2 else 0.0)
    # The schedule scales every group's own learning rate.
    scheduler = build_scheduler(optimizer, train, epochs=2, steps_per_epoch=2)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [g["initial_lr"] * 0.5 for g in optimizer.param_groups])
    assert scheduler.last_epoch == 0


def test_param_group_entries_are_checked():
    model = ToyPointNet()
    with pytest.raises(ValueError, match=r"train.param_groups\[0\].params: 'decoder' matches no "
                                         r"trainable parameter"):
        apply_param_group_rules(model, groups_of(model), 0.1, [{"params": "decoder"}])
    with pytest.raises(ValueError, match=r"train.param_groups\[0\].params: not a regular "
                                         r"expression"):
        apply_param_group_rules(model, groups_of(model), 0.1, [{"params": "head("}])
    with pytest.raises(ValueError, match=r"train.param_groups\[1\]: set lr or lr_scale"):
        apply_param_group_rules(model, groups_of(model), 0.1,
                                [{"params": "head"}, {"params": "inp", "lr": 1, "lr_scale": 2}])
    with pytest.raises(TypeError, match=r"train.param_groups\[0\]: expected a mapping with "
                                        r"params: REGEX"):
        apply_param_group_rules(model, groups_of(model), 0.1, ["head"])


def test_unknown_names_list_the_known_ones():
    model = ToyPointNet()
    with pytest.raises(RegistryError, match=r"unknown optimizer 'AdamWW' \(did you mean "
                                            r"'AdamW'\?\); known optimizers \(torch.optim\): "
                                            r".*SGD"):
        build_optimizer(model, groups_of(model), train_cfg("train.optimizer.name=AdamWW"), CPU)
    train = train_cfg("train.schedule.name=cosin")
    optimizer = build_optimizer(model, groups_of(model), train, CPU)
    with pytest.raises(RegistryError, match=r"unknown schedule 'cosin' \(did you mean "
                                            r"'cosine'\?\); known schedules: constant, cosine, "
                                            r"multistep, step"):
        build_scheduler(optimizer, train, 2, 2)
    with pytest.raises(TypeError, match=r"train.optimizer: cannot build SGD with \['betas'\]"):
        build_optimizer(model, groups_of(model),
                        train_cfg("train.optimizer.name=SGD", "+train.optimizer.betas=[0.9, 0.9]"),
                        CPU)
    with pytest.raises(TypeError, match="cannot build schedule 'step'.*every_epochs"):
        build_scheduler(optimizer, train_cfg("train.schedule.name=step"), 2, 2)
    assert {"AdamW", "SGD", "Adam", "RMSprop"} <= set(optimizer_names())
    assert "Optimizer" not in optimizer_names()


def test_trainer_refuses_a_bad_name_before_reading_data(tmp_path):
    cfg = load_config(write_toy_config(tmp_path / "toy.yaml"), ["train.optimizer.name=Adamw"])
    with pytest.raises(RegistryError, match="unknown optimizer 'Adamw'"):
        Trainer(cfg)


def test_trainer_runs_sgd_multistep_from_config(tmp_path):
    cfg = load_config(write_toy_config(tmp_path / "toy.yaml"),
                      ["train.optimizer.name=SGD", "+train.optimizer.momentum=0.9",
                       "train.schedule.name=multistep", "+train.schedule.milestones=[1]",
                       "train.warmup_epochs=0", "eval.split=null", f"output_dir={tmp_path / 'r'}"])
    trainer = Trainer(cfg)
    trainer.fit()
    from geossm.engine import load_checkpoint
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.9 and math.isclose(group["lr"], 1e-3)  # 0.01 * gamma 0.1
    assert ckpt["scheduler"]["last_epoch"] == 8


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_equals_torch_to_the_bit(max_norm):
    """Same total norm and clipped gradients as ``torch.nn.utils.clip_grad_norm_`` (float32 and
    float64 groups, a parameter without gradient), clipping (0.5) or not (1e6)."""
    from geossm.engine.optim import clip_grad_norm

    g = torch.Generator().manual_seed(0)
    shapes = [(7, 3), (5,), (2, 4, 3), (1,)]
    grads = [torch.randn(s, generator=g) for s in shapes] + [torch.randn(6, dtype=torch.float64,
                                                                     generator=g)]
    results = []
    for clip in (torch.nn.utils.clip_grad_norm_, clip_grad_norm):
        params = [torch.nn.Parameter(torch.zeros_like(t)) for t in grads]
        for p, t in zip(params, grads):
            p.grad = t.clone()
        params.append(torch.nn.Parameter(torch.zeros(3)))          # no gradient
        total = clip(iter(params), max_norm)
        results.append((total, [p.grad for p in params[:-1]]))
    (total0, grads0), (total1, grads1) = results
    assert torch.equal(total1, total0)
    assert all(torch.equal(a, b) for a, b in zip(grads1, grads0))
    assert (total0 > max_norm) == (max_norm == 0.5)


def test_clip_grad_norm_calls_no_operator_per_parameter():
    """Host cost: the per-tensor ``norm.to(device)`` of torch's version is gone (a no-op
    ``aten::to`` per parameter; 359 parameters in the LION model)."""
    from torch.profiler import ProfilerActivity, profile

    from geossm.engine.optim import clip_grad_norm

    params = [torch.nn.Parameter(torch.zeros(4)) for _ in range(50)]
    for p in params:
        p.grad = torch.ones(4)
    counts = []
    for clip in (torch.nn.utils.clip_grad_norm_, clip_grad_norm):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            clip(params, 1.0)
        counts.append(sum(ev.name == "aten::to" for ev in prof.events()))
    assert counts[0] >= 50 and counts[1] <= 5, counts     # a few for the scalar arithmetic


def test_clip_grad_norm_without_gradients_returns_zero():
    from geossm.engine.optim import clip_grad_norm

    assert float(clip_grad_norm([torch.nn.Parameter(torch.ones(2))], 1.0)) == 0.0
