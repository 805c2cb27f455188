"""The one progress bar of every long job (simulate, import, train priors, tasks, reports).

A rich progress bar, or a silent stand-in with the same methods when disabled, so callers
never branch on whether to show one.
"""

from __future__ import annotations

__all__ = ["progress_bar", "progress_task"]


def progress_bar(enabled: bool = True, *, stderr: bool = False, transient: bool = False,
                 time_remaining: bool = True):
    """A ``rich.progress.Progress`` to use as a context manager (``bar.add_task``, ``bar.advance``).

    Arguments:
        enabled: False gives a silent bar.
        stderr: draw on standard error (for commands whose standard output is a result, e.g.
            the report's path) instead of standard output.
        transient: remove the bar when done.
        time_remaining: show the estimated time left besides the time elapsed.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if time_remaining:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=Console(stderr=True) if stderr else None, disable=not enabled,
                    transient=transient)


def progress_task(enabled: bool, total: int, label: str, *, completed: int = 0, stderr: bool = True,
                  time_remaining: bool = True):
    """(bar, task): a started-by-the-caller :func:`progress_bar` on standard error with one task
    `label` of `total` steps, `completed` of them already done (a resumed write)."""
    bar = progress_bar(enabled, stderr=stderr, time_remaining=time_remaining)
    return bar, bar.add_task(label, total=total, completed=completed)
