"""The typer application every CLI module registers its commands on.

Command modules are thin: parse options, call the public API, print. Heavy imports (torch,
galsim) happen inside commands so that `deepfield --help` and `deepfield info` stay fast.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

app = typer.Typer(
    name="deepfield",
    help="Deep generative and probabilistic models of astronomical survey data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
simulate_app = typer.Typer(help="Simulate survey data into a store.", no_args_is_help=True)
app.add_typer(simulate_app, name="simulate")

console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print an error for the user and exit with `code` (2: bad input)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class Interrupted(Exception):
    """Raised by a command that caught Ctrl-C and said what to do next (e.g. rerun with --resume):
    exit 130 without run_app's own "interrupted"."""


def interrupted(message: str):
    """Print `message` (what was kept, how to continue) and end the command with exit code 130."""
    console.print(f"[yellow]{message}[/]", highlight=False, soft_wrap=True)
    raise Interrupted


def _version(value: bool) -> None:
    if value:
        from deepfield import __version__

        typer.echo(f"deepfield {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print deepfield's version and exit.")) -> None:
    """Deep generative and probabilistic models of astronomical survey data."""


def _os_error_message(err: OSError) -> str | None:
    """The user's fix for the operating-system errors that come from their paths and disks."""
    import errno

    where = f" {err.filename}" if getattr(err, "filename", None) else ""
    if err.errno == errno.ENOSPC:
        return (f"no space left on the device of{where or ' the output'}: free space or write elsewhere "
                "(nothing half-written is kept)")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write or read{where}: permission denied (read-only?): choose a path you can write to"
    if err.errno == errno.ENOENT:
        return f"no such file or directory:{where}"
    return None


def _show_warnings_as_lines() -> None:
    """Warnings reach CLI users as one line each ("warning: ..."), without the source line Python
    prints under them (it names deepfield's code, not the user's input); DEEPFIELD_DEBUG=1 keeps
    Python's format."""
    import os
    import warnings

    if os.environ.get("DEEPFIELD_DEBUG"):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    warnings.showwarning = show


def run_app(argv=None) -> None:
    """Run the app and exit: 0 on success; usage mistakes and any DeepfieldError print a one-line
    message and exit 2; Ctrl-C exits 130; anything unexpected prints its type and message (the
    traceback with DEEPFIELD_DEBUG=1) and exits 1."""
    import os

    from deepfield.errors import DeepfieldError

    _show_warnings_as_lines()
    try:
        result = app(args=argv, standalone_mode=False)
    except DeepfieldError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except Interrupted:
        sys.exit(130)
    except (typer.Abort, KeyboardInterrupt):
        console.print("interrupted")
        sys.exit(130)
    except Exception as err:
        # usage mistakes: click's (or typer's vendored click's) exceptions carry their exit code and show()
        if hasattr(err, "exit_code") and callable(getattr(err, "show", None)):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, OSError) and _os_error_message(err):
            console.print(f"[bold red]error:[/] {_os_error_message(err)}", highlight=False, soft_wrap=True)
            sys.exit(2)
        if os.environ.get("DEEPFIELD_DEBUG"):
            raise
        console.print(f"[bold red]unexpected error:[/] {type(err).__name__}: {err}\n"
                      "This is a bug in deepfield or an input it does not yet check: rerun with DEEPFIELD_DEBUG=1 "
                      "for the traceback and report it.", highlight=False, soft_wrap=True)
        sys.exit(1)
    if result == 130:  # typer returns Ctrl-C's exit code when not standalone
        console.print("interrupted")
    sys.exit(result if isinstance(result, int) else 0)
