"""`parsgd server`: build or resume a run directory, serve the workers, print the final line.

    parsgd server --bind tcp://127.0.0.1:5555 --workers 2 --dataset synthetic --num-samples 4096
    parsgd server --resume runs/ps-p2-20250101-120000     # continue from its checkpoint.npz

`launch` starts its server child as `python -m parsgd server --spec FILE`: FILE is a ServerSpec,
the RunConfig and ServerOptions as data (`{"config": ..., "server": ..., "out": ..., "resume": ...}`),
read back with the same `from_dict` a worker uses on WELCOME, so no option is turned back into
command-line text and parsed a second time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click

from parsgd.config import ConfigError, RunConfig, ServerOptions
from parsgd.errors import UserError
from parsgd.training.loop import fmt

ADDRESS_FILE = "server.address"  # written into the run directory once the server listens


class SpecError(UserError):
    """A server spec file cannot be read; the message names the file."""


@dataclass(frozen=True)
class ServerSpec:
    """Everything a server process needs: `config` (None when resuming: the checkpoint has it),
    the server options, the run directory and the run directory to resume (or None)."""

    config: RunConfig | None
    server: ServerOptions
    out: str | None = None
    resume: str | None = None

    def __post_init__(self):
        if self.config is None and not self.resume:
            raise ConfigError("a server spec needs a config unless it resumes a run")

    def to_dict(self) -> dict:
        return {"config": None if self.config is None else self.config.to_dict(),
                "server": self.server.to_dict(), "out": self.out, "resume": self.resume}

    @classmethod
    def from_dict(cls, d: dict) -> "ServerSpec":
        """From `to_dict()` output. Raises ConfigError for unknown keys or bad values."""
        if not isinstance(d, dict):
            raise ConfigError(f"a server spec must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {"config", "server", "out", "resume"})
        if unknown:
            raise ConfigError(f"unknown server spec keys: {', '.join(map(str, unknown))}")
        config = d.get("config")
        return cls(config=None if config is None else RunConfig.from_dict(config),
                   server=ServerOptions.from_dict(d.get("server", {})), out=d.get("out"), resume=d.get("resume"))

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


def run_server(cfg: RunConfig | None, opts: ServerOptions, out=None, resume=None, echo=click.echo) -> dict:
    """Runs a parameter server to the end of training; returns the run's summary.

    A new run trains `cfg` into `out` (default runs/ps-pN-TIMESTAMP); with `resume` (a run directory)
    the config, the step and the metrics come from its checkpoint.npz and the run appends to it
    (`cfg` and `out` are ignored). Writes RUN_DIR/server.address once listening, then prints one line
    per epoch and a final `done:` line through `echo`.

    Raises CheckpointError (no usable checkpoint), DataError, ConfigError (e.g. --batch-size larger
    than the data), OutputDirError, KeysError (CURVE keys) and ServerExit (cannot bind, workers missing
    or lost for --wait-timeout, a signal, a non-finite gradient; a checkpoint is written first).
    """
    from parsgd.jobs.train import load_data
    from parsgd.ps.checkpoint import load_checkpoint, restore
    from parsgd.ps.server import ParameterServer
    from parsgd.training.rundir import RunDir, atomic_write_bytes, default_out

    state = None
    if resume:
        state = load_checkpoint(resume)
        cfg = RunConfig.from_dict(state["config"])
        out = resume
    elif cfg is None:
        raise ConfigError("run_server needs a config unless it resumes a run")
    cfg, data = load_data(cfg, echo=echo)
    rundir = RunDir(out or default_out("ps", cfg.workers), cfg, "ps", transport=opts.transport,
                    dataset=data.name, append=bool(resume))
    srv = ParameterServer(cfg, data, opts, rundir, echo=echo)
    if state is not None:
        restore(srv, state)
        rundir.rewrite_metrics(srv.metrics)
        echo(f"resuming {rundir.path} at step {srv.step}")
    atomic_write_bytes(Path(rundir.path) / ADDRESS_FILE, srv.address.encode())
    summary = srv.serve()
    echo(f"done: test acc {fmt(summary['final_test_acc'])} in {summary['total_time_s']:.2f} s of training; "
         f"run directory {rundir.path}")
    return summary
