"""``saeguard serve``: an OpenAI-compatible server in front of a guarded model (docs/serving.md).

Needs the ``serve`` extra (``pip install 'saeguard[serve]'``: FastAPI, uvicorn, prometheus-client);
:class:`ServerSettings` imports without it, :func:`create_app` loads the server on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saeguard.server.settings import Policy, ServerSettings

if TYPE_CHECKING:
    from saeguard.server.app import create_app

__all__ = ["Policy", "ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from saeguard.server.app import create_app

        return create_app
    raise AttributeError(f"module 'saeguard.server' has no attribute {name!r}")
