"""Reading an experiment folder (what `parsgd experiment --out DIR` writes): experiment.json and its runs.

    python -c "from parsgd.analysis.experiments import experiment_runs; print(experiment_runs('results'))"

An experiment folder holds experiment.json and one run directory per configuration (and repeat);
it is not a run directory itself, and the commands that take one say so (check_not_experiment).
"""
from __future__ import annotations

import json
from pathlib import Path

from parsgd.analysis.rundirs import COMM, CONFIG, METRICS, Run, RunDirError

EXPERIMENT_FILE = "experiment.json"


class ExperimentFolderGiven(RunDirError):
    """A command that takes one run directory was given an experiment folder (exit 2)."""

    exit_code = 2


def is_experiment_dir(path) -> bool:
    """True when the folder `path` holds an experiment.json and is not a run directory itself."""
    path = Path(path)
    return (path / EXPERIMENT_FILE).is_file() and not (path / CONFIG).is_file()


def example_run(path) -> Path | None:
    """A run directory inside the experiment folder `path` to name in a message: the first (by name)
    parameter-server run (it has comm.jsonl, which trace, replay and estimate need), else the first
    run; None when it holds none."""
    runs = sorted(d for d in Path(path).iterdir() if (d / CONFIG).is_file() and (d / METRICS).is_file())
    return next((d for d in runs if (d / COMM).is_file()), runs[0] if runs else None)


def check_not_experiment(path) -> None:
    """Raise ExperimentFolderGiven when `path` is an experiment folder, naming one of its runs."""
    if not is_experiment_dir(path):
        return
    run = example_run(path)
    hint = f"give one of its runs, e.g. {run}" if run else "it holds no run directory: give a run directory"
    raise ExperimentFolderGiven(f"{path} is an experiment folder, not a run directory; {hint}")


def read_experiment(path) -> dict:
    """experiment.json of the experiment folder `path`: {"experiment": {...}, "records": [...]}.
    Raises RunDirError when it is unreadable, not JSON, or not of that shape."""
    file = Path(path) / EXPERIMENT_FILE
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RunDirError(f"{file}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise RunDirError(f"{file}: invalid JSON: {exc}; rerun the experiment to rewrite it") from None
    if not (isinstance(doc, dict) and isinstance(doc.get("experiment"), dict) and isinstance(doc.get("records"), list)
            and all(isinstance(r, dict) and isinstance(r.get("path"), str) for r in doc["records"])):
        raise RunDirError(f"{file}: not an experiment.json parsgd wrote (an object with 'experiment' and "
                          "'records', each with a 'path'): rerun the experiment to rewrite it")
    return doc


def experiment_runs(path) -> list[Path]:
    """The run directories of the experiment folder `path` that its records cover (the finished runs),
    in the order of the records, each once. A record's `path` is where the run was written; the run
    is looked up by its folder name inside `path`, so a moved experiment folder still reads. Raises
    RunDirError as read_experiment does."""
    names = dict.fromkeys(Path(r["path"]).name for r in read_experiment(path)["records"])
    return [Path(path) / name for name in names]


def experiment_baseline(runs: list[Run]) -> Run:
    """The run speedups are relative to: the sequential one, else the first."""
    return next((r for r in runs if r.mode == "sequential"), runs[0])
