"""The messages between the coordinator (server 0) and its workers: HELLO ... ERROR (docs/protocol.md
sections 4.1-4.9). Each is registered in base.TYPES; decoding is base.decode.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field

import numpy as np

from parsgd.ps.protocol.base import DTYPES, PROTOCOL_VERSION, SPANS, ERROR_CODES, Message, register
from parsgd.ps.wire import (BOOL, ID, INT, MAX_SERVERS, NAME, PACKED, TEXT, TIME, ProtocolError, config_map, float_in,
                            int_in, ints, names, short)

SPAN_COLUMNS = 6               # LOGS rows: code, step, t, dur, bytes, server (-1: none)


@register
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


@register
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
    servers: list = dataclass_field(default_factory=list)  # the addresses of range servers 1..S-1 (S = config.servers)
    TYPE = "WELCOME"
    FIELDS = dict(incarnation=ID, session=ID, rank=INT, config=config_map, t_server=TIME,
                  heartbeat_s=float_in(lo=1e-6), liveness=int_in(1), shm=NAME, servers=names)


def _dtype_name(where, x):
    if type(x) is not str or x not in DTYPES:
        raise ProtocolError(f"{where}: expected one of {', '.join(DTYPES)}, got {short(x)}")
    return x


@register
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


@register
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


@register
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
    finite: bool = True        # every range server took its part as finite (S > 1; always true for S = 1)
    versions: list = dataclass_field(default_factory=list)  # versions of ranges [0 if pulled,] 1..S-1 it used
    ef_seq: int = -1           # --compress with error feedback: this gradient's place in the session's residual sequence
    TYPE, PAYLOAD = "GRAD", "grad"
    PAYLOAD_DTYPES = PACKED    # --compress: grad is the encoded bytes (protocol/packed.py)
    FIELDS = dict(incarnation=ID, session=ID, step=INT, shard=INT, lo=INT, hi=INT, count=INT,
                  loss_sum=float_in(finite=False), correct=INT, compute_s=float_in(lo=0.0), finite=BOOL,
                  versions=ints, ef_seq=int_in(-1))

    def check(self):
        if not (self.lo < self.hi and self.count == self.hi - self.lo and self.correct <= self.count):
            raise ProtocolError(f"GRAD: inconsistent rows [{self.lo}, {self.hi}) "
                                f"count={self.count} correct={self.correct}")


@register
@dataclass(frozen=True, eq=False)
class Heartbeat(Message):
    incarnation: int
    session: int
    busy: bool = False         # worker -> server: it is computing a TASK and reads nothing meanwhile
    tasks: int = 0             # worker -> server: TASKs it has read in this session (0 from the server)
    TYPE = "HEARTBEAT"
    FIELDS = dict(incarnation=ID, session=ID, busy=BOOL, tasks=INT)


@register
@dataclass(frozen=True, eq=False)
class Logs(Message):
    """Spans of a worker or a range server, shape (k, SPAN_COLUMNS): [span_code (index into SPANS), step,
    t, dur, bytes, server (the parameter server a send / recv talked to; -1: none)]."""
    incarnation: int
    session: int
    rank: int
    spans: np.ndarray
    TYPE, PAYLOAD, PAYLOAD_REQUIRED = "LOGS", "spans", True
    FIELDS = dict(incarnation=ID, session=ID, rank=INT)

    @staticmethod
    def _shape(array):
        if array.size % SPAN_COLUMNS:
            raise ProtocolError(f"LOGS: {array.size} elements is not k x {SPAN_COLUMNS}")
        return array.reshape(-1, SPAN_COLUMNS)

    def check_payload(self, spans):
        if spans.dtype != DTYPES["float64"] or spans.ndim != 2 or spans.shape[1] != SPAN_COLUMNS:
            raise ProtocolError(f"LOGS.spans: expected a float64 array of shape (k, {SPAN_COLUMNS})")
        codes, servers = spans[:, 0], spans[:, 5]
        if not (np.isfinite(spans).all() and (codes == np.floor(codes)).all()
                and ((codes >= 0) & (codes < len(SPANS))).all()
                and (servers == np.floor(servers)).all() and ((servers >= -1) & (servers < MAX_SERVERS)).all()):
            raise ProtocolError("LOGS.spans: non-finite value, or a span code or server out of range")


@register
@dataclass(frozen=True, eq=False)
class Stop(Message):
    incarnation: int
    reason: str
    TYPE = "STOP"
    FIELDS = dict(incarnation=ID, reason=TEXT)


@register
@dataclass(frozen=True, eq=False)
class Error(Message):
    code: str                  # one of ERROR_CODES
    message: str
    answers: str = ""          # the TYPE of the message it answers ("GRAD", "READY", ...), "" for none
    TYPE = "ERROR"
    FIELDS = dict(code=NAME, message=TEXT, answers=NAME)

    def check(self):
        if self.code not in ERROR_CODES:
            raise ProtocolError(f"ERROR: unknown code {short(self.code)}; expected one of {', '.join(ERROR_CODES)}")
