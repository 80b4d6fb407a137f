"""comm_overhead.png: where each run's time went (metrics.jsonl), and per parameter-server role what its
spans of the timed steps held, the wait split as the report splits it (analysis/stepparts.py).

    python -c "from parsgd.analysis.overhead_plots import plot_comm_overhead; from parsgd.analysis.rundirs \
import load_run; print(plot_comm_overhead([load_run('results/ps-p2-tcp-100mbit')], 'c.png'))"

parsgd.analysis.plots re-exports everything here; sizes, fonts and saving live in figures.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import rc_context

from parsgd.analysis.commreport import WAIT_NAMES, span_shares
from parsgd.analysis.figures import WIDE_FIGSIZE, WIDE_FONTS, add_legend, figure_title, new_figure, run_labels, save_png
from parsgd.analysis.rundirs import Run

# The report's categories, the wait in its four parts (BSP) or whole (ssp, async: no step waits for all).
CATEGORY_COLORS = {"serialize": "#1f77b4", "transfer": "#ff7f0e", "wait": "#a5a5a5",
                   "wait: " + WAIT_NAMES["link"]: "#17becf", "wait: " + WAIT_NAMES["shards"]: "#f2a8a8",
                   "wait: " + WAIT_NAMES["server"]: "#f7c6e4", "wait: " + WAIT_NAMES["rest"]: "#dddddd",
                   "deserialize": "#9467bd", "compute": "#d62728", "update": "#e377c2", "other": "#7f7f7f"}
SHARE_COLORS = {"compute": "#d62728", "communication": "#ff7f0e", "other": "#c7c7c7"}
NO_TIMED_STEP = "(no timed step)"   # a row of a run whose steps were all warm-up: nothing to split


def _epoch_shares(run: Run) -> dict[str, float]:
    """compute / communication / other as shares of the summed epoch wall time (metrics.jsonl)."""
    total_s = np.nansum(run.column("epoch_time_s"))  # null (NaN) epochs left out
    compute_s, comm_s = np.nansum(run.column("compute_s")), np.nansum(run.column("comm_s"))
    denom_s = max(total_s, compute_s + comm_s)  # parallel workers' compute can exceed wall time
    if denom_s <= 0:
        return {"compute": 0.0, "communication": 0.0, "other": 1.0}
    return {"compute": compute_s / denom_s, "communication": comm_s / denom_s,
            "other": 1 - (compute_s + comm_s) / denom_s}


def _stacked(ax, names, shares: list[dict], colors: dict, xlabel: str, title: str):
    """Horizontal stacked bars (long configuration names stay readable), first name on top; each
    category one BarContainer labelled with its name."""
    y = np.arange(len(names))
    left = np.zeros(len(names))
    for cat, color in colors.items():
        vals = np.array([s.get(cat, 0.0) for s in shares]) * 100
        if vals.any():
            ax.barh(y, vals, left=left, color=color, label=cat, edgecolor="white", lw=0.5)
            left += vals
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    add_legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # 2 wide: fits a panel narrowed by long names


def overhead_rows(runs: list[Run]) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """The bars of comm_overhead.png as (name, {category: share}) rows, top first: left, one per run
    given, in order (_epoch_shares); right, one per role of each parameter-server run, the shares of
    its span time per timed step that the report's communication section prints (commreport.span_shares:
    the wait split into on the link / the shards / server work / rest for BSP runs), the name ending in
    NO_TIMED_STEP when the run has none. Names come from run_labels. Raises RunDirError (corrupt comm.jsonl)."""
    labels = run_labels(runs)
    left = [(label, _epoch_shares(run)) for run, label in zip(runs, labels)]
    right = [(f"{label} {role}" + ("" if sum(shares.values()) > 0 else f" {NO_TIMED_STEP}"), shares)
             for run, label in zip(runs, labels) for role, shares in span_shares([run]).items()]
    return left, right


@rc_context(WIDE_FONTS)
def plot_comm_overhead(runs: list[Run], path) -> Path:
    """Two panels of % bars (overhead_rows); returns Path(path). Raises RunDirError if a comm.jsonl
    is corrupt, WriteError.

    Left: compute / communication / other share of each run's epoch time (metrics.jsonl), every
    run given; right: span categories per role of the PS runs among them over the timed steps, as the
    report's communication sections give them.
    """
    fig, axes = new_figure(WIDE_FIGSIZE, 1, 2)
    left, right = axes[0]
    left_rows, right_rows = overhead_rows(runs)
    _stacked(left, [n for n, _ in left_rows], [sh for _, sh in left_rows], SHARE_COLORS,
             "share of epoch wall time (%)", "compute vs communication (metrics.jsonl)")
    names, shares = [n for n, _ in right_rows], [sh for _, sh in right_rows]
    if names:
        _stacked(right, names, shares, CATEGORY_COLORS, "share of span time per role, timed steps (%)",
                 "parameter-server spans (transfer = send + recv; the wait split as in the report)")
    else:
        right.text(0.5, 0.5, "no parameter-server runs", ha="center", va="center", transform=right.transAxes)
        right.set_axis_off()
    fig.suptitle(figure_title("Communication overhead", runs))
    return save_png(fig, path)
