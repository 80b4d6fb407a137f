"""Which server owns which parameters: the key ranges of S parameter servers over the flat vector.

    python -c "from parsgd.ps.keyranges import key_ranges; print(key_ranges((784, 256, 128, 10), 'float32', 2))"

ps-lite (Li et al., OSDI 2014) cuts its key space into S contiguous ranges, one per server; MXNet's
kvstore places each array (key) whole on a server, below a size bound, and slices bigger ones.
parsgd's flat parameter vector W1, b1, W2, b2, ... (model/mlp.py) is its key space:

- `elements` (default): S contiguous ranges of (nearly) equal element counts, each boundary on a
  multiple of ALIGN_BYTES (64 bytes: a cache line; 16 float32 or 8 float64 elements), as ps-lite cuts
  its key range evenly;
- `layer`: whole layers (W_i with b_i, one contiguous range each), biggest first, each onto the
  server with the fewest elements so far (greedy, as MXNet places arrays): a server may own several
  layers, and on 784-256-128-10 (201,216 / 32,896 / 1,290 elements) the load is visibly unbalanced.

Every server owns at least one element (more servers than that allows are refused). The update is
elementwise, so each server applying momentum SGD to its own ranges gives, bit for bit, the update of
one server holding the whole vector.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from parsgd.config import SHARD_BY, ConfigError
from parsgd.model.mlp import layer_shapes

ALIGN_BYTES = 64


@dataclass(frozen=True)
class KeyRanges:
    """`ranges[s]`: the (lo, hi) ranges of the flat vector (length `n`) server s owns, in vector order."""
    ranges: tuple[tuple[tuple[int, int], ...], ...]
    n: int

    @property
    def servers(self) -> int:
        return len(self.ranges)

    def size(self, s: int) -> int:
        """Elements server s owns."""
        return sum(hi - lo for lo, hi in self.ranges[s])

    def sizes(self) -> list[int]:
        return [self.size(s) for s in range(self.servers)]

    def imbalance(self) -> float:
        """max / mean elements per server: 1.0 is perfectly even (the bytes of the busiest server's link)."""
        sizes = self.sizes()
        return max(sizes) / (sum(sizes) / len(sizes))

    def gather(self, flat: np.ndarray, s: int, out: np.ndarray | None = None) -> np.ndarray:
        """Server s's part of `flat` ((n,) array), its ranges one after the other: a view for one range,
        else a copy (into `out`, shape (size(s),), when given)."""
        rs = self.ranges[s]
        if len(rs) == 1 and out is None:
            return flat[rs[0][0]:rs[0][1]]
        out = np.empty(self.size(s), flat.dtype) if out is None else out
        at = 0
        for lo, hi in rs:
            out[at:at + hi - lo] = flat[lo:hi]
            at += hi - lo
        return out

    def scatter(self, part: np.ndarray, s: int, flat: np.ndarray) -> None:
        """Write server s's part ((size(s),), its ranges one after the other) into `flat` ((n,))."""
        at = 0
        for lo, hi in self.ranges[s]:
            flat[lo:hi] = part[at:at + hi - lo]
            at += hi - lo

    def describe(self, s: int) -> str:
        """`[0, 100608)` or `[0, 201216) + [234112, 235146)`: the ranges of server s, for messages."""
        return " + ".join(f"[{lo}, {hi})" for lo, hi in self.ranges[s])

    def to_list(self) -> list:
        return [[list(r) for r in rs] for rs in self.ranges]


def _merged(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted ranges with adjacent ones joined: [(0, 5), (5, 9), (12, 20)] -> ((0, 9), (12, 20))."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def layer_spans(sizes) -> list[tuple[int, int]]:
    """(lo, hi) of each layer (W_i then b_i) in the flat vector of a model with layer widths `sizes`."""
    spans, at = [], 0
    shapes = layer_shapes(sizes)
    for w, b in zip(shapes[0::2], shapes[1::2]):
        size = int(np.prod(w)) + int(np.prod(b))
        spans.append((at, at + size))
        at += size
    return spans


def key_ranges(sizes, dtype: str, servers: int, shard_by: str = "elements") -> KeyRanges:
    """The key ranges of `servers` servers over the flat vector of a model with layer widths `sizes`.

    Raises ConfigError (exit 2) for an unknown `shard_by`, fewer than 1 server, or more servers than
    the model can give an element (elements) or a layer (layer) each.
    """
    spans = layer_spans(sizes)
    n = spans[-1][1]
    if shard_by not in SHARD_BY:
        raise ConfigError(f"--shard-by must be one of {', '.join(SHARD_BY)}, got {shard_by!r}")
    if servers < 1:
        raise ConfigError(f"--servers must be at least 1, got {servers}")
    if shard_by == "layer":
        if servers > len(spans):
            raise ConfigError(f"--servers {servers} --shard-by layer: the model has {len(spans)} layers, so a server "
                              "would own nothing; use fewer servers or --shard-by elements")
        owned: list[list[tuple[int, int]]] = [[] for _ in range(servers)]
        load = [0] * servers
        for lo, hi in sorted(spans, key=lambda r: (r[0] - r[1], r[0])):  # biggest first
            s = min(range(servers), key=lambda k: (load[k], k))      # the least-loaded server
            owned[s].append((lo, hi))
            load[s] += hi - lo
        return KeyRanges(tuple(_merged(sorted(rs)) for rs in owned), n)
    align = max(1, ALIGN_BYTES // np.dtype(dtype).itemsize)
    chunk = math.ceil(math.ceil(n / servers) / align) * align
    bounds = [min(n, k * chunk) for k in range(servers + 1)]
    if bounds[-2] >= n:
        raise ConfigError(f"--servers {servers}: the model has {n} parameters, too few for {servers} servers in "
                          f"{ALIGN_BYTES}-byte aligned ranges; use fewer servers")
    bounds[-1] = n
    return KeyRanges(tuple(((bounds[k], bounds[k + 1]),) for k in range(servers)), n)
