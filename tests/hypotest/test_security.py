"""Security of the dashboard and of the ZeroMQ stream, driven as an attacker would.

The dashboard tests run a real demo session (built-in MoS2 library, simulated microscope, built
but never started: no JIT, as the fast part of test_dashboard_api.py) served over loopback with
the default settings (127.0.0.1, no token), and forge ``Host`` and ``Origin`` as a DNS-rebinding
or cross-site page would; raw sockets send what httpx will not (a lying Content-Length, a
WebSocket handshake with a forged Host). The stream tests bind real ZeroMQ sockets.
"""

from __future__ import annotations

import base64
import json
import os
import socket

import httpx
import numpy as np
import pytest

from forward import InputError
from hypotest.dashboard import serve
from hypotest.live.sessions import make_demo_session

DEMO = dict(seed=0, frame_rate_hz=1.0, dose=4.0, auto_apply=False, stop_on_decision=False, max_frames=2000)
EVIL = "evil.example"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    s = make_demo_session(tmp_path_factory.mktemp("security"), **DEMO)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def server(session):
    srv = serve(session)  # the default: loopback, no token, so control is open to local callers
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def record_of(session) -> bytes:
    return (session.dir / "record.jsonl").read_bytes()


def beam_500(session) -> dict:
    beam = session.status()["beam"]
    return {**beam, "aberrations": {**beam.get("aberrations", {}), "defocus": 500.0}}


