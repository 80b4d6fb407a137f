"""step_timeline.png: a Gantt chart of a parameter-server run's comm.jsonl spans, one row per process.

    python -c "from parsgd.analysis.timeline import plot_step_timeline; print(plot_step_timeline('runs/ps-p2', 't.png'))"

parsgd.analysis.plots re-exports everything here; sizes, fonts and saving live in figures.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.patches import Patch

from parsgd.analysis.figures import (WIDE_FIGSIZE, WIDE_FONTS, add_legend, as_run, figure_title, folder_names,
                                     new_figure, run_labels, save_png)
from parsgd.analysis.overhead_plots import CATEGORY_COLORS
from parsgd.analysis.rundirs import CommSpans, Run, RunDirError
from parsgd.analysis.stepparts import link_in_waits
from parsgd.ps.protocol import SPANS

TIMELINE_STEPS = 20
FIRST_TIMELINE_STEP = 1   # step 0 also holds the wait for workers to start (~0.5 s), dwarfing the rest
SPAN_COLORS = dict(zip(SPANS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728",
                               "#c7c7c7", "#8c564b", "#e377c2")))
GAP_COLOR = "#fff2b3"     # the band of an epoch end (test-set evaluation): no span is timed there
GAP_LABEL = "epoch end: test-set evaluation,\nmetrics, checkpoint (no spans)"
LINK_COLOR = CATEGORY_COLORS["wait: on the link"]   # as comm_overhead.png
LINK_LABEL = "wait: on the link\n(the step's bytes / the link\nrate, as in the report)"


def timeline_steps(comm: CommSpans, max_steps: int = TIMELINE_STEPS) -> np.ndarray:
    """The steps a timeline shows, int64 array of at most max_steps, ascending.

    From FIRST_TIMELINE_STEP on (warm-up left out), or from step 0 when the run has no later
    step; spans outside any step (step -1) are never shown.
    """
    steps = np.unique(comm.step[comm.step >= 0])
    later = steps[steps >= FIRST_TIMELINE_STEP]
    return (later if len(later) else steps)[:max_steps]


def steps_per_epoch(run: Run) -> int | None:
    """Steps in one epoch: summary.json steps / epochs, else ceil(num_samples / batch_size) from the
    config; None when neither says (an unfinished run on the whole dataset)."""
    steps, epochs = run.summary.get("steps"), run.summary.get("epochs")
    if isinstance(steps, int) and isinstance(epochs, int) and epochs > 0 and steps > 0 and steps % epochs == 0:
        return steps // epochs
    rows, batch = run.config.get("num_samples"), run.config.get("batch_size")
    if isinstance(rows, int) and isinstance(batch, int) and rows > 0 and batch > 0:
        return math.ceil(rows / batch)
    return None


def _step_starts_s(comm: CommSpans, steps, mask) -> np.ndarray:
    """Start of each step: the server's first span in it (a worker's wait for the next step
    begins during the previous one), else the first span of any role."""
    starts_s = []
    for step in steps:
        sel = mask & (comm.step == step)
        server = sel & (comm.role == "server")
        starts_s.append(comm.t_s[server if server.any() else sel].min())
    return np.array(starts_s)


def evaluation_gaps(run: Run, steps, mask) -> list[tuple[int, float, float]]:
    """The epoch ends inside the shown `steps`: [(epoch that ended (from 1), start_s, end_s)], from the
    end of the server's last span of an epoch's last step to the start of the next epoch's first
    step (seconds on the comm.jsonl clock). The server evaluates the test set, writes metrics.jsonl
    and checkpoints there, and times no span. [] when steps_per_epoch is unknown. `mask`: the spans
    that count (finite times)."""
    per_epoch, comm = steps_per_epoch(run), run.comm
    if not per_epoch:
        return []
    gaps = []
    for step in steps:
        if step == 0 or step % per_epoch or step - 1 not in steps:
            continue
        before = mask & (comm.step == step - 1)
        server = before & (comm.role == "server")
        before = server if server.any() else before
        start_s = float((comm.t_s[before] + comm.dur_s[before]).max())
        end_s = float(_step_starts_s(comm, [step], mask)[0])
        if end_s > start_s:
            gaps.append((int(step) // per_epoch, start_s, end_s))
    return gaps


def link_segments(run: Run, steps, mask) -> dict[tuple[str, int], list[tuple[int, float, float]]]:
    """On emulated links (BSP): per track (role, rank), the (step, start_s, dur_s) pieces of its wait spans in
    `steps` that stepparts.link_in_waits books to the link, the last seconds of each step's waits (a
    wait ends when the bytes it waits for are in). {} without links, or for ssp / async runs.
    `mask`: the spans that count (finite times)."""
    comm, out = run.comm, {}
    for (role, rank), per_step in link_in_waits(run, [int(s) for s in steps]).items():
        pieces = []
        track = mask & (comm.role == role) & (comm.rank == rank) & (comm.span == "wait")
        for step, left_s in zip(steps, per_step):
            sel = track & (comm.step == step)
            for t_s, dur_s in sorted(zip(comm.t_s[sel], comm.dur_s[sel]), reverse=True):
                if left_s <= 0:
                    break
                take_s = min(dur_s, left_s)
                pieces.append((int(step), float(t_s + dur_s - take_s), float(take_s)))
                left_s -= take_s
        out[(role, rank)] = pieces
    return out


def _draw_timeline(ax, run: Run, max_steps: int, label: str | None = None) -> list[tuple[int, float, float]]:
    """One panel, titled `label` (default run.label with its folder); returns the evaluation_gaps drawn."""
    comm = run.comm
    steps = timeline_steps(comm, max_steps)
    mask = np.isin(comm.step, steps) & np.isfinite(comm.t_s + comm.dur_s)  # a null time is no span
    steps = steps[np.isin(steps, comm.step[mask])]
    if not mask.any():
        ax.text(0.5, 0.5, "no step spans with finite times in comm.jsonl", ha="center", va="center",
                transform=ax.transAxes)
        return []
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
    links = link_segments(run, steps, mask)
    for row, track in enumerate(tracks):   # over the wait bars, within them
        bars = [(lo, hi - lo) for lo, hi in (((max(t, t0_s) - t0_s) * 1e3, (t + d - t0_s) * 1e3)
                                             for _, t, d in links.get(track, ())) if hi > lo]
        if bars:
            ax.broken_barh(bars, (row - 0.4, 0.8), facecolors=LINK_COLOR, gid="link")
    x_steps_ms = (starts_s - t0_s) * 1e3
    for x_ms in x_steps_ms:
        ax.axvline(x_ms, color="black", lw=0.6, alpha=0.5)
    right_ms = max(float((start_ms[mask] + dur_ms[mask]).max()), 1e-3)
    ax.set_xlim(0, right_ms * 1.01)
    gaps = evaluation_gaps(run, steps, mask)
    for epoch, start_s, end_s in gaps:  # behind the bars; named in the server's row, which has no span there
        lo_ms, hi_ms = (start_s - t0_s) * 1e3, (end_s - t0_s) * 1e3
        ax.axvspan(lo_ms, hi_ms, color=GAP_COLOR, zorder=0)
        wide = hi_ms - lo_ms > 0.06 * right_ms
        ax.text((lo_ms + hi_ms) / 2, 0, f"end of\nepoch {epoch}" if wide else f"end of epoch {epoch}",
                rotation=0 if wide else 90, ha="center", va="center", fontsize="small",
                bbox={"boxstyle": "round,pad=0.2", "fc": GAP_COLOR, "ec": "#b8a040", "lw": 0.5})
    top = ax.secondary_xaxis("top")   # step numbers as ticks on a top axis: never over the bars
    min_gap_ms = 0.035 * right_ms     # about 3 characters at this width; closer steps go unlabelled
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
    ax.set_title(f"{label or f'{run.label} ({run.path.name})'}: {shown_steps}")
    order = [s for s in (*SPANS, *sorted(set(present))) if s in present]
    handles = [Patch(color=SPAN_COLORS.get(s, "#7f7f7f"), label=s) for s in dict.fromkeys(order)]
    if any(links.values()):
        handles.append(Patch(color=LINK_COLOR, label=LINK_LABEL))
    if gaps:
        handles.append(Patch(color=GAP_COLOR, label=GAP_LABEL))
    add_legend(ax, handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return gaps


@rc_context(WIDE_FONTS)
def plot_step_timeline(runs, path, max_steps: int = TIMELINE_STEPS) -> Path:
    """Gantt chart (ms on x, one row per server/worker) of the timeline_steps of PS runs' comm.jsonl.

    `runs`: one Run or run-dir path, or a list of them (one panel each, stacked, titled with
    figures.run_labels and the folder). Returns Path(path).
    Raises RunDirError when a run cannot be loaded or has no comm.jsonl (not a PS run); WriteError.
    """
    runs = [as_run(r) for r in (runs if isinstance(runs, (list, tuple)) else [runs])]
    for run in runs:
        if not run.has_comm:
            raise RunDirError(f"{run.path} has no communication log (comm.jsonl): step timelines "
                              "need a parameter-server run (parsgd launch/server/experiment)")
    fig, axes = new_figure((WIDE_FIGSIZE[0], WIDE_FIGSIZE[1] * len(runs)), len(runs), 1)
    for ax, run, label in zip(axes[:, 0], runs, panel_labels(runs)):
        _draw_timeline(ax, run, max_steps, label)
    fig.suptitle(figure_title("Per-step timeline from comm.jsonl spans", runs))
    return save_png(fig, path)


def panel_labels(runs: list[Run]) -> list[str]:
    """Title of each run's timeline panel: its run_labels entry, with the folder_names part that tells
    the panels' folders apart, unless the label ends with a folder already."""
    return [label if label.endswith(")") else f"{label} ({folder})"
            for label, folder in zip(run_labels(runs), folder_names([r.path for r in runs]))]
