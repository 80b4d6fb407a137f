"""PNG plots from run directories (Agg, no pyplot: figures are plain objects, nothing to close).

    parsgd plot runs/sequential-p1 runs/ps-p2 -o plots/
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from parsgd.report import CATEGORIES, comm_breakdown, describe_config, with_baseline
from parsgd.runs import SPANS, Run, RunDirError, load_run

DPI = 100
FIGSIZE = (8, 5)          # loss, accuracy, epoch_time, speedup: 800 x 500 px
WIDE_FIGSIZE = (12, 5)    # comm_overhead and one step timeline panel: 1200 x 500 px
TIMELINE_STEPS = 20
SPAN_COLORS = dict(zip(SPANS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728",
                               "#c7c7c7", "#8c564b", "#e377c2")))
CATEGORY_COLORS = {"serialize": "#1f77b4", "transfer": "#ff7f0e", "wait": "#c7c7c7",
                   "deserialize": "#9467bd", "compute": "#d62728", "update": "#e377c2", "other": "#7f7f7f"}
SHARE_COLORS = {"compute": "#d62728", "communication": "#ff7f0e", "other": "#c7c7c7"}


def _figure(figsize=FIGSIZE, nrows=1, ncols=1):
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _as_run(run) -> Run:
    return run if isinstance(run, Run) else load_run(run)


def _labels(runs: list[Run]) -> list[str]:
    """run.label, with the folder name added where two runs would share a label."""
    labels = [r.label for r in runs]
    return [f"{lb} ({r.path.name})" if labels.count(lb) > 1 else lb for lb, r in zip(labels, runs)]


def _title(what: str, runs: list[Run]) -> str:
    configs = {describe_config({**r.config, "workers": 1}, r.dataset) for r in runs}
    if len(configs) == 1:
        return f"{what}\n{configs.pop()}"
    return f"{what}\n{len(configs)} different configurations"


def _per_epoch(runs, path, what, fields, ylabel, legend_loc="best") -> Path:
    fig, axes = _figure()
    ax = axes[0, 0]
    for i, (run, label) in enumerate(zip(runs, _labels(runs))):
        epochs = run.column("epoch")
        for field, style in zip(fields, ("-", "--")):
            ax.plot(epochs, run.column(field), style, marker="o", ms=3, color=f"C{i % 10}",
                    label=label if style == "-" else None)
    handles, _ = ax.get_legend_handles_labels()
    if len(fields) == 2:
        handles += [Line2D([], [], color="gray", ls="-", label=fields[0].replace("_", " ")),
                    Line2D([], [], color="gray", ls="--", label=fields[1].replace("_", " "))]
    ax.legend(handles=handles, loc=legend_loc, fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(_title(what, runs), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_loss(runs, path) -> Path:
    return _per_epoch(runs, path, "Loss per epoch", ("train_loss", "test_loss"), "cross-entropy loss (nats)")


def plot_accuracy(runs, path) -> Path:
    return _per_epoch(runs, path, "Accuracy per epoch", ("train_acc", "test_acc"), "accuracy (fraction correct)",
                      legend_loc="lower right")


def plot_epoch_time(runs, path) -> Path:
    return _per_epoch(runs, path, "Wall time per epoch", ("epoch_time_s",), "epoch time (s)")


def plot_speedup(runs, baseline: Run, path) -> Path:
    """Speedup = baseline total / run total against P, one line per mode/transport, ideal y = P."""
    fig, axes = _figure()
    ax = axes[0, 0]
    base_total = float(baseline.summary["total_time_s"])
    series: dict[str, list[tuple[int, float]]] = {}
    for run in runs:
        if run is baseline:
            continue
        key = run.mode + (f" {run.transport}" if run.transport else "")
        series.setdefault(key, []).append((run.workers, base_total / float(run.summary["total_time_s"])))
    ps = sorted({1, *(p for pts in series.values() for p, _ in pts)})
    ax.plot(ps, ps, "k--", lw=1, label="ideal (speedup = P)")
    ax.axhline(1.0, color="gray", ls=":", lw=1, label=f"{baseline.label} baseline")
    for i, (key, pts) in enumerate(sorted(series.items())):
        pts.sort()
        ax.plot([p for p, _ in pts], [s for _, s in pts], marker="o", color=f"C{i % 10}", label=key)
    ax.set_xticks(ps)
    ax.set_xlabel("workers P (processes)")
    ax.set_ylabel(f"speedup over {baseline.label} (x)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(_title("Speedup (total wall time)", runs), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _epoch_shares(run: Run) -> dict[str, float]:
    """compute / communication / other as shares of the summed epoch wall time (metrics.jsonl)."""
    total = run.column("epoch_time_s").sum()
    compute, comm = run.column("compute_s").sum(), run.column("comm_s").sum()
    denom = max(total, compute + comm)  # parallel workers' compute can exceed wall time
    if denom <= 0:
        return {"compute": 0.0, "communication": 0.0, "other": 1.0}
    return {"compute": compute / denom, "communication": comm / denom, "other": 1 - (compute + comm) / denom}


def _stacked(ax, names, shares: list[dict], colors: dict):
    bottom = np.zeros(len(names))
    for cat, color in colors.items():
        vals = np.array([s.get(cat, 0.0) for s in shares]) * 100
        if vals.any():
            ax.bar(names, vals, bottom=bottom, color=color, label=cat, edgecolor="white", lw=0.5)
            bottom += vals
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", labelsize=8)


def plot_comm_overhead(runs, path) -> Path:
    """Left: share of epoch time per configuration; right: PS span categories per role (comm.jsonl)."""
    fig, axes = _figure(WIDE_FIGSIZE, 1, 2)
    left, right = axes[0]
    labels = _labels(runs)
    _stacked(left, [lb.replace(" ", "\n", 1) for lb in labels], [_epoch_shares(r) for r in runs], SHARE_COLORS)
    left.set_ylabel("share of epoch wall time (%)")
    left.set_title("compute vs communication (metrics.jsonl)", fontsize=9)
    left.legend(fontsize=8, loc="upper right")
    names, shares = [], []
    for run, label in zip(runs, labels):
        for role, bd in comm_breakdown(run).items():
            names.append(f"{label}\n{role}")
            shares.append(bd["shares"])
    if names:
        _stacked(right, names, shares, CATEGORY_COLORS)
        right.legend(fontsize=8, loc="upper right")
    else:
        right.text(0.5, 0.5, "no parameter-server runs", ha="center", va="center", transform=right.transAxes)
    right.set_ylabel("share of span time per role (%)")
    right.set_title("parameter-server spans (transfer = send + recv)", fontsize=9)
    fig.suptitle(_title("Communication overhead", runs), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _draw_timeline(ax, run: Run, max_steps: int) -> None:
    comm = run.comm
    steps = np.unique(comm.step[comm.step >= 0])[:max_steps]
    mask = np.isin(comm.step, steps)
    if not mask.any():
        ax.text(0.5, 0.5, "no step spans in comm.jsonl", ha="center", va="center", transform=ax.transAxes)
        return
    t0 = comm.t[mask].min()
    tracks = comm.tracks()
    start_ms, dur_ms = (comm.t - t0) * 1e3, comm.dur * 1e3
    present = []
    for row, (role, rank) in enumerate(tracks):
        on_track = mask & (comm.role == role) & (comm.rank == rank)
        for span in np.unique(comm.span[on_track]):
            sel = on_track & (comm.span == span)
            color = SPAN_COLORS.get(str(span), "#7f7f7f")
            ax.broken_barh(list(zip(start_ms[sel], dur_ms[sel])), (row - 0.4, 0.8), facecolors=color)
            present.append(str(span))
    for step in steps:  # a marker where each step starts
        x = start_ms[mask & (comm.step == step)].min()
        ax.axvline(x, color="black", lw=0.5, alpha=0.4)
        ax.text(x, -0.6, str(step), fontsize=6, ha="left", va="bottom", color="black", alpha=0.6)
    ax.set_yticks(range(len(tracks)))
    ax.set_yticklabels([role if role == "server" else f"{role} {rank}" for role, rank in tracks])
    ax.set_ylim(len(tracks) - 0.5, -0.8)
    ax.set_xlabel(f"time since the start of step {steps[0]} (ms)")
    ax.set_title(f"{run.label}: first {len(steps)} steps ({run.path.name}); step numbers above the lines",
                 fontsize=9)
    order = [s for s in (*SPANS, *sorted(set(present))) if s in present]
    ax.legend(handles=[Patch(color=SPAN_COLORS.get(s, "#7f7f7f"), label=s) for s in dict.fromkeys(order)],
              fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot_step_timeline(runs, path, max_steps: int = TIMELINE_STEPS) -> Path:
    """Gantt chart of the first steps of one PS run (or one panel per run for a list) from comm.jsonl."""
    runs = [_as_run(r) for r in (runs if isinstance(runs, (list, tuple)) else [runs])]
    for run in runs:
        if not run.has_comm:
            raise RunDirError(f"{run.path} has no communication log (comm.jsonl): step timelines "
                              "need a parameter-server run (parsgd launch/server/experiment)")
    fig, axes = _figure((WIDE_FIGSIZE[0], WIDE_FIGSIZE[1] * len(runs)), len(runs), 1)
    for ax, run in zip(axes[:, 0], runs):
        _draw_timeline(ax, run, max_steps)
    fig.suptitle(_title("Per-step timeline (comm.jsonl spans)", runs), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_experiment(runs, baseline, out_dir) -> list[Path]:
    """`parsgd experiment`: loss, accuracy, epoch_time, speedup, comm_overhead PNGs in out_dir.

    `runs`: Run objects or run-dir paths of every configuration; `baseline`: the sequential one
    (added to runs if missing).
    """
    baseline = _as_run(baseline)
    runs = with_baseline([_as_run(r) for r in runs], baseline)
    out = Path(out_dir)
    return [plot_loss(runs, out / "loss.png"), plot_accuracy(runs, out / "accuracy.png"),
            plot_epoch_time(runs, out / "epoch_time.png"), plot_speedup(runs, baseline, out / "speedup.png"),
            plot_comm_overhead(runs, out / "comm_overhead.png")]


def plot_runs(run_dirs, out_dir=None) -> list[Path]:
    """`parsgd plot RUN_DIR... [-o DIR]`: pass the RUN_DIR arguments and -o (None if not given).

    Writes loss, accuracy and epoch_time (all runs as series on the same axes), and, when any
    run is a parameter-server run, step_timeline (one panel per PS run) and comm_overhead.
    out_dir None: the run directory itself for one run, else the current directory.
    """
    runs = [_as_run(r) for r in run_dirs]
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
