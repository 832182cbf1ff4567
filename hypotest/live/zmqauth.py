"""Who may talk to the ZeroMQ frame stream: loopback by default, CURVE keys beyond it.

ZeroMQ has no authentication of its own (the NULL mechanism): anyone who can reach a stream's
TCP port can push frames into the session, and anyone who can reach its control port receives
the beam conditions. So :class:`hypotest.live.zmqstream.ZmqSource` and
:func:`~hypotest.live.zmqstream.send_frames` accept only local endpoints (``tcp://127.0.0.1``,
``localhost``, ``[::1]``, ``ipc://``, ``inproc://``) unless

- **CURVE** keys are given (CurveZMQ, RFC 26 of the ZeroMQ RFCs, http://rfc.zeromq.org/spec/26;
  elliptic-curve Curve25519 keys, every message encrypted and authenticated): the receiver holds
  its secret certificate and a directory of the senders' public certificates, and refuses any
  sender whose key is not there (a ZAP handler, ZeroMQ RFC 27); a sender holds its own secret
  certificate and the receiver's public one, so it talks to that receiver only. Make key pairs
  with :func:`make_stream_keys` (``hypotest stream keys DIR --name NAME``): ``NAME.key``
  (public, give it to the other side) and ``NAME.key_secret`` (keep it);
- or ``allow_remote`` (``--allow-remote-stream``) says that the network is trusted: then anyone
  who can reach the port can inject frames.

Certificates are pyzmq's (``zmq.auth``) text files: ``public-key = "<z85>"`` and, in the secret
one, ``secret-key = "<z85>"``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from forward.errors import InputError

__all__ = ["ServerKeys", "ClientKeys", "load_server_keys", "load_client_keys", "make_stream_keys",
           "is_local_endpoint", "check_endpoints"]  # fmt: skip

#: ZMTP protocol error codes in handshake-failure events (zmq.h, ZMQ_PROTOCOL_ERROR_ZMTP_*).
_CRYPTOGRAPHIC, _MECHANISM_MISMATCH = 0x11000001, 0x11000002


@dataclasses.dataclass(frozen=True)
class ServerKeys:
    """The receiver's CURVE key pair (z85) and the senders it accepts: ``{public key: name}``."""

    public: bytes
    secret: bytes
    clients_dir: Path
    clients: dict

    def __repr__(self) -> str:  # never print the secret
        return f"ServerKeys(clients_dir={str(self.clients_dir)!r}, clients={sorted(self.clients.values())})"


@dataclasses.dataclass(frozen=True)
class ClientKeys:
    """A sender's CURVE key pair (z85) and the receiver's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    def __repr__(self) -> str:
        return "ClientKeys(...)"


def _load(path, what: str) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(Path(path))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{what} {str(path)!r}: cannot read a ZeroMQ certificate ({exc}); make key pairs with "
            "`hypotest stream keys DIR --name NAME`"
        ) from None


def _secret(path, what: str) -> tuple[bytes, bytes]:
    public, secret = _load(path, what)
    if secret is None:
        raise InputError(
            f"{what} {str(path)!r} holds only a public key; give the secret certificate (NAME.key_secret) made "
            "with it by `hypotest stream keys`"
        )
    return public, secret


def load_server_keys(secret_file, clients_dir) -> ServerKeys:
    """The receiver's keys: its ``NAME.key_secret`` and the directory of accepted senders' ``*.key``."""
    public, secret = _secret(secret_file, "receiver key")
    d = Path(clients_dir)
    if not d.is_dir():
        raise InputError(f"curve clients {str(d)!r}: not a directory; give the directory holding the senders' NAME.key files")
    clients = {}
    for p in sorted(d.glob("*.key")):
        clients[_load(p, "sender key")[0]] = p.stem
    if not clients:
        raise InputError(
            f"curve clients {str(d)!r}: no sender public keys (*.key) in it; make one with `hypotest stream keys DIR "
            "--name sender` and copy sender.key there"
        )
    return ServerKeys(public, secret, d, clients)


def load_client_keys(secret_file, server_key_file) -> ClientKeys:
    """A sender's keys: its ``NAME.key_secret`` and the receiver's public ``NAME.key``."""
    public, secret = _secret(secret_file, "sender key")
    server_public, _ = _load(server_key_file, "receiver public key")
    return ClientKeys(public, secret, server_public)


def make_stream_keys(directory, name: str) -> tuple[Path, Path]:
    """A new CURVE key pair in ``directory``: ``(NAME.key, NAME.key_secret)`` (the secret mode 600)."""
    if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise InputError(f"key name must be letters, digits, '-' or '_' (e.g. 'receiver'), got {name!r}")
    d = Path(directory)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    for p in (public, secret):
        if p.exists():
            raise InputError(f"{p} exists; choose another --name or directory (keys are never overwritten)")
    try:
        d.mkdir(parents=True, exist_ok=True)
        pub, sec = zmq.auth.create_certificates(d, name)
        Path(sec).chmod(0o600)
    except OSError as exc:
        raise InputError(f"cannot write keys in {str(d)!r} ({exc.strerror or exc})") from None
    return Path(pub), Path(sec)


# ---------------------------------------------------------------------------------------------
# endpoints


def is_local_endpoint(address: str) -> bool:
    """Whether a ZeroMQ endpoint stays on this machine: ipc/inproc, or tcp on a loopback host."""
    transport, _, rest = address.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    for part in rest.split(";"):  # "tcp://source;destination" connects from a source address
        host = part.rpartition(":")[0] if part.count(":") == 1 or part.startswith("[") else part
        host = host.strip("[]").lower()
        if host != "localhost":
            try:
                if not ipaddress.ip_address(host).is_loopback:
                    return False
            except ValueError:  # "*", an interface name or a host name: not known to be local
                return False
    return True


def check_endpoints(addresses, *, curve: bool, allow_remote: bool, side: str) -> None:
    """InputError for a non-local endpoint without CURVE keys or ``allow_remote``."""
    remote = [a for a in addresses if a is not None and not is_local_endpoint(a)]
    if not remote or curve or allow_remote:
        return
    if side == "receiver":
        keys = "--curve-key RECEIVER.key_secret --curve-clients DIR (ZmqSource(curve_key=..., curve_clients=...))"
        risk = "anyone who can reach the port can inject frames into the session"
    else:
        keys = ("--curve-key SENDER.key_secret --curve-server-key RECEIVER.key "
                "(send_frames(curve_key=..., curve_server_key=...))")  # fmt: skip
        risk = "anyone who can reach it can take the frames or send beam commands"
    raise InputError(
        f"{remote[0]!r} is not a loopback address: ZeroMQ does not authenticate peers, so {risk}. Use "
        f"tcp://127.0.0.1:PORT (and an SSH tunnel), or give CURVE keys: {keys} (make them with `hypotest stream "
        "keys DIR --name NAME`), or state that the network is trusted with --allow-remote-stream (allow_remote=True)"
    )


# ---------------------------------------------------------------------------------------------
# sockets


class _Authenticator(ThreadAuthenticator):
    """ZAP handler that names an accepted sender by its certificate's file name (``User-Id``)."""

    def __init__(self, context, keys: ServerKeys):
        super().__init__(context)
        self._names = keys.clients

    def curve_user_id(self, client_public_key: bytes) -> str:
        from zmq.utils import z85

        return self._names.get(z85.encode(client_public_key), "unnamed")


