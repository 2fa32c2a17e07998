import json
import math

import numpy as np
import pytest
import torch

from geossm.config import load_config
from geossm.engine import Trainer, cosine_warmup_factor, load_checkpoint, resolve_run_dir
from geossm.engine.checkpoint import CheckpointError
from toy_task import write_toy_config


def make_cfg(tmp_path, *overrides, **extra):
    path = write_toy_config(tmp_path / "toy.yaml", **extra)
    return load_config(path, list(overrides))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("samples_per_s", "time_s", "data_wait_s")}
            for r in rows]


def test_fit_writes_run_dir_and_summary(tmp_path):
    run = tmp_path / "run"
    cfg = make_cfg(tmp_path, f"output_dir={run}", "eval.test_split=test", "train.epochs=3")
    summary = Trainer(cfg).fit()
    assert summary["run_dir"] == str(run)
    for name in ("config.yaml", "train.log", "metrics.jsonl", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    assert not list(run.glob(".*.tmp")), "temporary checkpoint files left behind"
    rows = read_jsonl(run / "metrics.jsonl")
    val = [r for r in rows if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 3]
    assert {"loss", "acc", "macc", "miou"} <= set(val[0])
    best_epoch = max(val, key=lambda r: r["miou"])["epoch"]
    assert summary["best"]["epoch"] == best_epoch
    assert summary["best"]["miou"] == pytest.approx(max(r["miou"] for r in val))
    assert summary["last"]["epoch"] == 3
    for part in ("best", "last"):
        assert {"test_loss", "test_acc", "test_miou"} <= set(summary[part])
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["epoch"] == best_epoch and ckpt["best"]["metric"] == "miou"
    assert json.loads(json.dumps(summary)) == summary  # plain JSON


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)  # deterministic=true is process-global


@pytest.mark.parametrize("workers,persistent", [(0, False), (1, False), (2, True)])
def test_resume_is_exact(tmp_path, restore_determinism, workers, persistent):
    """4 epochs straight == 2 epochs, stop, resume for 2 more: same weights and metrics
    (the toy dataset augments with the global torch RNG, in the main process or in workers,
    started every epoch or kept for the run; the worker variants skip validation to fork
    fewer worker processes)."""
    common = ("train.epochs=4", "deterministic=true", "train.warmup_epochs=1",
              f"train.num_workers={workers}", f"train.persistent_workers={persistent}") + (
                  ("eval.split=null",) if workers else ())
    straight = tmp_path / "straight"
    Trainer(make_cfg(tmp_path, f"output_dir={straight}", *common)).fit()

    parted = tmp_path / "parted"
    first = Trainer(make_cfg(tmp_path, f"output_dir={parted}", *common)).fit(until_epoch=2)
    assert first["last"]["epoch"] == 2
    assert load_checkpoint(parted / "last.pt")["epoch"] == 2
    # A fresh process state: other seeds and RNG draws must not leak into the resumed run.
    torch.manual_seed(12345)
    np.random.seed(999)
    Trainer(make_cfg(tmp_path, f"output_dir={parted}", "resume=true", *common)).fit()

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(parted / "last.pt")
    assert a["epoch"] == b["epoch"] == 4
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, st in a["optimizer"]["state"].items():
        torch.testing.assert_close(st["exp_avg"], b["optimizer"]["state"][k]["exp_avg"],
                                   rtol=0, atol=0)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert strip_timing(read_jsonl(straight / "metrics.jsonl")) == strip_timing(
        read_jsonl(parted / "metrics.jsonl"))
    assert a["best"] == b["best"]


