"""Where graph datasets are processed. PyG's dataset classes write ``processed/`` beside
``raw/``, so each dataset gets a folder of its own in the cache (``cache_folder``: ``cache_dir``,
default ``$GEOSSM_CACHE`` or ``~/.cache/geossm``, then ``graphs/<family>/<hash of root>``, then
the dataset's name), the raw files are copied there and PyG processes them there: a read-only
data folder works.

That folder is built whole, by one process (``pyg_dataset`` through ``geossm.cache.build_once``):
the raw files are copied into a temporary folder, PyG processes them in it, and the folder is
renamed into place with its ``.complete`` marker. Processes started together on a fresh cache
(sweeps, cross-validation folds, DDP ranks) wait for the builder and then read a finished
folder; a builder killed mid-way leaves only its temporary, which the next run removes before
building again; a folder without the marker (an older version processed in place, maybe half)
is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from geossm.cache import build_once, cache_root

DatasetT = TypeVar("DatasetT")


def cache_folder(root: Path, family: str, cache_dir: str | os.PathLike | None) -> Path:
    """``<cache_dir or $GEOSSM_CACHE or ~/.cache/geossm>/graphs/<family>/<hash of root>``."""
    base = Path(cache_dir) if cache_dir else cache_root()
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    return base / "graphs" / family / tag


def pyg_dataset(open_dataset: Callable[[str], DatasetT], files: Sequence[Path], src_root: Path,
                folder: Path) -> DatasetT:
    """``open_dataset(str(folder))``, a PyG dataset whose root is ``folder``, once ``folder`` is
    built: ``files`` (under ``src_root``) copied to the same relative paths under it and
    processed there by ``open_dataset`` (PyG processes when it finds no ``processed/``), by one
    process (see the module docstring). The finished folder holds no path of its temporary
    (PyG's processed files hold tensors only), so opening it processes nothing.

    Raises ``FileNotFoundError`` naming a missing file.
    """
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"dataset file not found: {f} (expected the official raw "
                                    f"layout under {src_root})")

    def build(tmp: Path) -> None:
        for f in files:
            dst = tmp / f.relative_to(src_root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
        open_dataset(str(tmp))

    build_once(folder, build, directory=True)
    return open_dataset(str(folder))
