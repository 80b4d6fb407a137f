"""PNG plots from run directories: per-epoch curves, speedup, communication overhead, step timeline.

    parsgd plot runs/sequential-p1 runs/ps-p2 -o plots/

Sizes, fonts, markers and saving live in figures.py; comm_overhead.png in overhead_plots.py and speedup.png
in speedup_plots.py (both re-exported here). `runs` arguments are lists of loaded Runs unless a docstring says paths are accepted too; `path` is the PNG to write (str or Path, folders
created). Every plot function returns the Path(s) it wrote and raises WriteError when a PNG cannot
be written. A value that is null in a run's files (an empty test split's accuracy, a loss that was
not finite) is a gap in its curve, and the figure says so instead of drawing an empty axis.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.lines import Line2D

from parsgd.analysis.figures import (FIGSIZE, FONTS, WIDE_FIGSIZE, WIDE_FONTS, add_legend, as_run, epoch_axis,
                                     figure_title, marker_style, new_figure, run_labels, save_png)
from parsgd.analysis.overhead_plots import CATEGORY_COLORS, SHARE_COLORS, overhead_rows, plot_comm_overhead  # noqa: F401
from parsgd.analysis.report import with_baseline
from parsgd.analysis.rundirs import Run
from parsgd.analysis.speedup_plots import plot_speedup  # noqa: F401
from parsgd.analysis.timeline import plot_step_timeline


def _same_as(runs: list[Run], labels: list[str], fields) -> list[str | None]:
    """Per run, the label of the first earlier run with the same values in every field, else None."""
    same = []
    for i, run in enumerate(runs):
        values = [run.column(f) for f in fields]
        match = next((labels[j] for j in range(i) if all(
            len(v) == len(runs[j].metrics) and np.allclose(v, runs[j].column(f), rtol=1e-6, atol=0, equal_nan=True)
            for v, f in zip(values, fields))), None)
        same.append(match)
    return same


def _gaps(runs: list[Run], fields) -> str | None:
    """Which fields have epochs without a value (null or not finite) and why, or None if none has."""
    counts = {f: (sum(int(np.isnan(r.column(f)).sum()) for r in runs), sum(len(r.metrics) for r in runs))
              for f in fields}
    parts = [f"{f.replace('_', ' ')}: {n} of {total} epochs" for f, (n, total) in counts.items() if n]
    if not parts:
        return None
    return "\n".join(["missing values (gaps):", *parts, "null in metrics.jsonl: an empty",
                      "test split, or a value that", "was not finite (NaN, Inf)"])


def epoch_series(runs: list[Run], fields) -> list[dict]:
    """What a per-epoch plot draws: per run and field (in that order) {"run": index, "field",
    "label": the run's legend entry (run_labels, '(= X)' when its curves equal X's) on its first
    field, else None, "same": X or None, "style": plot keywords}. Each run has its own (colour, marker) (marker_style);
    the first field is solid with hollow markers, the second dashed with filled ones, so train and
    test stay apart even in a 1-epoch run, where there is no line."""
    labels = run_labels(runs)
    same = _same_as(runs, labels, fields)
    series = []
    for i in range(len(runs)):
        legend = labels[i] if same[i] is None else f"{labels[i]} (= {same[i]})"
        for k, field in enumerate(fields):
            style = {**marker_style(i, len(runs)), "ls": ("-", "--")[k], "lw": 1.2}
            if k:
                style["mfc"] = style["color"]
            series.append({"run": i, "field": field, "label": None if k else legend, "same": same[i],
                           "style": style})
    return series


@rc_context(FONTS)
def _per_epoch(runs, path, what, fields, ylabel) -> Path:
    fig, axes = new_figure(FIGSIZE)
    ax = axes[0, 0]
    series = epoch_series(runs, fields)
    for s in series:
        run = runs[s["run"]]
        ax.plot(run.column("epoch"), run.column(s["field"]), label=s["label"], **s["style"])
    handles, _ = ax.get_legend_handles_labels()
    if len(fields) == 2:
        handles += [Line2D([], [], color="gray", ls=ls, marker="o", mfc=mfc, label=f.replace("_", " "))
                    for f, ls, mfc in zip(fields, ("-", "--"), ("none", "gray"))]
    gaps = _gaps(runs, fields)
    any_same = any(s["same"] for s in series)
    notes = ["identical curves overlap:\nmarkers nest, smallest on top" if any_same else None, gaps]
    note = "\n\n".join(n for n in notes if n) or None
    add_legend(ax, handles=handles, title=note, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + (len(runs) > 16))
    if gaps and not any(np.isfinite(run.column(f)).any() for run in runs for f in fields):
        ax.text(0.5, 0.5, f"nothing to draw: no run has a value of {' or '.join(fields)}\n"
                "(null in metrics.jsonl: an empty test split, or values that were not finite)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    xlim, ticks = epoch_axis(runs)
    ax.set_xlim(*xlim)
    ax.set_xticks(ticks)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    fig.suptitle(figure_title(what, runs))
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_loss(runs: list[Run], path) -> Path:
    """Train (solid) and test (dashed) cross-entropy loss per epoch of every run; returns Path(path)."""
    return _per_epoch(runs, path, "Loss per epoch", ("train_loss", "test_loss"), "cross-entropy loss (nats)")


def plot_accuracy(runs: list[Run], path) -> Path:
    """Train (solid) and test (dashed) accuracy per epoch of every run; returns Path(path)."""
    return _per_epoch(runs, path, "Accuracy per epoch", ("train_acc", "test_acc"), "accuracy (fraction correct)")


def plot_epoch_time(runs: list[Run], path) -> Path:
    """Wall time per epoch (metrics.jsonl epoch_time_s, seconds) of every run; returns Path(path)."""
    return _per_epoch(runs, path, "Wall time per epoch", ("epoch_time_s",), "epoch time (s)")


# Every PNG `parsgd experiment` may draw into its folder (plot_experiment), in the order it draws them.
EXPERIMENT_PNGS = ("loss.png", "accuracy.png", "epoch_time.png", "speedup.png", "comm_overhead.png",
                   "accuracy_time.png", "step_timeline.png", "staleness.png", "server_load.png", "compression.png")


def plot_experiment(runs, baseline, out_dir, echo=None) -> list[Path]:
    """What `parsgd experiment` draws into out_dir (and `parsgd plot EXPERIMENT_DIR` draws again).

    `runs`: Run objects or run-dir paths of every finished run; `baseline`: the one speedups are
    relative to (added to runs if missing). speedup.png has every run (repeats: median and min-max);
    the other plots the first run of each configuration: loss, accuracy, epoch_time, speedup,
    comm_overhead, accuracy_time, then step_timeline when a run is a parameter-server run,
    staleness when one is ssp or async, server_load when one had more than one server, compression when
    one compressed its gradients (EXPERIMENT_PNGS;
    `echo(line)`, if given, hears why server_load is missing when no such run has a timed step).
    Returns the paths written, in that order. Raises RunDirError when a path is not a loadable run
    directory, WriteError when out_dir cannot be written.
    """
    from parsgd.analysis import progress_plots
    from parsgd.analysis.results import grouped

    baseline = as_run(baseline)
    runs = with_baseline([as_run(r) for r in runs], baseline)
    first = [group[0] for group in grouped(runs)]
    out = Path(out_dir)
    paths = [plot_loss(first, out / "loss.png"), plot_accuracy(first, out / "accuracy.png"),
             plot_epoch_time(first, out / "epoch_time.png"), plot_speedup(runs, baseline, out / "speedup.png"),
             plot_comm_overhead(first, out / "comm_overhead.png"),
             progress_plots.plot_accuracy_time(first, out / "accuracy_time.png")]
    ps_runs = [r for r in first if r.has_comm]
    if ps_runs:
        paths.append(plot_step_timeline(ps_runs, out / "step_timeline.png"))
    if progress_plots.staleness_histograms(first):  # any ssp / async run
        paths.append(progress_plots.plot_staleness(first, out / "staleness.png"))
    return paths + _server_load(first, out, echo) + _compression(first, out)


def _server_load(runs: list[Run], out: Path, echo=None) -> list[Path]:
    """[server_load.png] when a run had more than one parameter server (--servers S), else []; when none
    of those has a timed step to draw, `echo` (if given) gets one line saying so."""
    from parsgd.analysis.server_plots import plot_server_load

    several = [r for r in runs if int(r.config.get("servers") or 1) > 1]
    if not several:
        return []
    path = plot_server_load(runs, out / "server_load.png")
    if path is None and echo is not None:
        echo(f"no server_load.png: it shows bytes per timed step, and {', '.join(run_labels(several))} had none "
             "(too short: the first steps are warm-up); train longer")
    return [path] if path else []


def _compression(runs: list[Run], out: Path) -> list[Path]:
    """[compression.png] when a parameter-server run compressed its gradients (--compress), else []."""
    from parsgd.analysis.compress_plots import plot_compression

    path = plot_compression(runs, out / "compression.png")
    return [path] if path else []


def plot_runs(run_dirs, out_dir=None, echo=None) -> list[Path]:
    """`parsgd plot RUN_DIR... [-o DIR]`: pass the RUN_DIR arguments and -o (None if not given).

    Writes loss, accuracy and epoch_time (all runs as series on the same axes), and, when any
    run is a parameter-server run, step_timeline (one panel per PS run) and comm_overhead (left:
    every run; right: the PS runs), and server_load when a run had more than one server (`echo`
    hears why not, as plot_experiment says).
    One experiment folder (experiment.json beside its runs) instead: what the experiment drew
    (plot_experiment) from its finished runs.
    out_dir None: the run directory (or experiment folder) itself for one, else the current directory.
    Returns the PNG paths in that order. Raises ValueError for no run_dirs, RunDirError when one
    is not a loadable run directory (ExperimentFolderGiven, exit 2, for an experiment folder among
    others), WriteError when the output folder cannot be written.
    """
    from parsgd.analysis.experiments import (ExperimentFolderGiven, experiment_baseline, experiment_runs,
                                             is_experiment_dir)
    from parsgd.analysis.rundirs import RunDirError

    if not run_dirs:
        raise ValueError("plot_runs needs at least one run directory")
    folders = [d for d in run_dirs if not isinstance(d, Run) and is_experiment_dir(d)]
    if folders and len(run_dirs) > 1:
        raise ExperimentFolderGiven(f"{folders[0]} is an experiment folder: plot it alone (parsgd plot "
                                    f"{folders[0]}), or give its runs among the others")
    if folders:
        runs = [as_run(d) for d in experiment_runs(folders[0])]
        if not runs:
            raise RunDirError(f"{folders[0]} is an experiment folder without a finished run "
                                        "(experiment.json has no records): nothing to plot; rerun the experiment")
        return plot_experiment(runs, experiment_baseline(runs), Path(out_dir) if out_dir is not None else folders[0],
                               echo)
    runs = [as_run(r) for r in run_dirs]
    out = Path(out_dir) if out_dir is not None else (runs[0].path if len(runs) == 1 else Path("."))
    paths = [plot_loss(runs, out / "loss.png"), plot_accuracy(runs, out / "accuracy.png"),
             plot_epoch_time(runs, out / "epoch_time.png")]
    ps_runs = [r for r in runs if r.has_comm]
    if ps_runs:
        paths += [plot_step_timeline(ps_runs, out / "step_timeline.png"),
                  plot_comm_overhead(runs, out / "comm_overhead.png")]
    return paths + _server_load(runs, out, echo) + _compression(runs, out)