def test_persistent_workers_train_alike_with_any_worker_count(tmp_path, restore_determinism):
    """With persistent workers every batch seeds its worker: 1 or 2 workers, same run."""
    runs = {}
    for workers in (1, 2):
        run = tmp_path / f"w{workers}"
        Trainer(make_cfg(tmp_path, f"output_dir={run}", "train.epochs=3", "deterministic=true",
                         f"train.num_workers={workers}", "train.persistent_workers=true",
                         "eval.split=null")).fit()
        runs[workers] = load_checkpoint(run / "last.pt")["model"]
        assert strip_timing(read_jsonl(run / "metrics.jsonl")) == strip_timing(
            read_jsonl(tmp_path / "w1" / "metrics.jsonl"))
    for key in runs[1]:
        torch.testing.assert_close(runs[1][key], runs[2][key], rtol=0, atol=0, msg=key)


def test_persistent_workers_evaluate_through_one_loader_per_dataset(tmp_path):
    trainer = Trainer(make_cfg(tmp_path, f"output_dir={tmp_path / 'r'}", "train.num_workers=2",
                               "train.persistent_workers=true"))
    val = trainer._build_dataset("val")
    first = trainer.evaluate("val", val)
    loader = trainer._eval_loader(val)
    pids = [w.pid for w in loader._iterator._workers]
    assert trainer.evaluate("val", val) == first
    assert trainer._eval_loader(val) is loader and len(pids) == 2
    assert [w.pid for w in loader._iterator._workers] == pids  # the same worker processes
    others = [trainer._build_dataset("val") for _ in range(2)]
    assert trainer._eval_loader(others[0]) is not loader  # another dataset, another loader
    assert trainer._eval_loader(val) is loader  # two kept: validation and test
    trainer._eval_loader(others[1])  # a third drops the oldest (others[0]) and its workers
    assert [kept for kept, _ in trainer._eval_loaders.values()] == [val, others[1]]
    plain = Trainer(make_cfg(tmp_path, f"output_dir={tmp_path / 'p'}", "train.num_workers=2"))
    assert not plain.persistent_workers and plain._eval_loader(val) is not plain._eval_loader(val)
    # Without workers the option has nothing to keep: the plain loaders of the main process.
    assert not Trainer(make_cfg(tmp_path, f"output_dir={tmp_path / 'z'}",
                                "train.persistent_workers=true")).persistent_workers


def test_resume_under_another_selection_metric_or_direction_is_an_error(tmp_path):
    # the kept best value was the max (or min) of one metric: comparing others with it would
    # silently keep the wrong best.pt
    run = tmp_path / "run"
    Trainer(make_cfg(tmp_path, f"output_dir={run}", "train.epochs=2")).fit(until_epoch=1)
    kept = load_checkpoint(run / "last.pt")["best"]
    flipped = "min" if kept["mode"] == "max" else "max"
    cfg = make_cfg(tmp_path, f"output_dir={run}", "train.epochs=2", "resume=true",
                   f"eval.mode={flipped}")
    with pytest.raises(ValueError, match=f"resume: .*last.pt selected best.pt by {kept['metric']} "
                                         rf"\({kept['mode']}\), this run by {kept['metric']} "
                                         rf"\({flipped}\); set eval.metric="):
        Trainer(cfg).fit()


def test_resume_without_checkpoint_is_an_error(tmp_path):
    cfg = make_cfg(tmp_path, f"output_dir={tmp_path / 'none'}", "resume=true")
    with pytest.raises(FileNotFoundError, match="resume: checkpoint not found"):
        Trainer(cfg).fit()


def test_resolve_run_dir_newest_run_for_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for stamp in ("20250101-000000", "20250102-000000"):
        (tmp_path / "runs" / "toy" / stamp).mkdir(parents=True)
        (tmp_path / "runs" / "toy" / stamp / "last.pt").write_bytes(b"")
    cfg = load_config(None, ["resume=true"])
    assert resolve_run_dir(cfg, "toy").name == "20250102-000000"
    with pytest.raises(FileNotFoundError, match="no run with last.pt"):
        resolve_run_dir(cfg, "other")
    fresh = resolve_run_dir(load_config(None), "toy")
    assert fresh.parent == tmp_path.joinpath("runs", "toy").relative_to(tmp_path)


