"""Fuzzing (hypothesis) of what the outside world sends: ZeroMQ stream messages and dashboard requests.

The stream codec (:func:`hypotest.live.zmqcodec.decode_message`) gets random bytes, random JSON
headers, random shapes and dtypes, and real frames cut or padded: it returns the frame exactly or
raises :class:`MalformedMessage` with a short reason, never anything else. A few cases go over a
real loopback socket into a :class:`ZmqSource`, which must go on delivering the next good frame.

The dashboard API of a real demo session (built, not started; served over loopback with a token)
gets random paths, methods, headers, query strings and JSON or raw bodies: every answer is a
precise 4xx with a ``detail`` (or a correct 2xx), never a 500, a hang (httpx timeout, hypothesis
deadline) or a change to the session record without a successful control call.

Examples are bounded (tens to hundreds per test) so the file runs in the default suite.
"""

from __future__ import annotations

import json
import math
import time
from datetime import timedelta
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from hypotest.dashboard import serve
from hypotest.live.events import BadMessage, RawFrame, StreamEvent
from hypotest.live.builtin import make_demo_session
from hypotest.live.zmqcodec import SCHEMA, MalformedMessage, decode_message, encode_frame
from hypotest.live.zmqstream import ZmqSource

FAST = settings(max_examples=300, deadline=timedelta(seconds=20), database=None)
FEW = settings(max_examples=25, deadline=timedelta(seconds=20), database=None,
               suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
API = settings(max_examples=60, deadline=timedelta(seconds=20), database=None,
               suppress_health_check=[HealthCheck.too_slow])  # fmt: skip

# ------------------------------------------------------------------------------ strategies

json_scalars = (st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=12)
                | st.integers(min_value=10**300, max_value=10**400))  # fmt: skip
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
DTYPES = ["<u2", "|u1", "<f4", ">f8", "<i4", ">u8", "<f2", "uint16", "float32", "<c8", "<f16", "V8", "O", "<U2",
          "a", "(2,)u2", "u2,u2", "<M8[s]", "b1", "?", "(2", "(2,", "0,(", "01", "(1)u2,", "i4 ", ""]  # fmt: skip
headers = st.fixed_dictionaries(
    {},
    optional={
        "schema": st.just(SCHEMA) | json_values,
        "kind": st.sampled_from(["frame", "heartbeat", "end", "image"]) | json_values,
        "frame_id": st.integers(-3, 10**20) | json_values,
        "timestamp": st.floats() | st.integers(min_value=10**300, max_value=10**400) | json_values,
        "shape": st.lists(st.integers(-2, 6), max_size=5) | json_values,
        "dtype": st.sampled_from(DTYPES) | st.text(max_size=8) | json_values,
        "beam": st.none() | st.dictionaries(st.text(max_size=6), json_values, max_size=3) | json_values,
        "sampling": st.lists(st.floats(), max_size=3) | json_values,
        "sender": st.text(max_size=200) | json_values,
        "frames_sent": json_values,
    },
)


def _dumps(h) -> bytes:
    return json.dumps(h, allow_nan=True).encode()


def check_decoded(parts):
    """decode_message(parts) is a correct result or a MalformedMessage with a short reason."""
    try:
        kind, header, counts = decode_message(parts)
    except MalformedMessage as exc:
        assert isinstance(exc.reason, str) and exc.reason and len(exc.reason) < 600, exc.reason
        return None
    assert kind in ("frame", "heartbeat", "end") and isinstance(header, dict)
    if kind == "frame":
        payload = bytes(parts[1])
        assert counts.shape == tuple(header["shape"]) and counts.dtype == np.dtype(header["dtype"])
        assert counts.dtype.kind in "uif" and counts.tobytes() == payload
        assert math.isfinite(float(header["timestamp"]))
    else:
        assert counts is None
    return kind


# ------------------------------------------------------------------------------ codec


@FAST
@given(st.lists(st.binary(max_size=64), max_size=3))
def test_codec_random_bytes(parts):
    check_decoded(parts)


