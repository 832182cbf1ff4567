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
import threading
import time

import httpx
import numpy as np
import pytest

from forward import InputError
from hypotest.cli import main
from hypotest.dashboard import serve
from hypotest.live.events import BadMessage, RawFrame, StreamEvent
from hypotest.live.builtin import make_demo_session
from hypotest.live.zmqauth import is_local_endpoint, make_stream_keys
from hypotest.live.zmqstream import ZmqSource, send_frames

ANY = "tcp://127.0.0.1:*"
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
    """The record's bytes; none before the session's first action (nothing is written until then)."""
    path = session.dir / "record.jsonl"
    return path.read_bytes() if path.exists() else b""


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


# ------------------------------------------------------------------------------ ZeroMQ stream



def _collect(src, until, timeout_s=30.0):
    events, t_end = [], time.monotonic() + timeout_s
    while not until(events) and time.monotonic() < t_end:
        events += src.poll(0.05)
    return events


def _in_thread(fn, *args, **kwargs):
    result = {}

    def target():
        try:
            result["report"] = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001  (the test looks at it)
            result["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, result


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:*", "tcp://*:*", "tcp://eth0:*", "tcp://192.0.2.1:5555"])
def test_stream_refuses_a_network_address_without_keys(address):
    with pytest.raises(InputError, match=r"is not a loopback address: ZeroMQ does not authenticate peers, so anyone who "
                                         r"can reach the port can inject frames into the session.*--curve-key "
                                         r"RECEIVER.key_secret --curve-clients DIR.*--allow-remote-stream"):  # fmt: skip
        ZmqSource(address)
    with pytest.raises(InputError, match=r"'tcp://0.0.0.0:\*' is not a loopback address"):
        ZmqSource(ANY, control_address="tcp://0.0.0.0:*")
    with pytest.raises(InputError, match=r"is not a loopback address: .*take the frames or send beam commands"):
        send_frames(np.zeros((1, 2, 2), np.uint16), address, connect=False)


def test_allow_remote_states_the_risk_and_passes_the_check():
    # An unresolvable name: the check is passed, then the bind itself fails (nothing is exposed).
    with pytest.raises(InputError, match=r"cannot bind data address 'tcp://no-such-host.invalid:\*'"):
        ZmqSource("tcp://no-such-host.invalid:*", allow_remote=True)
    with ZmqSource("tcp://localhost:*") as src:  # loopback needs nothing
        assert src.address.startswith("tcp://127.0.0.1:")
    local = ["tcp://127.0.0.1:5555", "tcp://127.3.0.1:*", "tcp://localhost:1", "tcp://[::1]:5555", "ipc:///tmp/x",
             "inproc://x", "tcp://127.0.0.1:5;127.0.0.1:6"]  # fmt: skip
    remote = ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://[::]:1", "tcp://eth0:1", "tcp://host.lab:1",
              "tcp://127.0.0.1:5;10.0.0.1:6", "pgm://eth0;239.192.1.1:5555", "tcp://::1:5555"]  # fmt: skip
    assert [is_local_endpoint(a) for a in local] == [True] * len(local)
    assert [is_local_endpoint(a) for a in remote] == [False] * len(remote)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    clients = d / "clients"
    assert main(["stream", "keys", str(d), "--name", "receiver"]) == 0
    assert main(["stream", "keys", str(clients), "--name", "camera1"]) == 0
    make_stream_keys(d / "strangers", "stranger")
    return d, clients


def test_stream_keys_cli_writes_a_pair_and_never_overwrites(keys, capsys):
    d, clients = keys
    assert (d / "receiver.key").read_text().count("secret-key") == 0
    assert "secret-key" in (d / "receiver.key_secret").read_text()
    assert (d / "receiver.key_secret").stat().st_mode & 0o777 == 0o600
    assert main(["stream", "keys", str(d), "--name", "receiver"]) == 2
    assert "receiver.key exists; choose another --name" in capsys.readouterr().err


