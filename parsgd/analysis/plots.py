"""PNG plots from run directories: per-epoch curves, speedup, communication overhead, step timeline.

    parsgd plot runs/sequential-p1 runs/ps-p2 -o plots/

Sizes, fonts, markers and saving live in figures.py. `runs` arguments are lists of loaded Runs
unless a docstring says paths are accepted too; `path` is the PNG to write (str or Path, folders
created). Every plot function returns the Path(s) it wrote and raises WriteError when a PNG cannot
be written. A value that is null in a run's files (an empty test split's accuracy, a loss that was
not finite) is a gap in its curve, and the figure says so instead of drawing an empty axis.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

# DPI and the figure sizes are imported so that callers can read the PNG size off this module.
from parsgd.analysis.figures import (DPI, FIGSIZE, FONTS, WIDE_FIGSIZE, WIDE_FONTS,  # noqa: F401
                                     as_run, figure_title, marker_style, new_figure, run_labels, save_png)
from parsgd.analysis.report import comm_breakdown, number, with_baseline
from parsgd.analysis.rundirs import CommSpans, Run, RunDirError
from parsgd.ps.protocol import SPANS

TIMELINE_STEPS = 20
FIRST_TIMELINE_STEP = 1   # step 0 also holds the wait for workers to start (~0.5 s), dwarfing the rest
SPAN_COLORS = dict(zip(SPANS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728",
                               "#c7c7c7", "#8c564b", "#e377c2")))
CATEGORY_COLORS = {"serialize": "#1f77b4", "transfer": "#ff7f0e", "wait": "#c7c7c7",
                   "deserialize": "#9467bd", "compute": "#d62728", "update": "#e377c2", "other": "#7f7f7f"}
SHARE_COLORS = {"compute": "#d62728", "communication": "#ff7f0e", "other": "#c7c7c7"}


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


@rc_context(FONTS)
def _per_epoch(runs, path, what, fields, ylabel) -> Path:
    fig, axes = new_figure(FIGSIZE)
    ax = axes[0, 0]
    labels = run_labels(runs)
    same = _same_as(runs, labels, fields)
    for i, (run, label) in enumerate(zip(runs, labels)):
        epochs = run.column("epoch")
        legend = label if same[i] is None else f"{label} (= {same[i]})"
        for field, style in zip(fields, ("-", "--")):
            ax.plot(epochs, run.column(field), style, lw=1.2, **marker_style(i, len(runs)),
                    label=legend if style == "-" else None)
    handles, _ = ax.get_legend_handles_labels()
    if len(fields) == 2:
        handles += [Line2D([], [], color="gray", ls="-", label=fields[0].replace("_", " ")),
                    Line2D([], [], color="gray", ls="--", label=fields[1].replace("_", " "))]
    gaps = _gaps(runs, fields)
    notes = ["identical curves overlap:\nmarkers nest, smallest on top" if any(same) else None, gaps]
    note = "\n\n".join(n for n in notes if n) or None
    ax.legend(handles=handles, title=note, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if gaps and not any(np.isfinite(run.column(f)).any() for run in runs for f in fields):
        ax.text(0.5, 0.5, f"nothing to draw: no run has a value of {' or '.join(fields)}\n"
                "(null in metrics.jsonl: an empty test split, or values that were not finite)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0.5, max(len(run.metrics) for run in runs) + 0.5)
        ax.set_yticks([])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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


@rc_context(FONTS)
def plot_speedup(runs: list[Run], baseline: Run, path) -> Path:
    """Speedup T_baseline / T_run (summary.json total_time_s) against P, one line per mode/transport.

    Standard definition of speedup; the dashed ideal line is linear scaling, speedup = P.
    The baseline itself is skipped in `runs`. Returns Path(path); WriteError if it cannot be written.
    """
    fig, axes = new_figure(FIGSIZE)
    ax = axes[0, 0]
    base_total_s = number(baseline.summary["total_time_s"])
    series: dict[str, list[tuple[int, float]]] = {}
    skipped = []  # no finite, non-zero total time: no speedup to draw
    for run in runs:
        if run is baseline:
            continue
        key = run.mode + (f" {run.transport}" if run.transport else "")
        total_s = number(run.summary["total_time_s"])
        if base_total_s is None or not total_s:
            skipped.append(run.label)
            continue
        series.setdefault(key, []).append((run.workers, base_total_s / total_s))
    if skipped:
        ax.text(0.5, 0.02, f"left out, no finite total time (null in summary.json): {', '.join(skipped)}",
                ha="center", va="bottom", transform=ax.transAxes)
    ps = sorted({1, *(p for pts in series.values() for p, _ in pts)})
    ax.plot(ps, ps, "k--", lw=1, label="ideal (speedup = P)")
    ax.axhline(1.0, color="gray", ls=":", lw=1, label=f"{baseline.label} baseline")
    for i, (key, pts) in enumerate(sorted(series.items())):
        pts.sort()
        ax.plot([p for p, _ in pts], [s for _, s in pts], lw=1.5, label=key, **marker_style(i, len(series)))
    ax.set_xticks(ps)
    ax.set_xlabel("workers P (processes)")
    ax.set_ylabel(f"speedup over {baseline.label} (x)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(figure_title("Speedup (total wall time)", runs))
    ax.grid(alpha=0.3)
    return save_png(fig, path)


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
    """Horizontal stacked bars (long configuration names stay readable), first name on top."""
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
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4)


@rc_context(WIDE_FONTS)
def plot_comm_overhead(runs: list[Run], path) -> Path:
    """Two panels of % bars; returns Path(path). Raises RunDirError if a comm.jsonl is corrupt, WriteError.

    Left: compute / communication / other share of each run's epoch time (metrics.jsonl);
    right: span categories per role of the PS runs (report.comm_breakdown).
    """
    fig, axes = new_figure(WIDE_FIGSIZE, 1, 2)
    left, right = axes[0]
    labels = run_labels(runs)
    _stacked(left, labels, [_epoch_shares(r) for r in runs], SHARE_COLORS,
             "share of epoch wall time (%)", "compute vs communication (metrics.jsonl)")
    names, shares = [], []
    for run, label in zip(runs, labels):
        for role, bd in comm_breakdown(run).items():
            names.append(f"{label} {role}")
            shares.append(bd["shares"])
    if names:
        _stacked(right, names, shares, CATEGORY_COLORS, "share of span time per role (%)",
                 "parameter-server spans (transfer = send + recv)")
    else:
        right.text(0.5, 0.5, "no parameter-server runs", ha="center", va="center", transform=right.transAxes)
        right.set_axis_off()
    fig.suptitle(figure_title("Communication overhead", runs))
    return save_png(fig, path)


def timeline_steps(comm: CommSpans, max_steps: int = TIMELINE_STEPS) -> np.ndarray:
    """The steps a timeline shows, int64 array of at most max_steps, ascending.

    From FIRST_TIMELINE_STEP on (warm-up left out), or from step 0 when the run has no later
    step; spans outside any step (step -1) are never shown.
    """
    steps = np.unique(comm.step[comm.step >= 0])
    later = steps[steps >= FIRST_TIMELINE_STEP]
    return (later if len(later) else steps)[:max_steps]


def _step_starts_s(comm: CommSpans, steps, mask) -> np.ndarray:
    """Start of each step: the server's first span in it (a worker's wait for the next step
    begins during the previous one), else the first span of any role."""
    starts_s = []
    for step in steps:
        sel = mask & (comm.step == step)
        server = sel & (comm.role == "server")
        starts_s.append(comm.t_s[server if server.any() else sel].min())
    return np.array(starts_s)


def _draw_timeline(ax, run: Run, max_steps: int) -> None:
    comm = run.comm
    steps = timeline_steps(comm, max_steps)
    mask = np.isin(comm.step, steps) & np.isfinite(comm.t_s + comm.dur_s)  # a null time is no span
    steps = steps[np.isin(steps, comm.step[mask])]
    if not mask.any():
        ax.text(0.5, 0.5, "no step spans with finite times in comm.jsonl", ha="center", va="center",
                transform=ax.transAxes)
        return
    starts_s = _step_starts_s(comm, steps, mask)
    t0_s = starts_s[0]
    tracks = comm.tracks()
    # Spans of the first shown step that began before it (workers idle since the previous step)
    # are cut at its start, so the window holds only the steps it names.
    start_ms = (np.maximum(comm.t_s, t0_s) - t0_s) * 1e3
    dur_ms = (comm.t_s + comm.dur_s - t0_s) * 1e3 - start_ms
    present = []
    for row, (role, rank) in enumerate(tracks):
        on_track = mask & (comm.role == role) & (comm.rank == rank) & (dur_ms > 0)
        for span in np.unique(comm.span[on_track]):
            sel = on_track & (comm.span == span)
            color = SPAN_COLORS.get(str(span), "#7f7f7f")
            ax.broken_barh(list(zip(start_ms[sel], dur_ms[sel])), (row - 0.4, 0.8), facecolors=color)
            present.append(str(span))
    x_steps_ms = (starts_s - t0_s) * 1e3
    for x_ms in x_steps_ms:
        ax.axvline(x_ms, color="black", lw=0.6, alpha=0.5)
    right_ms = max(float((start_ms[mask] + dur_ms[mask]).max()), 1e-3)
    ax.set_xlim(0, right_ms * 1.01)
    top = ax.secondary_xaxis("top")   # step numbers as ticks on a top axis: never over the bars
    min_gap_ms = 0.025 * right_ms     # about 2.5 characters at this width; closer steps go unlabelled
    shown, last_ms = [], -np.inf
    for step, x_ms in zip(steps, x_steps_ms):
        shown.append(str(step) if x_ms - last_ms >= min_gap_ms else "")
        last_ms = x_ms if shown[-1] else last_ms
    top.set_xticks(x_steps_ms)
    top.set_xticklabels(shown)
    top.set_xlabel("step (a line where each starts)")
    ax.set_yticks(range(len(tracks)))
    ax.set_yticklabels([role if role == "server" else f"{role} {rank}" for role, rank in tracks])
    ax.set_ylim(len(tracks) - 0.5, -0.5)
    ax.set_xlabel(f"time since the start of step {steps[0]} (ms)")
    shown_steps = f"steps {steps[0]}-{steps[-1]}" if len(steps) > 1 else f"step {steps[0]}"
    if steps[0] > 0:
        shown_steps += " (warm-up left out: step 0 includes waiting for the workers to start)"
    ax.set_title(f"{run.label} ({run.path.name}): {shown_steps}")
    order = [s for s in (*SPANS, *sorted(set(present))) if s in present]
    ax.legend(handles=[Patch(color=SPAN_COLORS.get(s, "#7f7f7f"), label=s) for s in dict.fromkeys(order)],
              loc="upper left", bbox_to_anchor=(1.01, 1.0))


@rc_context(WIDE_FONTS)
def plot_step_timeline(runs, path, max_steps: int = TIMELINE_STEPS) -> Path:
    """Gantt chart (ms on x, one row per server/worker) of the timeline_steps of PS runs' comm.jsonl.

    `runs`: one Run or run-dir path, or a list of them (one panel each, stacked). Returns Path(path).
    Raises RunDirError when a run cannot be loaded or has no comm.jsonl (not a PS run); WriteError.
    """
    runs = [as_run(r) for r in (runs if isinstance(runs, (list, tuple)) else [runs])]
    for run in runs:
        if not run.has_comm:
            raise RunDirError(f"{run.path} has no communication log (comm.jsonl): step timelines "
                              "need a parameter-server run (parsgd launch/server/experiment)")
    fig, axes = new_figure((WIDE_FIGSIZE[0], WIDE_FIGSIZE[1] * len(runs)), len(runs), 1)
    for ax, run in zip(axes[:, 0], runs):
        _draw_timeline(ax, run, max_steps)
    fig.suptitle(figure_title("Per-step timeline from comm.jsonl spans", runs))
    return save_png(fig, path)


def plot_experiment(runs, baseline, out_dir) -> list[Path]:
    """`parsgd experiment`: loss, accuracy, epoch_time, speedup, comm_overhead PNGs in out_dir.

    `runs`: Run objects or run-dir paths of every configuration; `baseline`: the sequential one
    (added to runs if missing). Returns the five paths in that order. Raises RunDirError when a
    path is not a loadable run directory, WriteError when out_dir cannot be written.
    """
    baseline = as_run(baseline)
    runs = with_baseline([as_run(r) for r in runs], baseline)
    out = Path(out_dir)
    return [plot_loss(runs, out / "loss.png"), plot_accuracy(runs, out / "accuracy.png"),
            plot_epoch_time(runs, out / "epoch_time.png"), plot_speedup(runs, baseline, out / "speedup.png"),
            plot_comm_overhead(runs, out / "comm_overhead.png")]


def plot_runs(run_dirs, out_dir=None) -> list[Path]:
    """`parsgd plot RUN_DIR... [-o DIR]`: pass the RUN_DIR arguments and -o (None if not given).

    Writes loss, accuracy and epoch_time (all runs as series on the same axes), and, when any
    run is a parameter-server run, step_timeline (one panel per PS run) and comm_overhead.
    out_dir None: the run directory itself for one run, else the current directory.
    Returns the PNG paths in that order. Raises ValueError for no run_dirs, RunDirError when one
    is not a loadable run directory, WriteError when the output folder cannot be written.
    """
    runs = [as_run(r) for r in run_dirs]
    if not runs:
        raise ValueError("plot_runs needs at least one run directory")
    out = Path(out_dir) if out_dir is not None else (runs[0].path if len(runs) == 1 else Path("."))
    paths = [plot_loss(runs, out / "loss.png"), plot_accuracy(runs, out / "accuracy.png"),
             plot_epoch_time(runs, out / "epoch_time.png")]
    ps_runs = [r for r in runs if r.has_comm]
    if ps_runs:
        paths += [plot_step_timeline(ps_runs, out / "step_timeline.png"),
                  plot_comm_overhead(ps_runs, out / "comm_overhead.png")]
    return paths
