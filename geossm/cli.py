"""The ``geossm`` command line (also ``python -m geossm``).

::

    geossm train [CONFIG] [key.sub=value ...]          # no CONFIG: configs/default.yaml
    geossm eval CONFIG checkpoint=PATH [key=value ...]
    geossm predict [CONFIG] checkpoint=PATH input=FILE|FOLDER [output=FILE|DIR] [key=value ...]
    geossm viz INPUT [output=PNG] [width=1024] [height=768] [point_size=3] [show=true]
    geossm export checkpoint=PATH format=safetensors|torch-export [output=FILE] [input=FILE]
    geossm configs [DIR]                               # "(runs without data)": generated data

CONFIG is a path or a name looked up as described in ``geossm.config`` (``./configs/``, then
the repository's ``configs/``). ``train`` prints one JSON line at the end:
``{"run_dir": ..., "best": {...}, "last": {...}}``; ``eval`` and ``predict`` print one JSON line
too. Errors a user can cause (missing file, unknown key, bad value, data root without the
expected layout, unsafe checkpoint) print ``geossm <command>: error: <message>`` on stderr and
exit with status 2; set ``GEOSSM_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from geossm._compat import MissingDependencyError

USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError,
    MissingDependencyError, ModuleNotFoundError, FloatingPointError,
)


def _user_errors() -> tuple[type[BaseException], ...]:
    from geossm.config import ConfigKeyError
    from geossm.registry import RegistryError
    return (*USER_ERRORS, RegistryError, ConfigKeyError)


def _json(obj: Any) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v
    return json.dumps(clean(obj))


def _split_args(args: list[str], need_config: bool) -> tuple[str | None, list[str]]:
    config = None
    if args and "=" not in args[0]:
        config, args = args[0], args[1:]
    elif need_config:
        raise ValueError("a CONFIG (path or name, see `geossm configs`) is required before "
                         "the key=value overrides")
    for a in args:
        if "=" not in a:
            raise ValueError(f"unexpected argument '{a}': expected key=value overrides after CONFIG")
    return config, args


def _load(config: str | None, overrides: list[str]):
    from geossm.config import config_name, find_config, load_config
    path = find_config(config if config is not None else "default.yaml")
    return load_config(path, overrides), config_name(path)


def cmd_train(ns: argparse.Namespace) -> int:
    from geossm.engine import Trainer
    config, overrides = _split_args(ns.args, need_config=False)
    cfg, name = _load(config, overrides)
    trainer = Trainer(cfg, config_name=name)
    try:
        summary = trainer.fit()
        if trainer.is_main:
            print(_json(summary), flush=True)
    except KeyboardInterrupt:
        if trainer.run_dir is not None:
            sys.stderr.write(f"geossm train: interrupted; continue with: geossm train "
                             f"{config or ''} resume=true output_dir={trainer.run_dir}\n")
            return 130
        raise
    finally:
        trainer.close()
    return 0


def _load_with_checkpoint(ns: argparse.Namespace, command: str):
    """Config and name for a command that needs ``CONFIG checkpoint=PATH``."""
    config, overrides = _split_args(ns.args, need_config=True)
    cfg, name = _load(config, overrides)
    if not cfg.checkpoint:
        raise ValueError(f"{command} needs checkpoint=PATH")
    return cfg, name


def cmd_eval(ns: argparse.Namespace) -> int:
    from geossm.engine import Trainer
    from geossm.engine.predictor import inference_config
    cfg, name = _load_with_checkpoint(ns, "eval")
    trainer = Trainer(inference_config(cfg), config_name=name)
    try:
        metrics = trainer.evaluate_checkpoint(str(cfg.checkpoint))
        if trainer.is_main:
            print(_json({"checkpoint": str(cfg.checkpoint), "metrics": metrics}), flush=True)
    finally:
        trainer.close()
    return 0


def cmd_predict(ns: argparse.Namespace) -> int:
    """``predict [CONFIG] checkpoint=PATH input=FILE_OR_FOLDER [output=...]``: the config stored
    in the checkpoint unless CONFIG is given (the overrides apply to either)."""
    from geossm.config import parse_override
    from geossm.engine.predictor import Predictor
    config, overrides = _split_args(ns.args, need_config=False)
    paths = {key: value for key, value, _ in map(parse_override, overrides)
             if key in ("checkpoint", "input", "output")}
    if not paths.get("checkpoint"):
        raise ValueError("predict needs checkpoint=PATH")
    if not paths.get("input"):
        raise ValueError("predict needs input=FILE or input=FOLDER")
    source = str(paths["input"])
    if not os.path.exists(source):
        raise FileNotFoundError(f"input file not found: {source}")
    # The stored config's device is the training machine's: without CONFIG or device=, auto.
    chosen = config is not None or any(a.startswith("device=") for a in overrides)
    predictor = Predictor.from_checkpoint(str(paths["checkpoint"]), config=config,
                                          device=None if chosen else "auto", overrides=overrides)
    output = paths.get("output")
    written = predictor.predict_path(source, output and str(output),
                                     progress=None if predictor.cfg.train.progress else False)
    print(_json({"input": source, "outputs": [str(p) for p in written]}), flush=True)
    return 0


_EXPORT_OPTIONS = ("checkpoint", "format", "output", "input")


def _options(texts: list[str], known) -> list[tuple[str, Any, str]]:
    """``key=value`` options of a command: ``(key, parsed value, value as written)`` each;
    ``ValueError`` naming an unknown key and the ``known`` ones."""
    from geossm.config import parse_override
    options = []
    for text in texts:
        key, value, _ = parse_override(text)
        if key not in known:
            raise ValueError(f"unknown option '{key}' (known: {', '.join(known)})")
        options.append((key, value, text.split("=", 1)[1]))
    return options


def cmd_export(ns: argparse.Namespace) -> int:
    from geossm.engine.export import export_checkpoint
    # paths as written, not parsed as YAML
    opts = {key: text for key, _, text in _options(ns.options, _EXPORT_OPTIONS)}
    for key in ("checkpoint", "format"):
        if key not in opts:
            raise ValueError(f"export needs {key}=... (checkpoint=PATH "
                             "format=safetensors|torch-export)")
    result = export_checkpoint(opts["checkpoint"], opts["format"], opts.get("output"),
                               opts.get("input"))
    print(_json(result), flush=True)
    return 0


_VIZ_OPTIONS = {"output": str, "width": int, "height": int, "point_size": float, "show": bool}


def cmd_viz(ns: argparse.Namespace) -> int:
    from geossm import viz
    opts: dict[str, Any] = {}
    for key, value, _ in _options(ns.options, _VIZ_OPTIONS):
        kind = _VIZ_OPTIONS[key]
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"{key} expects true or false, got {value!r}")
        if kind in (int, float) and (isinstance(value, bool)
                                     or not isinstance(value, (int, float))):
            raise ValueError(f"{key} expects a number, got {value!r}")
        opts[key] = kind(value) if kind is not bool else value
    show = opts.pop("show", None)
    if show is None:
        show = "output" not in opts and viz.has_display()
    if show:
        viz.show_file(ns.input)
        print(_json({"input": ns.input, "shown": True}), flush=True)
        return 0
    png = viz.render_file(ns.input, opts.get("output"), width=opts.get("width", 1024),
                          height=opts.get("height", 768), point_size=opts.get("point_size", 3.0))
    print(_json({"input": ns.input, "png": str(png)}), flush=True)
    return 0


#: Printed after the description of a config whose dataset is generated (``_runs_without_data``).
NO_DATA_MARK = "(runs without data)"


def _runs_without_data(path: os.PathLike | str) -> bool:
    """Whether the config at ``path`` needs no dataset on disk: its resolved ``data.name`` is a
    generated dataset (the library names those ``Synthetic...``). False if it does not load."""
    from geossm.config import load_config
    try:
        name = load_config(path).get("data", {}).get("name")
    except (ValueError, OSError):
        return False
    return isinstance(name, str) and name.startswith("Synthetic")


def cmd_configs(ns: argparse.Namespace) -> int:
    from geossm.config import config_dirs, list_configs
    rows = list_configs(ns.dir)
    folder = Path(ns.dir) if ns.dir else next(d for d in config_dirs() if d.is_dir())
    width = max((len(n) for n, _ in rows), default=0)
    marked = False
    for name, desc in rows:
        mark = _runs_without_data(folder / f"{name}.yaml")
        marked |= mark
        print(f"{name:<{width}}  {desc}{'  ' + NO_DATA_MARK if mark else ''}".rstrip())
    if marked:
        print(f"\n{NO_DATA_MARK}: the data is generated, no download and no data.root; the "
              "others read a dataset from data.root=PATH (each config's comment names the "
              "folder it expects).")
    return 0


EXAMPLES = """\
examples:
  geossm train                          # the embedded default: synthetic part segmentation, CPU
  geossm configs                        # every config; "(runs without data)" marks generated data
  geossm train graph/synthetic_gmn      # a graph model, no data needed either
  geossm train segmentation/shapenetpart_pcm data.root=/data/shapenet train.epochs=50
  python -m geossm.tasks.segmentation shape.npz        # one sample to predict on
  geossm predict default checkpoint=runs/default/<time>/best.pt input=shape.npz output=pred.npz
  geossm predict checkpoint=runs/default/<time>/best.pt input=scans/   # config from checkpoint
  geossm viz pred.npz output=pred.png   # ground truth | prediction
  geossm eval default checkpoint=runs/default/<time>/best.pt

