"""``saeguard serve``: an OpenAI-compatible server in front of a guarded model (docs/serving.md).

Needs the ``serve`` extra (``pip install 'saeguard[serve]'``: FastAPI, uvicorn, prometheus-client).
"""

from saeguard.server.app import create_app
from saeguard.server.context import ServerSettings

__all__ = ["ServerSettings", "create_app"]
