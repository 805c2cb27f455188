"""Atomic writes: a file or folder appears complete under its name, or not at all.

Everything is written under a hidden temporary name beside its destination (same file system)
and renamed into place in one step; a write that fails or is killed leaves the old file or
folder (if any) as it was, and never a half-written one under the real name. Stores, model
folders, indexes, reports and score tables are all written through these functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["WriteLock", "replace_dir", "check_replaceable", "staged_dir", "write_atomic", "write_bytes_atomic",
           "write_json_atomic", "write_parquet_atomic"]


def _temporary_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename the finished folder `tmp` to `final`, replacing any folder already there.

    The old folder is first renamed aside (so `final` is never half old, half new), then
    removed; readers see either the old folder or the new one.
    """
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.replace(tmp, final)
        return
    trash = final.with_name(f".{final.name}.old-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)  # left by a crash between the two renames
    os.replace(final, trash)
    os.replace(tmp, final)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike) -> Iterator[Path]:
    """A fresh, empty hidden folder beside `final` to write a folder's files into; when the
    block ends cleanly it replaces `final` (:func:`replace_dir`), on any error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(final)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed writer of the same process id
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any], *, fsync: bool = False) -> Path:
    """Write the file `path` by calling ``write(tmp)`` on a hidden temporary path beside it,
    then renaming; with `fsync` the data reach the disk before the rename (commit records)."""
    path = Path(path)
    tmp = _temporary_name(path)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write `data` to the file `path` atomically (by default synced to disk first)."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, fsync: bool = True, **dumps: Any) -> Path:
    """Write `obj` as JSON (``json.dumps(obj, **dumps)`` plus a newline) to `path` atomically."""
    return write_bytes_atomic(path, (json.dumps(obj, **dumps) + "\n").encode(), fsync=fsync)


def write_parquet_atomic(path: str | os.PathLike, table) -> Path:
    """Write the pyarrow Table `table` as Parquet to `path` atomically."""
    import pyarrow.parquet as pq

    return write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def check_replaceable(out: Path, marker: str, what: str) -> None:
    """Refuse an output folder that :func:`replace_dir` would wipe unless it is empty or an
    earlier `what` (a 'report', an 'anomaly gallery'), recognised by its `marker` file."""
    from deepfield.errors import InputError

    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{what} output {out} is a file; choose a folder")
        if any(out.iterdir()) and not (out / marker).is_file():
            raise InputError(f"{what} output {out} exists and is not a deepfield {what} (it has no {marker}); "
                             "it would be replaced, so choose a new or empty folder")


class WriteLock:
    """An exclusive lock on writing the file or folder `final`, held until :meth:`release`.

    A ``flock`` on the hidden file ``.NAME.lock`` beside `final`: the kernel releases it when
    the holding process ends however it ends, so a killed writer never leaves a stale lock (the
    file may stay; the next writer takes it over and removes it). A second writer of the same
    path (a store, a model folder) is refused with `error` (a DeepfieldError class) naming the
    lock, instead of deleting the first one's unfinished work. `what` names the thing in the
    message ('store', 'model folder').
    """

    def __init__(self, final, error: type[Exception], what: str):
        import fcntl

        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        self.path = final.with_name(f".{final.name}.lock")
        while True:
            handle = open(self.path, "a+")  # noqa: SIM115 (held until release, closed by GC otherwise)
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise error(f"{final} is being written by another process (it holds {self.path}): wait for that "
                            f"write to finish, or write the {what} to another path") from None
            try:  # the file we locked must still be the one at the path (a releasing writer unlinks it)
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        import fcntl

        try:
            self.path.unlink(missing_ok=True)  # before unlocking: a waiter then locks a fresh file
        finally:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
