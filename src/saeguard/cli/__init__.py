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
    from saeguard.cli import guard_commands

    guard_commands.register(app)
    for module_name in (
        "train_commands",
        "data_commands",
        "demo_commands",
        "eval_commands",
        "baseline_commands",
        "bench_commands",
    ):
        try:
            module = __import__(f"saeguard.cli.{module_name}", fromlist=["register"])
        except ModuleNotFoundError as error:
            if error.name != f"saeguard.cli.{module_name}":
                raise
            continue
        module.register(app)


def main() -> None:
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
