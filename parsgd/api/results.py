"""What the Python API returns: a Run (one run directory) and an Experiment (an experiment folder).

    python -c "import parsgd; r = parsgd.load_run('runs/sequential-p1-...'); print(r.summary['final_test_acc'])"

Both only read what the CLI wrote (parsgd.analysis.rundirs, experiments), so a Run of `parsgd.train(...)`
and `parsgd.load_run(DIR)` of a `parsgd train` run are the same thing. Tables (metrics per epoch, comm
spans, the experiment's records) are pandas DataFrames when pandas is installed (`pip install
parsgd[notebook]`), else lists of dicts with the same keys: `table(rows)`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from parsgd.analysis.rundirs import RunDirError, load_run as _load_run

COMM_COLUMNS = ("role", "rank", "step", "span", "t_s", "dur_s", "bytes", "server")


def has_pandas() -> bool:
    return importlib.util.find_spec("pandas") is not None


def table(rows: list[dict], columns=None):
    """A pandas DataFrame of `rows` (columns in that order) when pandas is installed, else `rows`."""
    if not has_pandas():
        return rows
    import pandas as pd

    return pd.DataFrame(rows, columns=list(columns) if columns else None)


class Run:
    """One run directory, read on demand.

    path: the folder; meta: config.json; config: its RunConfig dict; summary: summary.json (derived from
    metrics.jsonl for an unfinished run); metrics: one row per epoch (epoch, train_loss, train_acc,
    test_loss, test_acc, epoch_time_s, ...); comm: one row per span of comm.jsonl (role, rank, step,
    span, t_s, dur_s in seconds, bytes, server), None for a run without one; model: {W1: (784, 256),
    b1: (256,), ...} arrays of model.npz. Raises RunDirError (a folder that is not a run) on creation.
    """

    def __init__(self, path):
        self._run = _load_run(path)
        self.path: Path = self._run.path
        self._model = None

    meta = property(lambda self: self._run.meta)
    config = property(lambda self: self._run.config)
    summary = property(lambda self: self._run.summary)
    mode = property(lambda self: self._run.mode)
    label = property(lambda self: self._run.label)
    workers = property(lambda self: self._run.workers)
    finished = property(lambda self: self._run.finished)

    @property
    def metrics(self):
        return table(self._run.metrics)

    @property
    def comm(self):
        spans = self._run.comm
        if spans is None:
            return None
        cols = {c: getattr(spans, c) for c in COMM_COLUMNS}
        if cols["server"] is None:
            cols["server"] = np.full(len(spans), -1, dtype=np.int64)
        if has_pandas():
            import pandas as pd

            return pd.DataFrame(cols)
        return [{c: v[i].item() for c, v in cols.items()} for i in range(len(spans))]

    @property
    def model(self) -> dict[str, np.ndarray]:
        if self._model is None:
            from parsgd.analysis.evaluate import MODEL, read_model

            if not (self.path / MODEL).is_file():
                raise RunDirError(f"{self.path} has no {MODEL} (an unfinished run); train it to the end")
            arrays, _ = read_model(self.path / MODEL)
            self._model = {f"{'Wb'[i % 2]}{i // 2 + 1}": a for i, a in enumerate(arrays)}
        return self._model

    def evaluate(self, dataset: str | None = None, data_dir: str | None = None) -> dict:
        """`parsgd eval` of this run: {test_loss, test_acc, confusion (10 x 10 [true][predicted]), ...}."""
        from parsgd.analysis.evaluate import evaluate_model

        return evaluate_model(self.path, dataset, data_dir)

    def report_html(self, file=None) -> Path:
        """`parsgd report RUN --html FILE` (default RUN/report.html); returns the file's path."""
        from parsgd.analysis.html_report import HTML_FILE, write_html

        return write_html([self.path], file or self.path / HTML_FILE)

    def __repr__(self) -> str:
        acc = self.summary.get("final_test_acc")
        return f"<parsgd Run {self.label} at {self.path}: test acc {acc if acc is None else round(acc, 4)}>"


class Experiment:
    """One experiment folder: path; meta (experiment.json's `experiment`); records (its rows, a table);
    runs (a Run per finished run directory); report (experiment_report.txt's text); html (report.html's
    path, or None). Raises RunDirError for a folder that is not an experiment's."""

    def __init__(self, path):
        from parsgd.analysis.experiments import experiment_runs, read_experiment

        self.path = Path(path)
        doc = read_experiment(self.path)
        self.meta, self._records = doc["experiment"], doc["records"]
        self.runs = [Run(d) for d in experiment_runs(self.path)]

    @property
    def records(self):
        return table(self._records)

    @property
    def report(self) -> str:
        file = self.path / "experiment_report.txt"
        return file.read_text(encoding="utf-8") if file.is_file() else ""

    @property
    def html(self) -> Path | None:
        file = self.path / "report.html"
        return file if file.is_file() else None

    def run(self, label: str) -> Run:
        """The run whose label (`ps P=2 shm`) or folder name (`ps-p2-shm`) is `label`; KeyError if none."""
        for r in self.runs:
            if label in (r.label, r.path.name):
                return r
        raise KeyError(f"{label!r}: the runs are {', '.join(r.label for r in self.runs)}")

    def __repr__(self) -> str:
        return f"<parsgd Experiment at {self.path}: {', '.join(r.label for r in self.runs)}>"
