"""`--bind` / `--connect` addresses: parsed once, before anything is loaded, each wrong part named.

    python -m pytest -q tests/test_endpoints.py

Every bad address is exit 2 with one `error:` line that names the wrong part and shows a right
address; a well-formed non-loopback bind without keys stays exit 1. The ipc length limit is the
one a real ZeroMQ bind has on this machine, also for the socket `launch --transport ipc` makes.
"""
import os
import socket
import subprocess
import tempfile
import time

import pytest
import zmq

from parsgd.ps.address import IPC_PATH_MAX, EndpointError, Endpoint, parse_endpoint
from parsgd.ps.sockets import is_loopback
from procs import PY, Procs, cli_run as run, ends_cleanly
from procs import one_line_error as _one_line_error

TINY = ["--dataset", "synthetic", "--num-samples", "256", "--epochs", "1", "--hidden", "8", "--batch-size", "64"]
LONG = "/tmp/" + "x" * 120 + ".sock"


def one_line_error(result, code, *words):
    """Refused before anything was loaded or waited for."""
    return _one_line_error(result, code, *words, before_loading=True, within=2)






BAD = [  # (address, words the one line has); each is also given to the other role below
    ("127.0.0.1:5555", ["no scheme", "e.g.", "tcp://127.0.0.1:5555"]),
    ("localhost", ["no scheme", "tcp://127.0.0.1:5555"]),
    ("http://127.0.0.1:5555", ["scheme http://", "tcp://127.0.0.1:5555"]),
    ("tcp:/127.0.0.1:5555", ["no scheme"]),
    ("tcp://127.0.0.1", ["no port", "tcp://127.0.0.1:5555"]),
    ("tcp://127.0.0.1:", ["no port", "tcp://127.0.0.1:5555"]),
    ("tcp://127.0.0.1:abc", ["port abc", "1-65535"]),
    ("tcp://127.0.0.1:70000", ["port 70000", "1-65535"]),
    ("tcp://127.0.0.1:0", ["port 0", "1-65535"]),
    ("tcp://127.0.0.1:-1", ["port -1", "1-65535"]),
    ("tcp://:5555", ["no host"]),
    ("tcp://300.1.1.1:5555", ["host 300.1.1.1", "IPv4"]),
    ("tcp://::1:5555", ["brackets", "tcp://[::1]:5555"]),
    ("tcp://[::1:5555", ["closing bracket"]),
    ("tcp://[nope]:5555", ["[nope]", "IPv6"]),
    ("tcp://[::1]5555", ["no port"]),
    ("tcp://bad_host!:5555", ["host bad_host!", "host name"]),
    ("tcp://127.0.0.1 :5555", ["no spaces"]),
    ("ipc://", ["no socket path", "ipc:///tmp/parsgd.sock"]),
    (f"ipc://{LONG}", [f"socket path is {len(LONG)} bytes", f"the {IPC_PATH_MAX}", "ipc:///tmp/parsgd.sock"]),
]


@pytest.mark.parametrize("address,words", BAD)
def test_bad_connect_address_is_exit_2_naming_the_part(address, words):
    err = one_line_error(run(["worker", "--connect", address, "--connect-timeout", "30"]), 2, "--connect", *words)
    assert err.startswith(f"error: --connect {address}") or "'" in err


@pytest.mark.parametrize("address,words", BAD)
def test_bad_bind_address_is_exit_2_before_loading_or_binding(tmp_path, address, words):
    out = tmp_path / "run"
    one_line_error(run(["server", *TINY, "--bind", address, "--out", out]), 2, "--bind", *words)
    assert not out.exists()


@pytest.mark.parametrize("command,option,address,words", [
    ("worker", "--connect", "tcp://*:5555", ["host * only works for --bind"]),
    ("worker", "--connect", "tcp://127.0.0.1:*", ["port * only works for --bind", "server.address"]),
    ("worker", "--connect", "ipc://*", ["only works for --bind"]),
    ("server", "--bind", "ipc:///no/such/folder/s.sock", ["folder /no/such/folder does not exist"]),
    ("server", "--bind", "tcp://127.0.0.1:0", ["port * picks a free one"]),
])
def test_role_specific_addresses(tmp_path, command, option, address, words):
    extra = [*TINY, "--out", tmp_path / "run"] if command == "server" else []
    one_line_error(run([command, option, address, *extra]), 2, option, *words)


