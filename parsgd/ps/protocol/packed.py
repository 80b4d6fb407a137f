"""The bytes of a compressed gradient part: what GRAD.grad and PUSH.grad carry with --compress.

    python -m pytest tests/test_codecs.py -q

A server's part of a compressed gradient is one uint8 payload frame: for each piece of the part
(model/compressor.py: layer block x key range, in part order), each of its codec's arrays
(model/codecs.py `Codec.fields`), little-endian, one after the other, with no header, padding or
alignment. Both ends know every length from the run's config (sizes, dtype, servers, shard_by,
compress), so the frame's length alone is checked. docs/protocol.md section 9 gives the layout per codec.
"""
from __future__ import annotations

import numpy as np

from parsgd.ps.wire import ProtocolError


def pack(pieces: list[list[np.ndarray]]) -> np.ndarray:
    """Per piece, its encoded arrays -> one (bytes,) uint8 array, the payload of a GRAD or PUSH."""
    blobs = [np.ascontiguousarray(a, a.dtype.newbyteorder("<")).view(np.uint8).reshape(-1)
             for arrays in pieces for a in arrays]
    return np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)


def unpack(where: str, payload: np.ndarray, fields: list[list[tuple[np.dtype, int]]]) -> list[list[np.ndarray]]:
    """The inverse of `pack`, given each piece's (dtype, length) fields; ProtocolError naming `where`
    if `payload` is not a uint8 array of exactly their total size."""
    need = sum(dt.itemsize * n for piece in fields for dt, n in piece)
    if not isinstance(payload, np.ndarray) or payload.dtype != np.uint8:
        raise ProtocolError(f"{where}: this run compresses its gradients, so the payload must be their uint8 "
                            f"encoding, got {getattr(payload, 'dtype', type(payload).__name__)}")
    if payload.size != need:
        raise ProtocolError(f"{where}: encoded payload of {payload.size} bytes, the run's codec makes {need}")
    out, at = [], 0
    for piece in fields:
        arrays = []
        for dt, n in piece:
            arrays.append(np.frombuffer(payload[at:at + dt.itemsize * n].tobytes(), dtype=dt.newbyteorder("<"),
                                        count=n))
            at += dt.itemsize * n
        out.append(arrays)
    return out
