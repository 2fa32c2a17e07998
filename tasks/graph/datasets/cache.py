"""Where graph datasets are processed. PyG's dataset classes write ``processed/`` beside
``raw/``, so each dataset gets a folder of its own in the cache (``cache_folder``: ``cache_dir``,
default ``$GEOSSM_CACHE`` or ``~/.cache/geossm``, then ``graphs/<family>/<hash of root and of
the raw files' contents>``, then the dataset's name), the raw files are copied there and PyG
processes them there: a read-only data folder works. Raw files replaced in place, added or
removed give a new folder, processed afresh (the old one is left, never read again).

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
import pickle
import shutil
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from geossm.cache import build_once, cache_root, files_digest

DatasetT = TypeVar("DatasetT")


#: What PyG's readers and NumPy's ``np.load`` raise on malformed raw files (a bad token, rows
#: of other lengths: ``torch.cat``'s RuntimeError; a missing key; a truncated archive), turned
#: into a ``ValueError`` naming the files; anything else propagates as it is.
MALFORMED = (ValueError, KeyError, IndexError, EOFError, RuntimeError, zipfile.BadZipFile,
             zlib.error, pickle.UnpicklingError)


def cache_folder(root: Path, family: str, cache_dir: str | os.PathLike | None,
                 files: Sequence[Path]) -> Path:
    """``<cache_dir or $GEOSSM_CACHE or ~/.cache/geossm>/graphs/<family>/<tag>``, ``tag`` a hash
    of the resolved ``root`` and of the contents of ``files`` (``geossm.cache.files_digest``: the
    raw files ``pyg_dataset`` copies, by content, since copies on other machines have other
    mtimes). ``files=()`` hashes the root alone (a cache that keeps its own digest inside)."""
    base = Path(cache_dir) if cache_dir else cache_root()
    key = str(root.resolve())
    if files:
        key += "\0" + files_digest(files)
    tag = hashlib.sha1(key.encode()).hexdigest()[:10]
    return base / "graphs" / family / tag


def _where(files: Sequence[Path]) -> str:
    """The file, or the folder holding the files, for messages."""
    return str(files[0]) if len(files) == 1 else os.path.commonpath([str(f) for f in files])


def pyg_dataset(open_dataset: Callable[[str], DatasetT], files: Sequence[Path], src_root: Path,
                folder: Path, check: Callable[[], None] | None = None) -> DatasetT:
    """``open_dataset(str(folder))``, a PyG dataset whose root is ``folder``, once ``folder`` is
    built: ``files`` (under ``src_root``) copied to the same relative paths under it and
    processed there by ``open_dataset`` (PyG processes when it finds no ``processed/``), by one
    process (see the module docstring). The finished folder holds no path of its temporary
    (PyG's processed files hold tensors only), so opening it processes nothing.

    ``check()``, default None, runs before processing (only when the folder is built): it
    raises on raw files that PyG would process into something wrong without a word.

    Raises ``FileNotFoundError`` naming a missing file, ``ValueError`` naming the file (or the
    folder of the files) that PyG could not parse (a truncated archive, a missing key, a bad
    token; the parser's error is chained).
    """
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"dataset file not found: {f} (expected the official raw "
                                    f"layout under {src_root})")

    def build(tmp: Path) -> None:
        if check is not None:
            check()
        for f in files:
            dst = tmp / f.relative_to(src_root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
        try:
            open_dataset(str(tmp))
        except MALFORMED as err:
            raise ValueError(f"{_where(files)}: cannot process the raw files "
                             f"({type(err).__name__}: {err}); expected the official raw layout "
                             f"under {src_root}, whole and well-formed") from err

    build_once(folder, build, directory=True)
    return open_dataset(str(folder))
