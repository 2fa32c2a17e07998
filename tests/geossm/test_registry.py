import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import toy_task  # noqa: F401 - registers the toy model, dataset and task
from geossm.registry import DATASETS, MODELS, TASKS, Registry, RegistryError


def test_register_get_build():
    reg = Registry("widget")

    @reg.register
    class Gadget:
        def __init__(self, size=1):
            self.size = size

    assert reg.get("Gadget") is Gadget and "Gadget" in reg
    assert reg.build({"name": "Gadget", "size": 3}).size == 3
    assert reg.build("Gadget", size=5).size == 5
    reg.register(Gadget)  # the same class again is fine
    twin = type("Gadget", (), {})  # same name, other definition: refused below
    with pytest.raises(ValueError, match="name 'Gadget' is already taken"):
        reg.register(twin)

    class Other:
        pass

    Other.__name__ = "Gadget"
    with pytest.raises(ValueError, match="name 'Gadget' is already taken"):
        reg.register(Other)
    reg.register(Other, name="Other")
    assert reg.names() == ["Gadget", "Other"]


def test_unknown_name_lists_known_names():
    reg = Registry("widget")
    reg.register(type("Alpha", (), {}))
    with pytest.raises(RegistryError, match=r"unknown widget 'Alpah' \(did you mean 'Alpha'\?\); "
                                            r"known widgets: Alpha"):
        reg.get("Alpah")
    err = pytest.raises(KeyError, reg.get, "Beta").value
    assert str(err).startswith("unknown widget 'Beta'")  # no KeyError quoting
    with pytest.raises(RegistryError, match="needs a 'name' key"):
        reg.build({"size": 1})
    with pytest.raises(TypeError, match="cannot build widget 'Alpha' with \\['bogus'\\]"):
        reg.build({"name": "Alpha", "bogus": 1})


def test_toy_classes_are_registered():
    assert "ToyPointNet" in MODELS.names()
    assert "ToyPoints" in DATASETS.names() and "ToySegTask" in TASKS.names()


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_runs(name):
    """Every model provides ``example() -> (init_kwargs, forward_kwargs)`` for this test."""
    cls = MODELS.get(name)
    assert hasattr(cls, "example"), (
        f"model {name} must define a classmethod example() -> (init_kwargs, forward_kwargs)")
    init, inputs = cls.example()
    torch.manual_seed(0)
    model = cls(**init)
    out = model(**inputs)
    tensors = [out] if isinstance(out, torch.Tensor) else [
        v for v in (out.values() if isinstance(out, dict) else out) if isinstance(v, torch.Tensor)]
    assert tensors, f"{name} returned no tensor"
    floats = [t for t in tensors if t.is_floating_point()]
    for t in floats:
        assert torch.isfinite(t).all(), f"{name} produced non-finite outputs"
    sum(t.float().sum() for t in floats).backward()
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


class _AccumulatingIndexPuts(TorchDispatchMode):
    """Counts ``index_put`` calls with ``accumulate=True`` (the backward of ``x[index]``)."""

    OPS = (torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default,
           torch.ops.aten._index_put_impl_.default)

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.OPS and (args[3] if len(args) > 3 else kwargs.get("accumulate", False)):
            self.count += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("name", MODELS.names())
def test_no_registered_model_sums_gradients_with_cpu_atomics(name):
    """A training step's result must not depend on thread timing: the backward of a gather
    ``x[index]`` (an accumulating index_put) adds with atomics on a multithreaded CPU, in an
    order that changes from run to run. Gathers with a gradient use ``index_select``,
    ``F.embedding`` or ``gather``, whose backwards sum in a fixed order."""
    init, inputs = MODELS.get(name).example()
    torch.manual_seed(0)
    model = MODELS.get(name)(**init).train()
    counter = _AccumulatingIndexPuts()
    with counter:
        out = model(**inputs)
        tensors = [out] if isinstance(out, torch.Tensor) else [
            v for v in (out.values() if isinstance(out, dict) else out)
            if isinstance(v, torch.Tensor)]
        sum(t.float().sum() for t in tensors if t.is_floating_point()).backward()
    assert counter.count == 0, f"{name}: {counter.count} accumulating index_put call(s)"
