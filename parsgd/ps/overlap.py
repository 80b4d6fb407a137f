"""--overlap layer | bucket: a shard's gradient leaves in parts while backprop computes the earlier layers,
and the parameters come back in parts, first layer first, so the next forward starts with the first.

    parsgd launch --workers 2 --overlap bucket --bucket-bytes 65536 --dataset synthetic --num-samples 4096

Wait-free backpropagation (Poseidon, Zhang et al. 2017): layer i's gradient is final as soon as backprop
has passed it (model/mlp.backward_layers yields it), so it can travel while layers i-1 .. 1 compute.
PyTorch DDP (Li et al., VLDB 2020) groups the parameters into buckets, last layer first, and sends a
bucket once it is full: fewer messages, so less per-message latency (alpha), for a later start. P3
(Jayarajan et al., MLSys 2019) sends the parameters in the order the next forward pass needs them.

Every part is a PART message (docs/protocol.md section 16): elements [lo, hi) of the receiver's own vector
(model/keyranges.py; the whole vector with one server). A receiver assembles a shard's parts
(`PartAssembler`); the GRAD (server 0) or PUSH (range server) that ends the shard carries no payload
and is taken only once the parts cover the whole vector exactly. The numbers are the ones
`loss_and_grad` writes, copied: every mode trains the `none` model bit for bit.
"""
from __future__ import annotations

import numpy as np

from parsgd.model.keyranges import KeyRanges
from parsgd.model.mlp import backward_layers, layer_bounds

OPEN_MAX_EXTRA = 8            # assembler entries beyond 2 per shard before old steps' are dropped


def push_plan(sizes, overlap: str, bucket_bytes: int, itemsize: int) -> list[tuple[int, int, int]]:
    """[(i, lo, hi), ...] in push order (last layer first): flat range [lo, hi) leaves once backprop has
    finished layer i. layer: one range per layer; bucket: consecutive layers (W_i then b_i, adjacent in the
    flat vector) grouped last layer first until a bucket holds >= bucket_bytes bytes, then the rest in a
    last bucket (DDP's rule, on whole layers); none: []. Raises nothing."""
    bounds = layer_bounds(sizes)
    if overlap == "none":
        return []
    if overlap == "layer":
        return [(i, lo, hi) for i, (lo, hi) in reversed(list(enumerate(bounds)))]
    plan, top = [], None
    for i in range(len(bounds) - 1, -1, -1):
        lo, hi = bounds[i]
        top = hi if top is None else top
        if (top - lo) * itemsize >= bucket_bytes or i == 0:
            plan.append((i, lo, top))
            top = None
    return plan


def pull_plan(sizes, overlap: str, bucket_bytes: int, itemsize: int) -> list[tuple[int, int]]:
    """The parameter parts in the order the forward pass needs them (first layer first): push_plan's
    ranges reversed, [(lo, hi), ...]."""
    return [(lo, hi) for _, lo, hi in reversed(push_plan(sizes, overlap, bucket_bytes, itemsize))]


def pieces(kr: KeyRanges, lo: int, hi: int) -> list[tuple[int, int, int, int]]:
    """Flat range [lo, hi) cut at the servers' key ranges: [(server, own_lo, own_hi, flat_lo), ...], own_*
    in that server's own vector (its ranges one after the other), in server then vector order."""
    out = []
    for s, ranges in enumerate(kr.ranges):
        at = 0
        for a, b in ranges:
            x, y = max(a, lo), min(b, hi)
            if x < y:
                out.append((s, at + x - a, at + y - a, x))
            at += b - a
    return out


class PartAssembler:
    """The gradient parts a server received, per (session, step, shard), into one (size,) buffer each.

    `add` copies a part in (a refusal's reason comes back as text); `take` hands over the buffer once the
    parts cover all `size` elements exactly (None otherwise: a GRAD or PUSH that came too soon). Entries
    of a gone session (`discard`) or an old step are dropped: a worker that died with some parts sent
    leaves nothing that could enter an update.
    """

    def __init__(self, size: int, dtype, shards: int):
        self.size, self.dtype, self.shards = size, np.dtype(dtype), shards
        self.open: dict[tuple[int, int, int], list] = {}   # key -> [buffer, [(lo, hi), ...], elements]
        self.spare: list[np.ndarray] = []

    def add(self, key: tuple[int, int, int], lo: int, hi: int, values: np.ndarray) -> str | None:
        if hi > self.size or values.dtype != self.dtype:
            return (f"PART [{lo}, {hi}) of {values.dtype} for a vector of {self.size} x {self.dtype.name}")
        entry = self.open.get(key)
        if entry is None:
            if len(self.open) >= 2 * self.shards + OPEN_MAX_EXTRA:
                self.prune(min(k[1] for k in self.open) + 1)
            entry = self.open[key] = [self.spare.pop() if self.spare else np.empty(self.size, self.dtype), [], 0]
        if any(lo < b and a < hi for a, b in entry[1]):
            return f"PART [{lo}, {hi}) overlaps a part of step {key[1]} shard {key[2]} already received"
        entry[0][lo:hi] = values
        entry[1].append((lo, hi))
        entry[2] += hi - lo
        return None

    def take(self, key: tuple[int, int, int]) -> np.ndarray | None:
        """The assembled (size,) gradient of `key`, or None (and its parts dropped) if they do not cover it."""
        entry = self.open.pop(key, None)
        if entry is None or entry[2] != self.size:
            if entry is not None:
                self.spare.append(entry[0])
            return None
        return entry[0]

    def give_back(self, buf: np.ndarray) -> None:
        """A buffer from `take` the caller has copied: reused for a later shard."""
        if len(self.spare) < self.shards:
            self.spare.append(buf)

    def discard(self, session: int) -> None:
        for key in [k for k in self.open if k[0] == session]:
            self.spare.append(self.open.pop(key)[0])

    def prune(self, before_step: int) -> None:
        for key in [k for k in self.open if k[1] < before_step]:
            self.spare.append(self.open.pop(key)[0])


def backward_pushing(plan, params, sizes, x, y, grad, ws, scale, send_part, before_layer=None):
    """Run model/mlp.backward_layers and call send_part(lo, hi) for each range of `plan` (push_plan) as
    soon as backprop has finished its last layer; returns (loss_sum, correct) as loss_and_grad does."""
    due = {i: (lo, hi) for i, lo, hi in plan}
    steps = backward_layers(params, sizes, x, y, grad, ws, scale, before_layer)
    while True:
        try:
            i = next(steps)
        except StopIteration as done:
            return done.value
        if i in due:
            send_part(*due[i])
