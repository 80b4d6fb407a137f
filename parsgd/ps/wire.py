"""Bytes-level primitives of the wire protocol: field checkers, frame views, a bounded receive.

    python -m pytest tests/test_protocol.py -q

Every checker is `check(where, value) -> normalised value` or raises ProtocolError naming the field
(`where`) and what was expected. `payload_array` turns a payload frame into a numpy array without a
copy, after checking its dtype and length against the header (before `numpy.frombuffer`).
`recv_frames` reads one multipart message within a frame and byte budget. Only
parsgd/ps/protocol/ uses this module; everything else goes through protocol's names.
"""
from __future__ import annotations

import math

import numpy as np
import zmq

from parsgd.config import MAX_SERVERS  # lists of servers in WELCOME and GRAD

HEADER_MAX = 8 * 1024            # bytes of one header frame; refused unread above this
MAX_ELEMENTS = 2**27             # elements of one payload array (512 MiB float32)
MAX_STR = 256                    # chars of a name-like string field
MAX_TEXT = 1024                  # chars of a free-text field (reason, message) or config string
MAX_CONFIG_KEYS = 64             # keys of the WELCOME config, nested dicts included
MAX_CONFIG_DEPTH = 3
MAX_LIST = 1024                  # elements of a list inside the config
MAX_INT = 2**53                  # counters, sizes, steps: exact in a float64 too
MAX_ID = 2**63                   # session and incarnation ids
DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
PACKED = {**DTYPES, "uint8": np.dtype("u1")}  # GRAD and PUSH with --compress: the encoded bytes (protocol/packed.py)


class ProtocolError(ValueError):
    """A message is malformed or not acceptable; the text says what is wrong."""
    first_frame: bytes = b""   # set by recv_frames: who sent the refused message, if known


class VersionMismatch(ProtocolError):
    """The peer speaks another protocol version (`.version`)."""

    def __init__(self, message: str, version: int):
        super().__init__(message)
        self.version = version


def short(x) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


# Field checkers: check(where, value) -> normalised value, or raise ProtocolError.
def int_in(lo: int = 0, hi: int = MAX_INT):
    def check(where, x):
        if type(x) is not int or not lo <= x < hi:
            raise ProtocolError(f"{where}: expected int in [{lo}, {hi}), got {short(x)}")
        return x
    return check


def float_in(finite: bool = True, lo: float = -math.inf):
    def check(where, x):
        if type(x) not in (int, float):
            raise ProtocolError(f"{where}: expected float, got {short(x)}")
        x = float(x)
        if (finite and not math.isfinite(x)) or x < lo:
            raise ProtocolError(f"{where}: float out of range, got {short(x)}")
        return x
    return check


def str_upto(max_len: int = MAX_STR):
    def check(where, x):
        if type(x) is not str or len(x) > max_len:
            raise ProtocolError(f"{where}: expected str of <= {max_len} chars, got {short(x)}")
        return x
    return check


def config_map(where, config):
    """A flat-ish dict of str keys and small JSON-like values (RunConfig.to_dict())."""
    n_keys = 0

    def walk(x, depth):
        nonlocal n_keys
        if x is None or type(x) in (bool, int, str, float):
            if (type(x) is str and len(x) > MAX_TEXT) or (type(x) is float and not math.isfinite(x)):
                raise ProtocolError(f"{where}: bad value {short(x)}")
        elif type(x) is list and depth < MAX_CONFIG_DEPTH and len(x) <= MAX_LIST:
            for item in x:
                walk(item, depth + 1)
        elif type(x) is dict and depth < MAX_CONFIG_DEPTH:
            n_keys += len(x)
            if n_keys > MAX_CONFIG_KEYS or any(type(k) is not str or len(k) > MAX_STR for k in x):
                raise ProtocolError(f"{where}: keys must be <= {MAX_CONFIG_KEYS} short strings")
            for item in x.values():
                walk(item, depth + 1)
        else:
            raise ProtocolError(f"{where}: unsupported or too deep value {short(x)}")

    if type(config) is not dict:
        raise ProtocolError(f"{where}: expected dict, got {short(config)}")
    walk(config, 0)
    return config


def bool_only(where, x):
    if type(x) is not bool:
        raise ProtocolError(f"{where}: expected bool, got {short(x)}")
    return x


INT, ID, TEXT, NAME, TIME, BOOL = int_in(), int_in(hi=MAX_ID), str_upto(MAX_TEXT), str_upto(), float_in(), bool_only


def list_of(item, max_len: int = MAX_SERVERS):
    """A checker of a list of at most max_len values, each passing `item`."""
    def check(where, xs):
        if type(xs) is not list or len(xs) > max_len:
            raise ProtocolError(f"{where}: expected a list of <= {max_len} items, got {short(xs)}")
        return [item(f"{where}[{i}]", x) for i, x in enumerate(xs)]
    return check


ints, ids, names = list_of(INT), list_of(ID, MAX_LIST), list_of(NAME)


def frame_buffer(where: str, frame) -> memoryview:
    if isinstance(frame, zmq.Frame):
        frame = frame.buffer
    try:
        view = memoryview(frame)
        if view.nbytes == 0:
            return memoryview(b"")
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except TypeError:
        raise ProtocolError(f"{where}: frame is not a contiguous buffer") from None


def payload_array(where: str, header: dict, frame, dtypes: dict = DTYPES) -> np.ndarray:
    dtype, n = header["dtype"], header["n"]
    if type(dtype) is not str or dtype not in dtypes:
        raise ProtocolError(f"{where}.dtype: expected one of {sorted(dtypes)}, got {short(dtype)}")
    n = int_in(0, MAX_ELEMENTS + 1)(f"{where}.n", n)
    buf = frame_buffer(where, frame)
    if buf.nbytes != n * dtypes[dtype].itemsize:      # before frombuffer: no allocation, no copy
        raise ProtocolError(f"{where}: payload of {buf.nbytes} bytes, header says {n} x {dtype}")
    return np.frombuffer(buf, dtype=dtypes[dtype], count=n)


def recv_frames(socket: zmq.Socket, max_frames: int, max_bytes: int, flags: int = 0) -> list:
    """Receive ONE multipart message (identity included) as zmq.Frames, bounded in frames and bytes.

    Call after poll reports POLLIN (or pass flags=zmq.NOBLOCK). On breach the rest of the
    message is drained and discarded, then ProtocolError is raised: the socket stays in sync.
    Its `first_frame` holds up to 255 bytes of the first frame (a ROUTER's peer identity), so
    the caller can tell who sent it.
    """
    frames, total, breach = [], 0, False
    frame = socket.recv(flags, copy=False)
    first = bytes(frame.buffer[:255])
    while True:
        if not breach:
            frames.append(frame)
            total += len(frame)
            breach = len(frames) > max_frames or total > max_bytes
            if breach:
                frames.clear()          # keep draining, but hold on to nothing
        if not frame.more:
            break
        try:   # multipart delivery is atomic: the rest is already here
            frame = socket.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise ProtocolError("multipart message ended early") from None
    if breach:
        exc = ProtocolError(f"message refused: too many frames/bytes "
                            f"(limits {max_frames} frames, {max_bytes} bytes)")
        exc.first_frame = first
        raise exc
    return frames


def frames_nbytes(frames) -> int:
    """Bytes on the wire (sum of frame lengths), for the comm log."""
    return sum(len(f) if isinstance(f, zmq.Frame) else memoryview(f).nbytes for f in frames)
