"""``geossm/nn/stacked_weights.py``: a LION group layer's two Mamba directions with their
weights stored as one parameter per pair, checkpoints in the two-module layout."""

import pytest
import torch

from geossm.tasks.detection.models import LinearGroupLayer
from geossm.nn.stacked_weights import is_packed, pack_bimamba_weights, pack_where_possible
from tests.sparse_samples import random_voxels


def _direction_block(seed=0, **kw):
    """The layer's mixer as the LION model built it before the weights were stacked."""
    from geossm.tasks.detection.models import OPERATORS

    torch.manual_seed(seed)
    return OPERATORS["mamba"](8, True, 0.0, 0.0, **kw)


@pytest.mark.parametrize("conv_bias", [True, False])
def test_stacked_weights_keep_the_two_module_checkpoint(conv_bias):
    """The state dict of a layer with stacked weights is the unpacked mixer's (same keys in the
    same order, same values), and a checkpoint of the unpacked layout loads."""
    old = _direction_block(conv_bias=conv_bias, d_state=4)
    torch.manual_seed(0)
    layer = LinearGroupLayer(8, (4, 4, 2), 16, "x", False, conv_bias=conv_bias, d_state=4)
    assert is_packed(layer.mixer.mixer)
    own, ref = layer.mixer.state_dict(), old.state_dict()
    assert list(own) == list(ref)
    assert all(torch.equal(own[k], ref[k]) and own[k].is_contiguous() for k in ref)
    # half the parameter tensors of the mixer: norm + one per pair
    assert len(list(layer.parameters())) == 1 + (len(list(old.parameters())) - 1) // 2
    with torch.no_grad():
        for p in old.parameters():
            p.add_(torch.randn_like(p))
    layer.mixer.load_state_dict(old.state_dict())
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in layer.mixer.state_dict().items())
    f = layer.mixer.mixer.forward_mamba
    assert torch.equal(layer.mixer.mixer.packed_out_proj_weight[:, :16],
                       old.mixer.forward_mamba.out_proj.weight)
    assert f.in_proj.weight.data_ptr() == layer.mixer.mixer.packed_in_proj_weight.data_ptr()


def test_stacked_weights_keep_weight_decay_and_follow_dtype_changes():
    from geossm.config import load_config
    from geossm.engine import Task

    old = _direction_block()
    torch.manual_seed(0)
    layer = LinearGroupLayer(8, (4, 4, 2), 16, "x", False)
    task = Task(load_config(None))
    decayed = [sum(p.numel() for g in task.parameter_groups(m, 0.1) if g["weight_decay"]
                   for p in g["params"]) for m in (old, layer)]
    assert decayed[0] == decayed[1] > 0
    layer.bfloat16()
    layer.packed = False       # the mixer's own calls read views of the stacked weights
    sp = random_voxels()
    out = layer(sp.replace(sp.features.bfloat16())).features
    f = layer.mixer.mixer.forward_mamba
    assert out.dtype == f.x_proj.weight.dtype == torch.bfloat16
    assert f.x_proj.weight.data_ptr() == layer.mixer.mixer.packed_x_proj_weight.data_ptr()


def test_stacking_is_refused_where_it_does_not_apply():
    from geossm.nn import BiMamba

    with pytest.raises(ValueError, match="expected a BiMamba"):
        pack_bimamba_weights(BiMamba(8, bias=True))
    layer = LinearGroupLayer(8, (4, 4, 2), 16, "x", False, bias=True)
    assert not is_packed(layer.mixer.mixer) and layer.packed_backend(torch.zeros(2, 8)) is None


def test_pack_where_possible_stacks_what_can_be_stacked_and_leaves_the_rest():
    from geossm.nn import BiMamba

    plain, biased = BiMamba(8), BiMamba(8, bias=True)
    for mixer in (plain, biased, None, torch.nn.Linear(2, 2)):
        pack_where_possible(mixer)
    assert is_packed(plain) and not is_packed(biased)
    stacked = plain.packed_A_log
    pack_where_possible(plain)  # already stacked: the same parameters
    assert plain.packed_A_log is stacked


def test_init_from_a_checkpoint_of_the_two_module_layout(tmp_path):
    """``model.init_from`` (name-and-shape matching, ``strict=False``) fills the stacked pairs
    from a checkpoint of the unpacked layout, also when it holds one direction only."""
    from geossm.engine.finetune import init_from_checkpoint

    old = _direction_block(conv_bias=True, d_state=4)
    with torch.no_grad():
        for p in old.parameters():
            p.add_(torch.randn_like(p))
    torch.manual_seed(0)
    layer = LinearGroupLayer(8, (4, 4, 2), 16, "x", False, conv_bias=True, d_state=4)
    torch.save(old.state_dict(), tmp_path / "old.pt")
    match = init_from_checkpoint(layer.mixer, tmp_path / "old.pt")
    assert not match.missing and not match.mismatched and not match.unexpected
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in layer.mixer.state_dict().items())
    one_direction = {k: v + 1 for k, v in old.state_dict().items() if ".forward_mamba." in k}
    torch.save(one_direction, tmp_path / "forward.pt")
    match = init_from_checkpoint(layer.mixer, tmp_path / "forward.pt")
    now = layer.mixer.state_dict()
    assert match.missing and all(torch.equal(now[k], v) for k, v in one_direction.items())
    assert all(torch.equal(now[k], v) for k, v in old.state_dict().items()
               if ".backward_mamba." in k)
    # a strict load names the direction a pair lacks, as for the unpacked module
    with pytest.raises(RuntimeError, match=r"mixer\.backward_mamba\.in_proj\.weight"):
        layer.mixer.load_state_dict(one_direction)
