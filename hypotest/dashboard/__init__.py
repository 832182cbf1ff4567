"""The live operator dashboard: a REST query API (OpenAPI), a WebSocket and one web page.

The web layer talks to a running session only through :class:`hypotest.live.view.SessionView`.
:func:`make_app` builds the FastAPI application; :func:`serve` runs it with uvicorn in a daemon
thread (127.0.0.1 by default; any other host needs a token, which control actions then need).
Every request passes :mod:`hypotest.dashboard.guard` (Host, Origin, body size) first.
"""

from hypotest.dashboard.app import encode_png, make_app, render_png
from hypotest.dashboard.server import DashboardServer, new_token, serve

__all__ = ["DashboardServer", "encode_png", "make_app", "new_token", "render_png", "serve"]