def test_no_validation_best_is_last(tmp_path):
    run = tmp_path / "run"
    summary = Trainer(make_cfg(tmp_path, f"output_dir={run}", "eval.split=null")).fit()
    assert summary["best"]["epoch"] == summary["last"]["epoch"] == 2
    assert {r["split"] for r in read_jsonl(run / "metrics.jsonl")} == {"train"}


def test_unknown_best_metric(tmp_path):
    cfg = make_cfg(tmp_path, f"output_dir={tmp_path / 'r'}", "eval.metric=f1", "train.epochs=1")
    with pytest.raises(ValueError, match="best metric 'f1' is not reported"):
        Trainer(cfg).fit()


def test_missing_task_and_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="'task' is not set"):
        Trainer(make_cfg(tmp_path, "task=null"))
    with pytest.raises(KeyError, match="unknown task 'NoSuchTask'.*ToySegTask"):
        Trainer(make_cfg(tmp_path, "task=NoSuchTask"))


def test_data_root_without_layout(tmp_path):
    cfg = make_cfg(tmp_path, f"output_dir={tmp_path / 'r'}", f"data.root={tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError, match="expected .npz files in"):
        Trainer(cfg).fit()


def test_cosine_warmup_schedule():
    f = [cosine_warmup_factor(s, total_steps=10, warmup_steps=2, min_ratio=0.1) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[1:], f[2:]))
    assert cosine_warmup_factor(10, 10, 2, 0.1) == pytest.approx(0.1)
    mid = cosine_warmup_factor(6, 10, 2, 0.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_parameter_groups_skip_decay_on_vectors(tmp_path):
    trainer = Trainer(make_cfg(tmp_path))
    groups = trainer.task.parameter_groups(trainer.model, 0.1)
    decay = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    for p in trainer.model.parameters():
        assert (id(p) in decay) == (p.ndim >= 2)


def test_predict_writes_npz_and_ply(tmp_path):
    run = tmp_path / "run"
    cfg = make_cfg(tmp_path, f"output_dir={run}", "train.epochs=1")
    trainer = Trainer(cfg)
    trainer.fit()
    rng = np.random.default_rng(0)
    coord = rng.uniform(-1, 1, (50, 3)).astype(np.float32)
    label = np.digitize(coord[:, 0], [-0.3, 0.3])
    np.savez(tmp_path / "scan.npz", coord=coord, label=label)
    written = trainer.predict(tmp_path / "scan.npz", checkpoint=run / "best.pt")
    assert [p.name for p in written] == ["scan.pred.npz", "scan.pred.ply"]
    with np.load(written[0]) as z:
        assert z["logits"].shape == (50, 3) and z["pred"].shape == (50,)
    from geossm.io.ply import read_ply
    ply = read_ply(written[1])
    np.testing.assert_allclose(ply["coord"], coord)
    np.testing.assert_array_equal(ply["label"], label)


def test_eval_checkpoint_matches_training_metrics(tmp_path):
    run = tmp_path / "run"
    summary = Trainer(make_cfg(tmp_path, f"output_dir={run}", "train.epochs=1")).fit()
    metrics = Trainer(make_cfg(tmp_path)).evaluate_checkpoint(run / "last.pt")
    assert metrics["val"]["miou"] == pytest.approx(summary["last"]["miou"])


def test_step_callbacks_see_every_optimizer_step(tmp_path):
    cfg = make_cfg(tmp_path, f"output_dir={tmp_path / 'run'}", "train.epochs=2",
                   "eval.split=null")
    trainer = Trainer(cfg)
    calls = []
    trainer.step_callbacks.append(lambda tr, step, n: calls.append((tr is trainer, step, n)))
    trainer.fit()
    assert [c[1] for c in calls] == list(range(1, 9))  # 16 samples / batch 4, 2 epochs
    assert all(c[0] for c in calls) and sum(c[2] for c in calls) == 32


def test_resume_with_an_optimizer_state_of_another_parameter_layout_says_what_to_do(tmp_path):
    from geossm.engine.checkpoint import CheckpointError
    from geossm.engine.trainer import load_optimizer_state

    # Two parameters saved, one (their concatenation) now: torch's bare ValueError becomes a
    # CheckpointError that names the checkpoint and the way out (model.init_from).
    old = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))])
    new = torch.optim.AdamW([torch.nn.Parameter(torch.ones(4))])
    path = tmp_path / "last.pt"
    with pytest.raises(CheckpointError, match=r"model.init_from=.*last.pt"):
        load_optimizer_state(new, old.state_dict(), path)
    same = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))])
    load_optimizer_state(same, old.state_dict(), path)  # a matching layout loads as before
    assert same.state_dict()["param_groups"] == old.state_dict()["param_groups"]


