"""YAML configs: safe loading, ``_base_`` inheritance, dotted overrides, config discovery.

A config file is YAML read with a safe loader (``!!python/...`` tags are refused). It may name
one or more base files, merged first (in order) and then overridden by the file itself::

    _base_: ../_base_/runtime.yaml        # or a list; paths are relative to this file
    description: PointMamba on synthetic segmentation
    task: SegmentationTask
    model: {name: PointMambaSeg, depth: 4}
    train: {epochs: 20, lr: 1.0e-3}

Every config is merged over ``DEFAULTS`` (the standard keys below), so every run has the same
keys. Overrides ``key.sub=value`` (value parsed as YAML: ``true``, ``3``, ``[1, 2]``, ``null``)
may only set keys that exist; ``+key.sub=value`` adds a new key. An unknown key raises
``ConfigKeyError`` naming it.

Where a config name is looked for (``find_config``), first match wins:

1. the path as given (absolute, or relative to the current directory);
2. ``$GEOSSM_CONFIG_DIR/<name>`` if that variable is set;
3. ``./configs/<name>``;
4. the repository's ``configs/<name>`` next to the installed ``geossm`` source (editable
   installs and source checkouts);
5. ``geossm/configs/<name>`` inside the installed package (for a wheel that ships them there).

Each step also tries ``<name>.yaml``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

#: The standard keys and their defaults (the schema every config is merged over).
DEFAULTS: dict[str, Any] = {
    "description": "",
    "imports": [],          # extra modules to import for their registrations (user code)
    "task": None,           # Task class name (TASKS registry)
    "model": {"name": None, "init_from": None},   # init_from: weights to fine-tune from
    "data": {"name": None, "root": None, "split": "train"},
    "train": {
        "epochs": 10,
        "batch_size": 8,
        "lr": 1.0e-3,           # peak learning rate
        "min_lr": 0.0,          # floor of the schedule's decay
        "weight_decay": 0.05,   # on the parameters the task decays (matrices)
        "warmup_epochs": 1,     # linear warm-up (per step) before every schedule
        "optimizer": {"name": "AdamW"},     # any torch.optim class; other keys: its kwargs
        "schedule": {"name": "cosine"},     # cosine | constant | step | multistep (+ options)
        "param_groups": [],     # [{params: REGEX, lr_scale: .., weight_decay: .., ...}]
        "grad_clip": 1.0,       # max global grad norm; 0 or null disables clipping
        "amp": True,            # bf16 autocast on CUDA (ignored on CPU)
        "num_workers": 0,
        "persistent_workers": False,  # workers live across epochs; batches carry their seeds
        "log_every": 10,        # steps between TensorBoard scalars
        "progress": True,       # tqdm bars
        "find_unused_parameters": False,
        "oom_skip_limit": 3,    # CUDA out of memory: skip the batch; stop after this many in a row
        "cuda_graph": False,    # replay forward+backward+clip as a CUDA graph (static shapes)
        "compile": None,        # torch.compile the training forward: true, auto or its kwargs
        "static_batch": None,   # graph tasks: {nodes, edges} or auto: batches of one layout
        "ema": None,            # decay per step: evaluate / save a moving average of the weights
    },
    "eval": {
        "split": "val",         # validation split selecting best.pt (null: no validation)
        "test_split": None,     # evaluated at the end with best.pt and the last weights
        "batch_size": None,     # null: train.batch_size
        "every": 1,             # epochs between validations (the last epoch always validates)
        "metric": None,         # null: the task's best_metric
        "mode": None,           # "max" or "min"; null: the task's best_mode
        "full_resolution": False,  # segmentation: score / predict every original point
        "votes": 1,             # segmentation: test-time passes summed (needs full_resolution)
        "write_predictions": None,  # SemanticKITTI: folder for the split's .label files
    },
    "output_dir": None,         # the run directory; null: runs/<config name>/<timestamp>
    "seed": 0,
    "device": "auto",           # auto | cpu | cuda | cuda:N
    "deterministic": False,     # torch.use_deterministic_algorithms(True)
    "resume": False,            # true: continue output_dir/last.pt (or the newest run); or a path
    "checkpoint": None,         # weights for eval / predict
    "input": None,              # predict: input file
    "output": None,             # predict: output .npz (the .ply goes beside it)
}


class ConfigError(ValueError):
    """A config file or override is malformed."""


class ConfigKeyError(ConfigError, KeyError):
    """An override names a key that does not exist. ``str()`` is the plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats such as ``1e-3`` (1.1 reads them as str)."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN)
                |[-+]?[0-9][0-9_]*\.[0-9_]*)$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text safely (no Python object tags). Raises ``ConfigError`` naming ``source``."""
    try:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - _SafeLoader is a SafeLoader
    except yaml.constructor.ConstructorError as err:
        raise ConfigError(
            f"{source}: refused YAML tag ({err.problem}); configs may hold only plain data") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(err).split())}") from err


def _read_yaml_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    return data


def _load_tree(path: Path, stack: tuple[Path, ...]) -> DictConfig:
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"_base_ cycle: {chain}")
    data = _read_yaml_file(path)
    bases = data.pop("_base_", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {bases!r}")
    merged = OmegaConf.create({})
    for base in bases:
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        if not base_path.is_file() and base_path.with_suffix(".yaml").is_file():
            base_path = base_path.with_suffix(".yaml")
        if not base_path.is_file():
            raise FileNotFoundError(f"{path}: _base_ file not found: {base_path}")
        merged = OmegaConf.merge(merged, _load_tree(base_path, (*stack, path)))
    try:
        return OmegaConf.merge(merged, OmegaConf.create(data))
    except Exception as err:  # omegaconf raises its own hierarchy for bad merges
        raise ConfigError(f"{path}: cannot merge over its bases: {err}") from err


def load_config(path: str | os.PathLike | None = None,
                overrides: Sequence[str] = ()) -> DictConfig:
    """Load a config: ``DEFAULTS`` <- bases <- file <- overrides.

    Args:
        path: the YAML file (found with ``find_config``); ``None`` gives ``DEFAULTS`` alone.
        overrides: ``key.sub=value`` strings (``+key=value`` adds a key).

    Returns:
        A ``DictConfig`` in struct mode (reading or setting a missing key raises).

    Raises:
        FileNotFoundError: the file or a ``_base_`` is missing.
        ConfigError: invalid YAML, a Python tag, a ``_base_`` cycle, a malformed override.
        ConfigKeyError: an override of a key that does not exist.
    """
    cfg = OmegaConf.create(DEFAULTS)
    if path is not None:
        cfg = OmegaConf.merge(cfg, _load_tree(find_config(path), ()))
    cfg = apply_overrides(cfg, overrides)
    OmegaConf.set_struct(cfg, True)
    return cfg


def parse_override(text: str) -> tuple[str, Any, bool]:
    """``"train.lr=1e-3"`` -> ``("train.lr", 0.001, False)``; ``"+a.b=1"`` -> ``(.., .., True)``."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    add = key.startswith("+")
    key = key.lstrip("+")
    if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w-]+)*", key):
        raise ConfigError(f"override '{text}': '{key}' is not a dotted key like train.lr")
    value = parse_yaml(raw, f"override '{text}'") if raw.strip() else ""
    return key, value, add


