"""The `parsgd` command: a thin click layer that parses options, builds a RunConfig and calls the library.

    parsgd --help
"""
from __future__ import annotations

import os
import sys

import click

from parsgd.config import DATASETS, DTYPES, ConfigError, RunConfig


class UserError(Exception):
    """Any error whose message is meant for the user as it is (exit 1, one line)."""


def _user_error_types() -> tuple[type, ...]:
    """Exceptions from the library that carry a one-line message for the user."""
    from parsgd.data import DataError
    from parsgd.ps.checkpoint import CheckpointError
    from parsgd.ps.faults import FaultSpecError
    from parsgd.ps.server import ServerExit
    from parsgd.ps.sockets import KeysError
    from parsgd.ps.worker import WorkerExit
    from parsgd.training.rundir import OutputDirError
    types = [UserError, ConfigError, DataError, OutputDirError, ServerExit, WorkerExit, CheckpointError,
             KeysError, FaultSpecError]
    try:
        from parsgd.analysis.rundirs import RunDirError
        types.append(RunDirError)
    except ImportError:
        pass
    return tuple(types)


class ParsgdGroup(click.Group):
    """Prints every error as one line, `error: ...`: exit 2 for bad usage, 1 for anything else."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except _user_error_types() as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def parse_int_list(value, name: str) -> tuple[int, ...]:
    """'2,4', '2 4' or a repeated flag -> (2, 4)."""
    if value is None:
        return ()
    parts = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for part in parts:
        for tok in str(part).replace(",", " ").split():
            try:
                out.append(int(tok))
            except ValueError:
                raise click.BadParameter(f"{tok!r} is not a whole number; write numbers like 2,4 or '2 4'",
                                         param_hint=name) from None
    return tuple(out)


def parse_str_list(value, choices, name: str) -> tuple[str, ...]:
    out = []
    for part in value or ():
        for tok in str(part).replace(",", " ").split():
            if tok not in choices:
                raise click.BadParameter(f"{tok!r} is not one of {', '.join(choices)}", param_hint=name)
            out.append(tok)
    return tuple(out)


def training_options(f):
    """DESIGN's common training options, each also spelled with underscores."""
    opts = [
        click.option("--dataset", type=click.Choice(DATASETS), default="auto", show_default=True,
                     help="auto: MNIST if found locally, else Fashion-MNIST, else download MNIST, else synthetic."),
        click.option("--data-dir", "--data_dir", "data_dir", envvar="PARSGD_DATA_DIR",
                     help="Folder with mnist/ and fashion-mnist/ IDX files, and the download cache "
                          "[env PARSGD_DATA_DIR; default ~/.cache/parsgd]."),
        click.option("--num-samples", "--num_samples", "num_samples", type=int,
                     help="Use this many training rows (deterministic subsample from the seed)."),
        click.option("--epochs", type=int, default=10, show_default=True, help="Passes over the training set."),
        click.option("--batch-size", "--batch_size", "batch_size", type=int, default=256, show_default=True,
                     help="Rows per mini-batch (one update per batch, whatever the worker count)."),
        click.option("--lr", type=float, default=0.1, show_default=True, help="Learning rate."),
        click.option("--momentum", type=float, default=0.9, show_default=True, help="Momentum in [0, 1)."),
        click.option("--hidden", multiple=True, default=("256,128",), show_default=True,
                     help="Hidden layer widths: 256,128 or '256 128' or a repeated flag."),
        click.option("--seed", type=int, default=42, show_default=True,
                     help="Seed of the initial weights, the data order and synthetic data."),
        click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
                     help="Floating-point type of parameters, data and gradients."),
        click.option("--out", type=click.Path(), help="Run directory [default runs/MODE-pP-TIMESTAMP]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def build_config(workers: int, dataset, data_dir, num_samples, epochs, batch_size, lr, momentum,
                 hidden, seed, dtype, **_) -> RunConfig:
    """RunConfig from parsed options; a bad value becomes a usage error naming the option."""
    try:
        return RunConfig(dataset=dataset, data_dir=data_dir, num_samples=num_samples, epochs=epochs,
                         batch_size=batch_size, lr=lr, momentum=momentum,
                         hidden=parse_int_list(hidden, "--hidden"), seed=seed, dtype=dtype, workers=workers)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def load_data(cfg: RunConfig, quiet: bool = False):
    """Loads the dataset the config names and returns (resolved config, Dataset)."""
    from parsgd.data import load_dataset
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.num_samples, cfg.seed, cfg.dtype,
                        log=None if quiet else click.echo)
    try:
        cfg.check_data_size(len(data.y_train))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return cfg.replace(dataset=data.name), data


@click.group(cls=ParsgdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="parsgd")
def cli():
    """Data-parallel mini-batch SGD as explicit message passing."""


