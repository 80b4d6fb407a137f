"""A run's gradient compression: the codec applied per piece (layer block x key range), seeded, with
error feedback.

    parsgd launch --workers 4 --compress topk:0.01 --dataset synthetic --num-samples 4096

The flat gradient (model/mlp.py: W1, b1, W2, b2, ...) is cut into pieces: each layer block (one W or
one b) intersected with each range of each server's key ranges (model/keyranges.py), in vector order
within a server's part. Each piece is encoded on its own (model/codecs.py), so a weight matrix cut by
a range boundary is, for powersgd, sent raw unless the cut falls on whole rows.

Randomised codecs draw from numpy's Generator(PCG64) seeded with SeedSequence([run seed, step, shard,
server, piece]): the worker that encodes, the server that decodes (randk's indices) and `parsgd replay`
draw the same numbers, whichever worker computed the shard.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019, EF-SGD): a worker adds its residual to
the gradient before encoding and keeps what the encoding lost, v = g + e; e <- v - decode(encode(v)),
so the sum of what it sent plus e is the sum of its raw gradients. The residual is the worker
session's state (one vector, over every shard it computes, in the order it computes them; GRAD says
its place `ef_seq` in that sequence): a worker that dies takes its residual with it (that error is
never applied), a shard that moves is compressed with its new worker's residual, and a new session
(registering again, a restarted or resumed server) starts from zero. A non-finite residual is
dropped (zero, sequence restarted), so one NaN step does not poison every later one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parsgd.model.codecs import Codec, parse_codec
from parsgd.model.keyranges import KeyRanges
from parsgd.model.mlp import _layout


@dataclass(frozen=True)
class Piece:
    lo: int          # in the flat vector
    hi: int
    at: int          # where it starts in its server's part
    shape: tuple     # (rows, fan_out) when whole rows of a weight matrix, else (hi - lo,)


def pieces(sizes, kr: KeyRanges) -> list[list[Piece]]:
    """Per server s, its pieces in part order."""
    blocks = _layout(tuple(sizes))[0]
    out = []
    for s in range(kr.servers):
        at, mine = 0, []
        for lo, hi in kr.ranges[s]:
            for b_lo, b_hi, shape in blocks:
                a, b = max(lo, b_lo), min(hi, b_hi)
                if a >= b:
                    continue
                cols = shape[1] if len(shape) == 2 else 0
                whole_rows = cols and (a - b_lo) % cols == 0 and (b - a) % cols == 0
                mine.append(Piece(a, b, at + a - lo, ((b - a) // cols, cols) if whole_rows else (b - a,)))
            at += hi - lo
        out.append(mine)
    return out


class Compressor:
    """Encode a worker's whole gradient for every server, and decode one server's part.

    `spec`: the --compress value; `error_feedback`: keep residuals (worker side, `Residual`).
    Raises ConfigError for a bad spec (model/codecs.parse_codec).
    """

    def __init__(self, spec: str, sizes, dtype: str, kr: KeyRanges, seed: int):
        self.codec: Codec = parse_codec(spec, sizes)
        self.dtype, self.kr, self.seed = np.dtype(dtype), kr, seed
        self.pieces = pieces(sizes, kr)

    def fields(self, server: int) -> list[list[tuple[np.dtype, int]]]:
        """Per piece of server `server`'s part, the (dtype, length) of its encoded arrays."""
        return [self.codec.fields(p.shape, self.dtype) for p in self.pieces[server]]

    def nbytes(self, server: int) -> int:
        """Bytes of server `server`'s encoded part (its raw part: size * itemsize)."""
        return sum(self.codec.nbytes(p.shape, self.dtype) for p in self.pieces[server])

    def _rng(self, step: int, shard: int, server: int, i: int):
        if not self.codec.random:
            return None
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, step, shard, server, i])))

    def compress(self, grad: np.ndarray, step: int, shard: int, residual: np.ndarray | None = None) -> list:
        """Encode `grad` ((n,), the whole vector) for every server: [[arrays of piece 0, ...], ...] per
        server. `grad` is overwritten with what the server will decode; `residual` ((n,)), if given, is
        added first and left holding v - decoded. Returns the encoded arrays per server, per piece."""
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite gradient is the server's to judge
            return self._compress(grad, step, shard, residual)

    def _compress(self, grad, step, shard, residual) -> list:
        if residual is not None:
            np.add(grad, residual, out=grad)             # v = g + e
        out = []
        for s, mine in enumerate(self.pieces):
            part = []
            for i, p in enumerate(mine):
                v = grad[p.lo:p.hi]
                arrays = self.codec.encode(v, p.shape, self._rng(step, shard, s, i))
                decoded = self.codec.decode(arrays, p.shape, self.dtype, self._rng(step, shard, s, i))
                if residual is not None:
                    np.subtract(v, decoded, out=residual[p.lo:p.hi])  # e = v - decode(encode(v))
                v[:] = decoded
                part.append(arrays)
            out.append(part)
        return out

    def decode(self, arrays: list, step: int, shard: int, server: int) -> np.ndarray:
        """Server `server`'s part ((kr.size(server),), the run's dtype) from its pieces' arrays."""
        out = np.empty(self.kr.size(server), self.dtype)
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite result is the server's to judge
            for i, (p, a) in enumerate(zip(self.pieces[server], arrays)):
                out[p.at:p.at + p.hi - p.lo] = self.codec.decode(a, p.shape, self.dtype,
                                                                 self._rng(step, shard, server, i))
        return out


def push_ratio(config: dict) -> float:
    """Encoded / raw bytes of one pushed gradient (every server's part) for a run's config.json `config`
    (1.0 for --compress none or a config without it)."""
    from parsgd.model.keyranges import key_ranges

    spec = config.get("compress") or "none"
    if spec == "none":
        return 1.0
    sizes, dtype = (784, *config.get("hidden", (256, 128)), 10), str(config.get("dtype") or "float32")
    kr = key_ranges(sizes, dtype, int(config.get("servers") or 1), str(config.get("shard_by") or "elements"))
    c = Compressor(spec, sizes, dtype, kr, 0)
    return sum(c.nbytes(s) for s in range(kr.servers)) / (kr.n * np.dtype(dtype).itemsize)


class Residual:
    """A worker session's error-feedback residual and its place in the session's sequence of gradients."""

    def __init__(self, n: int, dtype):
        self.e = np.zeros(n, dtype)
        self.seq = 0

    def next(self) -> tuple[np.ndarray, int]:
        """(the residual to use, this gradient's ef_seq); call `settle` after compressing."""
        self.seq += 1
        return self.e, self.seq - 1

    def settle(self) -> None:
        """A non-finite residual (a NaN or inf gradient) is dropped: zero, and the sequence restarts."""
        if not np.isfinite(self.e).all():
            self.e[:] = 0
            self.seq = 0