CONFIG is a path or a name under configs/ (see `geossm configs`); key=value overrides any config
key (+key=value adds one). Errors print one line; GEOSSM_DEBUG=1 shows the traceback.
"""


def _subcommand(sub, name: str, summary: str, usage: str, description: str, func,
                *arguments: tuple[tuple, dict]):
    """A sub-parser running ``func``, with the positional ``arguments`` (``(args, kwargs)`` of
    ``add_argument``), whose usage line is ``usage`` (argparse would repeat a ``nargs="+"``
    metavar) and whose help keeps the line breaks of ``description``."""
    parser = sub.add_parser(name, help=summary, usage=f"geossm {name} {usage}",
                            description=f"{summary[0].upper()}{summary[1:]}.\n\n{description}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    for args, kwargs in arguments:
        parser.add_argument(*args, **kwargs)
    parser.set_defaults(func=func)
    return parser


def _config_args(nargs: str, help_text: str) -> tuple[tuple, dict]:
    """The ``CONFIG key=value ...`` positional of train, eval and predict."""
    return ("args",), {"nargs": nargs, "metavar": "ARG", "help": help_text}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geossm", description="Selective state-space models for point clouds, LiDAR, "
        "graphs and events:\ntrain, evaluate, predict, visualise.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _subcommand(sub, "train", "train a model (prints a JSON summary line)",
                "[CONFIG] [key=value ...]",
                "CONFIG defaults to default.yaml (synthetic part segmentation). The run goes\n"
                "to output_dir (default runs/<config name>/<time>); resume=true continues it.",
                cmd_train,
                _config_args("*", "config path or name (default: default.yaml), then key=value "
                                  "overrides"))
    _subcommand(sub, "eval", "evaluate a checkpoint on eval.split / eval.test_split",
                "CONFIG checkpoint=PATH [key=value ...]",
                "Prints one JSON line {\"checkpoint\": ..., \"metrics\": {split: {...}}}.",
                cmd_eval,
                _config_args("+", "config path or name, then checkpoint=PATH and key=value "
                                  "overrides"))
    _subcommand(sub, "predict", "run a checkpoint on an input file or folder",
                "CONFIG checkpoint=PATH input=FILE [output=FILE] [key=value ...]",
                "CONFIG may be left out: the checkpoint holds its run's config (a CONFIG given\n"
                "replaces it; key=value overrides apply to either).\n"
                "input=FILE   the sample to predict on (.npz, .npy or .ply; the task's\n"
                "             input, e.g. `python -m geossm.tasks.segmentation shape.npz`),\n"
                "             or a FOLDER: every file of it the task reads (progress bar)\n"
                "output=FILE  the prediction's .npz (another suffix becomes .npz), with a .ply\n"
                "             of the points beside it (default: <input>.pred.npz beside INPUT;\n"
                "             for a folder: output=DIR holds <name>.pred.npz per file)\n"
                "\nPrints one JSON line {\"input\": ..., \"outputs\": [files written]}.",
                cmd_predict,
                _config_args("+", "[config path or name], then checkpoint=PATH input=FILE "
                                  "[output=FILE] and key=value overrides"))
    _subcommand(sub, "export", "export a checkpoint's model (safetensors or torch.export)",
                "checkpoint=PATH format=safetensors|torch-export [output=FILE] [input=FILE]",
                "format=safetensors    the state dict (+ the config as metadata)\n"
                "format=torch-export   torch.export program (.pt2), checked against eager on\n"
                "                      an example batch (input=FILE, default the first training\n"
                "                      samples); not every model traces (see docs)\n"
                "output= defaults to the checkpoint's path with .safetensors / .pt2.\n"
                "\nPrints one JSON line {\"output\": ..., \"format\": ..., ...}.",
                cmd_export,
                (("options",), {"nargs": "+", "metavar": "key=value",
                                "help": "checkpoint=PATH format=... [output=FILE] "
                                        "[input=FILE]"}))
    _subcommand(sub, "viz", "render a .ply/.npz to PNG (or a window)",
                "INPUT [output=PNG] [width=1024] [height=768] [point_size=3] [show=true|false]",
                "A prediction of `geossm predict` (.npz or .ply with label and pred) renders\n"
                "ground truth and prediction side by side. output= defaults to INPUT with .png;\n"
                "without output= and with a display, a window opens instead.",
                cmd_viz,
                (("input",), {"metavar": "INPUT"}),
                (("options",), {"nargs": "*", "metavar": "key=value",
                                "help": "output=PNG width=W height=H point_size=S "
                                        "show=true|false"}))
    _subcommand(sub, "configs", "list configs with their descriptions", "[DIR]",
                f"{NO_DATA_MARK} marks configs whose data is generated (no download, no\n"
                "data.root); the others need data.root=PATH.",
                cmd_configs,
                (("dir",), {"nargs": "?", "default": None,
                            "help": "configs folder (default: found one)"}))
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(ns.func(ns) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"geossm {ns.command}: interrupted (train: continue with resume=true "
                         "output_dir=RUN_DIR)\n")
        return 130
    except _user_errors() as err:
        if os.environ.get("GEOSSM_DEBUG"):
            raise
        msg = " ".join(str(err).split()) or type(err).__name__
        # Messages of a command's own module may start with its name ("viz: ..."): said once.
        msg = msg.removeprefix(f"{ns.command}: ")
        sys.stderr.write(f"geossm {ns.command}: error: {msg}\n")
        return 2


if __name__ == "__main__":   # `python -m geossm.cli` as `python -m geossm` (geossm/__main__.py)
    raise SystemExit(main())
