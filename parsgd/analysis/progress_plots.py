"""Plots that compare consistency models: test accuracy against wall time, and staleness histograms.

    python -c "from parsgd.analysis.rundirs import load_run; from parsgd.analysis.progress_plots import *; \
rs = [load_run(p) for p in ('results/ps-p2-shm', 'results/ps-p2-shm-async')]; \
print(accuracy_time_series(rs), staleness_histograms(rs))"

Each plot_* function draws exactly what its *_series / *_histograms function returns (the tests
check those), writes the PNG and returns its Path; WriteError when it cannot be written.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import rc_context

from parsgd.analysis.figures import (FIGSIZE, FONTS, add_legend, figure_title, marker_style, new_figure, run_labels,
                                     save_png)
from parsgd.analysis.rundirs import Run

MAX_PANELS_PER_ROW = 3


def accuracy_time_series(runs: list[Run]) -> list[dict]:
    """Per run, in order: {"label" (run_labels), "t_s": cumulative training time at each epoch's end
    (the running sum of metrics.jsonl epoch_time_s, null epochs counted as 0), "test_acc": that epoch's
    test accuracy (NaN where null)}; both float64 arrays of shape (epochs,)."""
    return [{"label": label, "t_s": np.cumsum(np.nan_to_num(run.column("epoch_time_s"))),
             "test_acc": run.column("test_acc")} for run, label in zip(runs, run_labels(runs))]


@rc_context(FONTS)
def plot_accuracy_time(runs: list[Run], path) -> Path:
    """accuracy_time.png: test accuracy against cumulative training time, every run a line on one axes
    (a run that is faster per epoch but stale-noisier shows where it pays off); returns Path(path)."""
    fig, axes = new_figure(FIGSIZE)
    ax = axes[0, 0]
    series = accuracy_time_series(runs)
    for i, s in enumerate(series):
        ax.plot(s["t_s"], s["test_acc"], label=s["label"], ls="-", lw=1.2, **marker_style(i, len(series)))
    ax.set_xlim(left=0)
    ax.set_xlabel("cumulative training time (s, sum of epoch_time_s)")
    ax.set_ylabel("test accuracy (fraction correct)")
    add_legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + (len(runs) > 16))
    ax.grid(alpha=0.3)
    fig.suptitle(figure_title("Test accuracy against wall time (one marker per epoch)", runs))
    return save_png(fig, path)


def staleness_histograms(runs: list[Run]) -> list[dict]:
    """One histogram per parameter-server run that may have stale updates (ssp or async, or any
    update with staleness > 0), in order: {"label", "values": every update's staleness (int64),
    "counts": counts[k] = updates of staleness k for k = 0..max, "mean", "max"}. [] when there is
    none (bsp runs are 0 throughout). Raises RunDirError for a corrupt updates.jsonl."""
    out = []
    for run, label in zip(runs, run_labels(runs)):
        values = run.staleness
        if values is None or not len(values) or (run.consistency == "bsp" and not values.any()):
            continue
        out.append({"label": label, "values": values, "counts": np.bincount(values, minlength=1),
                    "mean": float(values.mean()), "max": int(values.max())})
    return out


@rc_context(FONTS)
def plot_staleness(runs: list[Run], path) -> Path:
    """staleness.png: one panel per histogram of staleness_histograms(runs) (bars: updates per
    staleness, a dashed line at the mean); returns Path(path). ValueError when there is none."""
    hists = staleness_histograms(runs)
    if not hists:
        raise ValueError("no run with stale updates (ssp or async): nothing to plot")
    ncols = min(len(hists), MAX_PANELS_PER_ROW)
    nrows = math.ceil(len(hists) / ncols)
    fig, axes = new_figure((FIGSIZE[0], FIGSIZE[1] * (0.6 + 0.4 * nrows)), nrows, ncols)
    for i, ax in enumerate(axes.flat):
        if i >= len(hists):
            ax.set_axis_off()
            continue
        h = hists[i]
        color = marker_style(i, len(hists))["color"]
        ax.bar(np.arange(len(h["counts"])), h["counts"], width=0.8, color=color, alpha=0.8)
        ax.axvline(h["mean"], color="k", ls="--", lw=1)
        ax.set_title(f"{h['label']}\nmean {h['mean']:.2f}, max {h['max']}, {len(h['values'])} updates")
        ax.set_xlabel("staleness (updates applied since the pull)")
        ax.set_ylabel("updates")
        ax.set_xticks(range(0, len(h["counts"]), max(1, math.ceil(len(h["counts"]) / 10))))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(figure_title("Staleness of the applied updates (updates.jsonl)", runs))
    return save_png(fig, path)
