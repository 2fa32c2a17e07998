"""``GraphedStep``: the step's bookkeeping (warm-up per layout, capture, replay into static
buffers, gradients re-pointed, eager fallback), checked on CPU with a stand-in graph that
re-runs the recorded step where a CUDA graph would replay its kernels."""

import contextlib
import json

import pytest
import torch

from geossm.config import load_config
from geossm.engine import Trainer
from geossm.engine.cuda_graph import GraphedStep, batch_signature
from tests.cuda_graph_standin import RerunGraphedStep
from toy_task import write_toy_config


def test_signature_describes_layout_and_refuses_other_objects():
    a = {"x": torch.zeros(2, 3), "n": 4, "name": "a", "parts": [torch.ones(1)]}
    same = {"parts": [torch.zeros(1)], "name": "a", "n": 4, "x": torch.ones(2, 3)}
    assert batch_signature(a) == batch_signature(same)
    assert hash(batch_signature(a))
    assert batch_signature({**a, "x": torch.zeros(3, 3)}) != batch_signature(a)
    assert batch_signature({**a, "x": torch.zeros(2, 3, dtype=torch.float64)}) \
        != batch_signature(a)
    assert batch_signature({**a, "n": 5}) != batch_signature(a)
    assert batch_signature({"x": object()}) is None
    assert batch_signature({(1, 2): torch.zeros(1)}) is None  # a key that is not plain


def _linear_step(model):
    def step(batch):
        model.zero_grad(set_to_none=True)
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        loss.backward()
        return loss.detach(), {}, None
    return step


def test_warmup_then_capture_then_replay_with_fresh_buffers():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    graphed = RerunGraphedStep(list(model.parameters()), warmup=2)
    step = _linear_step(model)
    batches = [{"x": torch.randn(4, 3), "y": torch.randn(4, 1)} for _ in range(5)]
    for i, batch in enumerate(batches):
        loss, _, _ = graphed(batch, step)
        expected = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        assert torch.allclose(loss, expected.detach())
        assert torch.isfinite(model.weight.grad).all()  # re-pointed to the graph's buffers
    assert dict(graphed.stats) == {"eager": 2, "captured": 1, "replayed": 3}
    first = graphed(batches[0], step)[0]
    second = graphed(batches[1], step)[0]
    assert first != second  # outputs are clones, not the static buffer overwritten later


def test_new_layouts_get_their_own_graph_up_to_max_graphs_then_run_eagerly():
    model = torch.nn.Linear(3, 1)
    graphed = RerunGraphedStep(list(model.parameters()), warmup=1, max_graphs=1)
    step = _linear_step(model)
    small = {"x": torch.randn(2, 3), "y": torch.randn(2, 1)}
    large = {"x": torch.randn(5, 3), "y": torch.randn(5, 1)}
    for _ in range(3):
        graphed(small, step)
        graphed(large, step)
    assert graphed.num_graphs == 1
    assert dict(graphed.stats) == {"eager": 4, "captured": 1, "replayed": 2}
    graphed(object(), lambda b: None)  # not graphable: eager
    assert graphed.stats["eager"] == 5


@pytest.mark.parametrize("kwargs, match", [({"warmup": 0}, "warmup"),
                                           ({"max_graphs": True}, "max_graphs")])
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraphedStep([], **kwargs)


def _toy_cfg(tmp_path, name, *overrides):
    path = write_toy_config(tmp_path / f"{name}.yaml")
    return load_config(path, [f"output_dir={tmp_path / name}", "+model.dropout=0.0",
                              "+data.min_points=30", "+data.max_points=31", "train.epochs=3",
                              *overrides])


def test_trainer_with_graphed_steps_trains_as_the_eager_trainer(tmp_path):
    """Same weights and metrics (the stand-in replays exactly what a capture records); the
    epoch rows report the replays."""
    eager = Trainer(_toy_cfg(tmp_path, "eager"))
    eager.fit()
    graphed = Trainer(_toy_cfg(tmp_path, "graphed"))
    graphed.graphed_step = RerunGraphedStep(
        [p for p in graphed.model.parameters() if p.requires_grad])
    graphed.fit()
    for a, b in zip(eager.model.state_dict().values(), graphed.model.state_dict().values()):
        assert torch.equal(a, b)
    rows = [json.loads(line) for line in (tmp_path / "graphed" / "metrics.jsonl").open()]
    train = [r for r in rows if r["split"] == "train"]
    # 16 samples in batches of 4: 4 steps per epoch; 3 warm-up steps, then a capture.
    assert [r["cuda_graph_replayed"] for r in train] == [1, 5, 9]
    eager_rows = [json.loads(line) for line in (tmp_path / "eager" / "metrics.jsonl").open()]
    for a, b in zip(eager_rows, rows):
        if a["split"] != "train":
            assert a == b


def test_auto_is_off_on_cpu_and_serialized_events_do_not_inherit_it(tmp_path):
    assert Trainer(_toy_cfg(tmp_path, "auto", "train.cuda_graph=auto")).graphed_step is None
    # The windowed N-MNIST step has static shapes (graphed where CUDA allows); its serialized
    # variant, built on it, has value-dependent sizes and must not inherit the setting.
    assert load_config("events/nmnist_mamba").train.cuda_graph == "auto"
    assert load_config("events/nmnist_serialized").train.cuda_graph is False


def test_trainer_refuses_cuda_graph_without_cuda_and_bad_compile_settings(tmp_path):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Trainer(_toy_cfg(tmp_path, "cpu", "train.cuda_graph=true"))
    with pytest.raises(ValueError, match="train.cuda_graph"):
        Trainer(_toy_cfg(tmp_path, "str", "train.cuda_graph=yes"))
    with pytest.raises(ValueError, match="unknown keys"):
        Trainer(_toy_cfg(tmp_path, "kw", "train.compile={modes: max-autotune}"))


