"""`parsgd experiment`: sequential, Pool and parameter-server runs with one seed, then the comparison.

    parsgd experiment --workers 2,4 --dataset synthetic --num-samples 16384 --epochs 3 --out results

Sequential runs once; then, for each worker count P, the Pool baseline and the parameter server
over each transport; with `repeat` R > 1 that whole round runs R times (interleaved, so a slow
spell of the machine spreads over the configurations). Each run writes its own run directory under
`out` (`sequential`, `pool-p2`, `ps-p2-shm`, ...; `sequential-r1`, `sequential-r2`, ... when R > 1);
the report, report.html, experiment.json / .csv and the plots are read back from those directories only. A run
that fails is reported and skipped; the others still run and are compared. Rerun into the same
`out`, it removes what the previous experiment wrote there and this one did not write again, and
says so (jobs/outputs.py). A configuration that
does not train the same model as sequential (the same-model check) fails the experiment (exit 1)
after everything is written.
"""
from __future__ import annotations

import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import click

from parsgd.config import RunConfig, ServerOptions
from parsgd.errors import Interrupted, UsageError, UserError
from parsgd.training.divergence import EXIT_DIVERGED, verdict_line
from parsgd.training.progress import fmt, format_duration, warn_oversubscribed

MODES = ("sequential", "pool", "ps")
FAILED_TAIL_LINES = 15  # of a failed PS run's output, shown to say why it failed


class ExperimentFailed(UserError):
    """Some configurations failed (exit 1); the report covers the ones that finished."""

    def __init__(self, message: str, run_dirs: list[Path]):
        super().__init__(message)
        self.run_dirs = run_dirs


@dataclass(frozen=True)
class Configuration:
    mode: str
    workers: int
    transport: str | None = None
    link: str | None = None   # launch --link RATE: emulated hosts (transport tcp)
    consistency: str = "bsp"  # ps: launch --consistency
    staleness: int = 0        # ps, ssp: launch --staleness
    faults: str = ""          # ps: launch --faults
    overlap: str = "none"     # ps, bsp: launch --overlap
    bucket_bytes: int = 65536  # ps, --overlap bucket: launch --bucket-bytes
    compress: str = "none"    # ps: launch --compress
    error_feedback: bool = True
    link_delay: str | None = None  # with link: launch --link-delay (one for every link of the experiment)

    @property
    def label(self) -> str:
        """The same short name runs.Run.label gives the finished run."""
        from parsgd.analysis.rundirs import compress_word, overlap_word, setup_words

        if self.mode == "sequential":
            return "sequential"
        return ", ".join([f"{self.mode} P={self.workers}" + (f" {self.transport}" if self.transport else "")
                          + (f"@{self.link}" if self.link else "")
                          + (f" {self.consistency}" if self.consistency != "bsp" else "")
                          + overlap_word(self.overlap, self.bucket_bytes)
                          + compress_word(self.compress, self.error_feedback),
                          *setup_words({"faults": self.faults})])

    @property
    def dirname(self) -> str:
        if self.mode == "sequential":
            return "sequential"
        return (f"{self.mode}-p{self.workers}" + (f"-{self.transport}" if self.transport else "")
                + (f"-{self.link}" if self.link else "")
                + (f"-{self.consistency}" if self.consistency != "bsp" else "")
                + (f"-{self.overlap}" + (str(self.bucket_bytes) if self.overlap == "bucket" else "")
                   if self.overlap != "none" else "")
                + (f"-{self.compress.replace(':', '')}" if self.compress != "none" else "")
                + ("-noef" if self.compress != "none" and not self.error_feedback else ""))


class RunsDiverged(ExperimentFailed):
    """A configuration trained to its end but diverged (exit 3, as `train` and `launch`); all is written."""

    exit_code = EXIT_DIVERGED


class ModelMismatch(ExperimentFailed):
    """A configuration failed the same-model check: it trains another model than the reference."""


