"""What `parsgd experiment` writes into its --out folder, and what a rerun into the same folder removes.

    parsgd experiment --workers 2 --modes sequential,ps --consistency bsp,async --out results
    parsgd experiment --workers 2 --modes sequential --out results   # removes staleness.png, ps-p2-shm/, ...

experiment.json records every file the experiment wrote (`files`: its own outputs and the run
directories' files, as paths relative to the folder). A rerun into the folder removes the ones it
did not write again, once it has written its own, and names them in one line; it removes nothing
else. Outputs with the experiment's names that no earlier experiment recorded are refused before
anything runs, unless --force (as a run directory refuses files parsgd did not write).
"""
from __future__ import annotations

import time
from pathlib import Path

import click

from parsgd.analysis.experiments import EXPERIMENT_FILE, experiment_baseline, read_experiment
from parsgd.analysis.html_report import HTML_FILE
from parsgd.analysis.plots import EXPERIMENT_PNGS
from parsgd.analysis.rundirs import RunDirError
from parsgd.config import RunConfig
from parsgd.training.rundir import RUN_FILES, ForeignFiles, earlier_run, written_by_parsgd

REPORT_FILE = "experiment_report.txt"
CAPACITY_FILE = "capacity.json"  # `--link`: parsgd.jobs.emulate.measure_capacity
OUTPUTS = (REPORT_FILE, EXPERIMENT_FILE, "experiment.csv", CAPACITY_FILE, *EXPERIMENT_PNGS, HTML_FILE)
MTIME_SLACK_S = 1.0  # a file's mtime comes from a coarser clock than time.time(): it may read a little earlier


def _ours(name) -> bool:
    """True for a path an experiment.json may list: one of OUTPUTS, or RUN_DIR/RUN_FILE with RUN_DIR a
    plain folder name (so a hostile list cannot name anything outside the folder or beside the runs)."""
    if not isinstance(name, str):
        return False
    parts = name.split("/")
    if len(parts) == 1:
        return name in OUTPUTS
    return (len(parts) == 2 and parts[1] in RUN_FILES and parts[0] not in ("", ".", "..")
            and not parts[0].startswith(".") and "\\" not in parts[0])


def previous_outputs(out: Path, force: bool = False) -> list[str]:
    """The files (relative to `out`) the previous experiment in `out` recorded in its experiment.json and
    that are still there. An experiment.json of a parsgd without `files`: its outputs present and the
    run files of its records' run directories. Raises ForeignFiles, before anything runs, when `out`
    holds files with an experiment's output names that no experiment recorded, unless `force`."""
    out = Path(out)
    try:
        doc = read_experiment(out) if (out / EXPERIMENT_FILE).is_file() else None
    except RunDirError:
        doc = None  # not ours: refused below like any other file with an output's name
    listed = doc["experiment"].get("files") if doc else None
    if doc is None:
        files = []
    elif isinstance(listed, list):
        files = [EXPERIMENT_FILE, *listed]  # a parsgd experiment.json is the previous experiment's own
    else:
        files = [n for n in OUTPUTS if (out / n).is_file()]
        for name in dict.fromkeys(Path(r["path"]).name for r in doc["records"]):
            if written_by_parsgd(out / name):
                files += [f"{name}/{f}" for f in earlier_run(out / name)]
    recorded = [n for n in dict.fromkeys(files) if _ours(n) and (out / n).is_file()
                and not (out / n.split("/")[0]).is_symlink()]  # a link to a folder elsewhere: not ours to empty
    foreign = [n for n in OUTPUTS if (out / n).exists() and n not in recorded]
    if foreign and not force:
        raise ForeignFiles(f"{out} holds {', '.join(foreign)}, which no parsgd experiment recorded writing there "
                           f"({EXPERIMENT_FILE} 'files'): pass another --out, or --force to replace them")
    return recorded


def run_files(run_dirs: list[Path], out: Path, since: float) -> list[str]:
    """The run files (RUN_FILES) this experiment wrote into those of `run_dirs` that are children of `out`,
    relative to `out`: those modified since `since` (time.time() when it began) in a folder with a parsgd config.json.
    A configuration that failed before it wrote a file leaves the earlier run's files unclaimed."""
    names = []
    for d in dict.fromkeys(run_dirs):
        if Path(d).resolve().parent == Path(out).resolve() and written_by_parsgd(d):
            names += [f"{d.name}/{f}" for f in earlier_run(d) if (d / f).stat().st_mtime >= since - MTIME_SLACK_S]
    return names


