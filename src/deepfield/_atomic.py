"""Putting a completely written folder in place in one step (stores, model folders, indexes, reports)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["replace_dir", "check_replaceable"]


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
