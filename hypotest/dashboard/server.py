"""Run the dashboard with uvicorn in a daemon thread beside the live session.

Loopback (127.0.0.1) by default. Binding any other address exposes the session on the network,
so it needs a token (control actions then need ``Authorization: Bearer <token>``); the safer way
to reach a session on a remote machine is an SSH tunnel to its loopback port::

    ssh -N -L 8765:127.0.0.1:8765 user@microscope-pc    # then open http://127.0.0.1:8765/

Whatever the address, requests must name this machine in ``Host`` (loopback, the server's own
address, or ``allowed_hosts``) and come from no other site's page (``Origin``); bodies are capped
(:mod:`hypotest.dashboard.guard`).
"""

from __future__ import annotations

import secrets
import socket
import threading
import time

import uvicorn

from forward import InputError
from hypotest.dashboard.app import make_app
from hypotest.dashboard.guard import is_loopback
from hypotest.live.view import SessionView

__all__ = ["DashboardServer", "new_token", "serve"]

#: How long :func:`serve` waits for uvicorn to bind its socket [s].
_START_TIMEOUT_S = 20.0


def new_token() -> str:
    """A random token for control actions (32 URL-safe characters, 192 bits from ``secrets``)."""
    return secrets.token_urlsafe(24)


def check_bind(host, port, token: str | None, *, option: str = "") -> None:
    """The dashboard's bind options, checked before anything is bound, built or written: ``host``
    an address, a non-loopback one only with a token, ``port`` in [0, 65535]. ``option``: the
    command line's spelling of the options for the messages (``"--"``), else the function's."""
    o = option
    if not isinstance(host, str) or not host:
        raise InputError(f"{o}host must be an address like '127.0.0.1', got {host!r}")
    if not is_loopback(host) and token is None:
        how = ("--token (--token auto makes one and prints it)" if o
               else "a token (serve(..., token=new_token()), printed for the operator)")  # fmt: skip
        raise InputError(
            f"{o}host {host} exposes the dashboard beyond this machine and needs {how}; safer: keep "
            "127.0.0.1 and reach it from your laptop with an SSH tunnel: ssh -N -L 8765:127.0.0.1:PORT "
            "user@this-machine, then open http://127.0.0.1:8765/"
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputError(f"{o}port must be an integer in [0, 65535] (0 = any free port), got {port!r}")


class DashboardServer:
    """A running dashboard: ``url`` (``http://host:port/``), ``port``, ``token`` and :meth:`stop`."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int, token: str | None):
        self._server, self._thread = server, thread
        self.host, self.port, self.token = host, port, token

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Close the socket and the WebSockets and wait for the thread (idempotent)."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"DashboardServer({self.url}, token={'set' if self.token else 'none'})"


def serve(
    view: SessionView, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None, allowed_hosts=()
) -> DashboardServer:
    """Serve the dashboard of ``view`` on ``host:port`` (port 0: a free one) in a daemon thread.

    Returns once the socket is bound. A host other than loopback needs a ``token`` (make one with
    :func:`new_token` and print it for the operator). ``allowed_hosts``: DNS names the dashboard
    is reached under besides ``localhost`` and IP addresses (e.g. ``["microscope-pc.lab"]``);
    a request naming any other host is refused with 421.
    """
    check_bind(host, port, token)
    app = make_app(view, token=token, allowed_hosts=allowed_hosts)
    # Bind here, so a busy port fails in the caller's thread with a clear message.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port} ({exc.strerror}); choose another port or port=0 for a free one"
        ) from None
    bound_port = sock.getsockname()[1]
    # log_config=None: an embedded server must not reconfigure the process's logging (uvicorn's
    # dictConfig closes every existing handler, including those of the host program).
    config = uvicorn.Config(app, log_level="warning", log_config=None, lifespan="off", ws="websockets-sansio",
                            ws_ping_interval=20.0)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"dashboard:{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the dashboard server did not start on {host}:{bound_port} within {_START_TIMEOUT_S:g} s")
        time.sleep(0.01)
    return DashboardServer(server, thread, host, bound_port, token)