def remove_stale(out: Path, previous: list[str], written: list[str], echo=click.echo) -> list[str]:
    """Remove the files of `previous` (previous_outputs) that are not in `written`, then the run folders
    that are left empty; print one line naming them (a removed folder as `NAME/`) and one naming the
    files kept in a folder whose run files were removed (the experiment did not write them).
    Returns the names printed as removed. An OSError leaves that file and says so."""
    keep = set(written)
    stale = [n for n in previous if n not in keep]
    removed, failed = [], []
    for name in stale:
        if not (out / name).is_file():
            continue  # this run's own run directory replaced it already (RunDir names what it replaces)
        try:
            (out / name).unlink()
            removed.append(name)
        except OSError as exc:
            failed.append(f"{name} ({exc.strerror})")
    shown, kept = [], []
    for folder in dict.fromkeys(n.split("/")[0] for n in removed if "/" in n):
        if not any(w.startswith(folder + "/") for w in written) and (out / folder).is_dir():
            rest = sorted(p.name for p in (out / folder).iterdir())
            if not rest:
                (out / folder).rmdir()
                shown.append(f"{folder}/")
                continue
            kept += [f"{folder}/{r}" for r in rest]
            shown.append(f"{folder}/ (its run files: the folder stays)")
            continue
        shown += [n for n in removed if n.startswith(folder + "/")]
    shown = [n for n in removed if "/" not in n] + shown
    if shown:
        echo(f"removed from the previous experiment in {out}: {', '.join(shown)}")
    if kept:
        echo(f"kept in {out} (the previous experiment did not write them): {', '.join(kept)}")
    if failed:
        echo(f"could not remove from the previous experiment in {out}: {', '.join(failed)}")
    return shown


def write_outputs(run_dirs: list[Path], out: Path, cfg: RunConfig, echo=click.echo, tried=(), previous=(),
                  since: float | None = None, extra=(), repeat: int = 1) -> tuple[list[Path], list[dict]]:
    """Report (printed and written), report.html (analysis/html_report.py: the PNGs inlined), experiment.json
    / .csv and PNGs from the finished run directories,
    then remove what the previous experiment in `out` wrote and this one did not (remove_stale).

    Several runs of one configuration (--repeat) are one row of the table and one point (median,
    min-max bar) of speedup.png; the other plots show the first run of each configuration
    (plots.plot_experiment). `tried`: every run directory this experiment trained into (failed ones
    too), `since`: time.time() when it began (run_files), `extra`: other files it wrote into `out`
    (capacity.json), `previous`: previous_outputs(out), `repeat`: --repeat. experiment.json's `files`
    lists everything written. With no finished run only experiment.json / .csv (no records) are
    written. Returns (the files written, the comparison rows of the table).
    """
    from parsgd.analysis import plots, report, results
    from parsgd.analysis.html_report import build_page
    from parsgd.files import write_file
    from parsgd.training.rundir import machine_info
    from parsgd.analysis.rundirs import load_run

    runs = [load_run(d) for d in run_dirs]
    machine = machine_info()
    meta = {"configuration": cfg.to_dict(), "baseline": None, "repeat": repeat, "machine": machine,
            **results.thresholds()}
    recs, rows, written, pngs = [], [], [], []
    if runs:
        baseline = experiment_baseline(runs)
        path = report.write_report(out, runs, baseline, cfg, machine)
        recs = results.records(runs, baseline)
        rows = results.table_rows(recs)
        meta.update(baseline=baseline.label, repeat=max(r["runs"] for r in rows))
        echo("")
        echo(path.read_text(encoding="utf-8").rstrip())
        pngs = plots.plot_experiment(runs, baseline, out, echo)
        written = [path, write_file(out / HTML_FILE, build_page(runs, baseline, out, pngs).encode("utf-8"))]
    tables = [out / EXPERIMENT_FILE, out / "experiment.csv"]
    files = [p.name for p in [*written, *tables, *pngs, *extra]]
    meta["files"] = files + run_files([*tried, *run_dirs], out, time.time() if since is None else since)
    written += results.write_results(out, recs, meta)
    echo("")
    if runs:
        echo(f"report: {written[0]}, {written[1]}")
    echo(f"tables: {', '.join(str(p) for p in tables)}")
    if pngs:
        echo(f"plots:  {', '.join(str(p) for p in pngs)}")
    remove_stale(out, list(previous), meta["files"], echo)
    return [*written, *pngs], rows
