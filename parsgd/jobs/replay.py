"""`parsgd replay RUN_DIR`: recompute a parameter-server run in one process from its updates.jsonl.

    parsgd launch --workers 3 --consistency async --dataset synthetic --num-samples 4096 --out runs/a
    parsgd replay runs/a        # "max |difference| 0" and exit 0 when the run is reproduced to the bit

Starting from the initial parameters, every logged update is redone in order: its gradient is
computed on the parameter version it was pulled at (kept while a later update still needs it), as
a worker computes it (one BLAS thread; BSP: every shard with 1/batch scaling, summed in shard
order), and applied with the same momentum update and learning rate. With S servers (`--servers`)
each range of the parameters an update used is the version its server had when the worker pulled it
(updates.jsonl `versions`: servers 0..S-1); every range applies the updates in the one logged order.
The oracle of the asynchronous modes: their result depends on timing, and replay shows it depends on nothing else.
After a resume, updates.jsonl holds the updates of the whole run (the redone ones once), so replay
still starts from the initial parameters.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from parsgd.config import RunConfig
from parsgd.data import epoch_order, load_dataset
from parsgd.errors import UserError
from parsgd.model.compressor import Compressor, Residual
from parsgd.model.keyranges import key_ranges
from parsgd.model.mlp import Workspace, init_params, loss_and_grad
from parsgd.model.optim import sgd_momentum_
from parsgd.ps.async_server import staleness_lr
from parsgd.training.loop import shard_bounds


class ReplayError(UserError):
    """The run directory cannot be replayed; the message says why."""


def _read(run: Path):
    try:
        meta = json.loads((run / "config.json").read_text())
        updates = [json.loads(line) for line in (run / "updates.jsonl").read_text().splitlines() if line.strip()]
        with np.load(run / "model.npz") as z:
            final = np.concatenate([z[k].ravel() for k in z.files])
    except FileNotFoundError as exc:
        raise ReplayError(f"{run}: {Path(exc.filename).name} is missing: replay needs a finished "
                          "parameter-server run (config.json, updates.jsonl, model.npz)") from None
    except (OSError, ValueError) as exc:
        raise ReplayError(f"{run}: cannot read it ({exc}): re-run it") from None
    return RunConfig.from_dict(meta["config"]), updates, final


class Recompress:
    """--compress: each shard's gradient encoded and decoded as its worker did, with that worker's
    residual (updates.jsonl `ef`: [session, ef_seq] per shard; model/compressor.py)."""

    def __init__(self, cfg: RunConfig, kr, run: Path):
        self.compressor = Compressor(cfg.compress, cfg.sizes, cfg.dtype, kr, cfg.seed)
        self.bsp, self.ef, self.run = cfg.consistency == "bsp", cfg.error_feedback, run
        self.residuals: dict[int, Residual] = {}  # per worker session

    def __call__(self, u: dict, step: int, grads) -> None:
        """Overwrite each of `grads` ((n,) per shard of update u, at `step`) with what its server decoded."""
        efs = (u.get("ef") or [None] * len(grads)) if self.bsp else [u.get("ef")]
        # a session's residual moves in the order it encoded (ef_seq), whichever shards those were
        for k in sorted(range(len(grads)), key=lambda k: tuple(efs[k] or (0, 0))):
            residual = None
            if self.ef:
                if efs[k] is None:
                    raise ReplayError(f"{self.run / 'updates.jsonl'}: update {u['update']} does not say whose "
                                      f"error-feedback residual shard {k} used: re-run it with this parsgd")
                session, seq = efs[k]
                r = self.residuals.setdefault(session, Residual(grads.shape[1], grads.dtype))
                if seq == 0:
                    r.e[:], r.seq = 0, 0
                if seq != r.seq:
                    raise ReplayError(f"update {u['update']} shard {k}: its worker's residual had moved with a "
                                      f"gradient the server ignored (ef_seq {seq}, replay is at {r.seq}): "
                                      "this run cannot be replayed")
                residual, _ = r.next()
            self.compressor.compress(grads[k], step, k if self.bsp else 0, residual)
            if residual is not None:
                self.residuals[session].settle()


def replay(run_dir, echo=print) -> float:
    """Redo RUN_DIR's updates; returns max |replayed - model.npz| (0.0 when reproduced to the bit).

    Raises ReplayError when a file is missing or unreadable, or updates.jsonl is not a whole run.
    """
    run = Path(run_dir)
    cfg, updates, final = _read(run)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.num_samples, cfg.seed, cfg.dtype, log=None)
    n, B = len(data.y_train), cfg.batch_size
    spe = -(-n // B)
    if [u["update"] for u in updates] != list(range(len(updates))) or len(updates) != cfg.epochs * spe:
        raise ReplayError(f"{run / 'updates.jsonl'} holds {len(updates)} updates, not the run's "
                          f"{cfg.epochs * spe} in order: replay needs a finished run")
    params = init_params(cfg.sizes, cfg.seed, cfg.dtype)
    velocity, grad, scratch = (np.zeros_like(params) for _ in range(3))
    ws, rows = Workspace(cfg.sizes, cfg.dtype), np.empty((B, data.x_train.shape[1]), data.x_train.dtype)
    kr = key_ranges(cfg.sizes, cfg.dtype, cfg.servers, cfg.shard_by)
    last_use: dict[int, int] = {}
    for i, u in enumerate(updates):  # with S servers each range was pulled at its own version
        for v in u.get("versions") or [u["version"]]:
            last_use[v] = i
    versions = {0: params.copy()} if 0 in last_use else {}
    composite = np.empty_like(params)
    orders: dict[int, np.ndarray] = {}
    parts = cfg.workers if cfg.consistency == "bsp" else 1
    bufs = np.zeros((parts, params.size), params.dtype)  # each shard's gradient
    compressed = None if cfg.compress == "none" else Recompress(cfg, kr, run)
    with threadpool_limits(1), np.errstate(over="ignore", invalid="ignore"):
        for i, u in enumerate(updates):
            order = orders.setdefault(u["epoch"], epoch_order(n, cfg.seed, u["epoch"]))
            used = u.get("versions") or [u["version"]]
            if any(v not in versions for v in used):
                raise ReplayError(f"update {i} was computed on version {used}, which never existed")
            pulled = versions[used[0]]
            if len(used) > 1:  # range r of the parameters as server r had it at version used[r]
                for r, v in enumerate(used):
                    kr.scatter(kr.gather(versions[v], r), r, composite)
                pulled = composite
            lo, hi = u["batch"] * B, min(n, (u["batch"] + 1) * B)
            shards = [s for s in shard_bounds(lo, hi, parts) if s[0] < s[1]]
            for k, (a, b) in enumerate(shards):
                idx = order[a:b]
                np.take(data.x_train, idx, axis=0, out=rows[:idx.size])
                loss_and_grad(pulled, cfg.sizes, rows[:idx.size], data.y_train[idx], bufs[k], ws,
                              scale=1.0 / (hi - lo))
            if compressed is not None:  # as each worker encoded its shard, with its residual
                compressed(u, u["epoch"] * spe + u["batch"], bufs[:len(shards)])
            np.copyto(grad, bufs[0])
            for k in range(1, len(shards)):
                grad += bufs[k]  # shard order, as the server adds them
            for v in set(used):
                if last_use.get(v) == i:
                    del versions[v]
            lr = staleness_lr(cfg.lr, u["staleness"], cfg.lr_staleness)
            sgd_momentum_(params, velocity, grad, lr, cfg.momentum, scratch)
            if i + 1 in last_use:
                versions[i + 1] = params.copy()
    diff = float(np.max(np.abs(params - final))) if params.size == final.size else float("inf")
    echo(f"replayed {len(updates)} updates ({cfg.consistency}, {cfg.workers} workers): "
         f"max |difference| from {run / 'model.npz'} {diff:g}")
    return diff