@FAST
@given(headers, st.binary(max_size=96), st.integers(1, 2))
@example({"schema": SCHEMA, "frame_id": 1, "timestamp": 10**400, "shape": [2, 2], "dtype": "<u1"}, b"\0" * 4, 2)
@example({"schema": SCHEMA, "frame_id": 1, "timestamp": 1.0, "shape": [2, 2], "dtype": "(2,"}, b"\0" * 4, 2)
@example({"schema": SCHEMA, "frame_id": 1, "timestamp": 1.0, "shape": [2, 2], "dtype": "0,("}, b"\0" * 4, 2)
@example({"schema": SCHEMA, "frame_id": 1, "timestamp": 1.0, "shape": [2, 2], "dtype": "u2,u2"}, b"\0" * 16, 2)
@example({"schema": SCHEMA, "frame_id": 1, "timestamp": 1.0, "shape": [2, 2], "dtype": "a"}, b"\0" * 4, 2)
@example({"schema": SCHEMA, "frame_id": 1, "timestamp": 1.0, "shape": [2, 2], "dtype": "<u2",
          "sampling": [10**400, 1]}, b"\0" * 8, 2)  # fmt: skip
def test_codec_random_headers(header, payload, n_parts):
    check_decoded([_dumps(header), payload][:n_parts])


@FAST
@given(
    hnp.arrays(
        st.sampled_from(["<u2", "|u1", "<f4", ">f8", "<i4", "<f2"]),
        st.one_of(hnp.array_shapes(min_dims=2, max_dims=2, max_side=5), hnp.array_shapes(min_dims=4, max_dims=4, max_side=3)),
    ),
    st.integers(-3, 3),
)
def test_codec_real_frames_exact_or_refused_when_cut(arr, cut):
    head, body = encode_frame(arr, 7, beam={"energy": 80000.0}, sampling=(0.1, 0.2), sender="fuzz")
    raw = body.tobytes()
    raw = raw[: len(raw) + cut] if cut < 0 else raw + b"\0" * cut
    kind = check_decoded([head, raw])
    if cut == 0:
        _, header, counts = decode_message([head, raw])
        assert kind == "frame" and header["frame_id"] == 7 and header["sender"] == "fuzz"
        np.testing.assert_array_equal(counts, arr)
    else:
        with pytest.raises(MalformedMessage, match=rf"^frame 7 from sender fuzz: {len(raw)} bytes of counts, expected "):
            decode_message([head, raw])


def test_codec_bounds_what_it_parses_and_quotes():
    big = _dumps({"schema": SCHEMA, "frame_id": "x" * 100_000, "shape": [1, 1]})
    with pytest.raises(MalformedMessage, match=r"header is \d+ bytes, more than 65536; not parsed"):
        decode_message([big, b"\0"])
    long_id = _dumps({"schema": SCHEMA, "frame_id": "y" * 5_000, "timestamp": 1.0, "shape": [1, 1], "dtype": "<u1"})
    with pytest.raises(MalformedMessage) as info:
        decode_message([long_id, b"\0"])
    assert "frame_id must be an integer >= 0" in info.value.reason and len(info.value.reason) < 200
    with pytest.raises(MalformedMessage, match="no parts"):
        decode_message([])


# ------------------------------------------------------------------------------ over a socket


@pytest.fixture(scope="module")
def stream():
    src = ZmqSource("tcp://127.0.0.1:*", heartbeat_timeout=30.0)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(src.address)
    yield src, push
    push.close()
    ctx.term()
    src.close()


_sentinel = iter(range(10**6))


@FEW
@given(st.one_of(
    st.lists(st.binary(max_size=48), min_size=1, max_size=3),
    st.tuples(headers, st.binary(max_size=48)).map(lambda t: [_dumps(t[0]), t[1]]),
))  # fmt: skip
def test_source_survives_random_messages(stream, parts):
    src, push = stream
    push.send_multipart(parts)
    fid = next(_sentinel)
    good = np.full((3, 2), fid % 60000, np.uint16)
    push.send_multipart(encode_frame(good, fid, sender="sentinel"), copy=False)
    events, t_end = [], time.monotonic() + 20
    while time.monotonic() < t_end:
        events += src.poll(0.05)  # never raises, whatever arrived
        if any(isinstance(e, RawFrame) and e.meta.get("sender") == "sentinel" and e.meta["frame_id"] == fid for e in events):
            break
    else:
        pytest.fail(f"the good frame {fid} after {parts!r:.200} never arrived: {events}")
    assert all(isinstance(e, (RawFrame, BadMessage, StreamEvent)) for e in events)
    for e in events:
        if isinstance(e, BadMessage):
            assert e.reason and len(e.reason) < 600
    last = [e for e in events if isinstance(e, RawFrame)][-1]
    np.testing.assert_array_equal(last.counts, good)