def plan(workers_list, modes, transports, links=(), consistencies=("bsp",), staleness: int = 0,
         faults: str = "", overlaps=("none",), bucket_bytes: int = 65536, compresses=("none",),
         error_feedback: bool = True, link_delay: str | None = None) -> list[Configuration]:
    """Sequential first, then per P (in the given order, duplicates dropped): pool, then ps per transport,
    or, with `links` (rates of `launch --link`), ps over tcp on each link (emulated hosts); each ps
    configuration once per consistency model, in the given order (ssp with `staleness`), with the
    `faults` schedule; bsp ones once per `overlaps` mode (launch --overlap, with `bucket_bytes`); each
    once per codec of `compresses` (launch --compress, with `error_feedback`), an overlap other than none
    only with --compress none (the two are not supported together: config.RunConfig); every link with
    the one-way `link_delay` (launch --link-delay)."""
    configs = [Configuration("sequential", 1)] if "sequential" in modes else []
    for p in dict.fromkeys(workers_list):
        if "pool" in modes:
            configs.append(Configuration("pool", p))
        if "ps" in modes:
            nets = [("tcp", rate) for rate in links] if links else [(t, None) for t in dict.fromkeys(transports)]
            configs += [Configuration("ps", p, t, rate, c, staleness if c == "ssp" else 0, faults, o, bucket_bytes,
                                      z, error_feedback, link_delay if rate else None)
                        for t, rate in nets for c in dict.fromkeys(consistencies)
                        for o in (dict.fromkeys(overlaps) if c == "bsp" else ("none",))
                        for z in dict.fromkeys(compresses) if o == "none" or z == "none"]
    return configs


def eta(done: list[tuple[Configuration, float]], remaining: list[Configuration]) -> float | None:
    """Seconds left: each remaining configuration costs the mean duration of finished runs of its mode
    (of all finished runs when none of its mode has finished yet). None before the first run ends."""
    if not done:
        return None
    overall = sum(s for _, s in done) / len(done)
    by_mode: dict[str, list[float]] = {}
    for c, s in done:
        by_mode.setdefault(c.mode, []).append(s)
    return sum(sum(by_mode[c.mode]) / len(by_mode[c.mode]) if c.mode in by_mode else overall for c in remaining)


def _run_in_process(config: Configuration, cfg: RunConfig, data, run_dir: Path, epoch_echo, force: bool) -> None:
    from parsgd.training.rundir import RunDir
    from parsgd.training.loop import Trainer
    from parsgd.training.pool import PoolTrainer

    cfg = cfg.replace(workers=config.workers)
    rundir = RunDir(run_dir, cfg, config.mode, dataset=data.name, force=force)
    trainer = (PoolTrainer if config.mode == "pool" else Trainer)(cfg, data, echo=epoch_echo, progress=False)
    try:
        trainer.run(rundir)
    finally:
        trainer.close()


class _ChildOutput:
    """launch's echo: keeps every child line, shows the server's epoch lines (all lines if verbose)."""

    def __init__(self, echo, epoch_echo, verbose: bool):
        self.echo, self.epoch_echo, self.verbose = echo, epoch_echo, verbose
        self.lines: list[str] = []
        self.launch_lines: set[str] = set()

    def __call__(self, line: str) -> None:
        if line.startswith("[launch] "):  # a worker exited, the server is being stopped: always worth seeing
            if line in self.launch_lines:
                return  # launch repeats some of these while it waits
            self.launch_lines.add(line)
            self.lines.append(line)
            self.echo(f"  {line}")
            return
        self.lines.append(line)
        if self.verbose:
            self.echo(f"  {line}")
        elif line.startswith(("[server] epoch ", "[server] progress: ")):
            self.epoch_echo(line.removeprefix("[server] "))


def _run_ps(config: Configuration, cfg: RunConfig, run_dir: Path, output: _ChildOutput, force: bool = False) -> int:
    from parsgd.jobs.launch import launch
    from parsgd.ps.faults import parse_launch_faults

    link = None
    if config.link:
        from parsgd.jobs.emulate import LinkOptions
        kinds = {item.split("=", 1)[0].strip() for item in config.faults.split(",")}
        link = LinkOptions(config.link, config.link_delay, latency_faults="latency" in kinds)
    cfg = cfg.replace(workers=config.workers, consistency=config.consistency, staleness=config.staleness,
                      overlap=config.overlap, bucket_bytes=config.bucket_bytes,
                      compress=config.compress, error_feedback=config.error_feedback)
    return launch(cfg, ServerOptions(faults=config.faults), config.transport, run_dir, echo=output, link=link,
                  worker_faults=parse_launch_faults(config.faults, config.workers), force=force, notes=False)


