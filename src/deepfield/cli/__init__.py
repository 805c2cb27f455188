"""deepfield's command line; `deepfield --help` lists the commands.

Each module below registers its commands on the shared app in :mod:`deepfield.cli._app`.
"""

from __future__ import annotations

import importlib

from deepfield.cli._app import app, run_app

__all__ = ["app", "main"]

# Command modules; a module that does not exist yet is skipped so the CLI grows by files.
_COMMAND_MODULES = ("data", "simulate", "importers", "train", "tasks", "report", "demo",
                    "gan", "compare", "anomaly", "search", "nbody", "export")

for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"deepfield.cli.{_name}")
    except ModuleNotFoundError as _err:
        if _err.name != f"deepfield.cli.{_name}":
            raise


def main() -> None:
    run_app()
