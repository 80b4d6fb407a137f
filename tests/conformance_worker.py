"""A parsgd worker written from docs/protocol.md alone: numpy, pyzmq, msgpack and the standard library,
no parsgd module. tests/test_conformance.py trains it against a real `parsgd server`.

    python tests/conformance_worker.py --connect tcp://127.0.0.1:5555 --package-version 0.1.0

"§" refers to a section of docs/protocol.md. Besides following the specification it can break one
rule on purpose (HELLO_BREAKS, READY_BREAKS, GRAD_BREAKS, `scale="shard"`), so the test can show
what the server refuses, and what it cannot see.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import random
import socket
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

VERSION = 5                                          # §9 the protocol version, `v` of every header
DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}   # §3 payload types
SPANS = ("serialize", "send", "recv", "deserialize", "compute", "wait", "aggregate", "update")  # §4.8
SPAN_COLUMNS = 6                                     # §4.8 span_code, step, t, dur, bytes, server
HELLO_RETRY_S = 1.0
HELLO_BREAKS = ("package_version", "v1", "missing_session")
READY_BREAKS = ("fingerprint", "n_train", "dataset", "data_dtype")
GRAD_BREAKS = ("missing_field", "payload_length", "payload_size", "payload_dtype", "stale_incarnation",
               "wrong_type", "wrong_rows", "stale_heartbeat")


class Refused(Exception):
    """The server answered ERROR (§8); `code` is its code."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


# -- §12.3 and §12.4: NumPy's SeedSequence, PCG64 and bounded integers, written out ----------------
M32, M64, M128 = (1 << 32) - 1, (1 << 64) - 1, (1 << 128) - 1


def seed_words(entropy: list[int]) -> list[int]:
    """SeedSequence(entropy).generate_state(4, uint64), for non-negative integers."""
    words = []
    for value in entropy:                      # each integer as 32-bit words, least significant first
        while True:
            words.append(value & M32)
            value >>= 32
            if not value:
                break
    hash_const = [0x43B0D7E5]

    def hashmix(value):
        value = (value ^ hash_const[0]) & M32
        hash_const[0] = (hash_const[0] * 0x931E8875) & M32
        value = (value * hash_const[0]) & M32
        return value ^ (value >> 16)

    def mix(x, y):
        result = (0xCA01F9DD * x - 0x4973F715 * y) & M32
        return result ^ (result >> 16)

    pool = [hashmix(words[i] if i < len(words) else 0) for i in range(4)]
    for src in range(4):
        for dst in range(4):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(4, len(words)):
        for dst in range(4):
            pool[dst] = mix(pool[dst], hashmix(words[src]))
    out, hash_b = [], 0x8B51F9DD
    for i in range(8):
        value = pool[i % 4] ^ hash_b
        hash_b = (hash_b * 0x58F38DED) & M32
        value = (value * hash_b) & M32
        out.append(value ^ (value >> 16))
    return [out[2 * i] | (out[2 * i + 1] << 32) for i in range(4)]


class PCG64:
    """PCG XSL-RR 128/64 seeded as numpy.random.default_rng(entropy) seeds it."""
    MULT = 0x2360ED051FC65DA44385DF649FCCF645

    def __init__(self, entropy: list[int]):
        s = seed_words(entropy)
        self.inc = (((s[2] << 64) | s[3]) << 1 | 1) & M128
        self.state = 0
        self._step()
        self.state = (self.state + ((s[0] << 64) | s[1])) & M128
        self._step()
        self.half: int | None = None

    def _step(self):
        self.state = (self.state * self.MULT + self.inc) & M128

    def next64(self) -> int:
        self._step()
        x, rot = ((self.state >> 64) ^ self.state) & M64, self.state >> 122
        return ((x >> rot) | (x << ((64 - rot) & 63))) & M64

    def next32(self) -> int:
        if self.half is not None:
            value, self.half = self.half, None
            return value
        value = self.next64()
        self.half = value >> 32
        return value & M32


