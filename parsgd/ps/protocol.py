"""Wire protocol: the message types; with wire.py the only code that knows bytes. Server and worker
speak in message objects (`to_frames` / `decode`).

    python -m pytest tests/test_protocol.py -q

Frame layout of one ZeroMQ multipart message:

    [identity]        ROUTER side only; the caller strips it before `decode`
    header            msgpack map {"v": PROTOCOL_VERSION, "type": "TASK", ...fields}
    [payload]         raw little-endian array bytes; the header then also carries
                      "dtype" ("float32" | "float64") and "n" (element count)

The payload is the numpy array itself in the frame list (send with `send_multipart(frames,
copy=False)`) and is rebuilt with `numpy.frombuffer` on the received buffer, without a copy.
TASK and GRAD carry a payload unless it travels through shared memory; LOGS always carries one.

Decoding validates everything and raises `ProtocolError` (a ValueError) for any input: header
size, msgpack well-formedness, version, type, the exact set of fields, field types and ranges,
frame count, dtype and payload length (checked before `frombuffer`). Encoding runs the same
field checks, so a sender never puts on the wire what a receiver would refuse.

Protocol 3 (this one) added READY.faults (the worker's fault injection, recorded in the run); protocol 2
TASK.batch, HEARTBEAT.busy and .tasks, READY.dataset and READY.data_dtype; versions are compared for
equality. The specification is docs/protocol.md.

Version choice: a header whose `v` differs from PROTOCOL_VERSION raises `VersionMismatch`,
except for HELLO: a foreign-version HELLO is decoded leniently (fields that do not check out
take neutral defaults) into a `Hello` whose `protocol` is the peer's `v`, so the server can
compare `hello.protocol` with PROTOCOL_VERSION and refuse it with an ERROR naming both versions.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import msgpack
import numpy as np

# Re-exported for the server and worker: protocol is the one module they import for wire matters.
from parsgd.ps.wire import (BOOL, DTYPES, HEADER_MAX, ID, INT, MAX_CONFIG_KEYS, MAX_ELEMENTS,  # noqa: F401
                            MAX_LIST, MAX_TEXT, NAME, TEXT, TIME, ProtocolError, VersionMismatch, config_map,
                            float_in, frame_buffer, frames_nbytes, int_in, payload_array, recv_frames, short)

PROTOCOL_VERSION = 3            # 3: READY.faults; 2: TASK.batch, HEARTBEAT.busy/.tasks, READY.dataset, .data_dtype
SPANS = ("serialize", "send", "recv", "deserialize", "compute", "wait", "aggregate", "update")
ERROR_CODES = ("VERSION", "DATA_MISMATCH", "STALE", "BAD_MESSAGE", "BUSY")


class Message:
    """Base of all messages: a frozen dataclass whose fields are listed in FIELDS (+ PAYLOAD)."""
    TYPE: ClassVar[str]
    FIELDS: ClassVar[dict]
    PAYLOAD: ClassVar[str | None] = None      # name of the array field, if any
    PAYLOAD_REQUIRED: ClassVar[bool] = False

    def payload(self) -> np.ndarray | None:
        return getattr(self, self.PAYLOAD) if self.PAYLOAD else None

    def check(self) -> None:
        """Cross-field rules; subclasses extend."""

    def check_payload(self, array: np.ndarray) -> None:
        if array.ndim != 1:
            raise ProtocolError(f"{self.TYPE}.{self.PAYLOAD}: expected a 1-D array")

    def to_frames(self) -> list:
        """[header] or [header, array]; send with copy=False."""
        header = {"v": PROTOCOL_VERSION, "type": self.TYPE}
        for name, check in self.FIELDS.items():
            header[name] = check(f"{self.TYPE}.{name}", getattr(self, name))
        self.check()
        array = self.payload()
        if array is None and self.PAYLOAD_REQUIRED:
            raise ProtocolError(f"{self.TYPE}: {self.PAYLOAD} is required")
        if array is not None:
            if (not isinstance(array, np.ndarray) or array.dtype not in DTYPES.values()
                    or not array.flags.c_contiguous or array.size > MAX_ELEMENTS):
                raise ProtocolError(f"{self.TYPE}.{self.PAYLOAD}: need a C-contiguous "
                                    f"little-endian float32/float64 array of <= {MAX_ELEMENTS}")
            self.check_payload(array)
            header["dtype"], header["n"] = array.dtype.name, int(array.size)
        packed = msgpack.packb(header, use_bin_type=True)
        if len(packed) > HEADER_MAX:
            raise ProtocolError(f"{self.TYPE}: header of {len(packed)} bytes > {HEADER_MAX}")
        return [packed] if array is None else [packed, array if array.ndim == 1 else array.reshape(-1)]

    @classmethod
    def from_frames(cls, frames) -> "Message":
        msg = decode(frames)
        if not isinstance(msg, cls):
            raise ProtocolError(f"expected {cls.TYPE}, got {msg.TYPE}")
        return msg

    @classmethod
    def _from_header(cls, header: dict, frames: list) -> "Message":
        has_payload = cls.PAYLOAD_REQUIRED or (cls.PAYLOAD is not None
                                               and ("dtype" in header or "n" in header))
        expected = {"v", "type", *cls.FIELDS} | ({"dtype", "n"} if has_payload else set())
        if set(header) != expected:
            missing, unknown = expected - set(header), set(header) - expected
            raise ProtocolError(f"{cls.TYPE}: missing fields {sorted(missing)}, "
                                f"unknown fields {short(sorted(map(str, unknown)))}")
        values = {name: check(f"{cls.TYPE}.{name}", header[name]) for name, check in cls.FIELDS.items()}
        n_frames = 2 if has_payload else 1
        if len(frames) != n_frames:
            raise ProtocolError(f"{cls.TYPE}: expected {n_frames} frames, got {len(frames)}")
        if cls.PAYLOAD:
            values[cls.PAYLOAD] = cls._shape(payload_array(cls.TYPE, header, frames[1])) if has_payload else None
        msg = cls(**values)
        msg.check()
        if msg.payload() is not None:
            msg.check_payload(msg.payload())
        return msg

    @staticmethod
    def _shape(array: np.ndarray) -> np.ndarray:
        return array

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    __hash__ = None


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b, equal_nan=True))
    return a == b or (a != a and b != b)      # NaN loss_sum equals itself


@dataclass(frozen=True, eq=False)
class Hello(Message):
    package_version: str
    protocol: int
    host: str
    pid: int
    t_send: float
    session: int
    name: str = ""
    TYPE = "HELLO"
    FIELDS = dict(package_version=NAME, protocol=INT, host=NAME, pid=INT, t_send=TIME,
                  session=ID, name=NAME)

    def check(self):
        if self.protocol != PROTOCOL_VERSION:
            raise ProtocolError(f"HELLO: protocol {self.protocol} != v {PROTOCOL_VERSION}")

    @classmethod
    def _foreign(cls, header: dict, version: int) -> "Hello":
        """A HELLO from another protocol version: keep what checks out so the refusal can name it."""
        values = dict(package_version="", host="", pid=0, t_send=0.0, session=0, name="")
        for name in values:
            try:
                values[name] = cls.FIELDS[name](name, header[name])
            except (KeyError, ProtocolError):
                pass
        return cls(protocol=version, **values)


@dataclass(frozen=True, eq=False)
class Welcome(Message):
    incarnation: int
    session: int
    rank: int
    config: dict
    t_server: float
    heartbeat_s: float
    liveness: int
    shm: str = ""
    TYPE = "WELCOME"
    FIELDS = dict(incarnation=ID, session=ID, rank=INT, config=config_map, t_server=TIME,
                  heartbeat_s=float_in(lo=1e-6), liveness=int_in(1), shm=NAME)


def _dtype_name(where, x):
    if type(x) is not str or x not in DTYPES:
        raise ProtocolError(f"{where}: expected one of {', '.join(DTYPES)}, got {short(x)}")
    return x


@dataclass(frozen=True, eq=False)
class Ready(Message):
    """The worker's data, so the server can name what differs (dataset, rows, dtype, bytes) on a mismatch."""
    incarnation: int
    session: int
    fingerprint: str
    n_train: int
    n_test: int
    shm: bool = False          # the worker attached the shared-memory segment WELCOME offered
    dataset: str = ""          # Dataset.name: "mnist", "fashion-mnist" or "synthetic"
    data_dtype: str = "float32"
    faults: str = ""           # the worker's --faults (fault injection), "" without: recorded in the run's config.json
    TYPE = "READY"
    FIELDS = dict(incarnation=ID, session=ID, fingerprint=NAME, n_train=INT, n_test=INT, shm=BOOL,
                  dataset=NAME, data_dtype=_dtype_name, faults=TEXT)


