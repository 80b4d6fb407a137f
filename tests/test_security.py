"""Who may talk to the server: loopback by default, CURVE + a ZAP allowlist otherwise.

    python -m pytest tests/test_security.py -q

Tests bind only to 127.0.0.1, CURVE included: a refused non-loopback bind never reaches bind().
"""
import os
import signal
import socket
import stat
import subprocess
import threading
import time

import numpy as np
import pytest
import zmq
import zmq.auth
from click.testing import CliRunner
from zmq.utils.monitor import recv_monitor_message

from attack import dealer, hello, raw_connect, read_until_closed, recv_message, wait_event
from parsgd.cli import cli
from parsgd.ps.sockets import is_loopback
from procs import PY, Procs, ends_cleanly, events, free_port, load_params, no_traceback, sequential_params

pytestmark = pytest.mark.slow  # real server and worker processes, faults waited out

ARGS = ["--dataset", "synthetic", "--num-samples", "2000", "--hidden", "32,16", "--batch-size", "100",
        "--dtype", "float64", "--epochs", "12", "--seed", "3"]
SLOW = ["--faults", "delay=1:0.15"]   # 240 steps of >= 0.15 s: 36 s of training, ended by the test with SIGTERM
FAKE_PID = 10**9


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    return sequential_params(tmp_path_factory.mktemp("oracle"), *ARGS)


@pytest.mark.parametrize("address,expected", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.2.1:5555", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/parsgd/server.sock", True), ("inproc://ps", True),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://[::]:5555", False),
    ("tcp://192.168.1.10:5555", False), ("tcp://eth0:5555", False), ("tcp://localhost.example.com:5555", False),
    ("tcp://127.0.0.1.nip.io:5555", False), ("tcp://[::ffff:10.0.0.1]:5555", False), ("ws://127.0.0.1:5555", False),
])
def test_is_loopback(address, expected):
    assert is_loopback(address) is expected