def test_compiled_training_forward_trains_as_eager(tmp_path):
    """``train.compile`` (the aot_eager backend: no C++ toolchain in the test) leaves the
    weights and checkpoints' keys as the eager run's."""
    eager = Trainer(_toy_cfg(tmp_path, "eager"))
    eager.fit()
    compiled = Trainer(_toy_cfg(tmp_path, "compiled", "train.compile={backend: aot_eager}"))
    assert compiled.ddp_model is not compiled.model
    compiled.fit()
    sd_eager, sd_compiled = eager.model.state_dict(), compiled.model.state_dict()
    assert list(sd_eager) == list(sd_compiled)
    for key in sd_eager:
        torch.testing.assert_close(sd_eager[key], sd_compiled[key], rtol=1e-5, atol=1e-6)


def test_compile_auto_follows_the_graphed_step(tmp_path, monkeypatch):
    """``train.compile: auto`` compiles only where the step is replayed as a CUDA graph
    (static shapes): off on CPU, on where a graphed step is set (the stand-in here)."""
    assert Trainer(_toy_cfg(tmp_path, "cpu", "train.compile=auto")).ddp_model.__class__ \
        is not torch._dynamo.eval_frame.OptimizedModule
    monkeypatch.setattr(Trainer, "_graphed_step", lambda self, enabled: RerunGraphedStep(
        [p for p in self.model.parameters() if p.requires_grad]))
    graphed = Trainer(_toy_cfg(tmp_path, "graphed", "train.compile=auto"))
    assert isinstance(graphed.ddp_model, torch._dynamo.eval_frame.OptimizedModule)
    assert graphed.ddp_model._orig_mod is graphed.model
    with pytest.raises(ValueError, match="true/false, auto or a mapping"):
        Trainer(_toy_cfg(tmp_path, "bad", "train.compile=sometimes"))


def test_compile_devices_limits_compilation_to_those_device_types(tmp_path):
    """``train.compile.devices``: compiled where the run's device type is listed, eager
    elsewhere; a bare string is refused (it would match by characters)."""
    compiled = torch._dynamo.eval_frame.OptimizedModule
    spec = "train.compile={backend: aot_eager, devices: [%s]}"
    assert not isinstance(Trainer(_toy_cfg(tmp_path, "gpu_only", spec % "cuda")).ddp_model,
                          compiled)
    assert isinstance(Trainer(_toy_cfg(tmp_path, "cpu_too", spec % "cuda, cpu")).ddp_model,
                      compiled)
    with pytest.raises(ValueError, match="train.compile.devices"):
        Trainer(_toy_cfg(tmp_path, "str", "train.compile={devices: cuda}"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: a real capture of a "
                    "compiled step (the CPU stand-in re-runs the step, so it cannot freeze "
                    "random numbers)")
def test_compiled_step_replayed_as_cuda_graph_draws_new_dropout_masks():
    """A compiled forward inside a captured step: without dropout the replays give the eager
    loss; with dropout every replay draws new masks (numbers frozen into the graph would
    repeat the capture's loss)."""
    torch.manual_seed(0)
    batch = {"x": torch.randn(64, 16, device="cuda"), "y": torch.randn(64, 1, device="cuda")}
    for p_drop in (0.0, 0.5):
        model = torch.nn.Sequential(torch.nn.Linear(16, 256), torch.nn.Dropout(p_drop),
                                    torch.nn.Linear(256, 1)).cuda()
        compiled = torch.compile(model)
        graphed = GraphedStep(list(model.parameters()), warmup=2, device="cuda")

        def step(b):
            model.zero_grad(set_to_none=True)
            loss = ((compiled(b["x"]) - b["y"]) ** 2).mean()
            loss.backward()
            return loss.detach(), {}, None

        losses = [float(graphed(batch, step)[0]) for _ in range(6)]
        assert dict(graphed.stats) == {"eager": 2, "captured": 1, "replayed": 4}
        replayed = losses[2:]
        if p_drop == 0.0:
            eager = float(((model(batch["x"]) - batch["y"]) ** 2).mean())
            assert replayed == pytest.approx([eager] * 4, rel=1e-5)
        else:
            assert len(set(replayed)) == 4, replayed
        assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
                   for p in model.parameters())


def test_compile_of_named_submodules_only(tmp_path):
    """``train.compile.modules``: those classes compiled in place (the state dict keeps its
    keys); a class the model lacks raises, naming the model's classes."""
    trainer = Trainer(_toy_cfg(tmp_path, "sub", "train.compile={backend: aot_eager, "
                                                "modules: [LayerNorm]}"))
    assert trainer.ddp_model is trainer.model
    assert trainer.model.norm._compiled_call_impl is not None
    assert trainer.model.head._compiled_call_impl is None
    assert "norm.weight" in trainer.model.state_dict()
    with pytest.raises(ValueError, match="not in the model .*LayerNorm"):
        Trainer(_toy_cfg(tmp_path, "bad", "train.compile={modules: [RMSNorm]}"))


def test_a_step_that_cannot_be_captured_names_the_setting():
    class FailingCapture(RerunGraphedStep):
        def _capture_context(self, graph):
            @contextlib.contextmanager
            def failing():
                yield
                raise RuntimeError("operation not permitted when stream is capturing")
            return failing()

    model = torch.nn.Linear(3, 1)
    graphed = FailingCapture(list(model.parameters()), warmup=1)
    batch = {"x": torch.randn(2, 3), "y": torch.randn(2, 1)}
    graphed(batch, _linear_step(model))
    with pytest.raises(RuntimeError, match="train.cuda_graph=false"):
        graphed(batch, _linear_step(model))
