"""Putting a completely written folder in place in one step (stores, model folders, indexes, reports)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["replace_dir"]


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
