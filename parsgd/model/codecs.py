"""Gradient codecs: what a worker sends instead of a raw gradient piece, as typed NumPy arrays.

    python -c "from parsgd.model.codecs import parse_codec; print(parse_codec('topk:0.01', (784, 256, 128, 10)))"

A piece is a 1-D slice of the flat gradient, with `shape` (m, n) when it is whole rows of a weight
matrix (model/mlp.py: W is (fan_in, fan_out)), else (len,). `encode(v, shape, rng)` returns the
arrays `fields(shape, dtype)` describes (dtype and length each, in order); `decode` rebuilds the
piece (1-D, the run's dtype) from them. Only ps/protocol turns these arrays into bytes
(docs/protocol.md section 9 gives the byte layout). `rng` is a numpy Generator (model/compressor.py
seeds it from the run seed, step, shard, part and piece); only qsgd, randk and powersgd draw from it.

- fp16: every value as IEEE float16 (round to nearest even; beyond +-65504 becomes +-inf).
- sign: scaled sign, (||v||_1 / len) * sign(v) with sign(0) = +1: one float and one bit a value
  (1-bit SGD, Seide et al. 2014; the scale of EF-signSGD, Karimireddy et al. 2019).
- qsgd:s: n_b * sign(v_i) * l_i / s, l_i = floor(s |v_i| / n_b + u_i), u_i ~ U[0, 1), n_b = ||v_b||_2 of
  v_i's bucket of QSGD_BUCKET values: stochastic rounding onto s levels, unbiased (Alistarh et al.
  2017, QSGD, with their bucketing: one norm per 512 values bounds the variance), sent as int8
  (s <= 127) or int16.
- topk:f: the k = ceil(f len) values of largest magnitude (NaN and inf first) and their indices
  (Lin et al. 2018, Deep Gradient Compression); the rest is zero.
- randk:f: k = ceil(f len) values at indices drawn uniformly without replacement; the indices are
  not sent: the server draws them from the same seeded generator (Stich et al. 2018). Not rescaled
  by len / k (biased, meant with error feedback, as in Stich et al.).
- powersgd:r: a weight-matrix piece M (m, n) as P (m, r) and Q (n, r), approximating M by P Q^T after one
  power iteration from a Gaussian Q0: P = orth(M Q0) (QR), Q = M^T P (Vogels et al. 2019, without
  their warm start, so a worker's only state is its residual); r is capped by min(m, n) of the piece;
  biases and pieces that are not whole rows are sent raw.
Raises nothing but what NumPy raises; `parse_codec` raises ConfigError (exit 2) naming --compress.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from parsgd.config import compress_spec

QSGD_BUCKET = 512  # values per qsgd norm (Alistarh et al. 2017 use buckets of 512)



@dataclass(frozen=True)
class Codec:
    """One codec with its parameter (levels, fraction or rank; None for none, fp16, sign)."""
    name: str
    param: float | int | None = None

    @property
    def spec(self) -> str:
        return self.name if self.param is None else f"{self.name}:{self.param:g}"

    @property
    def lossy(self) -> bool:
        return self.name != "none"

    @property
    def random(self) -> bool:
        return self.name in ("qsgd", "randk", "powersgd")

    def k(self, size: int) -> int:
        """topk / randk: how many values of a piece of `size` are sent (at least one)."""
        return min(size, max(1, math.ceil(self.param * size)))

    def rank(self, shape) -> int:
        return min(int(self.param), *shape)

    def fields(self, shape, dtype) -> list[tuple[np.dtype, int]]:
        """(dtype, length) of each encoded array of a piece of `shape`, in wire order."""
        dt, size = np.dtype(dtype), math.prod(shape)
        if self.name == "none":
            return [(dt, size)]
        if self.name == "fp16":
            return [(np.dtype("<f2"), size)]
        if self.name == "sign":
            return [(dt, 1), (np.dtype("u1"), -(-size // 8))]
        if self.name == "qsgd":
            return [(dt, -(-size // QSGD_BUCKET)), (np.dtype("i1" if self.param <= 127 else "<i2"), size)]
        if self.name == "topk":
            return [(np.dtype("<u4"), self.k(size)), (dt, self.k(size))]
        if self.name == "randk":
            return [(dt, self.k(size))]
        if len(shape) != 2:  # powersgd: a bias or a cut matrix goes raw
            return [(dt, size)]
        r = self.rank(shape)
        return [(dt, shape[0] * r), (dt, shape[1] * r)]

    def nbytes(self, shape, dtype) -> int:
        return sum(dt.itemsize * n for dt, n in self.fields(shape, dtype))

    def encode(self, v: np.ndarray, shape, rng: np.random.Generator | None) -> list[np.ndarray]:
        """The arrays of piece `v` ((prod(shape),), float32/64), as `fields` lists them."""
        dt = v.dtype
        if self.name == "none":
            return [v.copy()]
        if self.name == "fp16":
            with np.errstate(over="ignore"):
                return [v.astype("<f2")]
        if self.name == "sign":
            scale = np.abs(v).sum(dtype=np.float64) / v.size
            return [np.array([scale], dt), np.packbits(v >= 0, bitorder="little")]
        if self.name == "qsgd":
            s = int(self.param)
            norms = bucket_norms(v)
            each = np.repeat(norms, QSGD_BUCKET)[:v.size]
            u = rng.random(v.size)
            ok = (each > 0) & np.isfinite(each)  # zero: level 0; NaN / inf: decodes to NaN
            levels = np.where(ok, np.floor(np.abs(v) / np.where(ok, each, 1.0) * s + u), 0.0)
            q = (np.where(v < 0, -1.0, 1.0) * np.minimum(levels, s)).astype(self.fields(shape, dt)[1][0])
            return [norms.astype(dt), q]
        if self.name == "topk":
            idx = top_indices(v, self.k(v.size))
            return [idx.astype("<u4"), v[idx]]
        if self.name == "randk":
            return [v[random_indices(rng, v.size, self.k(v.size))]]
        if len(shape) != 2:
            return [v.copy()]
        m = v.reshape(shape)
        r = self.rank(shape)
        q0 = rng.standard_normal((shape[1], r)).astype(dt)
        p, _ = np.linalg.qr(m @ q0)                 # (m, n) @ (n, r) -> (m, r), orthonormal columns
        q = m.T @ p                                 # (n, m) @ (m, r) -> (n, r)
        return [np.ascontiguousarray(p, dt).reshape(-1), np.ascontiguousarray(q, dt).reshape(-1)]

    def decode(self, arrays, shape, dtype, rng: np.random.Generator | None) -> np.ndarray:
        """The piece ((prod(shape),), `dtype`) the encoded `arrays` stand for; ValueError for a topk index
        outside the piece (bytes from a broken or hostile peer)."""
        dt, size = np.dtype(dtype), math.prod(shape)
        if self.name in ("none", "fp16") or (self.name == "powersgd" and len(shape) != 2):
            return arrays[0].astype(dt)
        if self.name == "sign":
            bits = np.unpackbits(arrays[1], count=size, bitorder="little").astype(bool)
            return np.where(bits, arrays[0][0], -arrays[0][0]).astype(dt)
        if self.name == "qsgd":
            each = np.repeat(arrays[0].astype(np.float64), QSGD_BUCKET)[:size]
            return (each * arrays[1] / int(self.param)).astype(dt)
        out = np.zeros(size, dt)
        if self.name == "topk":
            idx = arrays[0].astype(np.intp)
            if idx.size and idx.max() >= size:
                raise ValueError(f"topk index {idx.max()} is outside the piece of {size} values")
            out[idx] = arrays[1]
        elif self.name == "randk":
            out[random_indices(rng, size, self.k(size))] = arrays[0]
        else:  # P Q^T, without BLAS: the same bits in the server, the worker and replay, whatever their threads
            r = self.rank(shape)
            p, q = arrays[0].reshape(shape[0], r), arrays[1].reshape(shape[1], r)
            out[:] = np.einsum("ir,jr->ij", p, q, optimize=False).reshape(-1)
        return out


def bucket_norms(v: np.ndarray) -> np.ndarray:
    """||v_b||_2 (binary64) of each bucket of QSGD_BUCKET values of v (the last one may be shorter)."""
    sq = np.zeros(-(-v.size // QSGD_BUCKET) * QSGD_BUCKET)
    sq[:v.size] = v.astype(np.float64) ** 2
    return np.sqrt(sq.reshape(-1, QSGD_BUCKET).sum(axis=1))


def top_indices(v: np.ndarray, k: int) -> np.ndarray:
    """Ascending indices of the k largest |v| (non-finite first; ties: whichever argpartition keeps)."""
    key = np.abs(v)
    key[~np.isfinite(key)] = np.inf
    if k >= v.size:
        return np.arange(v.size)
    return np.sort(np.argpartition(-key, k - 1)[:k])


def random_indices(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """k ascending indices of range(size), uniformly without replacement."""
    return np.sort(rng.choice(size, k, replace=False))


def parse_codec(text: str, sizes) -> Codec:
    """'topk:0.01' -> Codec('topk', 0.01); raises ConfigError naming --compress (config.compress_spec)."""
    return Codec(*compress_spec(text, sizes))
