"""Shared helpers for the tests of ``benchmarks/*.py`` (scripts, not an importable package)."""

import importlib.util
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(stem: str) -> ModuleType:
    """A fresh module object of ``benchmarks/<stem>.py`` (executed, not put in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(stem, BENCHMARKS / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