def test_a_non_loopback_bind_without_keys_is_refused_with_one_line(tmp_path):
    tiny = ["--workers", "1", "--dataset", "synthetic", "--num-samples", "300", "--batch-size", "100"]
    cases = {f"tcp://0.0.0.0:{free_port()}": "is not a loopback address: binding it needs CURVE keys",
             f"tcp://*:{free_port()}": "is not a loopback address: binding it needs CURVE keys",
             f"tcp://[::]:{free_port()}": "is not a loopback address: binding it needs CURVE keys"}
    procs = {address: subprocess.Popen(PY + ["server", "--bind", address, *tiny, "--out", str(tmp_path / str(i))],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, address in enumerate(cases)}
    procs["--keys no-keys"] = subprocess.Popen(
        PY + ["server", "--bind", f"tcp://127.0.0.1:{free_port()}", "--keys", str(tmp_path / "no-keys"), *tiny,
              "--out", str(tmp_path / "missing")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cases["--keys no-keys"] = "missing key file"
    for address, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, (address, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (address, err)
        assert "Traceback" not in out + err
        assert cases[address] in lines[0] and "parsgd keygen" in lines[0], lines[0]
        if address.startswith("tcp://"):  # refused before bind: nothing listens there
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=2).close()


def test_keygen_writes_private_keys_0600_in_a_0700_folder(tmp_path):
    keys = tmp_path / "keys"
    result = CliRunner().invoke(cli, ["keygen", str(keys)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(keys) == 0o700
    for name in ("server", "worker"):
        assert mode(keys / f"{name}.key_secret") == 0o600
        assert "secret-key" in (keys / f"{name}.key_secret").read_text()
        assert "secret-key" not in (keys / f"{name}.key").read_text()
    assert [p.name for p in (keys / "authorized").iterdir()] == ["worker.key"]
    assert zmq.auth.load_certificate(str(keys / "authorized" / "worker.key"))[0] == \
        zmq.auth.load_certificate(str(keys / "worker.key"))[0]


class Stranger(threading.Thread):
    """A DEALER with the given CURVE setup that says HELLO; records its socket events and any reply."""

    def __init__(self, ctx, address, pid, secret=None, public=None, server_key=None):
        super().__init__(daemon=True)
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if secret is not None:
            self.sock.curve_secretkey, self.sock.curve_publickey, self.sock.curve_serverkey = secret, public, server_key
        self.monitor = self.sock.get_monitor_socket()
        self.address, self.pid, self.events, self.reply = address, pid, [], None

    def run(self):
        self.sock.connect(self.address)
        self.sock.sndtimeo = 3000  # a DEALER's send blocks while it has no pipe: the server may drop it first
        try:
            self.sock.send_multipart(hello(self.pid, pid=self.pid))
        except zmq.Again:
            pass  # nothing was sent: the monitor still records how the handshake failed
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if self.monitor.poll(50):
                event = recv_monitor_message(self.monitor)
                self.events.append((zmq.Event(event["event"]), event["value"]))
            if self.reply is None and self.sock.poll(0):
                self.reply = self.sock.recv_multipart()
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)

    def kinds(self) -> set:
        return {kind for kind, _ in self.events}


def test_curve_allowlisted_workers_train_and_strangers_deliver_nothing(tmp_path, oracle):
    keys = tmp_path / "keys"
    assert subprocess.run(PY + ["keygen", str(keys)], capture_output=True).returncode == 0
    worker_public, worker_secret = zmq.auth.load_certificate(str(keys / "worker.key_secret"))
    server_public, _ = zmq.auth.load_certificate(str(keys / "server.key"))
    stranger_public, stranger_secret = zmq.curve_keypair()
    ctx = zmq.Context()
    try:
        with Procs(tmp_path) as p:
            run_dir = tmp_path / "run"
            server, address = p.server(run_dir, 2, *ARGS, "--keys", str(keys))
            workers = [p.worker(address, "--keys", str(keys), *SLOW) for _ in range(2)]
            wait_event(run_dir, lambda e: e["event"] == "join", timeout=60, count=2)

            keyless_worker = p.worker(address, "--connect-timeout", "3")  # a real worker, without --keys
            strangers = {
                "no key": Stranger(ctx, address, FAKE_PID + 1),
                "wrong server key": Stranger(ctx, address, FAKE_PID + 2, worker_secret, worker_public,
                                             zmq.curve_keypair()[0]),
                "key not allowlisted": Stranger(ctx, address, FAKE_PID + 3, stranger_secret, stranger_public,
                                                server_public),
            }
            for s in strangers.values():
                s.start()
            # ZMTP by hand with the NULL mechanism, and plain junk: both hung up on
            null_peer, http = raw_connect(address), raw_connect(address)
            null_peer.sendall(b"\xff" + b"\0" * 8 + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32)
            http.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert read_until_closed(null_peer, 3.0)[0] and read_until_closed(http, 3.0)[0]
            for s in strangers.values():
                s.join()
            assert keyless_worker.wait(30) == 1
            assert "error: no parameter server answered" in keyless_worker.output()
            assert "this worker needs --keys DIR too" in keyless_worker.output()  # the likely cause, named

            assert server.p.poll() is None, "the run ended before the strangers were done: raise --epochs"
            log = events(run_dir)
            # the strangers are done: stop the run (checkpoint), then finish it with fresh allowlisted workers
            server.signal(signal.SIGTERM)
            assert server.wait(15) == 1 and all(w.wait(15) == 0 for w in workers), server.output()[-3000:]
            no_traceback(server, *workers, keyless_worker)
            again, _ = p.server(run_dir, 2, "--resume", str(run_dir), "--keys", str(keys), address=address)
            ends_cleanly(again, *[p.worker(address, "--keys", str(keys)) for _ in range(2)])
    finally:
        ctx.destroy(linger=0)
    for name, s in strangers.items():
        assert s.reply is None, (name, s.reply)
        assert zmq.Event.HANDSHAKE_SUCCEEDED not in s.kinds(), (name, s.events)
    assert zmq.Event.HANDSHAKE_FAILED_PROTOCOL in strangers["no key"].kinds()      # mechanism mismatch
    assert zmq.Event.HANDSHAKE_FAILED_NO_DETAIL in strangers["wrong server key"].kinds()  # HELLO box unreadable
    assert (zmq.Event.HANDSHAKE_FAILED_AUTH, 400) in strangers["key not allowlisted"].events  # ZAP said no
    assert len([e for e in log if e["event"] == "hello"]) == 2  # the two allowlisted workers only
    assert not [e for e in log if e["event"] in ("protocol_error", "quarantine", "stale", "refused", "dead")]
    assert np.max(np.abs(load_params(run_dir) - oracle)) < 1e-8