def _all_keys(cfg: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}{k}"
            out.append(full)
            child = cfg._get_node(k)
            if isinstance(child, DictConfig):
                out.extend(_all_keys(child, full + "."))
    return out


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply dotted overrides to ``cfg`` (a copy is returned). See ``parse_override``.

    A value replacing a number or a bool must be of a compatible type (an int may replace a
    float); anything may replace ``null``. A lone string is one override (not its characters).
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    missing = object()
    for text in overrides:
        key, value, add = parse_override(text)
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key, default=missing) if parent_key else cfg
        exists = isinstance(parent, DictConfig) and leaf in parent
        if not exists and not add:
            close = difflib.get_close_matches(key, _all_keys(cfg), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigKeyError(
                f"override '{text}': unknown config key '{key}'{hint} "
                f"(use +{key}=... to add a new key)")
        if parent is not missing and parent is not None and not isinstance(parent, DictConfig):
            raise ConfigError(f"override '{text}': '{parent_key}' is not a mapping")
        if exists:
            old = parent[leaf]
            _check_type(text, key, old, value)
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg


#: Keys that take a bool or a string (``resume``: true/false or a checkpoint path;
#: ``train.cuda_graph``: true/false or auto; ``model.graph_layers``: true/false or padded).
BOOL_OR_PATH_KEYS = frozenset({"resume", "train.cuda_graph", "model.graph_layers"})


def _check_type(text: str, key: str, old: Any, new: Any) -> None:
    if old is None or new is None:
        return
    if key in BOOL_OR_PATH_KEYS and isinstance(new, (bool, str)):
        return
    if isinstance(old, bool):
        ok = isinstance(new, bool)
        want = "true or false"
    elif isinstance(old, (int, float)):
        ok = isinstance(new, (int, float)) and not isinstance(new, bool)
        if isinstance(old, int) and isinstance(new, float) and not new.is_integer():
            ok = False
        want = "a number" if isinstance(old, float) else "an integer"
    else:
        return
    if not ok:
        raise ConfigError(f"override '{text}': '{key}' expects {want}, got {new!r}")


def to_container(value: Any) -> Any:
    """OmegaConf containers (``DictConfig``, ``ListConfig``) as plain dicts / lists with
    interpolations resolved; any other value unchanged.

    For checkpoints, ``config.yaml`` and constructors that take config sections as keyword
    arguments (``MODELS.build(to_container(cfg.model))``).
    """
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (readable back with ``load_config``)."""
    data = to_container(cfg)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


# --------------------------------------------------------------------------- config discovery

def repo_config_dir() -> Path:
    """``configs/`` of the source tree the installed ``geossm`` package comes from."""
    return Path(__file__).resolve().parent.parent / "configs"


def config_dirs() -> list[Path]:
    """Folders searched for config names, in order (see the module docstring)."""
    dirs = []
    env = os.environ.get("GEOSSM_CONFIG_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path.cwd() / "configs")
    dirs.append(repo_config_dir())
    # Where a wheel that maps configs/ into the package (geossm/configs) would put them.
    dirs.append(Path(__file__).resolve().parent / "configs")
    seen, out = set(), []
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def find_config(name: str | os.PathLike) -> Path:
    """Resolve a config path or name (e.g. ``segmentation/synthetic``); see the module docstring.

    Raises ``FileNotFoundError`` listing the places looked at.
    """
    name = Path(name)
    variants = [name] if name.suffix in (".yaml", ".yml") else [name, Path(str(name) + ".yaml")]
    candidates = list(variants)
    if not name.is_absolute():
        candidates += [d / v for d in config_dirs() for v in variants]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    looked = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise FileNotFoundError(f"config '{name}' not found (looked at {looked})")


def config_name(path: Path) -> str:
    """Name of a config file relative to the configs folder holding it, without ``.yaml``."""
    path = Path(path).resolve()
    for d in config_dirs():
        try:
            return path.relative_to(d.resolve()).with_suffix("").as_posix()
        except ValueError:
            continue
    return path.stem


def describe_config(path: Path) -> str:
    """One-line description: the whole ``description:`` key, else the first sentence of the
    first comment paragraph (comment lines up to a blank one, joined), else ``""``."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = parse_yaml(text, str(path))
    except ConfigError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("description"), str) and data["description"]:
        return " ".join(data["description"].split())
    paragraph: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        comment = s.lstrip("#").strip() if s.startswith("#") else None
        if comment:
            paragraph.append(comment)
        elif paragraph:
            break  # a blank line, an empty comment or YAML ends the paragraph
    return _first_sentence(" ".join(paragraph))