def start_authenticator(context, keys: ServerKeys) -> ThreadAuthenticator:
    """A running ZAP handler on ``context`` that accepts the senders of ``keys`` only."""
    auth = _Authenticator(context, keys)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys.clients_dir))
    return auth


def make_server(sock, keys: ServerKeys) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


def make_client(sock, keys: ClientKeys) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server_public


#: Handshake failures a sender monitors, and a receiver with CURVE. Which one a refused peer gives
#: is a race (a receiver may see a mechanism mismatch or only a peer gone mid-handshake); a receiver
#: without CURVE ignores the last kind, which a sender closing early also gives.
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
REFUSED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


def sender_refusal(event: int, value: int, failures: int, *, curve: bool) -> str | None:
    """Why a sender's handshakes fail (the end of a sentence "the receiver at ADDR ..."), or None
    while it may still succeed (``failures``: failed handshakes in a row)."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            "refused this sender's CURVE key: copy this sender's public certificate (NAME.key) into the receiver's "
            "--curve-clients directory and restart it"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _MECHANISM_MISMATCH:
        if curve:
            return "does not use CURVE: drop --curve-key/--curve-server-key, or start the receiver with CURVE keys"
        return "requires CURVE keys: --curve-key SENDER.key_secret --curve-server-key RECEIVER.key"
    if event & HANDSHAKE_FAILED and failures >= 3:
        how = ("check that --curve-server-key is this receiver's public certificate (RECEIVER.key)" if curve
               else "it may require CURVE keys: --curve-key SENDER.key_secret --curve-server-key RECEIVER.key")  # fmt: skip
        return f"failed the ZeroMQ handshake {failures} times in a row: {how}"
    return None


def refusal_reason(event: int, value: int, *, curve: bool, clients_dir: Path | None = None) -> str:
    """Why the receiver refused a connection (from a handshake-failure monitor event)."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"refused a sender: its CURVE public key is not among the accepted keys in {str(clients_dir)!r}; "
            "copy its NAME.key there and restart the receiver"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _MECHANISM_MISMATCH:
        if curve:
            return (
                "refused a sender without CURVE keys: this stream needs them (hypotest stream send --curve-key "
                "SENDER.key_secret --curve-server-key RECEIVER.key)"
            )
        return "refused a sender that uses CURVE keys: this receiver has none (hypotest live --curve-key, --curve-clients)"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _CRYPTOGRAPHIC:
        return "refused a sender: the CURVE handshake failed (it holds another receiver's public key; give it RECEIVER.key)"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and curve:
        return (
            "refused a connection: the ZeroMQ handshake failed before CURVE authentication (a sender without CURVE "
            "keys or with another receiver's public key, or a port scan)"
        )
    return f"refused a connection: the ZeroMQ handshake failed (event {int(event)}, code {int(value):#x})"
