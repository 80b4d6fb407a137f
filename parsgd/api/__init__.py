"""The Python API for notebooks and scripts: the CLI's commands as functions that return results.

    import parsgd
    seq = parsgd.train(dataset="synthetic", num_samples=4096, epochs=3)        # parsgd train ...
    ps = parsgd.launch(workers=2, dataset="synthetic", num_samples=4096, epochs=3)
    exp = parsgd.experiment(workers=[2], modes="sequential,pool,ps", epochs=2, out="results")
    seq.metrics, ps.comm, ps.summary["final_test_acc"], exp.records, parsgd.load_run("runs/...")

train / launch / experiment / estimate take the options of `parsgd train|launch|experiment|estimate`
as keywords (the flag's name with underscores: num_samples=4096, transport="tcp", hidden=[256, 128]),
with the same defaults and checks: the keywords are parsed by the click command itself and run its
function, which calls the same job in parsgd/jobs/ (invoke.py). Bad options and failures raise the
UserError the CLI would print as `error: ...` (OptionError for a bad keyword or value, exit_code 2).
`progress` ("auto", "line", "lines", "none") says how their printed lines show (progress.py): by
default one updating line in a notebook or terminal.
"""
from __future__ import annotations

from pathlib import Path

from parsgd.api.invoke import OptionError, call, make_context, options_doc, run_context, signature
from parsgd.api.progress import printing
from parsgd.api.results import Experiment, Run, table
from parsgd.errors import UserError

__all__ = ["train", "launch", "experiment", "estimate", "evaluate", "report_html", "load_run", "load_experiment",
           "Run", "Experiment", "OptionError", "UserError"]


class LaunchFailed(UserError):
    """`parsgd launch` ended with a non-zero status and no error of its own; exit_code is that status."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _run_command(command, options: dict, progress: str, default_out=None):
    """Parse `options` with `command`, give --out a default (the job's own) so the folder is known, run it."""
    ctx = make_context(command, options, f"parsgd.{command.name}")
    if default_out is not None and ctx.params.get("out") is None and not ctx.params.get("resume"):
        ctx.params["out"] = str(default_out(ctx.params))
    with printing(progress):
        rv = run_context(command, ctx)
    return rv, Path(ctx.params.get("resume") or ctx.params["out"])


def train(progress: str = "auto", **options) -> Run:
    """`parsgd train` (sequential, or the Pool baseline with workers=P); returns the Run."""
    from parsgd.cli.training import train as command
    from parsgd.training.rundir import default_out

    def out(p):
        return default_out("pool" if p["workers"] > 1 else "sequential", p["workers"])

    return Run(_run_command(command, options, progress, out)[1])


def launch(progress: str = "auto", **options) -> Run:
    """`parsgd launch` (a parameter server and its workers, emulated links with link=RATE); returns the Run.
    Raises LaunchFailed when the launch ends with a non-zero status that carries no error of its own."""
    from parsgd.cli.training import launch as command
    from parsgd.training.rundir import default_out

    status, path = _run_command(command, options, progress, lambda p: default_out("ps", p["workers"]))
    if status:
        raise LaunchFailed(f"parsgd launch exited with status {status}; its output above says why", int(status))
    return Run(path)


def experiment(progress: str = "auto", **options) -> Experiment:
    """`parsgd experiment` (every mode, then the report, report.html and plots); returns the Experiment."""
    from parsgd.cli.reports import experiment as command

    return Experiment(_run_command(command, options, progress, lambda p: "results")[1])


def estimate(run, **options):
    """`parsgd estimate RUN_DIR`: one prediction per (workers, link, servers), a table (step_s,
    epoch_s, speedup, ...); `run` a Run or a run directory of `parsgd launch --link RATE`."""
    import json
    import contextlib
    import io

    from parsgd.cli.cluster import estimate as command

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        call(command, {**options, "run_dir": str(getattr(run, "path", run)), "json": True}, "parsgd.estimate")
    return table([json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()])


def evaluate(target, dataset: str | None = None, data_dir: str | None = None) -> dict:
    """`parsgd eval RUN_DIR_OR_MODEL`: {test_loss, test_acc, confusion [true][predicted], rows, ...}."""
    from parsgd.analysis.evaluate import evaluate_model

    return evaluate_model(getattr(target, "path", target), dataset, data_dir)


def report_html(*targets, file) -> Path:
    """`parsgd report TARGET... --html FILE`: one self-contained HTML page; returns its path."""
    from parsgd.analysis.html_report import write_html

    return write_html([getattr(t, "path", t) for t in targets], file)


def load_run(path) -> Run:
    """The Run of any run directory parsgd wrote (train, launch, server, experiment's runs)."""
    return Run(path)


def load_experiment(path) -> Experiment:
    """The Experiment of an experiment folder (`parsgd experiment --out DIR`)."""
    return Experiment(path)


def _document() -> None:
    """Give train / launch / experiment the CLI's options as their signature and in their docstring."""
    from parsgd.cli.cluster import estimate as estimate_command
    from parsgd.cli.reports import experiment as experiment_command
    from parsgd.cli.training import launch as launch_command, train as train_command

    for function, command, extra in ((train, train_command, {"progress": "auto"}),
                                     (launch, launch_command, {"progress": "auto"}),
                                     (experiment, experiment_command, {"progress": "auto"}),
                                     (estimate, estimate_command, {})):
        function.__signature__ = signature(command, extra)
        function.__doc__ += "\n\n    Keywords (the CLI's options and defaults):\n" + options_doc(command)


_document()
