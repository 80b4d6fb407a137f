"""`parsgd train`: load the data a RunConfig names and train sequentially or with the Pool baseline.

    parsgd train --dataset synthetic --num-samples 4096 --epochs 2            # sequential
    parsgd train --workers 4 --dataset synthetic --num-samples 4096            # Pool, P=4

`load_data` is shared by every job that trains in this process (train, server, experiment).
"""
from __future__ import annotations

from pathlib import Path

import click

from parsgd.config import RunConfig
from parsgd.errors import Interrupted
from parsgd.training.divergence import done_line, raise_if_diverged


def load_data(cfg: RunConfig, quiet: bool = False, echo=click.echo):
    """Loads the dataset `cfg` names; returns (cfg with the dataset actually loaded, Dataset).

    Prints where the data came from through `echo` unless `quiet`. Raises DataError (files missing,
    corrupt or not downloadable) and ConfigError (--batch-size larger than the training set).
    """
    from parsgd.data import load_dataset

    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.num_samples, cfg.seed, cfg.dtype,
                        log=None if quiet else echo)
    cfg.check_data_size(len(data.y_train))
    return cfg.replace(dataset=data.name), data


def run_training(cfg: RunConfig, out=None, blas_threads: int | None = None, echo=click.echo,
                 force: bool = False) -> Path:
    """Trains `cfg` in this process (sequential for workers=1, else the Pool baseline) into a run
    directory (`out`, default runs/MODE-pP-TIMESTAMP), prints one line per epoch and a final
    `done:` line; returns the run directory. `blas_threads` limits BLAS threads in this process.
    `force`: replace files in `out` that parsgd did not write (else ForeignFiles, exit 1).

    Raises DataError and ConfigError (see load_data), OutputDirError (`out` unusable), Interrupted
    (Ctrl-C / SIGINT: exit 130, after the Pool processes are gone) and RunDiverged (exit 3: trained to
    the end, every file written, but diverged: training/divergence.py).
    """
    try:
        return _run_training(cfg, out, blas_threads, echo, force)
    except KeyboardInterrupt:
        raise Interrupted() from None


def _run_training(cfg: RunConfig, out, blas_threads: int | None, echo, force: bool) -> Path:
    from threadpoolctl import threadpool_limits

    from parsgd.training.pool import make_trainer
    from parsgd.training.progress import warn_oversubscribed
    from parsgd.training.rundir import RunDir, check_replace, default_out

    if out is not None:
        check_replace(out, force)  # before the data is loaded: the refusal comes at once
    cfg, data = load_data(cfg, echo=echo)
    mode = "pool" if cfg.workers > 1 else "sequential"
    rundir = RunDir(out or default_out(mode, cfg.workers), cfg, mode, dataset=data.name, echo=echo,
                    setup={"blas_threads": blas_threads}, force=force)
    echo(f"run directory {rundir.path}")
    warn_oversubscribed(cfg.workers if mode == "pool" else 1, echo)
    limits = threadpool_limits(blas_threads) if blas_threads else None
    trainer = make_trainer(cfg, data, echo=echo)
    try:
        summary = trainer.run(rundir)
    finally:
        trainer.close()
        if limits is not None:
            limits.restore_original_limits()
    echo(done_line(summary, rundir.path))
    raise_if_diverged(summary, cfg.to_dict(), rundir.path)
    return rundir.path
