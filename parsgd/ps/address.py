"""Endpoints: a `--bind` / `--connect` address parsed once, before any data is loaded.

    python -c "from parsgd.ps.address import parse_endpoint; print(parse_endpoint('tcp://[::1]:*'))"

parsgd speaks two ZeroMQ transports: `tcp://HOST:PORT` and `ipc://PATH`. libzmq itself reports a bad
address only at bind or connect time (after the data is loaded) and as a bare ZMQError: EINVAL for a
missing scheme or port, EPROTONOSUPPORT for `http://`, ENODEV for an unknown host; it even takes
port 70000 as 4464 (mod 65536) without a word, and an ipc path longer than `sun_path` (107 bytes on
Linux) fails only at bind. `parse_endpoint` names the wrong part instead, with a right example.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

import zmq

from parsgd.errors import UsageError

SCHEMES = ("tcp", "ipc")
ROLES = ("bind", "connect")
TCP_EXAMPLE = "tcp://127.0.0.1:5555"
IPC_EXAMPLE = "ipc:///tmp/parsgd.sock"
# Bytes of an ipc path: sizeof(sockaddr_un.sun_path) less its NUL (107 on Linux, 103 on macOS/BSD).
IPC_PATH_MAX = getattr(zmq, "IPC_PATH_MAX_LEN", 0) or 103
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")  # a host name (RFC 1123) or an interface name (eth0)


class EndpointError(UsageError, ValueError):
    """A --bind / --connect address is malformed; the message names the wrong part and a right example (exit 2)."""


@dataclass(frozen=True)
class Endpoint:
    """A parsed address. tcp: `host` (an IP literal, IPv6 without brackets; a host or interface name;
    or "*" to bind every interface) and `port` (1..65535, or "*": a free port, bind only).
    ipc: `path` (the socket file; "*" lets ZeroMQ pick one, bind only)."""

    scheme: str
    host: str = ""
    port: int | str = ""
    path: str = ""

    @property
    def ipv6(self) -> bool:
        """True for a tcp address whose host is an IPv6 literal (the socket needs ZMQ_IPV6)."""
        return self.scheme == "tcp" and ":" in self.host

    @property
    def is_loopback(self) -> bool:
        """True for ipc and for tcp on 127.0.0.0/8, ::1 or localhost; `*`, names and other IPs are not."""
        if self.scheme == "ipc":
            return True
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # '*', an interface name or a host name
            return False

    def __str__(self) -> str:
        if self.scheme == "ipc":
            return f"ipc://{self.path}"
        return f"tcp://{f'[{self.host}]' if self.ipv6 else self.host}:{self.port}"


def _show(text: str) -> str:
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def parse_endpoint(text: str, role: str = "bind", *, filesystem: bool = True) -> Endpoint:
    """Parses `text` as the address of `--bind` (role "bind") or `--connect` (role "connect").

    Raises EndpointError, one line `--ROLE TEXT: WHAT IS WRONG; e.g. A RIGHT ADDRESS`, for a missing
    or unknown scheme, a missing or bad host or port, an unbracketed IPv6 host, `*` on connect, an
    empty ipc path or one longer than IPC_PATH_MAX bytes, and, with `filesystem` (the default), an
    ipc path to bind in a folder that does not exist.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")

    def bad(problem: str, example: str = TCP_EXAMPLE):
        return EndpointError(f"--{role} {_show(text)}: {problem}; e.g. --{role} {example}")

    if not isinstance(text, str) or not text:
        raise EndpointError(f"--{role} is empty: give an address, e.g. --{role} {TCP_EXAMPLE} "
                            f"or --{role} {IPC_EXAMPLE}")
    if not text.isprintable() or any(c.isspace() for c in text):
        raise bad("an address has no spaces or control characters")
    if "://" not in text:
        example = f"tcp://{text}" if re.fullmatch(r"[\w.\-\[\]:*]+:(\d+|\*)", text) else TCP_EXAMPLE
        raise bad("no scheme: start it with tcp:// (or ipc:// for a socket file)", example)
    scheme, rest = text.split("://", 1)
    if scheme not in SCHEMES:
        raise bad(f"the scheme {_show(scheme)}:// is not one parsgd speaks: use tcp:// (or ipc:// for a socket file)",
                  f"tcp://{rest}" if rest else TCP_EXAMPLE)
    if scheme == "ipc":
        return _parse_ipc(rest, role, bad, filesystem)
    return _parse_tcp(rest, role, bad)