def _exit_reason(status: int) -> str:
    try:
        return f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
    except ValueError:
        return f"killed by signal {-status}"


def _run_one(config: Configuration, cfg: RunConfig, data, run_dir: Path, echo, epoch_echo, verbose,
             force: bool = False) -> str | None:
    """Train one configuration into run_dir and print its done line; returns why it failed, or None (a
    run that diverged did not fail: it is reported, and marked so)."""
    from parsgd.analysis.rundirs import load_run

    try:
        if config.mode == "ps":
            output = _ChildOutput(echo, epoch_echo, verbose)
            status = _run_ps(config, cfg, run_dir, output, force)
            if status == 130:
                raise Interrupted()
            if status not in (0, EXIT_DIVERGED):
                why = _exit_reason(status)
                echo(f"  FAILED: {config.label} ({why}); the last lines of its output:")
                for line in output.lines[-FAILED_TAIL_LINES:]:
                    echo(f"    {line}")
                return why
        else:
            _run_in_process(config, cfg, data, run_dir, epoch_echo, force)
        run = load_run(run_dir)
        summary = run.summary
    except Interrupted:
        raise
    except Exception as exc:  # one broken configuration must not cost the others
        why = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        why = why.strip().splitlines()[0]  # the final `error:` names it in one line
        echo(f"  FAILED: {config.label} ({why})")
        if verbose:
            echo(traceback.format_exc().rstrip())
        return why
    timed = (f" ({summary['timed_s']:.2f} s in {summary['timed_steps']} timed steps)"
             if summary.get("timed_steps") is not None else "")
    echo(f"  done: test acc {fmt(summary['final_test_acc'])}, {summary['total_time_s']:.2f} s of training{timed} "
         f"-> {run_dir}")
    if summary.get("diverged"):
        echo(f"  {verdict_line(summary, run.config)}")
    return None


