"""Registries of the things configs name: models, datasets, tasks and transforms.

A config names a class by its class name (``model.name: PointMambaSeg``); the class makes itself
known with a decorator::

    from geossm.registry import MODELS

    @MODELS.register
    class PointMambaSeg(torch.nn.Module):
        ...

Lookups first look at what is registered; on a miss they import every module under
``geossm.tasks`` once (tasks register their classes at import time) and look again, so a config
can name any class of the library without the caller importing it. Extra modules (user code) are
imported through the config key ``imports: [my_package.my_models]``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Iterator, Mapping
from typing import Any, Callable, TypeVar

from geossm._compat import MissingDependencyError
from geossm.config import to_container

T = TypeVar("T")

#: Packages imported on the first registry miss (see ``Registry.get``).
AUTOLOAD_PACKAGES = ("geossm.tasks",)

_autoloaded: set[str] = set()
#: Modules skipped during autoload because an optional dependency is missing: name -> reason.
SKIPPED_MODULES: dict[str, str] = {}


class RegistryError(KeyError):
    """An unknown name was looked up in a registry. ``str()`` is the plain message."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def import_modules(names: Any) -> None:
    """Import the modules ``names`` (a module name or a list of them) for their registrations.

    Raises ``ModuleNotFoundError`` naming the module when one does not exist.
    """
    if names is None:
        return
    if isinstance(names, str):
        names = [names]
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"imports: expected module names (str), got {name!r}")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                raise ModuleNotFoundError(
                    f"imports: cannot import module '{name}' ({err})", name=name) from err
            raise


def autoload(packages: tuple[str, ...] = AUTOLOAD_PACKAGES) -> None:
    """Import every module below ``packages`` once, so their classes register themselves.

    A module whose optional dependency is missing (``MissingDependencyError``) is skipped and
    recorded in ``SKIPPED_MODULES``; any other import error propagates, since it is a bug.
    """
    for package in packages:
        if package in _autoloaded:
            continue
        _autoloaded.add(package)
        try:
            pkg = importlib.import_module(package)
        except MissingDependencyError as err:
            SKIPPED_MODULES[package] = str(err)
            continue
        for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), prefix=package + "."):
            if info.name.rsplit(".", 1)[-1].startswith("_"):
                continue  # private helpers register nothing
            try:
                importlib.import_module(info.name)
            except MissingDependencyError as err:
                SKIPPED_MODULES[info.name] = str(err)


class Registry:
    """A mapping from class name to class, filled by the ``register`` decorator.

    Args:
        kind: what the registry holds, used in messages (``"model"``, ``"dataset"``, ``"task"``).
        engine_keys: keys of a config spec that are read by the engine, not passed to the
            constructor (``model.init_from``: the weights a run starts from).
    """

    def __init__(self, kind: str, engine_keys: tuple[str, ...] = ()):
        self.kind = kind
        self.engine_keys = engine_keys
        self._items: dict[str, Any] = {}

    def register(self, obj: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
        """Register ``obj`` under its ``__name__`` (or ``name``); usable as ``@REG.register``.

        Registering a second, different object under a taken name raises ``ValueError``;
        registering the same class again (one file imported under two module names, e.g. by a
        test runner) replaces the entry.
        """

        def deco(target: T) -> T:
            key = name or getattr(target, "__name__", None)
            if not key:
                raise TypeError(f"{self.kind} registry: cannot register {target!r} without a name")
            old = self._items.get(key)
            if old is not None and old is not target and not _same_definition(old, target):
                raise ValueError(
                    f"{self.kind} registry: name '{key}' is already taken by "
                    f"{old.__module__}.{old.__qualname__}; rename {target!r}")
            self._items[key] = target
            return target

        return deco(obj) if obj is not None else deco

    def get(self, name: str) -> Any:
        """The object registered as ``name``; ``RegistryError`` listing known names if none."""
        if not isinstance(name, str) or not name:
            raise RegistryError(
                f"{self.kind} name must be a non-empty string (the class name), got {name!r}; "
                f"known {self.kind}s: {self._known()}")
        if name not in self._items:
            autoload()
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            skipped = (f"; modules skipped for missing optional dependencies: "
                       f"{', '.join(sorted(SKIPPED_MODULES))}") if SKIPPED_MODULES else ""
            raise RegistryError(
                f"unknown {self.kind} '{name}'{hint}; known {self.kind}s: {self._known()}{skipped}")
        return self._items[name]

    def build(self, spec: str | Mapping[str, Any], **kwargs: Any) -> Any:
        """Instantiate from a name or a mapping ``{name: ..., **init_kwargs}``.

        ``kwargs`` are added to (and override) the mapping's keyword arguments.
        """
        if isinstance(spec, str):
            name, init = spec, {}
        elif isinstance(spec, Mapping) or hasattr(spec, "items"):
            init = {str(k): to_container(v) for k, v in spec.items()}
            if "name" not in init:
                raise RegistryError(
                    f"{self.kind} spec needs a 'name' key (the class name); got keys "
                    f"{sorted(init)}; known {self.kind}s: {self._known()}")
            name = init.pop("name")
            for key in self.engine_keys:
                init.pop(key, None)
        else:
            raise TypeError(f"{self.kind} spec: expected a name or a mapping, got {spec!r}")
        init.update(kwargs)
        cls = self.get(name)
        try:
            return cls(**init)
        except TypeError as err:
            raise TypeError(f"cannot build {self.kind} '{name}' with {sorted(init)}: {err}") from err

    def names(self) -> list[str]:
        """Sorted registered names (after autoloading the library's tasks)."""
        autoload()
        return sorted(self._items)

    def loaded(self) -> dict[str, Any]:
        """``{name: object}`` registered so far, in registration order, without autoloading
        (for lookups that must stay cheap when the tasks are not imported)."""
        return dict(self._items)

    def _known(self) -> str:
        autoload()
        return ", ".join(sorted(self._items)) or "(none registered)"

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._items)})"


def _same_definition(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are one class defined twice by importing one file under two
    module names (same qualified name, same source file)."""
    if getattr(a, "__qualname__", None) != getattr(b, "__qualname__", None):
        return False
    try:
        return inspect.getfile(a) == inspect.getfile(b)
    except TypeError:  # built-ins and classes made at run time have no file
        return False


MODELS = Registry("model", engine_keys=("init_from",))
DATASETS = Registry("dataset")
TASKS = Registry("task")
TRANSFORMS = Registry("transform")