def _parse_ipc(path: str, role: str, bad, filesystem: bool) -> Endpoint:
    if not path:
        raise bad("no socket path after ipc://", IPC_EXAMPLE)
    if path == "*":
        if role == "connect":
            raise bad("ipc://* only works for --bind: give the server's socket path", IPC_EXAMPLE)
        return Endpoint("ipc", path=path)
    size = len(os.fsencode(path))
    if size > IPC_PATH_MAX:
        raise bad(f"the socket path is {size} bytes, more than the {IPC_PATH_MAX} an ipc path may have "
                  "on this system: use a shorter path", IPC_EXAMPLE)
    folder = os.path.dirname(path)
    if filesystem and role == "bind" and not path.startswith("@") and folder and not os.path.isdir(folder):
        raise bad(f"the folder {folder} does not exist: create it or choose another one", IPC_EXAMPLE)
    return Endpoint("ipc", path=path)


def _parse_tcp(rest: str, role: str, bad) -> Endpoint:
    if rest.startswith("["):
        host, sep, after = rest[1:].partition("]")
        if not sep:
            raise bad("an IPv6 host needs its closing bracket", "tcp://[::1]:5555")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"[{host}] is not an IPv6 address (brackets are for IPv6 only)", "tcp://[::1]:5555") from None
        if not after.startswith(":"):
            raise bad("no port after the host: add :PORT", f"tcp://[{host}]:5555")
        port = after[1:]
    else:
        host, sep, port = rest.rpartition(":")
        if not sep:
            raise bad("no port: add :PORT after the host" + (" (port * picks a free one)" if role == "bind" else ""),
                      f"tcp://{rest or '127.0.0.1'}:5555")
        if ":" in host:
            raise bad("an IPv6 host goes in brackets", f"tcp://[{host}]:{port or 5555}")
    _check_host(host, role, bad)
    return Endpoint("tcp", host=host, port=_check_port(port, host, role, bad))


def _check_host(host: str, role: str, bad) -> None:
    example = "tcp://127.0.0.1:5555" if role == "bind" else "tcp://server.example.org:5555"
    if not host:
        raise bad("no host before the port", TCP_EXAMPLE)
    if host == "*":
        if role == "connect":
            raise bad("host * only works for --bind: give the server's address", TCP_EXAMPLE)
        return
    if ":" in host:  # IPv6, checked by the caller
        return
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise bad(f"host {host} is not an IPv4 address (four numbers 0-255 joined by dots)", TCP_EXAMPLE) from None
        return
    if len(host) > 253 or not _NAME.fullmatch(host):
        raise bad(f"host {_show(host)} is not an IP address or a host name", example)


def _check_port(port: str, host: str, role: str, bad) -> int | str:
    shown = f"[{host}]" if ":" in host else host
    if port == "*":
        if role == "connect":
            raise bad("port * only works for --bind: give the port the server listens on "
                      "(its run directory's server.address has it)", f"tcp://{shown}:5555")
        return port
    hint = " (port * picks a free one)" if role == "bind" else ""
    if not port:
        raise bad("no port after the colon" + hint, f"tcp://{shown}:5555")
    if not port.isdigit() or not port.isascii():
        raise bad(f"the port {_show(port)} is not a number in 1-65535" + hint, f"tcp://{shown}:5555")
    if not 1 <= int(port) <= 65535:
        raise bad(f"the port {port} is out of range 1-65535" + hint, f"tcp://{shown}:5555")
    return int(port)