def run_experiment(cfg: RunConfig, workers_list, modes, transports, out, quiet: bool = False, echo=click.echo,
                   verbose: bool = False, data=None, repeat: int = 1, links=(), consistencies=("bsp",),
                   staleness: int = 0, faults: str = "", force: bool = False, overlaps=("none",),
                   compresses=("none",), link_delay: str | None = None) -> list[Path]:
    """Run every configuration, then print and write the report and the plots; returns the run dirs.

    `cfg`: the training options (its `workers` is ignored; each configuration sets its own).
    `echo(line)` prints every console line: `quiet` drops the per-epoch ones, `verbose` adds every
    line of the PS processes. `data`: the Dataset for the in-process runs (loaded from cfg when
    None); the PS server loads the same rows itself from the same options. `repeat`: how many times
    each configuration runs (rounds of all of them, one after the other). `links`: rates of `launch
    --link` (preflight done by the caller): every ps configuration runs on each, on emulated hosts, after
    the machine's unshaped capacity is measured (capacity.json, and the report's first link figure);
    `link_delay`: each of those links' one-way delay (launch --link-delay, e.g. "5ms").
    `consistencies`: every ps configuration runs under each of these models, ssp with `staleness`
    (cfg's own consistency is not used: sequential and Pool are bulk-synchronous anyway). `faults`:
    every ps configuration's `launch --faults` schedule (checked by the caller for every P). `overlaps`:
    every bsp ps configuration runs with each `launch --overlap` mode (cfg.bucket_bytes). `compresses`:
    every ps configuration runs with each of these `launch --compress` codecs (cfg.error_feedback); an
    overlap other than none runs with --compress none only. `force`: a
    run directory may replace files parsgd did not write (else that configuration fails), and `out`
    files with the experiment's output names that no experiment recorded (else nothing runs). More worker
    processes than cores: one warning line first.

    Raises UsageError (nothing to run), DataError and ConfigError (loading the data), OutputDirError
    (`out` unusable), ForeignFiles (`out` holds files with the experiment's output names that no
    experiment recorded writing, unless `force`; outputs.previous_outputs), before anything runs;
    Interrupted (a parameter-server run was stopped by SIGINT/SIGTERM: exit 130) and, at the end, ExperimentFailed when any run failed, after writing the report of the others,
    ModelMismatch when a configuration failed the same-model check, or RunsDiverged (exit 3) when a
    configuration diverged, after writing everything.
    """
    from parsgd.data import load_dataset
    from parsgd.jobs.outputs import previous_outputs, write_outputs
    from parsgd.training.rundir import prepare_dir

    out = prepare_dir(out)
    configs = plan(workers_list, modes, transports, links, consistencies, staleness, faults, overlaps,
                   cfg.bucket_bytes, compresses, cfg.error_feedback, link_delay)
    if not configs:
        raise UsageError("nothing to run: give at least one mode, and --workers for pool and ps")
    previous, since = previous_outputs(out, force), time.time()
    warn_oversubscribed(max(c.workers for c in configs), echo)
    if data is None and (cfg.dataset == "auto" or any(c.mode != "ps" for c in configs)):
        data = load_dataset(cfg.dataset, cfg.data_dir, cfg.num_samples, cfg.seed, cfg.dtype,
                            log=None if quiet else echo)
    if data is not None:
        cfg.check_data_size(len(data.y_train))
        cfg = cfg.replace(dataset=data.name)  # every run, PS included, trains on the same dataset
    epoch_echo = (lambda _: None) if quiet else (lambda line: echo(f"  {line}"))
    extra: list[Path] = []
    if links and any(c.link for c in configs):
        from parsgd.jobs.emulate import measure_capacity
        measure_capacity(out, echo)
        extra.append(out / "capacity.json")
    run_dirs: list[Path] = []
    failures: list[str] = []
    done: list[tuple[Configuration, float]] = []
    tried: list[Path] = []
    todo = [(r, c) for r in range(1, repeat + 1) for c in configs]
    for i, (r, config) in enumerate(todo):
        left = eta(done, [c for _, c in todo[i:]])
        run_dir = out / (config.dirname + (f"-r{r}" if repeat > 1 else ""))
        tried.append(run_dir)
        what = config.label + (f" (run {r}/{repeat})" if repeat > 1 else "")
        echo(f"[{i + 1}/{len(todo)}] {what} ..." + (f"  ETA {format_duration(left)}" if left else ""))
        t0 = time.monotonic()
        why = _run_one(config, cfg, data, run_dir, echo, epoch_echo, verbose, force)
        if why is None:
            run_dirs.append(run_dir)
            done.append((config, time.monotonic() - t0))
        else:
            failures.append(f"{what} ({why})")
    rows = write_outputs(run_dirs, out, cfg, echo, tried=tried, previous=previous, since=since,
                         extra=extra, repeat=repeat)[1]
    if failures:
        rest = f"; the report covers the other {len(run_dirs)}" if run_dirs else ""
        noun = "configurations" if repeat == 1 else "runs"
        raise ExperimentFailed(f"{len(failures)} of {len(todo)} {noun} failed: "
                               f"{', '.join(failures)}{rest}", run_dirs)
    wrong = [r for r in rows if r["check_ok"] is False]
    if wrong:
        raise ModelMismatch(f"{len(wrong)} of {len(rows)} configurations did not train the same model as "
                            f"{rows[0]['run']} (the same-model check: parameters after the first steps): "
                            + ", ".join(f"{r['run']} (difference {r['check_diff']:.1e} > {r['check_tol']:.0e})"
                                        for r in wrong), run_dirs)
    diverged = [r for r in rows if r["diverged"]]
    if diverged:
        raise RunsDiverged(f"{len(diverged)} of {len(rows)} configurations diverged: "
                           f"{', '.join(r['run'] for r in diverged)} (the report says why and the likely fix; "
                           "every file is written)", run_dirs)
    return run_dirs

