"""Where graph datasets are processed: PyG's dataset classes write ``processed/`` beside
``raw/``, so the raw files are first copied into a cache folder (``cache_dir``, default
``$GEOSSM_CACHE`` or ``~/.cache/geossm``, then ``graphs/<family>/<hash of root>``) and a
read-only data folder works."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path


def cache_root(root: Path, family: str, cache_dir: str | os.PathLike | None) -> Path:
    """``<cache_dir or $GEOSSM_CACHE or ~/.cache/geossm>/graphs/<family>/<hash of root>``."""
    base = Path(cache_dir) if cache_dir else Path(
        os.environ.get("GEOSSM_CACHE", Path.home() / ".cache" / "geossm"))
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    return base / "graphs" / family / tag


def cache_copy(files: Sequence[Path], src_root: Path, dst_root: Path) -> None:
    """Copy ``files`` (under ``src_root``) to the same relative paths under ``dst_root``.

    A file already there with the same size and a modification time not older than the source
    is kept, so a second run copies nothing. Raises ``FileNotFoundError`` naming a missing file.
    """
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"dataset file not found: {f} (expected the official raw "
                                    f"layout under {src_root})")
        dst = dst_root / f.relative_to(src_root)
        if dst.is_file() and dst.stat().st_size == f.stat().st_size \
                and dst.stat().st_mtime >= f.stat().st_mtime:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)
