import pytest
import torch

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