def test_a_well_formed_non_loopback_bind_without_keys_is_exit_1_before_loading(tmp_path):
    for address in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://[::]:5555", "tcp://eth0:5555"):
        out = tmp_path / address.replace("/", "_")
        one_line_error(run(["server", *TINY, "--bind", address, "--out", out]), 1,
                       f"--bind {address} is not a loopback address: binding it needs CURVE keys", "parsgd keygen")
        assert not out.exists()


@pytest.mark.parametrize("text,role,expected", [
    ("tcp://127.0.0.1:5555", "connect", Endpoint("tcp", "127.0.0.1", 5555)),
    ("tcp://127.0.0.1:*", "bind", Endpoint("tcp", "127.0.0.1", "*")),
    ("tcp://*:5555", "bind", Endpoint("tcp", "*", 5555)),
    ("tcp://[::1]:5555", "connect", Endpoint("tcp", "::1", 5555)),
    ("tcp://localhost:65535", "connect", Endpoint("tcp", "localhost", 65535)),
    ("tcp://server.example.org:1", "connect", Endpoint("tcp", "server.example.org", 1)),
    ("tcp://eth0:5555", "bind", Endpoint("tcp", "eth0", 5555)),
    ("ipc:///tmp/parsgd.sock", "bind", Endpoint("ipc", path="/tmp/parsgd.sock")),
    ("ipc:///no/such/dir/s.sock", "connect", Endpoint("ipc", path="/no/such/dir/s.sock")),
])
def test_good_addresses_parse_and_print_back(text, role, expected):
    endpoint = parse_endpoint(text, role)
    assert endpoint == expected and str(endpoint) == text


def test_is_loopback_uses_the_parser_and_is_false_for_a_malformed_address():
    assert is_loopback("tcp://127.0.0.1:*") and is_loopback("tcp://[::1]:5555") and is_loopback(f"ipc://{LONG[:60]}")
    for bad in ("127.0.0.1:5555", "tcp://127.0.0.1:70000", f"ipc://{LONG}", "tcp://127.0.0.1"):
        assert not is_loopback(bad)


def test_the_ipc_limit_is_the_one_a_real_zmq_bind_has():
    folder = tempfile.mkdtemp(prefix="p", dir="/tmp")
    ctx = zmq.Context()
    try:
        fits = os.path.join(folder, "x" * (IPC_PATH_MAX - len(folder) - 1))
        assert len(os.fsencode(fits)) == IPC_PATH_MAX
        for path, ok in ((fits, True), (fits + "y", False)):
            sock = ctx.socket(zmq.ROUTER)
            try:
                sock.bind(f"ipc://{path}")
                bound = True
            except zmq.ZMQError:
                bound = False
            finally:
                sock.close(linger=0)
            assert bound is ok, (len(path), bound)
            if ok:
                assert parse_endpoint(f"ipc://{path}") == Endpoint("ipc", path=path)
            else:
                with pytest.raises(EndpointError, match=f"{IPC_PATH_MAX + 1} bytes"):
                    parse_endpoint(f"ipc://{path}")
    finally:
        ctx.term()
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)


def test_launch_ipc_refuses_a_tmpdir_too_long_for_its_socket(tmp_path):
    tmpdir = tmp_path / ("t" * 60) / ("u" * 60)
    tmpdir.mkdir(parents=True)
    out = tmp_path / "run"
    t0 = time.monotonic()
    proc = subprocess.run(PY + ["launch", "--transport", "ipc", "--workers", "1", *TINY, "--out", str(out)],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "TMPDIR": str(tmpdir), "PARSGD_NO_DOWNLOAD": "1"})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --transport ipc:"), proc.stderr
    assert "set TMPDIR to a shorter folder" in lines[0] and str(tmpdir) in lines[0] and "Traceback" not in proc.stdout
    assert not out.exists() and time.monotonic() - t0 < 5


def _ipv6_port() -> int | None:
    """A free port on ::1, or None when this machine has no IPv6 loopback."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return s.getsockname()[1]
    except OSError:
        return None


@pytest.mark.skipif(_ipv6_port() is None, reason="no IPv6 loopback here")
def test_server_and_worker_over_ipv6_loopback(tmp_path):
    address = f"tcp://[::1]:{_ipv6_port()}"
    with Procs(tmp_path) as p:
        server = p.start("server", ["server", "--bind", address, "--workers", "1", *TINY, "--out", str(tmp_path / "r"),
                                    "--wait-timeout", "30"], env={"PARSGD_NO_DOWNLOAD": "1"})
        worker = p.worker(address, env={"PARSGD_NO_DOWNLOAD": "1"})
        ends_cleanly(server, worker, timeout=60)
        assert f"server listening on {address}" in server.output()
