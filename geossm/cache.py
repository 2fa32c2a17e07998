"""Caches that many processes share: atomic writes, a cross-process lock, build once.

Sweeps, cross-validation jobs and DDP ranks on one machine often start together on a fresh
cache. Every file or folder the library caches is to be written through ``build_once``, so
that:

- it is built by one process: the builder holds an exclusive lock on ``.<name>.lock`` beside
  the cache (``filelock``: ``fcntl.flock`` on POSIX, which the kernel releases when the holder
  dies, so a killed builder never blocks the next run); the others wait for the lock, then
  find the finished cache and read it;
- it appears whole or not at all: the builder writes into a temporary name in the same folder
  (``.<name>.<pid>-<random>.tmp<suffix>``), fsyncs it and renames it into place (``os.replace``, atomic
  on one file system). A builder killed mid-write (even by SIGKILL) leaves only its temporary,
  which the next builder removes before it starts again;
- a cached folder is complete only with its marker file ``.complete`` (written last, before the
  rename): a folder without it (left by an older version that wrote in place) is rebuilt.

Readers that find the final name never take the lock. DDP: ``main_process_first()`` lets rank 0
build first while the other ranks wait at a barrier, then read what it wrote::

    with main_process_first():
        path = build_once(cache_root() / "peptides.npz", lambda tmp: np.savez(tmp, **arrays))

The cache folder is ``$GEOSSM_CACHE``, else ``~/.cache/geossm`` (``cache_root``). A cache
derived from files is named after what it was derived from (``files_digest``), so a file
replaced in place, added or removed gives a new cache instead of the old one.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from filelock import FileLock, Timeout

__all__ = ["COMPLETE_MARKER", "cache_root", "atomic_write", "atomic_path", "file_lock",
           "build_once", "is_whole_npz", "files_digest", "main_process_first"]

#: Name of the file that marks a cached folder as complete (written last).
COMPLETE_MARKER = ".complete"
_TMP_TAG = ".tmp"


def cache_root() -> Path:
    """``$GEOSSM_CACHE`` if set (and not empty), else ``~/.cache/geossm``."""
    return Path(os.environ.get("GEOSSM_CACHE") or Path.home() / ".cache" / "geossm")


def _temp_prefix(path: Path) -> str:
    """Prefix of every temporary that stands for ``path`` (hidden, in the same folder)."""
    return f".{path.name}."


def _fsync_path(path: Path) -> None:
    """fsync a file or folder (a folder's fsync makes the names in it durable; where the OS
    refuses to open a folder, e.g. on Windows, there is nothing to do)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync folders
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (deepest first), then ``folder``."""
    for dirpath, _, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _temp_name(path: Path) -> Path:
    """A fresh name beside ``path``: ``.<name>.<pid>-<random>.tmp<suffix>`` (``path``'s suffix
    kept, so writers that add a suffix themselves, like ``np.savez``, write exactly there)."""
    return path.with_name(f"{_temp_prefix(path)}{os.getpid()}-{uuid.uuid4().hex[:12]}"
                          f"{_TMP_TAG}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it is fsync'd and renamed to
    ``path``, on an exception removed.

    The temporary does not exist yet: the body creates it (a file at that path, with the
    permissions the umask gives, not ``mkstemp``'s 0600, so a team can share the cache).
    ``directory=True`` yields an existing empty folder instead and writes ``COMPLETE_MARKER``
    into it before the rename; an existing ``path`` is then moved aside and removed. Not
    locked: use ``build_once`` when other processes may build the same ``path``.

    Raises ``FileNotFoundError`` if the body wrote no file (``directory=False``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if directory:
            (tmp / COMPLETE_MARKER).write_text("")
            _fsync_tree(tmp)
            if os.path.lexists(path):
                # os.replace cannot put a folder over a non-empty folder or a file: move the
                # old one to a temporary name (removed now, or by the next build if we die).
                old = _temp_name(path)
                os.replace(path, old)
                os.replace(tmp, path)
                _remove(old)
            else:
                os.replace(tmp, path)
        else:
            if not tmp.is_file():
                raise FileNotFoundError(f"atomic_path: nothing was written to {tmp} (the "
                                        f"temporary of {path})")
            _fsync_path(tmp)
            os.replace(tmp, path)
        _fsync_path(path.parent)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb",
                 encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary beside ``path`` for writing; on normal exit flush, fsync and rename it
    to ``path`` (readers see the old file or the new one, never half of one).

    ``mode`` is ``"wb"`` (default) or ``"w"`` (text, with ``encoding``, default UTF-8).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: expected 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float | None = None) -> Iterator[Path]:
    """Hold the exclusive cross-process lock of ``path`` (the file ``.<name>.lock`` beside it).

    Waits until the holder releases it or dies; ``timeout`` seconds (default None: no limit)
    bound the wait. Yields the lock file's path. Raises ``TimeoutError`` naming the lock file.
    The lock is not re-entrant across ``file_lock`` calls of one process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.lock"
    lock = FileLock(str(lock_path), timeout=-1 if timeout is None else float(timeout))
    try:
        lock.acquire()
    except Timeout as err:
        raise TimeoutError(f"cache {path}: another process has held {lock_path} for more than "
                           f"{timeout} s (a build still running?)") from err
    try:
        yield lock_path
    finally:
        lock.release()


