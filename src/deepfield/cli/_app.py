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


def run_app(argv=None) -> None:
    """Run the app and exit: 0 on success; any DeepfieldError prints its message, exit code 2."""
    from deepfield.errors import DeepfieldError

    try:
        result = app(args=argv, standalone_mode=False)
    except DeepfieldError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Exception as err:  # click usage errors carry their own exit code
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
    sys.exit(result if isinstance(result, int) else 0)
