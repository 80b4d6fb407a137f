"""`parsgd server`: build or resume a run directory, serve the workers, print the final line.

    parsgd server --bind tcp://127.0.0.1:5555 --workers 2 --dataset synthetic --num-samples 4096
    parsgd server --resume runs/ps-p2-20250101-120000     # continue from its checkpoint.npz

`launch` starts its server child as `python -m parsgd server --spec FILE`: FILE is a ServerSpec,
the RunConfig and ServerOptions as data (`{"config": ..., "server": ..., "out": ..., "resume": ..., "given": ...}`),
read back with the same `from_dict` a worker uses on WELCOME, so no option is turned back into
command-line text and parsed a second time.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import click

from parsgd.config import ConfigError, RunConfig, ServerOptions
from parsgd.errors import UsageError, UserError
from parsgd.training.divergence import done_line, raise_if_diverged

ADDRESS_FILE = "server.address"  # written into the run directory once the server listens


class SpecError(UserError):
    """A server spec file cannot be read; the message names the file."""


class ResumeMismatch(UsageError):
    """Options given with --resume differ from the checkpoint's run; the message names each (exit 2)."""


# The option of each RunConfig field (and --out), for messages. On --resume, only --epochs may differ
# (raised, to train longer) and --data-dir (where the same files are now); --dataset auto matches any.
FLAGS = {"dataset": "--dataset", "data_dir": "--data-dir", "num_samples": "--num-samples", "epochs": "--epochs",
         "batch_size": "--batch-size", "lr": "--lr", "momentum": "--momentum", "hidden": "--hidden",
         "seed": "--seed", "dtype": "--dtype", "workers": "--workers", "out": "--out", "consistency": "--consistency",
         "staleness": "--staleness", "lr_staleness": "--lr-staleness", "servers": "--servers", "shard_by": "--shard-by",
         "compress": "--compress", "error_feedback": "--error-feedback"}


def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def resume_config(run_dir, saved: dict, given: dict) -> RunConfig:
    """The config that continues the checkpoint's run `saved` (a RunConfig dict) in `run_dir`.

    `given`: {RunConfig field or "out": value} for the options the user gave explicitly with --resume.
    Each must equal the checkpoint's, except `epochs` (may be raised: the run trains on to the new
    count), `data_dir` (taken as given) and `dataset` "auto". Raises ResumeMismatch (exit 2) naming
    every other differing option with the checkpoint's value, and ConfigError for unknown names.
    """
    cfg = RunConfig.from_dict(saved)
    changes, bad = {}, []
    for name, value in given.items():
        if name not in FLAGS:
            raise ConfigError(f"unknown option {name!r} given with --resume")
        if name == "out":
            if Path(value).resolve() != Path(run_dir).resolve():
                bad.append(f"--out {value} (--resume continues in {run_dir})")
            continue
        have = getattr(cfg, name)
        value = tuple(value) if name == "hidden" else value
        if value == have or (name == "dataset" and value == "auto"):
            continue
        if name == "data_dir" or (name == "epochs" and value > have):
            changes[name] = value
            continue
        why = "; --epochs may only be raised" if name == "epochs" else ""
        bad.append(f"{FLAGS[name]} {_show(value)} (the checkpoint has {_show(have)}{why})")
    if bad:
        raise ResumeMismatch(f"--resume continues the run in {run_dir} with the checkpoint's options, so these "
                             f"cannot change: {'; '.join(bad)}. Omit them (only --epochs may be raised, to train "
                             "longer)")
    return cfg.replace(**changes)


def plan_resume(run_dir, given: dict | None) -> tuple[RunConfig, dict, str | None]:
    """Loads RUN_DIR/checkpoint.npz and checks `given` against it (see resume_config).

    Returns (config to continue with, checkpoint state, None) or, when the checkpoint already finished
    every epoch of that config, (config, state, a one-line message saying so). Raises CheckpointError
    (no usable checkpoint) and ResumeMismatch.
    """
    from parsgd.ps.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir)
    cfg = resume_config(run_dir, state["config"], given or {})
    if int(state["epoch"]) < cfg.epochs:
        return cfg, state, None
    return cfg, state, (f"{run_dir} already finished its {cfg.epochs} epochs (step {state['step']}): nothing to "
                        "resume; to train it further, pass a larger --epochs with --resume")