def _is_built(path: Path, directory: bool, valid: Callable[[Path], bool] | None) -> bool:
    built = (path / COMPLETE_MARKER).is_file() if directory else path.is_file()
    return built and (valid is None or bool(valid(path)))


def is_whole_npz(path: str | os.PathLike, keys: Iterable[str] = ()) -> bool:
    """Whether ``path`` is a whole ``.npz`` archive holding the arrays ``keys`` (default: any).

    Reads only the archive's directory, which ``np.savez`` writes last: a file torn by a killed
    writer (an older version wrote some caches in place) has none. For ``build_once(valid=)``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return all(f"{key}.npy" in names for key in keys)


def files_digest(paths: Iterable[str | os.PathLike], content: bool = True) -> str:
    """Hex SHA-1 of the files ``paths``, in the given order: each file's name (not its folder)
    and, with ``content=True`` (default), its bytes, else its size and ``st_mtime_ns``.

    Content is for files copied between machines (copies get other mtimes but must map to the
    same cache); size and mtime for files too large to read on every start (a file replaced
    with the same size and mtime goes unnoticed). A missing file hashes as missing, so adding
    it later changes the digest.
    """
    h = hashlib.sha1()
    for path in map(Path, paths):
        h.update(f"{len(path.name)}:{path.name}".encode())  # length first: names never merge
        try:
            if content:
                with open(path, "rb") as fh:
                    # the size first, so one file's bytes never run into the next name
                    h.update(f"content {os.fstat(fh.fileno()).st_size}:".encode())
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            else:
                st = path.stat()
                h.update(f"stat {st.st_size} {st.st_mtime_ns}".encode())
        except FileNotFoundError:
            h.update(b"missing")
        h.update(b"\0")
    return h.hexdigest()


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries of ``path`` left by builders that died (called under the lock,
    so no living builder is writing one)."""
    prefix = _temp_prefix(path)
    # Exactly the names _temp_name gives, not those of a cache named like "<name>.x".
    pattern = re.compile(re.escape(prefix) + r"\d+-[0-9a-f]{12}"
                         + re.escape(_TMP_TAG + path.suffix))
    for entry in path.parent.glob(f"{glob.escape(prefix)}*"):
        if pattern.fullmatch(entry.name):
            _remove(entry)


def build_once(path: str | os.PathLike, build: Callable[[Path], object],
               directory: bool = False, timeout: float | None = None,
               valid: Callable[[Path], bool] | None = None) -> Path:
    """Return ``path`` after making sure it was built, by one process only.

    If ``path`` is built (a file; with ``directory=True`` a folder holding ``COMPLETE_MARKER``)
    it is returned at once. Otherwise the lock of ``path`` is taken (see ``file_lock``); if
    another process built it meanwhile it is returned, else temporaries of dead builders are
    removed and ``build(tmp)`` is called with a temporary beside ``path`` (a path to write a
    file to, or with ``directory=True`` an empty folder to fill), which is then fsync'd and
    renamed to ``path`` (see ``atomic_path``). An exception in ``build`` removes the temporary
    and propagates; ``path`` stays unbuilt. A built ``path`` that ``valid`` refuses is built
    again the same way (replaced whole: readers holding the old one open keep reading it).

    Args:
        path: the cached file or folder.
        build: ``build(tmp)`` writes the cache into ``tmp``; its return value is ignored.
        directory: the cache is a folder, default False.
        timeout: seconds to wait for another builder, default None (no limit).
        valid: ``valid(path) -> bool`` checks a built cache, False marking it broken (e.g.
            ``is_whole_npz`` for a file an older version wrote in place, maybe torn); default
            None (a built cache is whole).

    Raises:
        TimeoutError: another process held the lock longer than ``timeout``.
    """
    path = Path(path)
    if _is_built(path, directory, valid):
        return path
    with file_lock(path, timeout):
        if _is_built(path, directory, valid):
            return path
        _remove_stale_temporaries(path)
        with atomic_path(path, directory=directory) as tmp:
            build(tmp)
    return path


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the other ranks (DDP); a no-op without a process
    group.

    Ranks other than 0 wait at a barrier until rank 0 has left the body, so rank 0 builds the
    caches the body needs and the others find them built. Every rank must enter (the barriers
    are collective). Processes on other machines with their own cache folder still build once
    per machine, through ``build_once``'s lock.
    """
    from geossm.engine import distributed

    first = not distributed.is_initialized() or distributed.is_main()
    if not first:
        distributed.barrier()
    try:
        yield
    finally:
        if first:
            distributed.barrier()
