"""The `mrrobust` command line: parses flags, calls the library, prints. No logic here.

A user error (`MrRobustError`) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from mrrobust.errors import MrRobustError

app = typer.Typer(
    help="Will my MR diagnosis model still work when the scan is not clean?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def command(fn):
    """Register `fn` as a subcommand; a MrRobustError becomes one line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MrRobustError as err:
            print(f"mrrobust {fn.__name__.replace('_', '-')}: error: {err}", file=sys.stderr)
            raise typer.Exit(code=2)

    return app.command(name=fn.__name__.replace("_", "-"))(wrapper)


# ---- data: synth, prepare (issue 2) ----------------------------------------


# ---- artifacts: artifacts, gallery (issue 3) --------------------------------


# ---- models and training: train (issue 4) -----------------------------------


# ---- demo --------------------------------------------------------------------


if __name__ == "__main__":
    app()
