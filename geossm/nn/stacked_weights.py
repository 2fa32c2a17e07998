"""The two Mamba directions of a ``BiMamba`` (a LION group layer, a graph model layer) with
their weights stored together.

``packed_mixer.packed_bimamba`` runs both directions of a ``geossm.nn.BiMamba`` as one Mamba of
twice the inner width, reading the pair of every weight as one matrix (the in-projections one
above the other, the out-projections side by side, ...). Kept as two parameters, the pairs are
concatenated in every forward and their gradients split in every backward, and autograd, the
clipping and the optimizer handle each tensor on its own: per group layer ~40 operators of a
step that is bound by operator dispatch on the GPU. ``pack_bimamba_weights`` stores each pair
as one parameter in that layout instead; the state dict keeps the two-module keys
(``forward_mamba.in_proj.weight``, ...), so checkpoints load and save as before, and the
directions' own modules read views of the pairs (``bind_direction_weights``) where the packed
path does not apply.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["can_pack", "pack_bimamba_weights", "pack_where_possible", "bind_direction_weights", "is_packed",
           "stacked_weights", "DIRECTIONS"]

#: the two directions of a ``BiMamba`` (its submodule names), direction 0 then 1
DIRECTIONS = ("forward_mamba", "backward_mamba")
#: parameters of a Mamba direction that ``pack_bimamba_weights`` stacks (``conv_bias`` where
#: the directions have one)
_PACKED_NAMES = ("conv_weight", "conv_bias", "A_log", "D", "in_proj.weight", "x_proj.weight",
                 "dt_proj.weight", "dt_proj.bias", "out_proj.weight")
#: how a pair is stored: ``("cat", dim)`` (the packed path's layout: in-projection ``(4E, D)``,
#: convolution ``(2E, W)``, ``A_log (2E, N)``, out-projection ``(D, 2E)``...) or
#: ``("stack", 0)`` (x- and dt-projections ``(2, K, E)`` / ``(2, E, R)``, the blocks of their
#: block-diagonal matrices); default ``("cat", 0)``
_LAYOUT = {"x_proj.weight": ("stack", 0), "dt_proj.weight": ("stack", 0),
           "out_proj.weight": ("cat", 1)}


def _packed_attr(name: str) -> str:
    return "packed_" + name.replace(".", "_")


def _combined(pair: Sequence[Tensor], name: str) -> Tensor:
    """The two directions' weight ``name`` in its stored layout (``_LAYOUT``)."""
    how, dim = _LAYOUT.get(name, ("cat", 0))
    return (torch.stack if how == "stack" else torch.cat)(list(pair), dim)


def _direction(stacked: Tensor, name: str, d: int) -> Tensor:
    """Direction ``d``'s weight ``name``: a view of its ``stacked`` parameter."""
    how, dim = _LAYOUT.get(name, ("cat", 0))
    if how == "stack":
        return stacked.select(dim, d)
    size = stacked.shape[dim] // 2
    return stacked.narrow(dim, d * size, size)


def is_packed(bimamba) -> bool:
    """Whether ``pack_bimamba_weights`` stacked ``bimamba``'s weights."""
    return bool(getattr(bimamba, "_packed_names", None))


def can_pack(bimamba) -> bool:
    """Whether ``pack_bimamba_weights`` applies: a ``BiMamba`` of two ``Mamba`` directions
    with the same parameters, none but ``_PACKED_NAMES`` (no projection biases)."""
    from geossm.nn import BiMamba, Mamba

    if not isinstance(bimamba, BiMamba) or is_packed(bimamba):
        return False
    f, b = (getattr(bimamba, d) for d in DIRECTIONS)
    if type(f) is not Mamba or type(b) is not Mamba:
        return False
    names = [n for n, _ in f.named_parameters()]
    return names == [n for n, _ in b.named_parameters()] and set(names) <= set(_PACKED_NAMES)


