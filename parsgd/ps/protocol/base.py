"""The message base class, the registry of message types and decoding: with wire.py the only code that
knows bytes (the package docstring, parsgd/ps/protocol/__init__.py, gives the frame layout).
"""
from __future__ import annotations

from dataclasses import fields
from typing import ClassVar

import msgpack
import numpy as np

from parsgd.ps.wire import (DTYPES, HEADER_MAX, MAX_CONFIG_KEYS, MAX_ELEMENTS, MAX_LIST, ProtocolError,
                            VersionMismatch, frame_buffer, payload_array, short)

PROTOCOL_VERSION = 5            # 5: PART (--overlap), --compress (GRAD / PUSH uint8 payloads, GRAD.ef_seq);
                                # 4: range servers (--servers S); 3: READY.faults; 2: TASK.batch, HEARTBEAT.busy/.tasks
SPANS = ("serialize", "send", "recv", "deserialize", "compute", "wait", "aggregate", "update")
ERROR_CODES = ("VERSION", "DATA_MISMATCH", "STALE", "BAD_MESSAGE", "BUSY")
TYPES: dict[str, type] = {}     # TYPE -> message class, filled by `register` as the message modules load


def register(cls):
    """Class decorator: add a message class to TYPES (decode refuses any other type)."""
    TYPES[cls.TYPE] = cls
    return cls


class Message:
    """Base of all messages: a frozen dataclass whose fields are listed in FIELDS (+ PAYLOAD)."""
    TYPE: ClassVar[str]
    FIELDS: ClassVar[dict]
    PAYLOAD: ClassVar[str | None] = None      # name of the array field, if any
    PAYLOAD_REQUIRED: ClassVar[bool] = False
    PAYLOAD_DTYPES: ClassVar[dict] = DTYPES   # GRAD and PUSH also take uint8 (wire.PACKED)

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
            if (not isinstance(array, np.ndarray) or array.dtype not in self.PAYLOAD_DTYPES.values()
                    or not array.flags.c_contiguous or array.size > MAX_ELEMENTS):
                raise ProtocolError(f"{self.TYPE}.{self.PAYLOAD}: need a C-contiguous "
                                    f"little-endian {'/'.join(self.PAYLOAD_DTYPES)} array of <= {MAX_ELEMENTS}")
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
            values[cls.PAYLOAD] = cls._shape(payload_array(cls.TYPE, header, frames[1], cls.PAYLOAD_DTYPES)) if has_payload else None
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


def _reject_ext(code, data):
    raise ProtocolError(f"msgpack ext type {code} not allowed")


def decode(frames) -> "Message":
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
            return TYPES["HELLO"]._foreign(header, version)
        raise VersionMismatch(f"{kind} speaks protocol {short(version)}, "
                              f"this side speaks {PROTOCOL_VERSION}", version)
    return TYPES[kind]._from_header(header, list(frames))
