"""`saeguard serve`: an OpenAI-compatible server in front of a guarded model (docs/serving.md)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from saeguard.cli.options import (
    AUTO_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_MODEL,
    Device,
    Dtype,
    GuardSae,
    Model,
    load_cli_model,
    note,
    resolve_device,
)
from saeguard.errors import SaeguardError, require
from saeguard.server.settings import NAME, Policy, ServerSettings

SERVER_PANEL = "Server"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DEFAULTS = ServerSettings()
_INSTALL = "install the serve extra: pip install 'saeguard[serve]' (FastAPI, uvicorn, prometheus-client)"


def parse_guards(specs: list[str]) -> dict[str, Path]:
    """``[NAME=]FOLDER`` options as {name: folder} (name: the folder's name when not given).

    Raises:
        SaeguardError: a folder without a guardrail, a name used twice, or a name that is not
            letters, digits, ``_ . -`` (``+`` separates guards in a model alias; ``none`` is taken).
    """
    from saeguard.core.artifact import is_guardrail_folder

    guards: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        path = Path(folder if sep else spec).expanduser()
        name = name if sep else path.resolve().name
        require(
            bool(NAME.fullmatch(name)) and name != "none",
            f"--guard {spec}: the name {name!r} must be letters, digits, '_', '.' or '-' (not 'none'); "
            "give one as NAME=FOLDER",
        )
        require(
            path.is_dir() and is_guardrail_folder(path),
            f"--guard {spec}: {path} holds no guardrail: create one with `saeguard fit` (or `saeguard demo`)",
        )
        require(name not in guards, f"--guard {spec}: the name {name!r} is used twice; give NAME=FOLDER")
        guards[name] = path
    return guards


def check_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once and let it go, so an address that cannot be served fails before any work.

    Raises:
        SaeguardError: ``host`` does not resolve, or ``port`` cannot be bound there (in use,
            privileged, an address of another machine).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise SaeguardError(
            f"--host {host}: cannot resolve it ({error}): use an address such as 127.0.0.1 or 0.0.0.0"
        ) from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as error:
            raise SaeguardError(
                f"cannot listen on {host}:{port} ({error.strerror or error}): choose another --port "
                "or stop what holds it"
            ) from None


def serve(
    guard: Annotated[
        list[str],
        typer.Option(help="Guardrail folder, or NAME=FOLDER (repeat for several guards)", show_default=False),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    model: Model = DEFAULT_MODEL,
    sae: GuardSae = None,
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback by default)", rich_help_panel=SERVER_PANEL)
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, rich_help_panel=SERVER_PANEL)] = 8000,
    on_flag: Annotated[
        Policy,
        typer.Option(
            help="A flagged request: clamp (DSG) or refuse (the refusal text)", rich_help_panel=SERVER_PANEL
        ),
    ] = DEFAULTS.on_flag,
    refusal: Annotated[
        str, typer.Option(help="Text a refused request gets", rich_help_panel=SERVER_PANEL)
    ] = DEFAULTS.refusal,
    default_guard: Annotated[
        list[str],
        typer.Option(
            help="Guards applied when a request names none " + escape("[default: all]"),
            rich_help_panel=SERVER_PANEL,
        ),
    ] = [],  # noqa: B006
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="SAEGUARD_API_KEY",
            help="Require 'Authorization: Bearer KEY' on /v1/*, POST /saeguard/trace and /metrics",
            rich_help_panel=SERVER_PANEL,
        ),
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option(
            help="Model id clients send " + escape("[default: 'default' or the folder's name]"),
            rich_help_panel=SERVER_PANEL,
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Requests generating at once", rich_help_panel=SERVER_PANEL)
    ] = DEFAULTS.workers,
    queue_size: Annotated[
        int,
        typer.Option(min=0, help="Requests waiting beyond those (then 503)", rich_help_panel=SERVER_PANEL),
    ] = DEFAULTS.queue_size,
    max_tokens: Annotated[
        int,
        typer.Option(min=1, help="Largest max_tokens a request may ask for", rich_help_panel=SERVER_PANEL),
    ] = DEFAULTS.max_tokens,
    strict: Annotated[
        bool, typer.Option(help="Refuse a model whose weights differ from the fitted one")
    ] = True,
    device: Device = AUTO_DEVICE,
    dtype: Dtype = DEFAULT_DTYPE,
) -> None:
    """Serve the model behind an OpenAI-compatible API with the guards applied (playground at /)."""
    try:
        import uvicorn

        from saeguard.server import ServerSettings, create_app
    except ImportError:
        raise SaeguardError(f"saeguard serve needs FastAPI and uvicorn: {_INSTALL}") from None
    from saeguard.core.guardrail import Guardrail

    folders = parse_guards(guard)
    unknown = [name for name in default_guard if name not in folders]
    require(not unknown, f"--default-guard {unknown[0] if unknown else ''}: no --guard has that name")
    name = model_name or (DEFAULT_MODEL if model == DEFAULT_MODEL else Path(model).name)
    require(
        bool(NAME.fullmatch(name)), f"--model-name {name!r}: use letters, digits, '_', '.' or '-' (no '+')"
    )
    check_listen(host, port)
    device = resolve_device(device)
    lm, tokenizer = load_cli_model(model, device, dtype)
    guards = {key: Guardrail.load(path, lm, strict=strict, sae=sae) for key, path in folders.items()}
    if not guards:
        note("no --guard given: requests are served unguarded")
    if host not in _LOOPBACK and api_key is None:
        note(f"binding {host} without --api-key: anyone who can reach it can use the model")
    settings = ServerSettings(
        model_id=name,
        on_flag=on_flag,
        refusal=refusal,
        default_guards=tuple(default_guard) or None,
        api_key=api_key,
        workers=workers,
        queue_size=queue_size,
        max_tokens=max_tokens,
    )
    app = create_app(lm, tokenizer, guards, settings)
    typer.echo(
        f"serving {name} with guards {', '.join(guards) or 'none'} on http://{host}:{port} (playground: /)"
    )
    uvicorn.run(app, host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``saeguard`` command."""
    app.command()(serve)
