"""--compress between a worker and its servers: the one place workers and servers call for it.

    parsgd launch --workers 4 --compress qsgd:4 --no-shm --dataset synthetic --num-samples 4096

The worker encodes every server's part of each gradient it pushes (model/compressor.py), with its
session's error-feedback residual, and writes what the servers will decode over its gradient
buffer, so a shared-memory slot (same host, --shm) holds exactly what a socket would have carried.
Each server decodes its part of GRAD / PUSH before anything else reads it; the sum in shard order and
the update are unchanged. Pulls (TASK.params, PARAMS) stay raw: the parameters are the server's state,
and a lossy pull would make each worker compute on a model nobody holds (no same-model check, no
replay from updates.jsonl, a second residual per worker on the server for error feedback).
"""
from __future__ import annotations

import numpy as np

from parsgd.config import RunConfig
from parsgd.model.compressor import Compressor, Residual
from parsgd.model.keyranges import KeyRanges
from parsgd.ps.protocol.packed import pack, unpack
from parsgd.ps.wire import ProtocolError


class WireCodec:
    """A run's codec at one end; `for_run` gives None for --compress none (nothing changes)."""

    def __init__(self, cfg: RunConfig, kr: KeyRanges):
        self.compressor = Compressor(cfg.compress, cfg.sizes, cfg.dtype, kr, cfg.seed)
        self.residual = Residual(kr.n, cfg.dtype) if cfg.error_feedback else None
        self.fields = [self.compressor.fields(s) for s in range(kr.servers)]

    @classmethod
    def for_run(cls, cfg: RunConfig, kr: KeyRanges) -> "WireCodec | None":
        return None if cfg.compress == "none" else cls(cfg, kr)

    def push(self, grad: np.ndarray, step: int, shard: int) -> tuple[list[np.ndarray], int]:
        """(per server, its uint8 payload; GRAD.ef_seq) for `grad` ((n,), overwritten with what the
        servers decode); ef_seq is -1 without error feedback."""
        e, seq = self.residual.next() if self.residual is not None else (None, -1)
        parts = self.compressor.compress(grad, step, shard, e)
        if self.residual is not None:
            self.residual.settle()
        return [pack(p) for p in parts], seq

    def decoded(self, where: str, payload, step: int, shard: int, server: int = 0) -> np.ndarray:
        """Server `server`'s part ((size,), the run's dtype) of a GRAD / PUSH payload; ProtocolError
        naming `where` when the payload is not this run's encoding."""
        try:
            return self.compressor.decode(unpack(where, payload, self.fields[server]), step, shard, server)
        except ValueError as exc:  # ProtocolError is one too; the codec's own checks are plain ValueErrors
            raise exc if isinstance(exc, ProtocolError) else ProtocolError(f"{where}: {exc}") from None