@dataclass(frozen=True, eq=False)
class Task(Message):
    incarnation: int
    session: int
    step: int
    epoch: int
    shard: int
    lo: int
    hi: int
    batch: int                 # rows in this step's whole batch: the worker scales its row sum by 1/batch
    t_send: float
    params: np.ndarray | None
    TYPE, PAYLOAD = "TASK", "params"
    FIELDS = dict(incarnation=ID, session=ID, step=INT, epoch=INT, shard=INT, lo=INT, hi=INT,
                  batch=int_in(1), t_send=TIME)

    def check(self):
        if not self.lo < self.hi:
            raise ProtocolError(f"TASK: empty row range [{self.lo}, {self.hi})")
        if self.hi - self.lo > self.batch:
            raise ProtocolError(f"TASK: shard [{self.lo}, {self.hi}) is larger than its batch of {self.batch} rows")


@dataclass(frozen=True, eq=False)
class Grad(Message):
    incarnation: int
    session: int
    step: int
    shard: int
    lo: int
    hi: int
    count: int
    loss_sum: float
    correct: int
    compute_s: float
    grad: np.ndarray | None
    TYPE, PAYLOAD = "GRAD", "grad"
    FIELDS = dict(incarnation=ID, session=ID, step=INT, shard=INT, lo=INT, hi=INT, count=INT,
                  loss_sum=float_in(finite=False), correct=INT, compute_s=float_in(lo=0.0))

    def check(self):
        if not (self.lo < self.hi and self.count == self.hi - self.lo and self.correct <= self.count):
            raise ProtocolError(f"GRAD: inconsistent rows [{self.lo}, {self.hi}) "
                                f"count={self.count} correct={self.correct}")