def test_curve_stream_admits_the_known_sender_only(keys):
    d, clients = keys
    frames = np.arange(3 * 4 * 3, dtype=np.uint16).reshape(3, 4, 3)
    with ZmqSource(ANY, control_address=ANY, curve_key=d / "receiver.key_secret", curve_clients=clients) as src:
        # a sender without keys, then one with a key the receiver does not know: refused, precisely
        # (which handshake failure each side sees first is a race in ZeroMQ: both forms are precise)
        with pytest.raises(InputError, match=r"the receiver at tcp://127.0.0.1:\d+ (requires CURVE keys|failed the "
                                             r"ZeroMQ handshake 3 times in a row: it may require CURVE keys): "
                                             r"--curve-key SENDER.key_secret --curve-server-key RECEIVER.key"):  # fmt: skip
            send_frames(frames, src.address, send_timeout=20)
        with pytest.raises(InputError, match=r"refused this sender's CURVE key: copy this sender's public certificate"):
            send_frames(frames, src.address, curve_key=d / "strangers" / "stranger.key_secret",
                        curve_server_key=d / "receiver.key", send_timeout=20)  # fmt: skip
        refused = _collect(src, lambda ev: len([e for e in ev if isinstance(e, BadMessage)]) >= 3, timeout_s=3)
        reasons = [e.reason for e in refused if isinstance(e, BadMessage)]
        plain = ("refused a sender without CURVE keys: this stream needs them",
                 "refused a connection: the ZeroMQ handshake failed before CURVE authentication (a sender without")
        assert any(r.startswith(plain) for r in reasons), reasons
        assert any(r.startswith("refused a sender: its CURVE public key is not among the accepted keys") for r in reasons)
        assert not [e for e in refused if isinstance(e, (RawFrame, StreamEvent))]  # no frame, no "connected"
        # the known sender: frames arrive, named by its key; the control channel reaches it
        assert src.apply_beam({"energy": 80000, "dose": 40, "sampling": 0.1})
        seen = []
        t, res = _in_thread(send_frames, frames, src.address, rate_hz=20.0, control_address=src.control_address,
                            on_beam=seen.append, curve_key=clients / "camera1.key_secret",
                            curve_server_key=d / "receiver.key")  # fmt: skip
        events = _collect(src, lambda ev: any(isinstance(e, StreamEvent) and e.kind == "disconnected" for e in ev))
        t.join(30)
    assert "error" not in res, res.get("error")
    got = [e for e in events if isinstance(e, RawFrame)]
    assert [f.meta["frame_id"] for f in got] == [0, 1, 2] and all(f.meta["curve_sender"] == "camera1" for f in got)
    np.testing.assert_array_equal(got[2].counts, frames[2])
    assert seen == [{"energy": 80000, "dose": 40, "sampling": 0.1}]


def test_curve_arguments_are_checked(keys, tmp_path):
    d, clients = keys
    with pytest.raises(InputError, match=r"CURVE needs both curve_key .* and curve_clients"):
        ZmqSource(ANY, curve_key=d / "receiver.key_secret")
    with pytest.raises(InputError, match=r"receiver key '.*receiver.key' holds only a public key; give the secret"):
        ZmqSource(ANY, curve_key=d / "receiver.key", curve_clients=clients)
    with pytest.raises(InputError, match=r"curve clients '.*': no sender public keys \(\*.key\) in it"):
        ZmqSource(ANY, curve_key=d / "receiver.key_secret", curve_clients=tmp_path)
    with pytest.raises(InputError, match=r"sender key '.*nothing.key_secret': cannot read a ZeroMQ certificate"):
        send_frames(np.zeros((1, 2, 2), np.uint16), "tcp://127.0.0.1:1", curve_key=tmp_path / "nothing.key_secret",
                    curve_server_key=d / "receiver.key")  # fmt: skip


def test_live_command_passes_the_stream_options(keys, tmp_path):
    from hypotest.commands.live import open_source

    d, clients = keys
    with pytest.raises(InputError, match="is not a loopback address"):
        open_source("zmq://tcp://0.0.0.0:*")
    src = open_source(f"zmq://{ANY}", curve_key=d / "receiver.key_secret", curve_clients=clients)
    try:
        assert src._keys is not None and sorted(src._keys.clients.values()) == ["camera1"]
    finally:
        src.close()
    np.save(tmp_path / "f.npy", np.zeros((2, 4, 3), np.uint16))
    with ZmqSource(ANY, curve_key=d / "receiver.key_secret", curve_clients=clients, end_on_sender_end=True) as src:
        argv = ["stream", "send", str(tmp_path / "f.npy"), "--address", src.address, "--sampling", "0.1",
                "--curve-key", str(clients / "camera1.key_secret"), "--curve-server-key", str(d / "receiver.key")]
        t, res = _in_thread(main, argv)
        events = _collect(src, lambda ev: any(isinstance(e, StreamEvent) and e.kind == "end" for e in ev))
        t.join(30)
    assert res.get("report") == 0, res
    assert [f.meta["curve_sender"] for f in events if isinstance(f, RawFrame)] == ["camera1", "camera1"]