@cli.command()
@click.option("--workers", type=int, default=1, show_default=True,
              help="1: sequential; P > 1: the multiprocessing.Pool data-parallel baseline.")
@click.option("--blas-threads", "--blas_threads", "blas_threads", type=int,
              help="Limit BLAS threads in this process (default: the library's own choice).")
@training_options
def train(workers, blas_threads, out, **opts):
    """Train on one machine: sequentially, or with the Pool baseline (--workers P)."""
    from threadpoolctl import threadpool_limits

    from parsgd.training.rundir import RunDir, default_out
    from parsgd.training.loop import make_trainer

    cfg = build_config(workers, **opts)
    cfg, data = load_data(cfg)
    mode = "pool" if workers > 1 else "sequential"
    rundir = RunDir(out or default_out(mode, workers), cfg, mode, dataset=data.name)
    limits = threadpool_limits(blas_threads) if blas_threads else None
    trainer = make_trainer(cfg, data)
    try:
        summary = trainer.run(rundir)
    finally:
        trainer.close()
        if limits is not None:
            limits.restore_original_limits()
    click.echo(f"done: test acc {summary['final_test_acc']:.4f} in {summary['total_time_s']:.2f} s "
               f"of training; run directory {rundir.path}")


def config_args(cfg: RunConfig) -> list[str]:
    """Command-line options that rebuild `cfg` (what launch passes to the server)."""
    args = ["--dataset", cfg.dataset, "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size),
            "--lr", repr(cfg.lr), "--momentum", repr(cfg.momentum), "--hidden", ",".join(map(str, cfg.hidden)),
            "--seed", str(cfg.seed), "--dtype", cfg.dtype]
    if cfg.data_dir:
        args += ["--data-dir", cfg.data_dir]
    if cfg.num_samples:
        args += ["--num-samples", str(cfg.num_samples)]
    return args