def test_ema_weights_are_evaluated_saved_and_resumed_exactly(tmp_path, restore_determinism):
    """train.ema: checkpoints' ``model`` is the average of the trained weights after every
    step (recomputed here from the steps), validation scores it (evaluating best.pt repeats the
    logged metric), and a run stopped and resumed ends bit-identical to a straight one."""
    common = ("train.epochs=4", "deterministic=true", "train.ema=0.6", "eval.test_split=test")
    straight = tmp_path / "straight"
    trainer = Trainer(make_cfg(tmp_path, f"output_dir={straight}", *common))
    expected = {}

    def track(tr, step, n):
        for key, value in tr.model.state_dict().items():
            value = value.detach().clone()
            expected[key] = value if key not in expected else 0.6 * expected[key] + 0.4 * value

    trainer.step_callbacks.append(track)
    summary = trainer.fit()
    last = load_checkpoint(straight / "last.pt")
    assert last["ema_updates"] == 16  # 4 epochs x 4 steps
    for key, value in expected.items():
        torch.testing.assert_close(last["model"][key], value, msg=key)
        torch.testing.assert_close(last["train_model"][key], trainer.model.state_dict()[key])
    assert any(not torch.equal(last["model"][k], last["train_model"][k]) for k in expected)

    best = summary["best"]
    scored = Trainer(make_cfg(tmp_path, *common)).evaluate_checkpoint(straight / "best.pt")
    assert scored["val"]["miou"] == pytest.approx(best["miou"], abs=1e-6)
    assert scored["test"]["miou"] == pytest.approx(best["test_miou"], abs=1e-6)

    parted = tmp_path / "parted"
    Trainer(make_cfg(tmp_path, f"output_dir={parted}", *common)).fit(until_epoch=2)
    torch.manual_seed(12345)
    Trainer(make_cfg(tmp_path, f"output_dir={parted}", "resume=true", *common)).fit()
    resumed = load_checkpoint(parted / "last.pt")
    for entry in ("model", "train_model"):
        for key in last[entry]:
            torch.testing.assert_close(resumed[entry][key], last[entry][key], rtol=0, atol=0,
                                       msg=f"{entry}.{key}")
    assert strip_timing(read_jsonl(straight / "metrics.jsonl")) == strip_timing(
        read_jsonl(parted / "metrics.jsonl"))


@pytest.mark.parametrize("first, then, message", [
    ("train.ema=0.9", "train.ema=null", "was trained with train.ema"),
    ("train.ema=null", "train.ema=0.9", "was trained without train.ema"),
])
def test_resume_with_another_ema_setting_is_an_error(tmp_path, first, then, message):
    run = tmp_path / "run"
    Trainer(make_cfg(tmp_path, f"output_dir={run}", "train.epochs=2", first)).fit(until_epoch=1)
    with pytest.raises(CheckpointError, match=message):
        Trainer(make_cfg(tmp_path, f"output_dir={run}", "train.epochs=2", "resume=true",
                         then)).fit()
