"""The real samples of ``../shared/data`` for tests, in one place: where they are
(``GEOSSM_SHARED_DATA`` names a copy elsewhere), a skip that says why when one is absent, and
archives unpacked into a temporary folder (the shared copy is read-only)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("GEOSSM_SHARED_DATA")
              or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def shared_path(*parts: str) -> Path:
    """``SHARED / parts``; skips the test, naming the path, when it does not exist."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample not found at {path} (../shared/data is absent)")
    return path


def unpack(tmp_path_factory, *parts: str) -> Path:
    """Unpack the archive ``SHARED / parts`` into a fresh temporary folder and return it."""
    archive = shared_path(*parts)
    out = tmp_path_factory.mktemp(archive.name.split(".")[0])
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")  # no links, devices or absolute paths
    return out