def server_resume_command(run_dir, address: str, opts: ServerOptions) -> str:
    """`parsgd server --resume RUN_DIR --bind ADDRESS` (+ --keys, --no-shm, --colocate): continues a server on the
    address it really bound (a `*` port resolved), so its workers find it again."""
    words = ["parsgd", "server", "--resume", str(run_dir), "--bind", address]
    if opts.keys_dir:
        words += ["--keys", str(opts.keys_dir)]
    if not opts.shm:
        words.append("--no-shm")
    if opts.colocate:
        words.append("--colocate")
    return shlex.join(words)


@dataclass(frozen=True)
class ServerSpec:
    """Everything a server process needs: `config` (None when resuming: the checkpoint has it),
    the server options, the run directory, the run directory to resume (or None) and, with it, the
    training options given explicitly (`given`: {RunConfig field: value}, checked by resume_config)."""

    config: RunConfig | None
    server: ServerOptions
    out: str | None = None
    resume: str | None = None
    given: dict | None = None
    force: bool = False        # replace files in `out` that parsgd did not write

    def __post_init__(self):
        if self.config is None and not self.resume:
            raise ConfigError("a server spec needs a config unless it resumes a run")

    def to_dict(self) -> dict:
        return {"config": None if self.config is None else self.config.to_dict(),
                "server": self.server.to_dict(), "out": self.out, "resume": self.resume, "given": self.given,
                "force": self.force}

    @classmethod
    def from_dict(cls, d: dict) -> "ServerSpec":
        """From `to_dict()` output. Raises ConfigError for unknown keys or bad values."""
        if not isinstance(d, dict):
            raise ConfigError(f"a server spec must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {"config", "server", "out", "resume", "given", "force"})
        if unknown:
            raise ConfigError(f"unknown server spec keys: {', '.join(map(str, unknown))}")
        config = d.get("config")
        return cls(config=None if config is None else RunConfig.from_dict(config),
                   server=ServerOptions.from_dict(d.get("server", {})), out=d.get("out"), resume=d.get("resume"),
                   given=d.get("given"), force=bool(d.get("force", False)))

    def write(self, path) -> Path:
        """Writes the spec as JSON to `path` (atomically); returns the path."""
        from parsgd.training.rundir import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return path

    @classmethod
    def read(cls, path) -> "ServerSpec":
        """Reads a spec written by `write`. Raises SpecError (missing or not JSON), ConfigError (bad values)."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SpecError(f"cannot read server spec {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise SpecError(f"server spec {path} is not valid JSON: {exc}") from None
        return cls.from_dict(d)


def run_server(cfg: RunConfig | None, opts: ServerOptions, out=None, resume=None, echo=click.echo,
               given: dict | None = None, say_replaced: bool = True, force: bool = False) -> dict | None:
    """Runs a parameter server to the end of training; returns the run's summary.

    A new run trains `cfg` into `out` (default runs/ps-pN-TIMESTAMP); with `resume` (a run directory)
    the config, the step and the metrics come from its checkpoint.npz and the run appends to it
    (`cfg` and `out` are ignored; `given`, the options the user gave explicitly, are checked against
    the checkpoint by resume_config). A resume of a finished run prints so and returns None. Writes
    RUN_DIR/server.address once listening, then prints one line per epoch and a final `done:` line
    through `echo`, after a line naming the files of an earlier run in `out` it replaces (unless
    `say_replaced` is False: launch says it). A stop prints `opts.resume_command`, by default the
    `server --resume` command of the address really bound. `force`: replace files in `out` that parsgd
    did not write (else ForeignFiles).

    Raises CheckpointError (no usable checkpoint), ResumeMismatch, DataError, ConfigError (e.g. --batch-size larger
    than the data), OutputDirError, KeysError (CURVE keys), ServerExit (cannot bind, workers missing
    or lost for --wait-timeout, a signal, a non-finite gradient; a checkpoint is written first) and
    RunDiverged (exit 3: trained to the end, every file written, but diverged).
    """
    from parsgd.jobs.train import load_data
    from parsgd.ps.checkpoint import restore
    from parsgd.ps.async_server import AsyncServer
    from parsgd.ps.server import ParameterServer
    from parsgd.training.rundir import RunDir, atomic_write_bytes, check_replace, default_out

    state = None
    if resume:
        cfg, state, finished = plan_resume(resume, given)
        if finished:
            echo(finished)
            return None
        out = resume
    elif cfg is None:
        raise ConfigError("run_server needs a config unless it resumes a run")
    elif out is not None:
        check_replace(out, force)  # before the data is loaded: the refusal comes at once
    cfg, data = load_data(cfg, echo=echo)
    rundir = RunDir(out or default_out("ps", cfg.workers), cfg, "ps", transport=opts.transport,
                    dataset=data.name, append=bool(resume), echo=echo if say_replaced else None,
                    setup=opts.setup(), force=force)
    echo(f"run directory {rundir.path}")
    server_class = ParameterServer if cfg.consistency == "bsp" else AsyncServer
    srv = server_class(cfg, data, opts, rundir, echo=echo)
    if not opts.resume_command:  # only now is a `*` port known
        srv.opts = dataclasses.replace(opts, resume_command=server_resume_command(rundir.path, srv.address, opts))
    if state is not None:
        restore(srv, state)
        rundir.rewrite_metrics(srv.metrics)
        echo(f"resuming {rundir.path} at step {srv.step}")
    atomic_write_bytes(Path(rundir.path) / ADDRESS_FILE, srv.address.encode())
    summary = srv.serve()
    echo(done_line(summary, rundir.path))
    raise_if_diverged(summary, cfg.to_dict(), rundir.path)
    return summary


RANGE_SERVER_OPTIONS = {"rank", "connect", "bind", "keys_dir", "connect_timeout", "shm", "servers"}


def run_range_server(ctx, rank: int, connect: str | None, bind: str, keys_dir, connect_timeout: float,
                     shm: bool) -> int:
    """`parsgd server --servers S --rank s --connect COORD [--bind ADDR]`: range server s until server 0
    stops it (returns 0). Its config comes from server 0, so any training or fault option given with it is
    refused (UsageError, exit 2), as are a rank below 1, a missing --connect and a --bind workers could not
    reach (a wildcard host). Raises RangeServerExit (server 0 lost or refusing: exit 1), BindError, KeysError.
    """
    from click.core import ParameterSource

    from parsgd.ps.address import parse_endpoint
    from parsgd.ps.range_server import RangeOptions, RangeServer
    from parsgd.ps.sockets import refuse_open_bind

    given = [p.opts[0] for p in ctx.command.params if p.name not in RANGE_SERVER_OPTIONS
             and ctx.get_parameter_source(p.name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
    if given:
        raise UsageError(f"--rank {rank} takes its config from server 0 (--connect): drop {', '.join(given)}")
    if rank < 1 or not connect:
        raise UsageError(f"a range server needs --rank 1..S-1 and --connect (server 0's address); got --rank {rank}"
                         f"{'' if connect else ' and no --connect'}")
    parse_endpoint(connect, "connect")
    if ctx.get_parameter_source("bind") == ParameterSource.DEFAULT:
        bind = "tcp://127.0.0.1:*"  # a free port; server 0 learns it and tells the workers
    endpoint = parse_endpoint(bind, "bind")
    if endpoint.scheme == "tcp" and endpoint.host in ("*", "0.0.0.0", "::"):
        raise UsageError(f"--bind {bind}: workers are told this address, so give the host they reach this server "
                         "at, e.g. --bind tcp://HOST:5556")
    refuse_open_bind(bind, keys_dir)
    return RangeServer(RangeOptions(rank, connect, bind, keys_dir, connect_timeout, shm)).run()
