"""speedup.png: speedup against P, one line per mode / transport, from the comparison table's rows.

    python -c "from parsgd.analysis.speedup_plots import plot_speedup; from parsgd.analysis.rundirs import \
load_run; rs = [load_run(p) for p in ('results/sequential', 'results/ps-p2-shm')]; print(plot_speedup(rs, rs[0], 's.png'))"

parsgd.analysis.plots re-exports everything here; sizes, fonts and saving live in figures.py.
"""
from __future__ import annotations

import re
from pathlib import Path

from matplotlib import rc_context
from matplotlib.lines import Line2D

from parsgd.analysis.figures import FIGSIZE, FONTS, add_legend, figure_title, marker_style, new_figure, save_png
from parsgd.analysis.results import DIVERGED, TOO_SHORT, records, table_rows
from parsgd.analysis.rundirs import Run


def series_key(row: dict) -> str:
    """The line a table row belongs to: its configuration's label without P, with the table's consistency
    ('ps tcp', 'ps shm async', 'ps shm ssp S=2', 'ps tcp S=2 by layer, faults slow=worker1:3')."""
    key = re.sub(r" P=\d+", "", row["run"], count=1)
    return key.replace(" ssp", f" {row['consistency']}", 1) if (row["consistency"] or "").startswith("ssp") else key


def speedup_series(rows: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """The table's rows after the baseline, per series_key in name order: {"points": the rows with a
    speedup, by P; "diverged": the rows of a configuration that diverged (no speedup is claimed: the
    figure says 'diverged' at their P); "untimed": the other rows without a speedup (no timed step)}."""
    out: dict[str, dict[str, list[dict]]] = {}
    for row in rows[1:]:
        kind = "diverged" if row["diverged"] else "points" if row["speedup"] is not None else "untimed"
        out.setdefault(series_key(row), {"points": [], "diverged": [], "untimed": []})[kind].append(row)
    for s in out.values():
        s["points"].sort(key=lambda row: row["P"])
    return dict(sorted(out.items()))


def _notes(ax, pts: list[dict], color: str, xmax: int) -> str:
    """Mark the table's notes (too short to time, above P) on the points; a note every point of the line
    has goes into its legend entry instead (returned, '' for none), so the same words are not stacked."""
    notes = [row["note"] + ("" if row["note"] == TOO_SHORT else " (see the report)") if row["note"] else ""
             for row in pts]
    if len(pts) > 1 and len(set(notes)) == 1:
        return f" ({notes[0]})" if notes[0] else ""
    for row, text in zip(pts, notes):
        if text:   # right of the point, or left of it at the last P, so it stays over the axes
            right = row["P"] < xmax
            ax.annotate(text, (row["P"], row["speedup"]), xytext=(6 if right else -6, 4), textcoords="offset points",
                        fontsize=8, color=color, ha="left" if right else "right")
    return ""


@rc_context(FONTS)
def plot_speedup(runs: list[Run], baseline: Run, path) -> Path:
    """Speedup against P, one line per configuration but P (series_key): the baseline's median s/step /
    the run's s/step over the timed steps (warm-up left out; analysis/results.py), median of the repeats of
    a configuration (runs with one label) with a min-max bar.

    Standard definition of speedup; the dashed ideal line is linear scaling, speedup = P. A point
    marked in the table (too short to time, above P) is labelled so. A configuration that diverged has
    no point: 'diverged' stands at its P. The baseline (and its repeats) is the dotted line at 1.
    Returns Path(path); RunDirError for a corrupt check.npz; WriteError.
    """
    fig, axes = new_figure(FIGSIZE)
    ax = axes[0, 0]
    rows = table_rows(records(runs, baseline))
    series = speedup_series(rows)
    untimed = [row["run"] for s in series.values() for row in s["untimed"]]
    if untimed:
        ax.text(0.5, 0.02, f"left out, no timed steps after the warm-up: {', '.join(untimed)}",
                ha="center", va="bottom", transform=ax.transAxes)
    ps = sorted({1, *(row["P"] for s in series.values() for row in s["points"] + s["diverged"])})
    ax.plot(ps, ps, "k--", lw=1, label="ideal (speedup = P)")
    ax.axhline(1.0, color="gray", ls=":", lw=1, label=f"{baseline.label} baseline")
    for i, (key, s) in enumerate(series.items()):
        style, pts = marker_style(i, len(series)), s["points"]
        note = _notes(ax, pts, style["color"], ps[-1])
        label = key + note + (f" ({DIVERGED} at P={', '.join(str(r['P']) for r in s['diverged'])})" if s["diverged"]
                              else "")
        if pts:
            ranges = [row["speedup_range"] or (row["speedup"], row["speedup"]) for row in pts]  # None: one run
            err = [[row["speedup"] - lo for row, (lo, _) in zip(pts, ranges)],
                   [hi - row["speedup"] for row, (_, hi) in zip(pts, ranges)]]
            ax.errorbar([row["P"] for row in pts], [row["speedup"] for row in pts], yerr=err, lw=1.5, capsize=4,
                        label=label, **style)
        else:
            ax.add_line(Line2D([], [], lw=1.5, label=label, **style))   # its legend entry: nothing to draw
        for row in s["diverged"]:   # where its point would be, on the x axis: no speedup is claimed
            ax.annotate(DIVERGED, (row["P"], 0), xytext=(0, 4 + 9 * (i % 4)), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8, color=style["color"], gid="diverged")
    ax.set_xticks(ps)
    ax.set_xlabel("workers P (processes)")
    ax.set_ylabel(f"speedup over {baseline.label} (x)")
    ax.set_ylim(bottom=0)
    add_legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    counts = sorted({row["runs"] for row in rows})
    each = (f"median of {counts[0]} runs each, bars min-max" if len(counts) == 1 and counts[0] > 1 else
            f"median of {counts[0]}-{counts[-1]} runs each, bars min-max" if counts[-1] > 1 else "one run each")
    fig.suptitle(figure_title(f"Speedup (training time of the timed steps, first {rows[0]['warmup_steps']} left out; "
                              f"{each})", runs))
    ax.grid(alpha=0.3)
    return save_png(fig, path)