def server_options(f):
    """Knobs of the server's fault handling, shared by `server` and `launch`."""
    opts = [
        click.option("--wait-timeout", "--wait_timeout", "wait_timeout", type=float, default=300.0, show_default=True,
                     help="Seconds to wait for the workers at the start, and for any worker when none is left."),
        click.option("--heartbeat", type=float, default=1.0, show_default=True,
                     help="Heartbeat interval in seconds (both ways)."),
        click.option("--liveness", type=int, default=3, show_default=True,
                     help="Missed heartbeats before a worker (or the server) counts as dead."),
        click.option("--step-timeout", "--step_timeout", "step_timeout", type=float, default=10.0, show_default=True,
                     help="Seconds a shard may take before it is given to another worker."),
        click.option("--checkpoint-every", "--checkpoint_every", "checkpoint_every", type=int, default=0,
                     show_default=True, help="Checkpoint every N steps (0: at the end of every epoch)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _check_server_knobs(heartbeat, liveness, step_timeout, wait_timeout, checkpoint_every):
    for name, value, ok in (("--heartbeat", heartbeat, heartbeat > 0), ("--liveness", liveness, liveness >= 1),
                            ("--step-timeout", step_timeout, step_timeout > 0),
                            ("--wait-timeout", wait_timeout, wait_timeout > 0),
                            ("--checkpoint-every", checkpoint_every, checkpoint_every >= 0)):
        if not ok:
            raise click.BadParameter(f"{value} is out of range", param_hint=name)


@cli.command()
@click.option("--bind", default="tcp://127.0.0.1:5555", show_default=True,
              help="Address to listen on: tcp://HOST:PORT (port * picks a free one) or ipc://PATH. "
                   "A non-loopback address needs --keys.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Workers to wait for; also the number of shards of every batch.")
@server_options
@click.option("--shm/--no-shm", default=True, show_default=True,
              help="Move parameters and gradients of same-host workers through shared memory.")
@click.option("--keys", "keys_dir", type=click.Path(), help="CURVE key folder from `parsgd keygen`.")
@click.option("--register-timeout", "--register_timeout", "register_timeout", default=60.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds a welcomed worker has to load its data and send READY before it is forgotten.")
@click.option("--resume", type=click.Path(), help="Continue the run in this run directory from its checkpoint.")
@click.option("--transport-label", hidden=True, help="Transport name recorded in the run (set by launch).")
@training_options
def server(bind, workers, wait_timeout, heartbeat, liveness, step_timeout, checkpoint_every, shm, keys_dir,
           register_timeout, resume, transport_label, out, **opts):
    """Run the parameter server: hold the weights, wait for workers, train."""
    from pathlib import Path

    from parsgd.ps.checkpoint import load_checkpoint, restore
    from parsgd.config import ServerOptions
    from parsgd.ps.server import ParameterServer
    from parsgd.training.rundir import RunDir, atomic_write_bytes, default_out

    _check_server_knobs(heartbeat, liveness, step_timeout, wait_timeout, checkpoint_every)
    state = None
    if resume:
        state = load_checkpoint(resume)
        cfg = RunConfig.from_dict(state["config"])
        out = resume
    else:
        cfg = build_config(workers, **opts)
    cfg, data = load_data(cfg)
    label = transport_label or ("shm" if shm else bind.split("://")[0])
    rundir = RunDir(out or default_out("ps", cfg.workers), cfg, "ps", transport=label, dataset=data.name,
                    append=bool(resume))
    sopts = ServerOptions(bind=bind, wait_timeout_s=wait_timeout, heartbeat_s=heartbeat, liveness=liveness,
                          step_timeout_s=step_timeout, checkpoint_every=checkpoint_every, shm=shm, keys_dir=keys_dir,
                          register_timeout_s=register_timeout, transport=label)
    srv = ParameterServer(cfg, data, sopts, rundir)
    if state is not None:
        restore(srv, state)
        rundir.rewrite_metrics(srv.metrics)
        click.echo(f"resuming {rundir.path} at step {srv.step}")
    atomic_write_bytes(Path(rundir.path) / "server.address", srv.address.encode())
    summary = srv.serve()
    click.echo(f"done: test acc {summary['final_test_acc']:.4f} in {summary['total_time_s']:.2f} s of training; "
               f"run directory {rundir.path}")


@cli.command()
@click.option("--connect", default="tcp://127.0.0.1:5555", show_default=True, help="The server's address.")
@click.option("--connect-timeout", "--connect_timeout", "connect_timeout", type=float, default=60.0,
              show_default=True, help="Seconds to keep trying to reach a server before giving up.")
@click.option("--data-dir", "--data_dir", "data_dir",
              help="Where this worker finds the dataset files, if not where the server's config says.")
@click.option("--keys", "keys_dir", type=click.Path(), help="CURVE key folder from `parsgd keygen`.")
@click.option("--faults", default="", envvar="PARSGD_FAULTS",
              help="Fault injection for tests and demos, e.g. kill@40 or drop=0.1,seed=7 [env PARSGD_FAULTS].")
@click.option("--name", default="", help="A label for this worker in the server's log.")
def worker(connect, connect_timeout, data_dir, keys_dir, faults, name):
    """Run a worker: take the config from the server, compute gradients until it says stop."""
    from parsgd.ps.worker import Worker, WorkerOptions

    if connect_timeout <= 0:
        raise click.BadParameter(f"{connect_timeout} must be > 0", param_hint="--connect-timeout")
    w = Worker(WorkerOptions(connect=connect, connect_timeout=connect_timeout, data_dir=data_dir,
                             keys_dir=keys_dir, faults=faults, name=name))
    return w.run()


def parse_launch_faults(spec: str, workers: int) -> dict[int, str]:
    """'kill=worker1@step40,stop=worker2@step60:5s,drop=0.1' -> per-worker --faults texts."""
    per: dict[int, list[str]] = {i: [] for i in range(workers)}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, rest = item.partition("=")
        if rest.startswith("worker"):
            who, _, when = rest.partition("@")
            try:
                i = int(who.removeprefix("worker"))
            except ValueError:
                raise click.BadParameter(f"{item!r}: name a worker as workerN", param_hint="--faults") from None
            if i not in per:
                raise click.BadParameter(f"{item!r}: there are workers 0..{workers - 1}", param_hint="--faults")
            per[i].append(f"{kind}@{when}")
        else:
            for items in per.values():
                items.append(item)
    return {i: ",".join(items) for i, items in per.items() if items}


@cli.command()
@click.option("--workers", type=int, default=2, show_default=True, help="Worker processes to start.")
@click.option("--transport", type=click.Choice(("shm", "tcp", "ipc")), default="shm", show_default=True,
              help="shm: messages over loopback TCP, parameters and gradients in shared memory; "
                   "tcp / ipc: everything through the socket.")
@server_options
@click.option("--restart-workers", "--restart_workers", "restart_workers", type=int, default=0, show_default=True,
              help="Restart a crashed worker, up to this many times in all.")
@click.option("--faults", default="",
              help="Fault schedule, e.g. kill=worker1@step40,stop=worker2@step60:5s,drop=0.05,seed=3.")
@click.option("--resume", type=click.Path(), help="Continue the run in this run directory from its checkpoint.")
@training_options
def launch(workers, transport, wait_timeout, heartbeat, liveness, step_timeout, checkpoint_every, restart_workers,
           faults, resume, out, **opts):
    """Start a parameter server and N workers on this machine; stop them all on exit."""
    from pathlib import Path

    from parsgd.jobs.launch import launch as run_launch
    from parsgd.ps.faults import FaultPlan
    from parsgd.training.rundir import default_out, prepare_dir

    _check_server_knobs(heartbeat, liveness, step_timeout, wait_timeout, checkpoint_every)
    if restart_workers < 0:
        raise click.BadParameter(f"{restart_workers} is negative", param_hint="--restart-workers")
    cfg = build_config(workers, **opts)
    per_worker = parse_launch_faults(faults, workers)
    for spec in per_worker.values():
        FaultPlan.parse(spec, echo=lambda _: None)  # refuse a bad schedule before starting anything
    knobs = ["--wait-timeout", repr(wait_timeout), "--heartbeat", repr(heartbeat), "--liveness", str(liveness),
             "--step-timeout", repr(step_timeout), "--checkpoint-every", str(checkpoint_every)]
    if resume:
        run_dir, server_args = Path(resume), [*knobs, "--resume", str(resume)]
    else:
        run_dir, server_args = Path(out or default_out("ps", workers)), [*knobs, *config_args(cfg)]
    prepare_dir(run_dir)
    return run_launch(server_args, workers, transport, run_dir, worker_faults=per_worker,
                      restart_workers=restart_workers)


@cli.command()
@click.argument("directory", type=click.Path())
def keygen(directory):
    """Write CURVE keypairs for a server and a worker into DIRECTORY (and allow that worker)."""
    from parsgd.ps.sockets import keygen as make_keys

    for path in make_keys(directory):
        click.echo(str(path))


# --- reports: experiment, plot, trace (owned by the reports work; keep other commands above) ---

@cli.command()
@click.option("--workers", multiple=True, default=("2,4",), show_default=True,
              help="Worker counts P to compare, each run with the Pool baseline and the parameter server: "
                   "2,4 or '2 4' or a repeated flag.")
@click.option("--modes", multiple=True, default=("sequential,pool,ps",), show_default=True,
              help="Which of sequential, pool, ps to run (sequential is the speedup baseline).")
@click.option("--transport", "transports", multiple=True, default=("shm,tcp",), show_default=True,
              help="Parameter-server transports to run for each P: shm, tcp, ipc (see `parsgd launch --help`).")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch lines: one progress line per configuration.")
@click.option("--verbose", "-v", is_flag=True, help="Show every line of the server and worker processes.")
@training_options
def experiment(workers, modes, transports, quiet, verbose, out, **opts):
    """Compare sequential, Pool and parameter-server training with one seed: table, report, plots."""
    from parsgd.jobs.experiment import MODES, run_experiment
    from parsgd.jobs.launch import TRANSPORTS

    modes = parse_str_list(modes, MODES, "--modes")
    if not modes:
        raise click.BadParameter(f"give at least one of {', '.join(MODES)}", param_hint="--modes")
    transports = parse_str_list(transports, TRANSPORTS, "--transport")
    if "ps" in modes and not transports:
        raise click.BadParameter(f"give at least one of {', '.join(TRANSPORTS)}", param_hint="--transport")
    cfg = build_config(1, **opts)
    workers_list = parse_int_list(workers, "--workers")
    if set(modes) - {"sequential"} and not workers_list:
        raise click.BadParameter("give at least one worker count, e.g. --workers 2,4", param_hint="--workers")
    for p in workers_list:
        if not 1 <= p <= cfg.batch_size:
            raise click.BadParameter(f"{p} is out of range: each P must be between 1 and --batch-size "
                                     f"({cfg.batch_size})", param_hint="--workers")
    cfg, data = load_data(cfg, quiet)
    run_experiment(cfg, workers_list, modes, transports, out or "results", quiet=quiet, verbose=verbose, data=data)


for _param in experiment.params:
    if _param.name == "out":
        _param.help = "Folder for the run directories, experiment_report.txt and the plots [default results]."


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR...")
@click.option("-o", "--out", type=click.Path(),
              help="Folder for the PNGs [default: the run directory for one run, else the current folder].")
def plot(run_dirs, out):
    """Plot runs: loss, accuracy, epoch time (every run a series); PS runs add timeline and overhead."""
    from parsgd.analysis.plots import plot_runs

    for path in plot_runs(run_dirs, out):
        click.echo(str(path))


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("-o", "--out", type=click.Path(), help="Trace file to write [default RUN_DIR/trace.json].")
def trace(run_dir, out):
    """Write a parameter-server run's comm.jsonl as a Chrome trace (open it in ui.perfetto.dev)."""
    from pathlib import Path

    from parsgd.analysis.trace import write_trace

    out = Path(out) if out else Path(run_dir) / "trace.json"
    n = write_trace(run_dir, out)
    click.echo(f"wrote {n} spans to {out}: open it in https://ui.perfetto.dev or chrome://tracing")

# --- end of reports ---


def main():
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli(prog_name="parsgd")
