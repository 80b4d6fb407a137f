"""How a worker reaches its server (WorkerOptions) and what decides its data (data_key)."""
from __future__ import annotations

from dataclasses import dataclass

from parsgd.config import RunConfig


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker reaches its server; times in seconds. Everything else comes in WELCOME."""
    connect: str = "tcp://127.0.0.1:5555"
    connect_timeout_s: float = 60.0
    data_dir: str | None = None
    keys_dir: str | None = None
    faults: str = ""
    name: str = ""


def data_key(cfg: RunConfig) -> tuple:
    """What decides a worker's data: a WELCOME with another key means loading it again."""
    return cfg.dataset, cfg.data_dir, cfg.num_samples, cfg.seed, cfg.dtype