def pack_bimamba_weights(bimamba) -> None:
    """Store the two directions' weights of ``bimamba`` (a ``geossm.nn.BiMamba`` of Mamba-1
    directions without in-/out-projection biases) as one parameter per pair, in place.

    ``forward_mamba.A_log`` and ``backward_mamba.A_log`` become ``packed_A_log (2E, N)``
    (``_LAYOUT``: concatenated as the packed path reads them, the x- and dt-projections
    stacked ``(2, K, E)`` / ``(2, E, R)``, the out-projections side by side ``(D, 2E)``);
    weight-decay flags follow the originals (``_no_weight_decay`` where they had ``ndim < 2``
    or the flag). The directions keep the names as views (``bind_direction_weights``), so
    their own forward still runs; ``state_dict`` / ``load_state_dict`` keep and accept the two-module keys.
    Same values: outputs and gradients do not change.

    Raises:
        ValueError: ``can_pack`` is false (projection biases, other direction modules, the
            weights stacked already).
    """
    if not can_pack(bimamba):
        raise ValueError("bimamba: expected a BiMamba of two Mamba directions with the "
                         f"parameters {list(_PACKED_NAMES)} (conv_bias optional), not packed "
                         f"yet; got {type(bimamba).__name__}")
    f, b = (getattr(bimamba, d) for d in DIRECTIONS)
    present = {n for n, _ in f.named_parameters()}
    names = [n for n in _PACKED_NAMES if n in present]
    for name in names:
        owner, leaf = name.rpartition(".")[0], name.rpartition(".")[2]
        pf, pb = (getattr(m.get_submodule(owner), leaf) for m in (f, b))
        stacked = nn.Parameter(_combined([pf.detach(), pb.detach()], name),
                               requires_grad=pf.requires_grad)
        if pf.ndim < 2 or getattr(pf, "_no_weight_decay", False):
            stacked._no_weight_decay = True
        bimamba.register_parameter(_packed_attr(name), stacked)
        for m in (f, b):
            del m.get_submodule(owner)._parameters[leaf]
    bimamba._packed_names = tuple(names)
    bimamba._register_state_dict_hook(_unpacked_state_dict)
    bimamba._register_load_state_dict_pre_hook(_pack_loaded_state_dict, with_module=True)
    bind_direction_weights(bimamba)


def pack_where_possible(bimamba) -> None:
    """``pack_bimamba_weights(bimamba)`` where it applies (``can_pack``); anything else (another
    mixer, None, weights already stacked) is left as it is."""
    if can_pack(bimamba):
        pack_bimamba_weights(bimamba)


def bind_direction_weights(bimamba) -> None:
    """Point the directions' weight names (``forward_mamba.in_proj.weight`` ...) at views of
    the stacked parameters, for their own forward: made again where called (after ``.to()``
    or a dtype change the parameters hold new tensors). Nothing to do for a mixer whose
    weights are not stacked (``is_packed`` false, or not a module at all)."""
    for name in getattr(bimamba, "_packed_names", None) or ():
        owner, leaf = name.rpartition(".")[0], name.rpartition(".")[2]
        stacked = getattr(bimamba, _packed_attr(name))
        for d, direction in enumerate(DIRECTIONS):
            setattr(getattr(bimamba, direction).get_submodule(owner), leaf,
                    _direction(stacked, name, d))


def _unpacked_state_dict(module, state_dict, prefix, local_metadata) -> None:
    """State-dict hook: the stacked entries of ``module`` replaced by the two directions'
    own keys and tensors (contiguous copies), in the order of the unpacked module."""
    stacked = {name: state_dict.pop(prefix + _packed_attr(name)) for name in module._packed_names}
    for d, direction in enumerate(DIRECTIONS):
        for name in module._packed_names:
            state_dict[f"{prefix}{direction}.{name}"] = _direction(
                stacked[name], name, d).detach().clone(memory_format=torch.contiguous_format)


def _pack_loaded_state_dict(module, state_dict, prefix, local_metadata, strict, missing_keys,
                            *args) -> None:
    """Load-state-dict pre-hook: the two directions' keys of a checkpoint stacked into the
    parameters'. Where a checkpoint holds one direction of a pair (a partial ``strict=False``
    load, e.g. ``model.init_from``), the other half keeps the module's current values and its
    key is reported missing, as for an unpacked module."""
    for name in module._packed_names:
        keys = [f"{prefix}{direction}.{name}" for direction in DIRECTIONS]
        present = [k in state_dict for k in keys]
        if not any(present):
            continue
        stacked = getattr(module, _packed_attr(name))
        pair = [state_dict.pop(k) if here else _direction(stacked, name, d).detach()
                for d, (k, here) in enumerate(zip(keys, present))]
        missing_keys.extend(k for k, here in zip(keys, present) if not here)
        state_dict[prefix + _packed_attr(name)] = _combined(pair, name)


def stacked_weights(bimamba) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of a packed ``bimamba``, by the directions' weight names
    (``"in_proj.weight"``, ...; ``conv_bias`` where the directions have one)."""
    return {name: getattr(bimamba, _packed_attr(name)) for name in bimamba._packed_names}
