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
    from saeguard.cli import (
        data_commands,
        demo_commands,
        eval_commands,
        explain_commands,
        guard_commands,
        train_commands,
    )

    for module in (
        guard_commands,
        demo_commands,
        data_commands,
        train_commands,
        eval_commands,
        explain_commands,
    ):
        module.register(app)
    optional = (
        "compare_commands",
        "bench_commands",
        "experiment_commands",
        "attack_commands",
        "serve_commands",
    )
    for module_name in optional:
        try:
            module = __import__(f"saeguard.cli.{module_name}", fromlist=["register"])
        except ModuleNotFoundError as error:
            if error.name != f"saeguard.cli.{module_name}":
                raise
            continue
        module.register(app)


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """The command-line parser's own error classes: typer's vendored click (typer >= 0.22) and click."""
    found: list[type[BaseException]] = []
    typer_error = getattr(typer, "TyperException", None)
    if isinstance(typer_error, type):
        found.append(typer_error)
    try:
        import click
    except ImportError:  # typer >= 0.22 does not need click
        pass
    else:
        found.append(click.ClickException)
    return tuple(found)


def report_usage_error(error: BaseException) -> int:
    """Print a parser error (bad value, unknown option or command, missing option) as one line.

    Returns:
        The exit status: the parser's own (2 for usage errors).
    """
    if type(error).__name__ == "NoArgsIsHelpError":  # `saeguard` or `saeguard data` alone: the help
        error.show()  # type: ignore[attr-defined]  # matched by name: click's or typer's own class
        return int(getattr(error, "exit_code", 2))
    message = error.format_message() if hasattr(error, "format_message") else str(error)
    message = " ".join(message.split())
    ctx = getattr(error, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    typer.secho(f"error: {message}{hint}", fg=typer.colors.RED, err=True)
    return int(getattr(error, "exit_code", 2))


def main() -> None:
    """Entry point of the `saeguard` command: one-line errors, exit 2 for bad input, 130 on Ctrl-C."""
    from saeguard.cli.quiet import quiet_libraries

    quiet_libraries()  # other libraries' warnings and log lines stay off stderr
    _register()
    try:
        app(standalone_mode=False, prog_name="saeguard")
    except SaeguardError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", err=True)
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except _usage_error_types() as error:
        sys.exit(report_usage_error(error))
