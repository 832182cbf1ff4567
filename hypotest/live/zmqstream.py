"""ZeroMQ frame stream: the wire protocol, the receiving :class:`ZmqSource` and :func:`send_frames`.

Protocol ``hypotest.frame/1``
-----------------------------
Transport: a ZeroMQ PUSH socket (the sender) to a PULL socket (the receiver, normally bound at a
fixed address; senders connect, come and go). Every message starts with a UTF-8 JSON header.

Frame, 2 parts::

    part 1  {"schema": "hypotest.frame/1",
             "kind": "frame",                 optional, default "frame"
             "frame_id": 17,                  int >= 0, the sender's running number
             "timestamp": 1764105600.123,     acquisition time [s since the Unix epoch]
             "shape": [mx, my],               two positive ints, [x, y] indexing as abTEM; a
                                              4D-STEM frame: [sx, sy, kx, ky] (scan, detector)
             "dtype": "<u2",                  numpy dtype str, integer or real ("<u2", "<f4", ...)
             "beam": {...} | null,            the beam condition, BEAM.json form (hypotest.beamfile)
             "sampling": [sx, sy] | null,     pixel size [Å/pixel]
             "sender": "3f2a9c..."}           optional: one id per sender run (for accounting)
    part 2  the counts: prod(shape)*itemsize raw bytes, C order (last axis fastest), byte order as
            in dtype

Heartbeat and end, 1 part each::

    {"schema": "hypotest.frame/1", "kind": "heartbeat" | "end", "timestamp": t,
     "sender": "3f2a9c...", "frames_sent": n}

A sender sends a heartbeat whenever it has sent nothing for ``heartbeat_s`` (default 0.5 s), so
a silent but live sender is told apart from a dropped one, and ``end`` when it stops on purpose.
``frames_sent`` counts the frame messages this sender has sent; the receiver compares it with
what arrived from that sender and reports any difference as lost frames (never silently).

Control channel (optional), receiver -> sender: an XPUB socket on the receiver side (bound when
the data socket is bound), a SUB socket subscribed to everything on the sender side; 1 part::

    {"schema": "hypotest.control/1", "kind": "beam", "seq": 3, "beam": {...BEAM.json...}}

The receiver re-sends the current beam whenever a sender subscribes, so a late joiner gets it;
``seq`` increases with every new beam, so a sender can ignore repeats.

Receiver behaviour (:class:`ZmqSource`): each frame message becomes a :class:`RawFrame`
(``source_id`` = the receiver's running message number, starting at 0 and counting every frame
message including malformed ones, so ids stay unique and monotone across sender restarts; the
sender's ``frame_id`` and ``sender`` are in ``meta``). A malformed message (wrong number of parts,
bad JSON, unknown schema or kind, missing or ill-typed field, unknown dtype, byte count !=
shape x itemsize) becomes a :class:`BadMessage` whose reason names the frame id; the next good
frame still arrives. Pixel values are not checked here (NaN, negative): the session does that.
Connection state is reported as :class:`StreamEvent` ``connected`` (first sign of life),
``disconnected`` (the peer closed its socket, a sender sent ``end``, or nothing arrived for
``heartbeat_timeout``) and ``reconnected`` (the next sign of life after a disconnect).

Across a restart: a receiver killed (kill -9, a crash) loses the frames still queued in the
ZeroMQ pipes and socket buffers between the sender and the session's ingest (up to ``_HWM`` =
1000 frames on each side of every connection, plus what the kernel's TCP buffers hold); every
frame the session recorded is kept. A sender that keeps running blocks until a receiver binds
the address again and its next heartbeat or ``end`` carries ``frames_sent``: a resumed session
starts its per-sender counts from the record (``received``: the frame lines and malformed
messages of each sender; ``reported_lost``: the losses already reported), so the difference it
reports ("N frame message(s) sent but never received", a ``bad_message`` line with ``sender``
and ``lost``) is exactly the frames lost in flight, no more.

Who may send (:mod:`hypotest.live.zmqauth`): ZeroMQ authenticates nobody by itself, so both ends
accept only local endpoints (loopback tcp, ipc, inproc) unless CURVE keys are given (every message
encrypted; the receiver admits only the senders whose public keys it holds, and records the
accepting key's name in each frame's ``meta["curve_sender"]``) or ``allow_remote=True`` states
that anyone who can reach the port may inject frames. A refused connection is reported as a
:class:`BadMessage` with the reason (the first of each kind, then at most one summary per 10 s).
A header over 64 KiB is malformed without being parsed.

Throughput: the receiver takes messages with ``copy=False`` and wraps the counts with
``np.frombuffer`` (no copy). The array keeps the ZeroMQ message alive through the buffer it views,
so it may outlive the message with no further copy (the buffer belongs to that one frame; pyzmq
copies messages below 64 KiB anyway). The sender sends the
array's buffer without copying and blocks when the high water mark (``SNDHWM`` frames) is
reached: frames are delayed, never dropped at the sender.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from forward.errors import InputError
from hypotest.live import zmqauth
from hypotest.live.events import BadMessage, RawFrame, SourceEvent, StreamEvent
from hypotest.live.zmqcodec import (
    _KNOWN, CONTROL_SCHEMA, SCHEMA, MalformedMessage, _control_header, _control_message, _is_int, _is_num, _Malformed,
    _short, decode_message, encode_frame,
)

__all__ = ["SCHEMA", "CONTROL_SCHEMA", "ZmqSource", "SendReport", "send_frames", "encode_frame",
           "decode_message", "MalformedMessage"]  # fmt: skip

_HWM = 1000  # frames queued per connection before the sender blocks (256x256 u2: 131 MB)
_MAX_BATCH = 256  # messages returned by one poll at most (bounds the ingest latency)
_REPORT_EVERY_S = 10.0  # repeated refusals of one kind are summed into one report per interval

# ---------------------------------------------------------------------------------------------
# receiver


class ZmqSource:
    """Frames from a ZeroMQ PULL socket (protocol in the module docstring); a FrameSource.

    Args:
        address: ZeroMQ endpoint, e.g. ``tcp://127.0.0.1:5555``; ``tcp://127.0.0.1:*`` binds an
            ephemeral port (read it back from :attr:`address`).
        bind: bind the address (senders connect) or connect to a sender that binds.
        control_address: endpoint of the control channel (XPUB, bound/connected like the data
            socket), or None for none; read the bound address back from :attr:`control_address`.
        heartbeat_timeout: [s] no frame or heartbeat for this long -> ``disconnected``.
        end_on_sender_end: a sender's ``end`` message ends this source (``StreamEvent("end")``,
            then ``[]`` forever) instead of a ``disconnected`` that a new sender may follow.
        start_id: ``source_id`` of the first message (a resumed session continues its ids).
        received: frame messages already received per sender id, ``{sender: n}`` (a resumed
            session restores them from its record, so a sender's ``frames_sent`` is compared with
            everything that arrived before the restart too); ``reported_lost``: ``{sender: n}``
            frames already reported lost (not reported twice).
        curve_key: this receiver's secret certificate (``NAME.key_secret``): CURVE on the data and
            control sockets, with ``curve_clients``, the directory of the accepted senders' public
            certificates (``*.key``); :mod:`hypotest.live.zmqauth`.
        allow_remote: accept a non-loopback endpoint without CURVE (anyone who can reach the port
            can then inject frames); without it, or CURVE keys, such an endpoint is an InputError.
    """

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:5555",
        *,
        bind: bool = True,
        control_address: str | None = None,
        heartbeat_timeout: float = 2.0,
        end_on_sender_end: bool = False,
        start_id: int = 0,
        curve_key: str | Path | None = None,
        curve_clients: str | Path | None = None,
        allow_remote: bool = False,
        received: dict[str, int] | None = None,
        reported_lost: dict[str, int] | None = None,
    ):
        if not (_is_int(start_id) and start_id >= 0):
            raise InputError(f"start_id must be an integer >= 0, got {start_id!r}")
        for what, counts in (("received", received), ("reported_lost", reported_lost)):
            if counts is not None and not (isinstance(counts, dict) and all(
                    isinstance(k, str) and _is_int(v) and v >= 0 for k, v in counts.items())):  # fmt: skip
                raise InputError(f"{what} must be a dict {{sender id: count >= 0}}, got {_short(counts)}")
        if not (_is_num(heartbeat_timeout) and heartbeat_timeout > 0):
            raise InputError(f"heartbeat_timeout must be a positive number [s], got {heartbeat_timeout!r}")
        if (curve_key is None) != (curve_clients is None):
            raise InputError(
                "CURVE needs both curve_key (this receiver's NAME.key_secret) and curve_clients (the directory of the "
                "accepted senders' NAME.key files), or neither"
            )
        self._keys = None if curve_key is None else zmqauth.load_server_keys(curve_key, curve_clients)
        addresses = [a for a in (address, control_address) if isinstance(a, str) and "://" in a]  # others: _attach says
        zmqauth.check_endpoints(addresses, curve=self._keys is not None, allow_remote=allow_remote, side="receiver")
        self._hb_timeout = float(heartbeat_timeout)
        self._end_on_end = bool(end_on_sender_end)
        #: how to open this source again (a resumed session; recorded in session.json)
        self.settings = {
            "kind": "zmq", "bind": bool(bind), "heartbeat_timeout": self._hb_timeout, "end_on_sender_end": self._end_on_end,
            "curve_key": None if curve_key is None else str(Path(curve_key).resolve()),
            "curve_clients": None if curve_clients is None else str(Path(curve_clients).resolve()),
            "allow_remote": bool(allow_remote),
        }  # fmt: skip
        self._ctx = zmq.Context()
        self._auth = None if self._keys is None else zmqauth.start_authenticator(self._ctx, self._keys)
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.RCVHWM, _HWM)
        self._sock.setsockopt(zmq.LINGER, 0)
        events = zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
        refused = zmqauth.HANDSHAKE_FAILED if self._keys is not None else zmqauth.REFUSED
        self._mon = self._sock.get_monitor_socket(events | refused)
        self._ctrl = None
        try:
            if self._keys is not None:
                zmqauth.make_server(self._sock, self._keys)
            self.address = _attach(self._sock, address, bind, "data")
            self.control_address = None
            if control_address is not None:
                self._ctrl = self._ctx.socket(zmq.XPUB)
                self._ctrl.setsockopt(zmq.XPUB_VERBOSE, 1)
                self._ctrl.setsockopt(zmq.LINGER, 0)
                if self._keys is not None:
                    zmqauth.make_server(self._ctrl, self._keys)
                self.control_address = _attach(self._ctrl, control_address, bind, "control")
        except InputError:
            self._close_sockets()
            raise
        self.name = f"zmq:{self.address}"
        self.settings.update(address=self.address, control_address=self.control_address)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._mon, zmq.POLLIN)
        if self._ctrl is not None:
            self._poller.register(self._ctrl, zmq.POLLIN)
        self._io_lock = threading.Lock()  # the data/monitor sockets: poll vs close
        self._ctrl_lock = threading.Lock()  # the control socket: poll (subscriptions) vs apply_beam
        self._closing = threading.Event()
        self._closed = False
        self._state = "waiting"  # waiting -> up <-> down; ended
        self._last_seen = 0.0
        self._peers = 0
        self._next_id = start_id
        self._received: dict[str, int] = dict(received or {})
        self._reported_lost: dict[str, int] = dict(reported_lost or {})
        self._beam_msg: bytes | None = None
        self._beam_seq = 0
        self._refusals: dict[str, list] = {}  # reason -> [refusals not yet reported, time of the last report]

    # FrameSource -------------------------------------------------------------------------

    def poll(self, timeout: float) -> list[SourceEvent]:
        """What arrived within ``timeout`` [s] (at most 256 messages), oldest first."""
        out: list[SourceEvent] = []
        deadline = time.monotonic() + max(float(timeout), 0.0)
        with self._io_lock:
            if self._closed or self._state == "ended":
                return []
            while True:
                self._pump(out)
                self._check_heartbeat(out)
                self._report_refusals(out)
                now = time.monotonic()
                if out or now >= deadline or self._closing.is_set() or self._state == "ended":
                    return out
                wait = deadline - now
                if self._state == "up":
                    wait = min(wait, self._last_seen + self._hb_timeout - now)
                self._poller.poll(max(1, min(int(wait * 1000) + 1, 50)))

    @property
    def controllable(self) -> bool:
        """Whether beam commands can go out: a control channel (``control_address``) exists."""
        return self._ctrl is not None

    def apply_beam(self, beam: dict) -> bool:
        """Publish ``beam`` (BEAM.json form) on the control channel; False without one.

        Thread-safe. The beam is checked with :func:`hypotest.beamfile.parse_beam` first (a bad
        beam raises InputError and is not sent) and re-sent to every sender that subscribes later.
        """
        if self._ctrl is None:
            return False
        from hypotest.beamfile import parse_beam

        parse_beam(beam, where="apply_beam")
        with self._ctrl_lock:
            if self._closed:
                return False
            self._beam_seq += 1
            msg = {"schema": CONTROL_SCHEMA, "kind": "beam", "seq": self._beam_seq, "beam": beam}
            self._beam_msg = json.dumps(msg).encode()
            self._ctrl.send(self._beam_msg)
        return True

    def close(self) -> None:
        """Close the sockets and the ZeroMQ context; idempotent, safe from any thread."""
        self._closing.set()
        with self._io_lock, self._ctrl_lock:
            if self._closed:
                return
            self._closed = True
            self._close_sockets()

    def __enter__(self) -> ZmqSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # internals ---------------------------------------------------------------------------

    def _close_sockets(self) -> None:
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        for s in (self._mon, self._sock, self._ctrl):
            if s is not None:
                s.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def _pump(self, out: list[SourceEvent]) -> None:
        """Monitor events (with the messages that preceded them), then up to a batch of messages."""
        while True:
            try:
                ev = recv_monitor_message(self._mon, zmq.NOBLOCK)
            except zmq.Again:
                break
            kind = ev["event"]
            if kind == zmq.EVENT_DISCONNECTED:
                # every message of the closed connection was queued before this event: take them
                self._drain(out, limit=None)
                self._peers = max(self._peers - 1, 0)
                if self._peers == 0 and self._state == "up":
                    self._set_down(out, f"peer closed the connection ({_endpoint(ev)})")
            elif kind in (zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED):
                self._peers += 1  # alive only once the handshake succeeds (a refused peer is not a sender)
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._alive(out, f"peer connected ({_endpoint(ev)})")
            elif kind & zmqauth.HANDSHAKE_FAILED:
                clients = None if self._keys is None else self._keys.clients_dir
                why = zmqauth.refusal_reason(kind, ev["value"], curve=self._keys is not None, clients_dir=clients)
                self._refused(why, out)
        self._drain(out, limit=_MAX_BATCH)
        if self._ctrl is not None:
            self._serve_subscriptions()

    def _serve_subscriptions(self) -> None:
        with self._ctrl_lock:
            while True:
                try:
                    sub = self._ctrl.recv(zmq.NOBLOCK)
                except zmq.Again:
                    return
                if sub[:1] == b"\x01" and self._beam_msg is not None:
                    self._ctrl.send(self._beam_msg)

    def _drain(self, out: list[SourceEvent], limit: int | None) -> None:
        n = 0
        while limit is None or n < limit:
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            n += 1
            self._handle(parts, out)

    def _handle(self, parts: list, out: list[SourceEvent]) -> None:
        now = time.time()
        try:
            kind, header, counts = decode_message(parts)
        except _Malformed as exc:
            self._alive(out, "message received" if exc.sender is None else f"frame from sender {exc.sender}")
            self._count(exc.sender)
            out.append(BadMessage(self._take_id(), now, exc.reason, sender=exc.sender))
            return
        sender = (header.get("sender") if isinstance(header.get("sender"), str) else "")[:64]
        if kind in ("heartbeat", "end"):
            self._alive(out, f"{kind} from sender {sender}")
            if len(parts) != 1:
                out.append(BadMessage(None, now, f"{kind} from sender {sender}: expected 1 part, got {len(parts)}",
                                            sender=sender))  # fmt: skip
            self._account(sender, header.get("frames_sent"), out)
            if kind == "end":
                detail = f"sender {sender} ended after {_short(header.get('frames_sent'))} frame(s)"
                if self._end_on_end:
                    self._state = "ended"
                    out.append(StreamEvent("end", now, detail))
                else:
                    self._set_down(out, detail)
            return
        self._alive(out, f"frame from sender {sender}")
        self._count(sender)
        meta = {"frame_id": header["frame_id"], "sender": sender, "address": self.address}
        if self._keys is not None:
            meta["curve_sender"] = parts[0].get("User-Id")  # the accepted key's certificate name
        extra = {k: v for k, v in header.items() if k not in _KNOWN}
        if extra:
            meta["header_extra"] = extra
        sampling = header.get("sampling")
        out.append(
            RawFrame(
                self._take_id(), float(header["timestamp"]), counts, header.get("beam"),
                None if sampling is None else (float(sampling[0]), float(sampling[1])), meta,
            )
        )  # fmt: skip

    def _take_id(self) -> int:
        sid, self._next_id = self._next_id, self._next_id + 1
        return sid

    def _count(self, sender: str | None) -> None:
        key = sender or ""
        self._received[key] = self._received.get(key, 0) + 1

    def _account(self, sender: str, frames_sent, out: list[SourceEvent]) -> None:
        if not _is_int(frames_sent):
            return
        got = self._received.get(sender, 0)
        lost = frames_sent - got - self._reported_lost.get(sender, 0)
        if lost > 0:
            self._reported_lost[sender] = self._reported_lost.get(sender, 0) + lost
            out.append(
                BadMessage(
                    None, time.time(),
                    f"sender {sender}: {lost} frame message(s) sent but never received "
                    f"(the sender counts {frames_sent} sent, {got} arrived)", sender=sender, lost=lost,
                )
            )  # fmt: skip

    def _alive(self, out: list[SourceEvent], detail: str) -> None:
        self._last_seen = time.monotonic()
        if self._state == "waiting":
            self._state = "up"
            out.append(StreamEvent("connected", time.time(), detail))
        elif self._state == "down":
            self._state = "up"
            out.append(StreamEvent("reconnected", time.time(), detail))

    def _set_down(self, out: list[SourceEvent], detail: str) -> None:
        if self._state == "up":
            self._state = "down"
            out.append(StreamEvent("disconnected", time.time(), detail))

    def _refused(self, reason: str, out: list[SourceEvent]) -> None:
        """Report the first refusal of each kind at once, later ones summed (a retrying peer
        reconnects every ~0.1 s)."""
        seen = self._refusals.get(reason)
        if seen is None:
            self._refusals[reason] = [0, time.monotonic()]
            out.append(BadMessage(None, time.time(), f"{reason} (on {self.address})"))
        else:
            seen[0] += 1

    def _report_refusals(self, out: list[SourceEvent]) -> None:
        now = time.monotonic()
        for reason, seen in self._refusals.items():
            if seen[0] and now - seen[1] >= _REPORT_EVERY_S:
                out.append(BadMessage(None, time.time(), f"{reason} (on {self.address}; {seen[0]} more time(s) since)"))
                seen[0], seen[1] = 0, now

    def _check_heartbeat(self, out: list[SourceEvent]) -> None:
        if self._state == "up" and time.monotonic() - self._last_seen > self._hb_timeout:
            self._set_down(out, f"no frame or heartbeat for {self._hb_timeout:g} s")


def _endpoint(ev: dict) -> str:
    ep = ev.get("endpoint", b"")
    return ep.decode() if isinstance(ep, bytes) else str(ep)


def _attach(sock, address: str, bind: bool, what: str) -> str:
    if not isinstance(address, str) or "://" not in address:
        raise InputError(f"{what} address must be a ZeroMQ endpoint like 'tcp://127.0.0.1:5555', got {address!r}")
    try:
        if bind:
            sock.bind(address)
            return sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        sock.connect(address)
        return address
    except zmq.ZMQError as exc:
        how = "bind" if bind else "connect to"
        raise InputError(
            f"cannot {how} {what} address {address!r}: {exc}; choose a free port, or "
            "'tcp://127.0.0.1:*' for an ephemeral one"
        ) from None


# ---------------------------------------------------------------------------------------------
# sender


@dataclasses.dataclass(frozen=True)
class SendReport:
    """What :func:`send_frames` did: frame messages sent, ids, sender id, beams received, time [s],
    and control messages ignored because they were not ``hypotest.control/1`` beam messages."""

    sent: int
    first_id: int
    last_id: int
    sender: str
    beams: tuple[dict, ...]
    elapsed_s: float
    ended: bool
    ignored_control: int = 0


def send_frames(
    frames: np.ndarray | Iterable[np.ndarray],
    address: str,
    *,
    rate_hz: float | None = None,
    beam: dict | None = None,
    sampling: float | tuple[float, float] | None = None,
    start_id: int = 0,
    heartbeat_s: float = 0.5,
    on_beam: Callable[[dict], None] | None = None,
    connect: bool = True,
    control_address: str | None = None,
    send_timeout: float = 30.0,
    stop: threading.Event | None = None,
    send_end: bool = True,
    curve_key: str | Path | None = None,
    curve_server_key: str | Path | None = None,
    allow_remote: bool = False,
) -> SendReport:
    """Send frames over ZeroMQ (protocol in the module docstring); blocks until done.

    Args:
        frames: ``[n, mx, my]``, one ``[mx, my]`` frame, or any iterable of ``[mx, my]`` arrays.
        address: the receiver's endpoint (``connect=True``) or the endpoint to bind.
        rate_hz: frames per second [Hz]; None sends as fast as the receiver takes them.
        beam: BEAM.json dict sent with every frame until a control message replaces it.
        sampling: pixel size [Å/pixel] (one number or ``(sx, sy)``) sent with every frame.
        start_id: ``frame_id`` of the first frame.
        heartbeat_s: [s] a heartbeat goes out whenever nothing was sent for this long.
        on_beam: called with each new beam from the control channel (then used for later frames).
        connect: connect to ``address`` (the receiver binds) or bind it.
        control_address: the receiver's control endpoint (SUB side), or None.
        send_timeout: [s] a frame no receiver takes within this raises TimeoutError.
        stop: set it to stop after the current frame.
        send_end: send the ``end`` message when done (False imitates a sender that crashed).
        curve_key: this sender's secret certificate (``NAME.key_secret``), with ``curve_server_key``
            the receiver's public certificate (``NAME.key``): CURVE on the data and control
            sockets (:mod:`hypotest.live.zmqauth`). A receiver that refuses the key raises
            InputError at once.
        allow_remote: accept a non-loopback endpoint without CURVE.

    Returns:
        A :class:`SendReport`. Nothing is dropped at the sender: at the high water mark the send
        blocks; close waits up to ``send_timeout`` for queued frames to leave.
    """
    if rate_hz is not None and not (_is_num(rate_hz) and rate_hz > 0):
        raise InputError(f"rate_hz must be a positive number [Hz] or None, got {rate_hz!r}")
    if (curve_key is None) != (curve_server_key is None):
        raise InputError(
            "CURVE needs both curve_key (this sender's NAME.key_secret) and curve_server_key (the receiver's "
            "NAME.key), or neither"
        )
    keys = None if curve_key is None else zmqauth.load_client_keys(curve_key, curve_server_key)
    endpoints = [a for a in (address, control_address) if isinstance(a, str) and "://" in a]
    zmqauth.check_endpoints(endpoints, curve=keys is not None, allow_remote=allow_remote, side="sender")
    if not (_is_num(heartbeat_s) and heartbeat_s > 0):
        raise InputError(f"heartbeat_s must be a positive number [s], got {heartbeat_s!r}")
    if sampling is not None:
        pair = [sampling, sampling] if _is_num(sampling) else list(sampling)
        if len(pair) != 2 or not all(_is_num(s) and s > 0 for s in pair):
            raise InputError(f"sampling must be a positive number or (sx, sy) [Å/pixel], got {sampling!r}")
        sampling = (float(pair[0]), float(pair[1]))
    if isinstance(frames, np.ndarray):
        if frames.ndim not in (2, 3, 4, 5):
            raise InputError(
                f"frames must be [mx, my], [n, mx, my], one 4D-STEM frame [sx, sy, kx, ky] or [n, sx, sy, kx, ky], "
                f"got shape {list(frames.shape)}"
            )
        frames = [frames] if frames.ndim in (2, 4) else frames
    sender = uuid.uuid4().hex[:12]
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, _HWM)
    push.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing on a connection that is not up: block instead
    push.setsockopt(zmq.LINGER, int(send_timeout * 1000))
    mon = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmqauth.HANDSHAKE_FAILED)
    sub = None
    t_start = time.monotonic()
    sent, fid, beams, seq, ignored = 0, int(start_id), [], 0, 0
    failures = 0  # handshakes failed in a row
    try:
        if keys is not None:
            zmqauth.make_client(push, keys)
        _attach(push, address, not connect, "data")
        if control_address is not None:
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.setsockopt(zmq.LINGER, 0)
            if keys is not None:
                zmqauth.make_client(sub, keys)
            _attach(sub, control_address, not connect, "control")
        last_send = time.monotonic()

        def check_handshakes() -> None:
            """InputError when the receiver refuses this sender (its key, or CURVE at all)."""
            nonlocal failures
            while True:
                try:
                    ev = recv_monitor_message(mon, zmq.NOBLOCK)
                except zmq.Again:
                    return
                failures = 0 if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED else failures + 1
                why = zmqauth.sender_refusal(ev["event"], ev["value"], failures, curve=keys is not None)
                if why is not None:
                    raise InputError(f"the receiver at {address} {why}")

        def send(parts, what):
            nonlocal last_send
            deadline = time.monotonic() + send_timeout
            while True:
                try:
                    push.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                    break
                except zmq.Again:
                    pass
                check_handshakes()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no receiver at {address} took {what} within {send_timeout:g} s; is a ZmqSource "
                        "listening there (and the address right)?"
                    )
                push.poll(max(1, min(100, int(left * 1000))), zmq.POLLOUT)
            last_send = time.monotonic()

        def service(until: float) -> None:
            """Take control messages and send heartbeats until ``until`` (monotonic)."""
            nonlocal beam, seq, ignored
            while True:
                now = time.monotonic()
                if now - last_send >= heartbeat_s:
                    send([_control_header("heartbeat", sender, sent)], "a heartbeat")
                if sub is not None:
                    while sub.poll(0):
                        msg = _control_message(sub.recv())
                        if msg is None:
                            ignored += 1
                        elif msg["seq"] > seq:
                            seq, beam = msg["seq"], msg["beam"]
                            beams.append(beam)
                            if on_beam is not None:
                                on_beam(beam)
                now = time.monotonic()
                if now >= until:
                    return
                wait = min(until - now, max(last_send + heartbeat_s - now, 0.0))
                if sub is not None:
                    sub.poll(max(1, int(wait * 1000)))
                else:
                    time.sleep(wait)

        t0, k, it = time.monotonic(), -1, iter(frames)
        while stop is None or not stop.is_set():
            frame = next(it, None)
            if frame is None:
                break
            k += 1
            if rate_hz is not None:
                service(t0 + k / rate_hz)
            elif sub is not None or time.monotonic() - last_send >= heartbeat_s:
                service(0.0)
            send(encode_frame(frame, fid, beam=beam, sampling=sampling, sender=sender), f"frame {fid}")
            sent, fid = sent + 1, fid + 1
        if send_end:
            send([_control_header("end", sender, sent)], "the end message")
    finally:
        if sub is not None:
            sub.close(linger=0)
        push.disable_monitor()
        mon.close(linger=0)
        push.close()  # LINGER = send_timeout: queued frames still leave
        ctx.term()
    return SendReport(sent, int(start_id), fid - 1, sender, tuple(beams), time.monotonic() - t_start, bool(send_end),
                      ignored)  # fmt: skip