def masked_interval(g: PCG64, top: int) -> int:
    """A uniform integer in [0, top] by masked rejection (§12.3)."""
    if top == 0:
        return 0
    mask = top
    for shift in (1, 2, 4, 8, 16, 32):
        mask |= mask >> shift
    while True:
        value = (g.next32() if top <= M32 else g.next64()) & mask
        if value <= top:
            return value


def lemire(g: PCG64, top: int) -> int:
    """A uniform integer in [0, top] by Lemire's multiply-and-reject (§12.4)."""
    if top == 0:
        return 0
    bits, draw = (32, g.next32) if top <= M32 else (64, g.next64)
    mask = (1 << bits) - 1
    if top == mask:
        return draw()
    excl = top + 1
    m = draw() * excl
    if (m & mask) < excl:
        threshold = (mask - top) % excl
        while (m & mask) < threshold:
            m = draw() * excl
    return m >> bits


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """§12.3: the epoch's permutation of 0..n-1 (Fisher-Yates from the end)."""
    g, order = PCG64([seed, epoch]), list(range(n))
    for i in range(n - 1, 0, -1):
        j = masked_interval(g, i)
        order[i], order[j] = order[j], order[i]
    return np.array(order, dtype=np.int64)


def subsample(n: int, k: int, seed: int) -> np.ndarray:
    """§12.4: the sorted training rows kept by --num-samples k out of n."""
    g = PCG64([seed, 0xDA7A, 1])
    if n > 10_000 and k > n // 50:           # tail shuffle
        rows = list(range(n))
        for i in range(n - 1, max(n - k, 1) - 1, -1):
            j = lemire(g, i)
            rows[i], rows[j] = rows[j], rows[i]
        return np.array(sorted(rows[n - k:]), dtype=np.int64)
    chosen: set[int] = set()                  # Floyd's algorithm
    for j in range(n - k, n):
        value = lemire(g, j)
        chosen.add(j if value in chosen else value)
    return np.array(sorted(chosen), dtype=np.int64)


# -- §12.1 and §12.2: the data -----------------------------------------------------------------------
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data[:3] != b"\0\0\x08":
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_set(folders) -> Path | None:
    def file(folder, stem):
        return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
    return next((f for f in map(Path, folders) if all(file(f, s) for s in STEMS)), None)


def load_data(config: dict, data_dir: str | None = None) -> dict:
    """§12.1: name, x_train, y_train, x_test, y_test of the run's IDX dataset (no synthetic, no download)."""
    root = data_dir or config["data_dir"]
    if root is None:
        cache = os.environ.get("XDG_CACHE_HOME")
        root = os.environ.get("PARSGD_DATA_DIR") or str(Path(cache or Path.home() / ".cache") / "parsgd")
    root = Path(root).expanduser()
    places = {"mnist": [root / "mnist", root], "fashion-mnist": [root / "fashion-mnist",
                                                                  Path("/usr/share/datasets/fashion-mnist")]}
    wanted = ["mnist", "fashion-mnist"] if config["dataset"] == "auto" else [config["dataset"]]
    for name in wanted:
        folder = find_set(places.get(name, []))
        if folder:
            break
    else:
        raise RuntimeError(f"this worker reads IDX files only: no {config['dataset']} set under {root}")

    def read(stem):
        return read_idx(next(p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()))
    dtype = DTYPES[config["dtype"]]
    x_train, y_train = read(STEMS[0]).reshape(-1, 784), read(STEMS[1]).astype("<i8")
    x_test, y_test = read(STEMS[2]).reshape(-1, 784), read(STEMS[3]).astype("<i8")
    if config["num_samples"] is not None:
        rows = subsample(len(y_train), config["num_samples"], config["seed"])
        x_train, y_train = x_train[rows], y_train[rows]
    return {"name": name, "x_train": np.divide(x_train, 255, dtype=dtype), "y_train": y_train,
            "x_test": np.divide(x_test, 255, dtype=dtype), "y_test": y_test}