def _first_sentence(text: str) -> str:
    """``text`` up to the first ``.``, ``!`` or ``?`` that a capital letter follows (so ``e.g.``
    and ``0.5`` do not end it), or all of it."""
    match = re.search(r"[.!?](?=\s+[A-Z])", text)
    return text[:match.end()] if match else text


def list_configs(directory: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """``(name, description)`` of every config under ``directory`` (default: the first existing
    folder of ``config_dirs()``), skipping ``_base_`` fragments and files starting with ``_``."""
    if directory is None:
        existing = [d for d in config_dirs() if d.is_dir()]
        if not existing:
            raise FileNotFoundError(
                "no configs folder found (looked at "
                + ", ".join(str(d) for d in config_dirs()) + ")")
        directory = existing[0]
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"configs folder not found: {directory}")
    out = []
    for p in sorted(directory.rglob("*.yaml")):
        rel = p.relative_to(directory)
        if any(part.startswith("_") for part in rel.parts):
            continue
        out.append((rel.with_suffix("").as_posix(), describe_config(p)))
    return out


__all__ = [
    "DEFAULTS", "ConfigError", "ConfigKeyError", "load_config", "apply_overrides",
    "parse_override", "parse_yaml", "find_config", "list_configs", "describe_config",
    "config_dirs", "repo_config_dir", "save_config", "to_container", "config_name",
]
