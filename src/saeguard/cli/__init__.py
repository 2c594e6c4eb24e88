"""The `saeguard` command line: one sub-command per job, one-line errors."""

from __future__ import annotations

import sys

import typer

from saeguard.errors import SaeguardError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Dynamic SAE Guardrails: precision unlearning at inference time, no weight changes.",
)


def _register() -> None:
    from saeguard.cli import data_commands, demo_commands, eval_commands, guard_commands, train_commands

    for module in (guard_commands, demo_commands, data_commands, train_commands, eval_commands):
        module.register(app)
    for module_name in ("compare_commands", "bench_commands"):
        try:
            module = __import__(f"saeguard.cli.{module_name}", fromlist=["register"])
        except ModuleNotFoundError as error:
            if error.name != f"saeguard.cli.{module_name}":
                raise
            continue
        module.register(app)


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars only; errors stay one line
    _register()
    try:
        app(standalone_mode=False)
    except SaeguardError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", err=True)
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as error:  # click usage errors
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise
