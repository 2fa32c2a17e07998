"""Transforms: small callable objects that turn one sample into the next, listed in configs as
``{name: <class name>, **arguments}`` and built from one registry, ``TRANSFORMS``::

    data:
      augment:
        - {name: RandomRotate, axis: z}
        - {name: RandomScale, scale: [0.9, 1.1]}

Every task's transforms follow one contract:

- ``transform(sample, rng=None) -> sample``. ``sample`` is the task's sample dict (segmentation:
  ``coord``, ``normal``, ``label``...; detection: ``points``, ``gt_boxes``...; event recognition:
  ``events``, ``sensor_size``); a transform may change it in place and returns the result.
- ``rng`` is the ``numpy.random.Generator`` to draw from, owned by the caller (the detection and
  event datasets make one stream per sample from their ``seed``). With ``rng=None`` a transform
  draws from ``torch_generator()``, a fresh generator seeded from torch's global RNG at its
  first draw: the trainer's torch seeding (per epoch, per DataLoader worker) then covers it, and
  a transform that draws nothing takes nothing from torch's stream.
- Deterministic transforms accept ``rng`` and ignore it.

The names are class names, unique across tasks (``Registry`` refuses a second class under a taken
name); each task's transforms live in ``tasks/<task>/transforms.py`` and register themselves with
``@TRANSFORMS.register``. The deterministic preparation a dataset applies to every raw sample
(grid sampling, features, range filtering, event representations) is each task's
``preprocess`` object, which datasets and ``predict`` share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from geossm.registry import TRANSFORMS, RegistryError

__all__ = ["Compose", "Sample", "Transform", "build_transforms", "generator", "torch_generator"]

Sample = dict[str, Any]
#: ``transform(sample, rng=None) -> sample`` (module docstring).
Transform = Callable[..., Sample]


def torch_generator() -> np.random.Generator:
    """A NumPy generator seeded by one draw from torch's global RNG (seeded by the trainer)."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))


def generator(rng: np.random.Generator | None) -> np.random.Generator:
    """``rng`` itself, or a fresh ``torch_generator()`` when it is None.

    Transforms call this where they draw, so ``rng=None`` costs a torch draw only when they do.
    """
    return torch_generator() if rng is None else rng


class Compose:
    """Apply ``transforms`` in order, handing each the same ``rng`` (None: each draws its own
    from torch, see the module docstring). ``len()`` is the number of transforms, so an empty
    ``Compose`` is false."""

    def __init__(self, transforms: Sequence[Transform] = ()) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self) -> Iterator[Transform]:
        return iter(self.transforms)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def build_transforms(specs: Sequence[Mapping[str, Any]] | None, key: str = "augment") -> Compose:
    """``Compose`` of config entries ``[{name: RandomRotate, axis: z}, ...]`` (None: empty).

    Args:
        specs: mappings with the class name under ``name`` and its arguments beside it.
        key: the config key the list came from, named in error messages (default ``augment``).

    Raises ``ValueError`` naming ``key`` for an entry that is not such a mapping or names an
    unknown transform (the message lists the known names), ``TypeError`` for arguments the
    transform does not take; a transform's own ``ValueError`` for bad values passes through.
    """
    if specs is None:
        return Compose()
    if isinstance(specs, (str, Mapping)):
        raise ValueError(f"{key}: expected a list of {{name: ..., **args}} mappings, got {specs!r}")
    transforms = []
    for spec in specs:
        if not (isinstance(spec, Mapping) or hasattr(spec, "items")) or "name" not in spec:
            raise ValueError(f"{key}: expected mappings with a 'name' key, got {spec!r}")
        try:
            transforms.append(TRANSFORMS.build(spec))
        except RegistryError as err:
            raise ValueError(f"{key}: {err}") from err
    return Compose(transforms)