# ------------------------------------------------------------------------------ dashboard API

TOKEN = "fuzz-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEMO = dict(seed=0, frame_rate_hz=1.0, dose=4.0, auto_apply=False, stop_on_decision=False, max_frames=2000)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    s = make_demo_session(tmp_path_factory.mktemp("fuzz"), **DEMO)
    srv = serve(s, token=TOKEN)
    client = httpx.Client(base_url=srv.url, timeout=httpx.Timeout(15.0))
    yield s, srv, client
    client.close()
    srv.stop()
    s.stop()


def record_of(session) -> bytes:
    """The record's bytes; none before the session's first action (nothing is written until then)."""
    path = session.dir / "record.jsonl"
    return path.read_bytes() if path.exists() else b""


def check_answer(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.request.method, str(r.request.url)[:200], r.status_code, r.text[:300])
    if r.status_code >= 400:
        detail = r.json()["detail"]
        assert detail and isinstance(detail, (str, list)), r.text[:300]
        assert len(r.content) < 20_000, f"{len(r.content)} bytes in an error answer"


header_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)
PREFIXES = ["", "api", "api/hypotheses", "api/simulations", "api/proposals", "static", "ws", "api/frames"]
METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]


@API
@given(
    st.sampled_from(METHODS), st.sampled_from(PREFIXES), st.lists(st.text(max_size=12), max_size=3),
    st.dictionaries(st.sampled_from(["low", "high", "x"]), st.text(max_size=8), max_size=2),
    st.dictionaries(st.sampled_from(["Host", "Origin", "Authorization", "Content-Type", "Accept"]), header_text, max_size=3),
    st.none() | json_values,
)
@example("POST", "api", ["auto_apply"], {}, {"Origin": "http://["}, {"on": True})  # urlsplit raised: a 500
@example("GET", "api", ["frames", "latest.png"], {"low": "nan"}, {}, None)
@example("POST", "api", ["proposals", "99999999999999999999999", "apply"], {}, {}, None)
def test_api_random_requests_without_the_token(api, method, prefix, segments, query, hdrs, body):
    session, srv, client = api
    before, beam, auto = record_of(session), session.status()["beam"], session.auto_apply
    path = "/" + "/".join([prefix] * bool(prefix) + [quote(s, safe="") for s in segments])
    content = None if body is None or method in ("GET", "HEAD") else _dumps(body)
    hdrs = {k: v for k, v in hdrs.items() if k != "Authorization" or v != f"Bearer {TOKEN}"}
    r = client.request(method, path, params=query, headers=hdrs, content=content)
    if method != "HEAD":
        check_answer(r)
    assert r.status_code < 500
    assert record_of(session) == before and session.status()["beam"] == beam and session.auto_apply == auto


ENDPOINTS = ["/api/beam", "/api/auto_apply", "/api/hypotheses", "/api/proposals/0/apply"]


@API
@given(st.sampled_from(ENDPOINTS), json_values | st.binary(max_size=64))
@example("/api/beam", {"energy": float("nan"), "dose": 1, "sampling": 0.1})
@example("/api/hypotheses", {"name": "x", "positions": [[1e308, 1e308, 1e308]], "numbers": [6]})
@example("/api/hypotheses", {"file": "/etc/passwd"})
@example("/api/auto_apply", {"on": 10**400})
@example("/api/beam", b"[" * 100_000)
def test_api_random_bodies_with_the_token(api, endpoint, body):
    session, srv, client = api
    before = record_of(session)
    content = body if isinstance(body, bytes) else _dumps(body)
    r = client.post(endpoint, content=content, headers={**AUTH, "Content-Type": "application/json"})
    check_answer(r)
    if r.status_code >= 400:
        assert record_of(session) == before, (endpoint, body)
    elif endpoint == "/api/auto_apply":  # a valid body: a correct result
        assert session.auto_apply is body["on"]
        client.post(endpoint, json={"on": False}, headers=AUTH)
