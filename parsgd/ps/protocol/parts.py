"""PART: one contiguous range of a step's parameters or of a shard's gradient (--overlap layer / bucket,
docs/protocol.md section 16). Registered in base.TYPES; decoding is base.decode.

    worker -> any server   PART: elements [lo, hi) of its gradient of (step, shard), in that server's own
                           vector (model/keyranges.py: its ranges one after the other); the GRAD (server 0)
                           or PUSH (range server) that ends the shard then carries no payload
    server 0 -> worker     PART: elements [lo, hi) of the parameters of `step`, after a TASK without payload
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parsgd.ps.protocol.base import Message, register
from parsgd.ps.wire import ID, INT, ProtocolError


@register
@dataclass(frozen=True, eq=False)
class Part(Message):
    """Elements [lo, hi) of a vector (hi - lo of them in `values`): a gradient part of (step, shard), or the
    parameters of `step` for the TASK of shard `shard`."""
    incarnation: int
    session: int
    step: int
    shard: int
    lo: int
    hi: int
    values: np.ndarray
    TYPE, PAYLOAD, PAYLOAD_REQUIRED = "PART", "values", True
    FIELDS = dict(incarnation=ID, session=ID, step=INT, shard=INT, lo=INT, hi=INT)

    def check(self):
        if not 0 <= self.lo < self.hi:
            raise ProtocolError(f"PART: empty or negative range [{self.lo}, {self.hi})")

    def check_payload(self, array: np.ndarray) -> None:
        super().check_payload(array)
        if array.size != self.hi - self.lo:
            raise ProtocolError(f"PART: {array.size} values for the range [{self.lo}, {self.hi})")
