"""The messages of range servers (`--servers S`, docs/protocol.md section 15): a range server s >= 1 holds
the key ranges of server s (model/keyranges.py); the coordinator (server 0) registers it, tells it what to
apply, and fetches its parameters; workers pull and push its part of each step directly.

    range server -> coordinator   SHELLO, HEARTBEAT, STATE, LOGS
    coordinator  -> range server  SWELCOME, APPLY, FETCH, FORGET, HEARTBEAT, STOP
    worker       -> range server  ATTACH, PULL, PUSH
    range server -> worker        ATTACHED, PARAMS, ACK, ERROR
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parsgd.ps.protocol.base import Message, register
from parsgd.ps.wire import (BOOL, ID, INT, NAME, PACKED, TIME, ProtocolError, config_map, float_in, ids, int_in)


@register
@dataclass(frozen=True, eq=False)
class ServerHello(Message):
    """A range server registers with the coordinator: its rank s (1..S-1) and the address workers reach it at."""
    package_version: str
    protocol: int
    host: str
    pid: int
    session: int
    rank: int
    address: str
    TYPE = "SHELLO"
    FIELDS = dict(package_version=NAME, protocol=INT, host=NAME, pid=INT, session=ID, rank=int_in(1), address=NAME)


@register
@dataclass(frozen=True, eq=False)
class ServerWelcome(Message):
    """The run for a range server: its config, the step to start at, and its state (params then velocity of
    its ranges, 2 x size elements) at that step."""
    incarnation: int
    session: int
    config: dict
    step: int
    t_server: float
    heartbeat_s: float
    liveness: int
    state: np.ndarray
    TYPE, PAYLOAD, PAYLOAD_REQUIRED = "SWELCOME", "state", True
    FIELDS = dict(incarnation=ID, session=ID, config=config_map, step=INT, t_server=TIME,
                  heartbeat_s=float_in(lo=1e-6), liveness=int_in(1))


@register
@dataclass(frozen=True, eq=False)
class Attach(Message):
    """A worker's first message to a range server: who it is (its coordinator session) and where."""
    incarnation: int
    session: int
    rank: int
    host: str
    TYPE = "ATTACH"
    FIELDS = dict(incarnation=ID, session=ID, rank=INT, host=NAME)


@register
@dataclass(frozen=True, eq=False)
class Attached(Message):
    """The range server's answer: the shared-memory segment it made for a same-host worker, or ""."""
    session: int
    server: int
    shm: str = ""
    TYPE = "ATTACHED"
    FIELDS = dict(session=ID, server=INT, shm=NAME)


@register
@dataclass(frozen=True, eq=False)
class Pull(Message):
    """A worker asks for the range server's parameters for `step` (BSP: served once the range is at step)."""
    incarnation: int
    session: int
    step: int
    TYPE = "PULL"
    FIELDS = dict(incarnation=ID, session=ID, step=INT)


@register
@dataclass(frozen=True, eq=False)
class Params(Message):
    """The range's parameters at `version` (updates applied), for the worker's `step`; in the worker's
    segment when `params` is None."""
    session: int
    step: int
    version: int
    t_send: float
    params: np.ndarray | None
    TYPE, PAYLOAD = "PARAMS", "params"
    FIELDS = dict(session=ID, step=INT, version=INT, t_send=TIME)


@register
@dataclass(frozen=True, eq=False)
class Push(Message):
    """A worker's gradient of shard `shard` of `step`, the range server's part (in its segment's slot
    `shard` when `grad` is None)."""
    incarnation: int
    session: int
    step: int
    shard: int
    grad: np.ndarray | None
    TYPE, PAYLOAD = "PUSH", "grad"
    PAYLOAD_DTYPES = PACKED    # --compress: grad is the encoded bytes (protocol/packed.py)
    FIELDS = dict(incarnation=ID, session=ID, step=INT, shard=INT)


@register
@dataclass(frozen=True, eq=False)
class Ack(Message):
    """The range server holds the worker's part of (step, shard); `finite` False: it has a NaN or Inf and
    was dropped."""
    session: int
    step: int
    shard: int
    finite: bool
    TYPE = "ACK"
    FIELDS = dict(session=ID, step=INT, shard=INT, finite=BOOL)


@register
@dataclass(frozen=True, eq=False)
class Apply(Message):
    """The coordinator accepted `step`: BSP, sessions[s] = whose part of shard s to add (0: an empty
    shard), in shard order; ssp / async, sessions = [the one worker whose batch it was], step = its
    TASK.step. One momentum update at learning rate `lr` follows."""
    incarnation: int
    step: int
    sessions: list
    lr: float
    TYPE = "APPLY"
    FIELDS = dict(incarnation=ID, step=INT, sessions=ids, lr=float_in(lo=0.0))

    def check(self):
        if not self.sessions:
            raise ProtocolError("APPLY: no sessions")


@register
@dataclass(frozen=True, eq=False)
class Fetch(Message):
    """The coordinator asks for the range's parameters (and velocity) once it has applied `step` updates."""
    incarnation: int
    step: int
    velocity: bool
    TYPE = "FETCH"
    FIELDS = dict(incarnation=ID, step=INT, velocity=BOOL)


@register
@dataclass(frozen=True, eq=False)
class State(Message):
    """The range's parameters at `step` (then its velocity, when FETCH asked for it)."""
    incarnation: int
    session: int
    step: int
    velocity: bool
    state: np.ndarray
    TYPE, PAYLOAD, PAYLOAD_REQUIRED = "STATE", "state", True
    FIELDS = dict(incarnation=ID, session=ID, step=INT, velocity=BOOL)


@register
@dataclass(frozen=True, eq=False)
class Forget(Message):
    """A worker session is gone: the range server drops its attachment and its parts."""
    incarnation: int
    session: int
    TYPE = "FORGET"
    FIELDS = dict(incarnation=ID, session=ID)

