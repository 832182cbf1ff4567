"""The dashboard's request guard: Host and Origin checks and a cap on request bodies.

One pure ASGI middleware in front of every route (the REST API, the page, ``/static`` and the
``/ws`` handshake), so nothing reaches the session before it has passed:

1. **Host** (DNS rebinding). A page on another site can point its own DNS name at 127.0.0.1
   after it loaded; the browser then treats this dashboard as that site (same origin: it may
   read every answer and drive the session), but it still names the site in ``Host``. So a
   request is served only when its ``Host`` names this machine: ``localhost``, a loopback address
   (``127.0.0.1``, ``[::1]``), the IP address the connection arrived at (an IP literal cannot be
   rebound), or a name given in ``allowed_hosts`` (``hypotest live --allowed-host NAME``). Anything
   else is answered 421 Misdirected Request. The port is not compared: an SSH tunnel
   (``ssh -L 8765:127.0.0.1:PORT``) legitimately reaches the server under another port, and a
   rebinding page cannot choose the host name the browser sends.
2. **Origin** (cross-site pages). A page of another site may send requests here (a form POST
   needs no CORS preflight; a WebSocket is not bound by CORS at all); browsers name that page's
   origin in ``Origin``. A request that carries an ``Origin`` other than ``http(s)://<Host>`` is
   answered 403, the WebSocket handshake included. Requests without ``Origin`` (curl, scripts,
   same-origin GETs) pass.
3. **Body size.** A body larger than ``max_body_bytes`` (default 1 MiB) is answered 413 with the
   limit, before any of it is parsed: at once when ``Content-Length`` says so, or as soon as the
   bytes of a chunked body pass the limit. A body within the limit is read here and handed to the
   application unchanged.

Refusals are JSON ``{"detail": "..."}`` like every other error of the API. A refused WebSocket
handshake is closed before it is accepted (code 1008, policy violation), which uvicorn answers
with HTTP 403 whichever check failed.
"""

from __future__ import annotations

import ipaddress
import json
import re

from forward import InputError

__all__ = ["MAX_BODY_BYTES", "RequestGuard", "check_allowed_hosts", "check_max_body_bytes"]

#: Largest request body the dashboard reads [bytes]: a BEAM.json is < 2 kB; a structure of
#: 10,000 atoms is ~0.6 MB of JSON.
MAX_BODY_BYTES = 1 << 20
#: A DNS host name (RFC 1123 labels) or an IPv4 address; IPv6 literals are checked separately.
_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def check_allowed_hosts(names) -> tuple[str, ...]:
    """``names`` (host names the dashboard may be reached under) checked and lower-cased."""
    if names is None:
        return ()
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise InputError(
            f"allowed_hosts must be a list of host names (e.g. ['microscope-pc.lab']), got {names!r}"
        )
    out = []
    for n in names:
        name = n.strip().lower()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if not (_NAME.match(name) or _ip(name) is not None):
            raise InputError(
                f"allowed host {n!r} is not a host name or IP address: give the name alone, without scheme, "
                "port or path (e.g. 'microscope-pc.lab')"
            )
        out.append(name)
    return tuple(out)


def check_max_body_bytes(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"max_body_bytes must be an integer >= 0 [bytes] (default {MAX_BODY_BYTES}), got {n!r}")
    return n