@dataclass(frozen=True, eq=False)
class Heartbeat(Message):
    incarnation: int
    session: int
    busy: bool = False         # worker -> server: it is computing a TASK and reads nothing meanwhile
    tasks: int = 0             # worker -> server: TASKs it has read in this session (0 from the server)
    TYPE = "HEARTBEAT"
    FIELDS = dict(incarnation=ID, session=ID, busy=BOOL, tasks=INT)


@dataclass(frozen=True, eq=False)
class Logs(Message):
    """Worker spans, shape (k, 5): [span_code (index into SPANS), step, t, dur, bytes]."""
    incarnation: int
    session: int
    rank: int
    spans: np.ndarray
    TYPE, PAYLOAD, PAYLOAD_REQUIRED = "LOGS", "spans", True
    FIELDS = dict(incarnation=ID, session=ID, rank=INT)

    @staticmethod
    def _shape(array):
        if array.size % 5:
            raise ProtocolError(f"LOGS: {array.size} elements is not k x 5")
        return array.reshape(-1, 5)

    def check_payload(self, spans):
        if spans.dtype != DTYPES["float64"] or spans.ndim != 2 or spans.shape[1] != 5:
            raise ProtocolError("LOGS.spans: expected a float64 array of shape (k, 5)")
        codes = spans[:, 0]
        if not (np.isfinite(spans).all() and (codes == np.floor(codes)).all()
                and ((codes >= 0) & (codes < len(SPANS))).all()):
            raise ProtocolError("LOGS.spans: non-finite value or span code out of range")


@dataclass(frozen=True, eq=False)
class Stop(Message):
    incarnation: int
    reason: str
    TYPE = "STOP"
    FIELDS = dict(incarnation=ID, reason=TEXT)


@dataclass(frozen=True, eq=False)
class Error(Message):
    code: str                  # one of ERROR_CODES
    message: str
    TYPE = "ERROR"
    FIELDS = dict(code=NAME, message=TEXT)

    def check(self):
        if self.code not in ERROR_CODES:
            raise ProtocolError(f"ERROR: unknown code {short(self.code)}; expected one of {', '.join(ERROR_CODES)}")


TYPES = {cls.TYPE: cls for cls in (Hello, Welcome, Ready, Task, Grad, Heartbeat, Logs, Stop, Error)}


def _reject_ext(code, data):
    raise ProtocolError(f"msgpack ext type {code} not allowed")


def decode(frames) -> Message:
    """Frames (identity already stripped) -> Message; anything wrong raises ProtocolError."""
    if not isinstance(frames, (list, tuple)) or not 1 <= len(frames) <= 2:
        raise ProtocolError("expected 1 or 2 frames (header [+ payload])")
    raw = frame_buffer("header", frames[0])
    if raw.nbytes > HEADER_MAX:
        raise ProtocolError(f"header of {raw.nbytes} bytes > {HEADER_MAX}")
    try:   # this msgpack derives max_*_len from len(raw); the explicit caps are tighter still
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True,
                                 ext_hook=_reject_ext, max_array_len=MAX_LIST,
                                 max_map_len=MAX_CONFIG_KEYS, max_ext_len=0)
    except ProtocolError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"bad msgpack header: {type(exc).__name__}: {short(str(exc))}") from None
    if type(header) is not dict:
        raise ProtocolError(f"header must be a map, got {type(header).__name__}")
    version, kind = header.get("v"), header.get("type")
    if type(kind) is not str or kind not in TYPES:
        raise ProtocolError(f"unknown message type {short(kind)}")
    if type(version) is not int:
        raise ProtocolError(f"bad protocol version {short(version)}")
    if version != PROTOCOL_VERSION:
        if kind == "HELLO":
            return Hello._foreign(header, version)
        raise VersionMismatch(f"{kind} speaks protocol {short(version)}, "
                              f"this side speaks {PROTOCOL_VERSION}", version)
    return TYPES[kind]._from_header(header, list(frames))