def fingerprint(data: dict) -> str:
    """§12.5."""
    digest = hashlib.sha256(data["name"].encode())
    for key in ("x_train", "y_train", "x_test", "y_test"):
        array = data[key]
        dims = [str(d) for d in array.shape]
        shape = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
        digest.update(f"|{shape}|{array.dtype.str}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


# -- §11: the model ----------------------------------------------------------------------------------
def layer_views(flat: np.ndarray, sizes) -> list[tuple[np.ndarray, np.ndarray]]:
    """§11.1: W (fan_in, fan_out) row-major, then b (fan_out,), layer after layer."""
    views, at = [], 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        w = flat[at:at + fan_in * fan_out].reshape(fan_in, fan_out)
        at += fan_in * fan_out
        views.append((w, flat[at:at + fan_out]))
        at += fan_out
    assert at == flat.size, "the parameter vector does not match config.hidden"
    return views


def loss_and_grad(params, sizes, x, y, scale: float):
    """§11.2: (scale x the gradient of the summed row losses, loss_sum, correct)."""
    layers = layer_views(params, sizes)
    acts = [x]
    for i, (w, b) in enumerate(layers):
        z = acts[-1] @ w + b
        acts.append(np.maximum(z, 0) if i < len(layers) - 1 else z)
    logits, rows = acts[-1], np.arange(len(y))
    correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss_sum = float(-logp[rows, y].sum())
    dz = np.exp(logp)
    dz[rows, y] -= 1
    dz *= scale
    grad = np.empty_like(params)
    grads = layer_views(grad, sizes)
    for i in range(len(layers) - 1, -1, -1):
        grads[i][0][...] = acts[i].T @ dz
        grads[i][1][...] = dz.sum(axis=0)
        if i:
            dz = (dz @ layers[i][0].T) * (acts[i] > 0)
    return grad, loss_sum, correct


# -- the worker -------------------------------------------------------------------------------------
def key_ranges(sizes, dtype: str, servers: int, shard_by: str) -> list[list[tuple[int, int]]]:
    """§15.1: the (lo, hi) ranges of each server's part of the flat vector."""
    spans, at = [], 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        spans.append((at, at + fan_in * fan_out + fan_out))
        at += fan_in * fan_out + fan_out
    n = at
    if shard_by == "layer":
        owned, load = [[] for _ in range(servers)], [0] * servers
        for lo, hi in sorted(spans, key=lambda r: (r[0] - r[1], r[0])):   # biggest first, then the earlier
            s = min(range(servers), key=lambda k: (load[k], k))           # the fewest values, then the lowest rank
            owned[s].append((lo, hi))
            load[s] += hi - lo
        return [sorted(rs) for rs in owned]
    align = 64 // DTYPES[dtype].itemsize
    chunk = -(-(-(-n // servers)) // align) * align
    return [[(s * chunk, n if s == servers - 1 else min(n, (s + 1) * chunk))] for s in range(servers)]


class Parts:
    """§15.3: a worker's links to every server's part (server 0 through a data socket, 1..S-1 through one
    DEALER each); pull the parts of a step, push the parts of a gradient, gather the ACKs."""

    def __init__(self, worker, addresses: list[str]):
        cfg = worker.config
        self.w, self.ranges = worker, key_ranges(worker.sizes, cfg["dtype"], cfg["servers"], cfg["shard_by"])
        self.socks = {}
        for r, address in enumerate([worker.connect, *addresses]):
            sock = worker.ctx.socket(zmq.DEALER)
            sock.linger, sock.sndtimeo = 0, int(worker.timeout_s * 1000)
            sock.connect(address)
            self.socks[r] = sock
        for r in range(1, len(self.socks)):
            self._send(r, {"type": "ATTACH", "incarnation": worker.incarnation, "session": worker.session,
                           "rank": worker.rank, "host": "conformance"})   # never on a server's host: no segment
        self._gather("ATTACHED", range(1, len(self.socks)))

    def _send(self, r: int, header: dict, payload=None) -> None:
        header = {"v": VERSION, **header}
        frames = [msgpack.packb(header | ({"dtype": payload.dtype.name, "n": int(payload.size)}
                                          if payload is not None else {}), use_bin_type=True)]
        self.socks[r].send_multipart(frames + ([np.ascontiguousarray(payload).tobytes()] if payload is not None else []))

    def _gather(self, kind: str, ranks) -> dict[int, tuple[dict, np.ndarray | None]]:
        got, deadline = {}, time.monotonic() + self.w.timeout_s
        ranks = set(ranks)
        while ranks - set(got):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {kind} from servers {sorted(ranks - set(got))}")
            for r in sorted(ranks - set(got)):
                if self.socks[r].poll(10):
                    frames = self.socks[r].recv_multipart()
                    header = msgpack.unpackb(frames[0], raw=False)
                    if header["type"] == "ERROR":
                        raise Refused(header["code"], header["message"])
                    if header["type"] == kind:
                        payload = np.frombuffer(frames[1], DTYPES[header["dtype"]]) if len(frames) > 1 else None
                        got[r] = (header, payload)
        return got

    def part(self, flat: np.ndarray, r: int) -> np.ndarray:
        return np.concatenate([flat[lo:hi] for lo, hi in self.ranges[r]])

    def pull(self, step: int, n: int, dtype) -> tuple[np.ndarray, list[int]]:
        """The whole vector of `step` from every server's PARAMS, and the versions of servers 0..S-1 (§4.5)."""
        for r in self.socks:
            self._send(r, {"type": "PULL", "incarnation": self.w.incarnation, "session": self.w.session, "step": step})
        got = self._gather("PARAMS", self.socks)
        flat = np.empty(n, dtype)
        for r, (_, payload) in got.items():
            at = 0
            for lo, hi in self.ranges[r]:
                flat[lo:hi] = payload[at:at + hi - lo]
                at += hi - lo
        return flat, [got[r][0]["version"] for r in sorted(got)]

    def push(self, step: int, shard: int, grad: np.ndarray) -> bool:
        """Server 0's part on the main socket (before the GRAD), the others to their servers; True when
        every range server ACKed its part as finite."""
        head = {"type": "PUSH", "incarnation": self.w.incarnation, "session": self.w.session, "step": step,
                "shard": shard}
        self.w.send(head, self.part(grad, 0))
        for r in range(1, len(self.socks)):
            self._send(r, head, self.part(grad, r))
        return all(h["finite"] for h, _ in self._gather("ACK", range(1, len(self.socks))).values())

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close(linger=0)


class Worker:
    """Registers (§5.1), computes TASKs (§5.2), heartbeats (§5.3), leaves on STOP (§5.4).

    `grad_breaks` maps a step to one of GRAD_BREAKS: at that step the rule is broken once, the
    server's answer (or silence) is recorded in `errors`, and the right GRAD follows. `scale="shard"`
    divides by the shard's rows instead of TASK.batch: a wrong gradient the server cannot see.
    """

    def __init__(self, connect: str, package_version: str, name: str = "conformance", data_dir=None,
                 grad_breaks=None, scale: str = "batch", timeout_s: float = 30.0):
        self.connect, self.package_version, self.name, self.data_dir = connect, package_version, name, data_dir
        self.grad_breaks, self.scale, self.timeout_s = dict(grad_breaks or {}), scale, timeout_s
        self.ctx = zmq.Context()
        self.sock = None
        self.t0, self.offset = time.perf_counter(), 0.0
        self.data = self.data_key = self.fingerprint = None
        self.errors: list[tuple[int, str, str]] = []     # (step, code or "-", message) of deliberate breaks
        self.spans, self.shipped, self.shipped_at, self.tasks = [], 0, 0.0, 0
        self.orders: dict[int, np.ndarray] = {}
        self.parts: Parts | None = None

    def now(self) -> float:
        return time.perf_counter() - self.t0 + self.offset

    # -- frames (§3) ------------------------------------------------------------------------------
    def send(self, header: dict, payload: np.ndarray | None = None, v: int = VERSION) -> None:
        header = {"v": v, **header}
        if payload is not None:
            header |= {"dtype": payload.dtype.name, "n": int(payload.size)}
        frames = [msgpack.packb(header, use_bin_type=True)]
        if payload is not None:
            frames.append(np.ascontiguousarray(payload, payload.dtype.newbyteorder("<")).tobytes())
        self.sock.send_multipart(frames)
        self.last_sent = time.monotonic()

    def recv(self, timeout_s: float):
        """(header, payload or None), or None after timeout_s."""
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        frames = self.sock.recv_multipart()
        header = msgpack.unpackb(frames[0], raw=False)
        if header.get("v") != VERSION:
            raise RuntimeError(f"the server speaks protocol {header.get('v')}")
        payload = None
        if "dtype" in header:
            dtype = DTYPES[header["dtype"]]
            if len(frames) != 2 or len(frames[1]) != header["n"] * dtype.itemsize:
                raise RuntimeError(f"{header['type']}: payload does not match its header")
            payload = np.frombuffer(frames[1], dtype)
        self.last_heard = time.monotonic()
        return header, payload

    def _new_socket(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.sndtimeo = int(self.timeout_s * 1000)  # a send never hangs: zmq.Again after timeout_s
        self.sock.connect(self.connect)

    # -- registration (§5.1) ----------------------------------------------------------------------------
    def register(self, hello_break: str | None = None, ready_break: str | None = None) -> None:
        """HELLO until WELCOME (raises Refused on ERROR), load the data, READY.

        With a ready_break, waits for the ERROR that must follow and raises it as Refused.
        """
        deadline = time.monotonic() + self.timeout_s
        while True:
            self._new_socket()                  # Lazy Pirate: a fresh socket, a fresh session
            self.session = random.SystemRandom().getrandbits(62) + 1
            hello = {"type": "HELLO", "package_version": self.package_version, "protocol": VERSION,
                     "host": socket.gethostname(), "pid": os.getpid(), "t_send": self.now(),
                     "session": self.session, "name": self.name}
            v = VERSION
            if hello_break == "package_version":
                hello["package_version"] = "0.0.0+conformance"
            elif hello_break == "v1":
                v = hello["protocol"] = 1
            elif hello_break == "missing_session":
                del hello["session"]
            t_sent = self.now()
            self.send(hello, v=v)
            reply = self.recv(HELLO_RETRY_S)
            if reply and reply[0]["type"] == "ERROR":
                raise Refused(reply[0]["code"], reply[0]["message"])
            if reply and reply[0]["type"] == "WELCOME" and reply[0]["session"] == self.session:
                welcome = reply[0]
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no WELCOME from {self.connect} within {self.timeout_s} s")
        self.offset += welcome["t_server"] - (t_sent + self.now()) / 2      # §10: the server's clock
        self.incarnation, self.rank, self.config = welcome["incarnation"], welcome["rank"], welcome["config"]
        self.heartbeat_s, self.liveness = welcome["heartbeat_s"], welcome["liveness"]
        cfg = self.config
        if cfg.get("overlap", "none") != "none":   # §16: not implemented here, so refused
            raise RuntimeError(f"this worker implements --overlap none only, the server runs {cfg['overlap']}")
        key = (cfg["dataset"], cfg["data_dir"], cfg["num_samples"], cfg["seed"], cfg["dtype"])
        if key != self.data_key:
            self.data, self.data_key, self.orders = load_data(cfg, self.data_dir), key, {}
            self.fingerprint = fingerprint(self.data)
        self.sizes = (784, *cfg["hidden"], 10)
        ready = {"type": "READY", "incarnation": self.incarnation, "session": self.session,
                 "fingerprint": self.fingerprint, "n_train": len(self.data["y_train"]),
                 "n_test": len(self.data["y_test"]), "shm": False,   # never attaches WELCOME.shm (§13)
                 "dataset": self.data["name"], "data_dtype": cfg["dtype"], "faults": ""}  # no fault injection
        if ready_break == "fingerprint":
            ready["fingerprint"] = "0" * 16 if self.fingerprint != "0" * 16 else "1" * 16
        elif ready_break == "n_train":
            ready["n_train"] += 1
        elif ready_break == "dataset":
            ready["dataset"] = "fashion-mnist" if self.data["name"] == "mnist" else "mnist"
        elif ready_break == "data_dtype":
            ready["data_dtype"] = "float32" if cfg["dtype"] == "float64" else "float64"
        self.send(ready)
        if getattr(self, "parts", None) is not None:
            self.parts.close()
        self.parts = Parts(self, welcome["servers"]) if welcome["servers"] else None   # §15.3
        if ready_break:
            reply = self._await_error(5.0)
            if reply is not None:
                raise Refused(reply["code"], reply["message"])

    def _await_error(self, timeout_s: float) -> dict | None:
        """The next ERROR within timeout_s (pings and other messages are read and dropped), else None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reply = self.recv(max(0.0, deadline - time.monotonic()))
            if reply and reply[0]["type"] == "ERROR":
                return reply[0]
        return None

    # -- work (§5.2 - §5.4) ---------------------------------------------------------------------------------
    def run(self) -> int:
        """Register and work until STOP; register again after ERROR STALE or a silent server. Returns
        the number of TASKs answered."""
        try:
            while True:
                self.register()
                if self._work():
                    return self.tasks
        finally:
            self.close()

    def _work(self) -> bool:
        """True after STOP; False when this session is stale or the server went silent."""
        self.last_heard = self.last_sent = time.monotonic()
        self.tasks_read = 0                         # HEARTBEAT.tasks: TASKs read in this session
        silent_limit = self.heartbeat_s * self.liveness
        while True:
            if time.monotonic() - self.last_sent >= self.heartbeat_s:
                self._heartbeat(busy=False)
            reply = self.recv(min(self.heartbeat_s, 0.25))
            if reply is None:
                if time.monotonic() - self.last_heard > silent_limit:
                    return False
                continue
            header, payload = reply
            kind = header["type"]
            if kind == "TASK" and (header["incarnation"], header["session"]) == (self.incarnation, self.session):
                self.tasks_read += 1
                self._task(header, payload, self.now())
            elif kind == "STOP" and header["incarnation"] == self.incarnation:
                self._ship_logs()
                self._send_logs(np.zeros((0, SPAN_COLUMNS)))     # the empty chunk: this worker leaves
                return True
            elif kind == "ERROR":
                if header["code"] == "STALE":
                    return False
                raise Refused(header["code"], header["message"])
            if time.monotonic() - self.shipped_at >= 1.0:
                self._ship_logs()

    def _heartbeat(self, busy: bool, session: int | None = None) -> None:
        self.send({"type": "HEARTBEAT", "incarnation": self.incarnation,
                   "session": self.session if session is None else session, "busy": busy,
                   "tasks": getattr(self, "tasks_read", 0)})

    def _task(self, task: dict, params, received: float) -> None:
        cfg = self.config
        versions = []
        if self.parts is not None:            # §15.3: every part is pulled, server 0's too
            params, versions = self.parts.pull(task["step"], sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:])),
                                               DTYPES[cfg["dtype"]])
        if params is None:
            raise RuntimeError("TASK without parameters: this worker never attaches shared memory")
        params = params.astype(DTYPES[cfg["dtype"]], copy=False)
        t = self.now()
        order = self.orders.get(task["epoch"])
        if order is None:                      # §12.3, epochs counted from 0 on the wire
            self.orders = {task["epoch"]: epoch_order(len(self.data["y_train"]), cfg["seed"], task["epoch"])}
            order = self.orders[task["epoch"]]
        idx = order[task["lo"]:task["hi"]]
        scale = 1.0 / (task["batch"] if self.scale == "batch" else idx.size)      # §11.3
        grad, loss_sum, correct = loss_and_grad(params, self.sizes, self.data["x_train"][idx],
                                                self.data["y_train"][idx], scale)
        compute_s = self.now() - t
        header = {"type": "GRAD", "incarnation": self.incarnation, "session": self.session, "step": task["step"],
                  "shard": task["shard"], "lo": task["lo"], "hi": task["hi"], "count": int(idx.size),
                  "loss_sum": loss_sum, "correct": correct, "compute_s": compute_s,
                  "finite": True, "versions": [],  # one server: no range servers to report on (§15)
                  "ef_seq": -1}                     # §17: this worker does not compress (config.compress none)
        if self.parts is not None:            # §15.3: the parts first, the GRAD (no payload) once ACKed
            header["finite"] = self.parts.push(task["step"], task["shard"], grad)
            header["versions"] = versions if cfg["consistency"] != "bsp" else []
            grad = None
        brk = self.grad_breaks.pop(task["step"], None)
        if brk is not None:
            self._break(brk, task, header, grad)
        t_send = self.now()
        self.send(header, grad)
        self.spans += [(SPANS.index("recv"), task["step"], received, 0.0, 0, 0),       # from server 0
                       (SPANS.index("compute"), task["step"], t, compute_s, 0, -1),     # no server
                       (SPANS.index("send"), task["step"], t_send, self.now() - t_send, 0, 0)]
        self.tasks += 1

    def _break(self, brk: str, task: dict, header: dict, grad: np.ndarray) -> None:
        """Send one message that breaks rule `brk`, then record the server's answer (§8)."""
        if brk == "missing_field":
            self.send({k: v for k, v in header.items() if k != "compute_s"}, grad)
        elif brk == "payload_length":           # the frame is one element shorter than `n` says
            h = {"v": VERSION, **header, "dtype": grad.dtype.name, "n": int(grad.size)}
            self.sock.send_multipart([msgpack.packb(h, use_bin_type=True), grad[:-1].tobytes()])
        elif brk == "payload_size":              # consistent frame, but not the model's length
            self.send(header, grad[:-1])
        elif brk == "payload_dtype":             # consistent frame, but not the run's dtype
            self.send(header, grad.astype("<f4" if grad.dtype == np.float64 else "<f8"))
        elif brk == "stale_incarnation":
            self.send({**header, "incarnation": self.incarnation ^ 1}, grad)
        elif brk == "wrong_type":                # a TASK is the server's to send
            self.send({**task, "type": "TASK"}, grad)
        elif brk == "wrong_rows":                # rows of the current step it was not given (§4.5)
            self.send({**header, "lo": header["lo"] + 1, "count": header["count"] - 1}, grad)
        elif brk == "stale_heartbeat":            # answered by silence (§8)
            self._heartbeat(busy=True, session=self.session ^ 1)
        else:
            raise ValueError(brk)
        reply = self._await_error(0.5 if brk == "stale_heartbeat" else 5.0)
        self.errors.append((task["step"], reply["code"] if reply else "-", reply["message"] if reply else ""))

    # -- LOGS (§4.8) ------------------------------------------------------------------------------------
    def _send_logs(self, spans: np.ndarray) -> None:
        self.send({"type": "LOGS", "incarnation": self.incarnation, "session": self.session, "rank": self.rank},
                  np.ascontiguousarray(spans, "<f8").reshape(-1))

    def _ship_logs(self) -> None:
        rows = np.array(self.spans[self.shipped:], dtype="<f8").reshape(-1, SPAN_COLUMNS)
        limit = max(1, self._n_params() * DTYPES[self.config["dtype"]].itemsize // 48)   # a chunk fits a message
        for lo in range(0, len(rows), limit):
            self._send_logs(rows[lo:lo + limit])
        self.shipped, self.shipped_at = len(self.spans), time.monotonic()

    def _n_params(self) -> int:
        return sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    def close(self) -> None:
        if getattr(self, "parts", None) is not None:
            self.parts.close()
        if self.sock is not None:
            self.sock.close(linger=2000)         # the last LOGS must leave
        self.ctx.term()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", default="tcp://127.0.0.1:5555")
    parser.add_argument("--package-version", required=True, help="the server's `parsgd --version`")
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    try:
        tasks = Worker(args.connect, args.package_version, data_dir=args.data_dir).run()
    except (Refused, TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"stopped by the server after {tasks} tasks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
