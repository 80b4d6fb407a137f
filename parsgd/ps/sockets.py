"""Socket options, loopback checks and CURVE keys: how parsgd's ZeroMQ sockets are set up.

The constants follow the zguide's reliability chapter and the libzmq docs: small HWMs so a stuck
peer becomes a fast EAGAIN, ROUTER_MANDATORY so nothing is dropped silently, ROUTER_HANDOVER for
restarted workers, a short handshake timeout against half-open connections, ZMTP heartbeats under
the application ones, and MAXMSGSIZE so libzmq refuses an oversized frame before allocating it.

Keys (`parsgd keygen DIR`):  DIR/server.key(_secret), DIR/worker.key(_secret), and
DIR/authorized/*.key: the worker public keys the server accepts (the ZAP allowlist).
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import zmq
from parsgd.errors import UserError
from parsgd.files import write_error, write_file
from parsgd.ps.address import EndpointError, parse_endpoint

HWM = 16
HANDSHAKE_IVL_MS = 5000
ZMTP_HEARTBEAT_IVL_MS = 1000
ZMTP_HEARTBEAT_TIMEOUT_MS = 3000
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 2000
ZAP_DOMAIN = b"parsgd"


class BindError(UserError):
    """The server may not or cannot listen on the address given (exit 1); the message names the fix."""


class KeysError(UserError):
    """Keys are missing or unreadable; the message names the file and the fix."""


def is_loopback(address: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or localhost; False for anything else,
    a malformed address included (parsgd.ps.address.parse_endpoint says what is wrong with it)."""
    if address.startswith("inproc://"):
        return True
    try:
        return parse_endpoint(address, "bind", filesystem=False).is_loopback
    except EndpointError:
        return False


def refuse_open_bind(bind: str, keys_dir) -> None:
    """Raises BindError (exit 1) when a well-formed `bind` is not loopback and there are no keys."""
    if not keys_dir and not is_loopback(bind):
        raise BindError(f"--bind {bind} is not a loopback address: binding it needs CURVE keys "
                        "(`parsgd keygen DIR`, then --keys DIR on the server and the workers)")


def _common(sock: zmq.Socket, max_frame_bytes: int) -> None:
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, ZMTP_HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.LINGER, 0)


def configure_router(ctx: zmq.Context, sock: zmq.Socket, opts, max_frame_bytes: int):
    """Server socket options and, with opts.keys_dir, CURVE + a ZAP allowlist; returns the authenticator."""
    _common(sock, max_frame_bytes)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    # With a ZAP domain libzmq refuses ZMTP 1.0/2.0 peers. Otherwise any first byte but 0xFF (an
    # HTTP request, junk) counts as a finished 1.0 handshake: HANDSHAKE_IVL no longer applies and
    # the junk is parsed into messages. Without a ZAP handler (no --keys) NULL peers pass as before.
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    if parse_endpoint(opts.bind, "bind", filesystem=False).ipv6:  # EndpointError (exit 2) if malformed
        sock.setsockopt(zmq.IPV6, 1)
    if not opts.keys_dir:
        refuse_open_bind(opts.bind, None)
        return None
    from zmq.auth.thread import ThreadAuthenticator
    keys = Path(opts.keys_dir)
    public, secret = load_keypair(keys / "server.key_secret")
    allowed = keys / "authorized"
    if not allowed.is_dir() or not any(allowed.glob("*.key")):
        raise KeysError(f"{allowed} holds no worker public keys: run `parsgd keygen {keys}` "
                         "or copy each worker's .key file there")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain=ZAP_DOMAIN.decode(), location=str(allowed))
    sock.curve_secretkey, sock.curve_publickey = secret, public
    sock.curve_server = True
    return auth


def dealer_context(connect: str) -> zmq.Context:
    """A context for the worker's sockets: linger 0, and IPv6 on when `connect` has an IPv6 host
    (libzmq's default is IPv4 only). Raises EndpointError (exit 2) if `connect` is malformed."""
    ctx = zmq.Context()
    ctx.linger = 0
    ctx.ipv6 = parse_endpoint(connect, "connect").ipv6
    return ctx


def configure_dealer(sock: zmq.Socket, max_frame_bytes: int, keys_dir: str | None) -> None:
    """Worker socket options and, with keys_dir, this worker's keypair and the server's public key."""
    _common(sock, max_frame_bytes)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    if keys_dir:
        keys = Path(keys_dir)
        public, secret = load_keypair(keys / "worker.key_secret")
        server_public, _ = load_keypair(keys / "server.key")
        sock.curve_secretkey, sock.curve_publickey = secret, public
        sock.curve_serverkey = server_public


def load_keypair(path: Path) -> tuple[bytes, bytes | None]:
    import zmq.auth
    if not path.is_file():
        raise KeysError(f"missing key file {path}: create keys with `parsgd keygen {path.parent}`")
    try:
        return zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise KeysError(f"cannot read key file {path}: {exc}") from None


def _certificate(public: bytes, secret: bytes | None = None) -> bytes:
    """A key file in the ZPL format of pyzmq's zmq.auth.create_certificates (read by load_certificate)."""
    kind = "**Secret**" if secret else "Public"
    text = (f"#   ****  Generated on {_dt.datetime.now()} by parsgd  ****\n#   ZeroMQ CURVE {kind} Certificate\n\n"
            f"metadata\ncurve\n    public-key = \"{public.decode()}\"\n")
    return (text + (f"    secret-key = \"{secret.decode()}\"\n" if secret else "")).encode()


KEY_FILES = ("server.key", "server.key_secret", "worker.key", "worker.key_secret", "authorized/worker.key")


class KeysExistError(KeysError):
    """keygen would replace keys already in DIR (exit 1): refused without force."""


def existing_keys(directory) -> list[str]:
    """The KEY_FILES (paths relative to `directory`) that already exist there, in KEY_FILES order."""
    d = Path(directory)
    return [name for name in KEY_FILES if (d / name).exists()]


def keygen(directory, force: bool = False) -> list[Path]:
    """Write a server and a worker keypair, and allow that worker key on the server.

    DIR (created if missing) is made 0700 and the *.key_secret files are 0600 whatever the umask;
    public keys get the umask's mode. Keys already there (existing_keys) are replaced only with
    `force`: workers set up with the old ones would be locked out. Raises KeysExistError (keys
    there, no force), KeysError (DIR is a file), WriteError (cannot write).
    """
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise KeysError(f"{d} is a file: pass a folder for the keys")
    old = existing_keys(d)
    if old and not force:
        raise KeysExistError(f"{d} already holds keys ({', '.join(old)}): new ones would lock out every worker "
                             f"set up with them; pass --force to replace them, or another folder")
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        d.chmod(0o700)  # private before any secret is written into it
        (d / "authorized").mkdir(exist_ok=True)
    except OSError as exc:
        raise write_error(d, exc, "pass a folder you may write to for the keys") from None
    written = []
    for name in ("server", "worker"):
        public, secret = zmq.curve_keypair()
        written += [write_file(d / f"{name}.key", _certificate(public)),
                    write_file(d / f"{name}.key_secret", _certificate(public, secret), secret=True)]
        if name == "worker":
            written.append(write_file(d / "authorized" / "worker.key", _certificate(public)))
    return written