def raw_request(port: int, head: str, body: bytes = b"", timeout: float = 15.0) -> tuple[int, dict, bytes]:
    """Send ``head`` (request line + headers, CRLF-joined, without the blank line) and ``body`` on
    a fresh connection; the status, headers (lower-case names) and body of the answer. A server
    that does not answer within ``timeout`` raises ``socket.timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        n = int(headers.get("content-length", 0))
        while len(rest) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, headers, rest


def ws_handshake(port: int, host: str, origin: str | None) -> tuple[int, dict, bytes]:
    key = base64.b64encode(os.urandom(16)).decode()
    head = (f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13")  # fmt: skip
    if origin is not None:
        head += f"\r\nOrigin: {origin}"
    return raw_request(port, head)


# ------------------------------------------------------------------------------ DNS rebinding


def test_rebinding_page_cannot_steer_the_microscope(client, server, session):
    """The issue's case: Host and Origin both the attacker's name, re-pointed at 127.0.0.1."""
    before, beam_before = record_of(session), session.source.beam
    forged = {"Host": f"{EVIL}:{server.port}", "Origin": f"http://{EVIL}:{server.port}"}
    r = client.post("/api/beam", json=beam_500(session), headers=forged)
    assert r.status_code == 421, r.text
    detail = r.json()["detail"]
    assert f"not for Host '{EVIL}:{server.port}'" in detail and "DNS rebinding" in detail
    assert f"http://127.0.0.1:{server.port}/" in detail and "--allowed-host NAME" in detail
    assert session.source.beam == beam_before and session.status()["beam"] == beam_before
    assert record_of(session) == before  # no "beam ... by operator" line


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/openapi.json"), ("GET", "/api/status"),
     ("GET", "/api/hypotheses"), ("GET", "/api/history"), ("GET", "/api/proposals"),
     ("GET", "/api/frames/latest.png"), ("POST", "/api/auto_apply"), ("POST", "/api/proposals/0/apply"),
     ("POST", "/api/hypotheses"), ("DELETE", "/api/hypotheses/x"), ("GET", "/no/such/route")],
)  # fmt: skip
def test_every_route_refuses_a_foreign_host(client, server, session, method, path):
    before, auto = record_of(session), session.auto_apply
    body = {"on": not auto} if path == "/api/auto_apply" else None
    r = client.request(method, path, json=body, headers={"Host": f"{EVIL}:{server.port}"})
    assert r.status_code == 421, (path, r.status_code, r.text[:200])
    assert "DNS rebinding" in r.json()["detail"]
    assert record_of(session) == before and session.auto_apply == auto


def test_this_machine_and_configured_names_are_served(session):
    with serve(session, allowed_hosts=["Microscope-PC.lab"]) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        for host in (f"127.0.0.1:{srv.port}", f"localhost:{srv.port}", f"microscope-pc.lab:{srv.port}",
                     "localhost:8765"):  # fmt: skip  (the last: an SSH tunnel's local port)
            r = c.get("/api/status", headers={"Host": host})
            assert r.status_code == 200, (host, r.text)
        host = f"microscope-pc.lab:{srv.port}"
        r = c.post("/api/auto_apply", json={"on": False}, headers={"Host": host, "Origin": f"http://{host}"})
        assert r.status_code == 200, r.text
        r = c.get("/api/status", headers={"Host": f"microscope-pc.lab.{EVIL}:{srv.port}"})
        assert r.status_code == 421 and "microscope-pc.lab only" in r.json()["detail"]
    with pytest.raises(InputError, match=r"allowed host 'http://x.lab:80' is not a host name .*without scheme, port"):
        serve(session, allowed_hosts=["http://x.lab:80"])
    with pytest.raises(InputError, match=r"allowed_hosts must be a list of host names"):
        serve(session, allowed_hosts="x.lab")


def test_a_request_without_host_is_refused(server):
    status, _, body = raw_request(server.port, "GET /api/status HTTP/1.0")
    assert status == 421 and "needs a Host header" in json.loads(body)["detail"]


# ------------------------------------------------------------------------------ Origin


def test_another_sites_page_is_refused_on_reads_and_control(client, server, session):
    before = record_of(session)
    for origin in ("http://evil.example", "null", "http://[", f"http://127.0.0.1:{server.port}.evil.example"):
        for method, path in (("GET", "/api/status"), ("POST", "/api/auto_apply")):
            r = client.request(method, path, json={"on": True} if method == "POST" else None, headers={"Origin": origin})
            assert r.status_code == 403, (origin, path, r.text)
            assert "own page only, not from origin" in r.json()["detail"]
    assert record_of(session) == before and session.auto_apply is False
    same = server.url.rstrip("/")
    assert client.post("/api/auto_apply", json={"on": False}, headers={"Origin": same}).status_code == 200


def test_websocket_handshake_checks_origin_and_host(server):
    here = f"127.0.0.1:{server.port}"
    status, headers, _ = ws_handshake(server.port, here, f"http://{here}")
    assert status == 101 and headers["upgrade"].lower() == "websocket"
    assert ws_handshake(server.port, here, None)[0] == 101  # scripts send no Origin
    assert ws_handshake(server.port, here, "http://evil.example")[0] == 403
    assert ws_handshake(server.port, f"{EVIL}:{server.port}", f"http://{EVIL}:{server.port}")[0] == 403


# ------------------------------------------------------------------------------ request size


def test_an_oversized_body_is_refused_before_it_is_read(server, session):
    """A 42 MB Content-Length is answered at once, without sending (or reading) the body."""
    before = record_of(session)
    head = (f"POST /api/hypotheses HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {42 * 2**20}")  # fmt: skip
    status, _, body = raw_request(server.port, head, timeout=15.0)
    assert status == 413
    assert json.loads(body)["detail"].startswith(
        f"request body too large: {42 * 2**20} bytes (Content-Length); this dashboard reads at most 1048576 bytes (1 MiB)"
    )
    assert record_of(session) == before


def test_a_chunked_body_is_counted_as_it_arrives(client):
    def chunks():
        for _ in range(64):  # 4 MiB in 64 KiB chunks, no Content-Length
            yield b" " * 65536

    r = client.post("/api/hypotheses", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "more than 1048576 bytes" in r.json()["detail"]


def test_a_large_invalid_body_is_not_echoed(client, session):
    """Just under the cap: parsed, refused with 422 naming the problem, the input not sent back."""
    n = 30_000
    body = {"name": "x", "positions": [[0.0, 0.0, 0.0]] * n, "numbers": [6] * (n - 1)}
    r = client.post("/api/hypotheses", json=body)
    assert len(json.dumps(body)) > 500_000 and r.status_code == 422
    assert len(r.content) < 2000, f"the 422 echoes {len(r.content)} bytes"
    (err,) = r.json()["detail"]
    assert "'positions' has 30000 atoms but 'numbers' has 29999" in err["msg"] and "input" not in err
    assert "not echoed" in err["input_omitted"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_422_naming_the_field(client, session, value):
    before = record_of(session)
    beam = json.dumps(session.status()["beam"])
    body = json.dumps(json.loads(beam) | {"energy": 0}).replace('"energy": 0', f'"energy": {value}')
    r = client.post("/api/beam", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "energy"] and err["msg"] == "Input should be a finite number"
    pos = f'{{"name": "x", "positions": [[0, 0, {value}]], "numbers": [6]}}'
    r = client.post("/api/hypotheses", content=pos, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "positions", 0, 2], r.text
    assert record_of(session) == before


def test_structure_requests_take_atoms_not_server_files(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["StructureRequest"]
    assert "file" not in schema["properties"] and "\"file\"" not in json.dumps(schema)
    r = client.post("/api/hypotheses", json={"file": "/etc/passwd"})
    assert r.status_code == 422, r.text
    msg = r.json()["detail"][0]["msg"]
    assert "does not read structure files on the server" in msg and "'positions' ([n, 3] Å) and 'numbers'" in msg