def _ip(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _split_host(value: str) -> tuple[str, str | None] | None:
    """``(hostname, port or None)`` of a ``Host`` header (IPv6 in brackets), None if malformed."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    else:
        host, sep, port = value.partition(":")
        port = port if sep else None
    if port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5):
        return None
    return host.lower(), port


def _json_body(detail: str) -> bytes:
    return json.dumps({"detail": detail}).encode()


async def _respond(send, status: int, detail: str, headers: tuple = ()) -> None:
    body = _json_body(detail)
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware: Host and Origin checks on HTTP and WebSocket, a body cap on HTTP (module doc).

    Args:
        app: the ASGI application behind it.
        allowed_hosts: host names accepted in ``Host`` besides loopback and the server's address.
        max_body_bytes: the largest request body read [bytes].
    """

    def __init__(self, app, *, allowed_hosts=(), max_body_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.allowed_hosts = check_allowed_hosts(allowed_hosts)
        self.max_body_bytes = check_max_body_bytes(max_body_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            status, detail = refusal
            if scope["type"] == "http":
                await _respond(send, status, detail)  # nothing of the body is read
            else:
                await self._deny_websocket(receive, send)
            return
        if scope["type"] == "http":
            receive = await self._bounded_body(scope, receive, send)
            if receive is None:
                return
        await self.app(scope, receive, send)

    # checks ----------------------------------------------------------------------------------

    def _header(self, scope, name: bytes) -> str | None:
        for k, v in scope.get("headers", ()):
            if k.lower() == name:
                return v.decode("latin-1")
        return None

    def _names(self, scope) -> list[str]:
        """The names this server answers to (for the message)."""
        server = scope.get("server") or (None, None)
        names = ["localhost", "127.0.0.1", "[::1]"]
        if server[0] and not is_loopback(server[0]):
            names.append(f"[{server[0]}]" if ":" in server[0] else server[0])
        return names + list(self.allowed_hosts)

    def _host_allowed(self, host: str, scope) -> bool:
        if host == "localhost" or host in self.allowed_hosts:
            return True
        ip = _ip(host)
        if ip is None:
            return False
        server = (scope.get("server") or (None, None))[0]
        return ip.is_loopback or (server is not None and _ip(server) == ip)

    def _refusal(self, scope) -> tuple[int, str] | None:
        host_value = self._header(scope, b"host")
        server = scope.get("server") or (None, None)
        port = server[1]
        where = f"http://127.0.0.1:{port}/" if port else "http://127.0.0.1:PORT/"
        if host_value is None:
            return 421, f"a request needs a Host header naming this dashboard (e.g. 'Host: 127.0.0.1:{port}')"
        parsed = _split_host(host_value)
        if parsed is None or not self._host_allowed(parsed[0], scope):
            return 421, (
                f"this dashboard answers requests for {', '.join(self._names(scope))} only, not for Host "
                f"{_short(host_value)}: a web page may have pointed its own DNS name at this machine (DNS "
                f"rebinding). Open the dashboard at {where}, or start it with --allowed-host NAME "
                "(serve(..., allowed_hosts=[NAME])) to reach it under that name"
            )
        origin = self._header(scope, b"origin")
        if origin is not None and origin.lower() not in (f"http://{host_value}".lower(), f"https://{host_value}".lower()):
            return 403, (
                f"requests are accepted from this dashboard's own page only, not from origin {_short(origin)} "
                f"(this dashboard is http://{host_value}): another site's page may not read or steer the session"
            )
        return None

    async def _deny_websocket(self, receive, send) -> None:
        """Refuse the handshake: a close before accept, which the server answers with HTTP 403."""
        message = await receive()  # websocket.connect
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": 1008})  # policy violation

    async def _bounded_body(self, scope, receive, send):
        """A ``receive`` replaying the body, read here up to the cap; None after a 413 (or 400)."""
        limit = self.max_body_bytes
        length = self._header(scope, b"content-length")
        if length is not None:
            if not (length.strip().isascii() and length.strip().isdigit()):
                await _respond(send, 400, f"Content-Length must be a number of bytes, got {_short(length)}")
                return None
            if int(length) > limit:
                await _respond(send, 413, _too_large(f"{int(length)} bytes (Content-Length)", limit),
                               ((b"connection", b"close"),))  # fmt: skip
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the client went away
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _respond(send, 413, _too_large(f"more than {limit} bytes", limit), ((b"connection", b"close"),))
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: http.disconnect when the client goes

        return replay


def _too_large(what: str, limit: int) -> str:
    return (
        f"request body too large: {what}; this dashboard reads at most {limit} bytes ({limit / 2**20:g} MiB). "
        "A BEAM.json or a structure of up to ~10,000 atoms fits"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) is this machine's loopback: ``localhost`` or a
    loopback address (127.0.0.0/8, ::1)."""
    ip = _ip(host)
    return host == "localhost" or (ip is not None and ip.is_loopback)


def _short(text: str, n: int = 80) -> str:
    """``repr(text)``, cut to about ``n`` characters."""
    r = repr(text)
    return r if len(r) <= n else r[: n - 1] + "…'"
