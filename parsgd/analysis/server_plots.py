"""server_load.png: with --servers S, what each parameter server holds and moves, and how unbalanced that is.

    python -c "from parsgd.analysis.server_plots import plot_server_load; print(plot_server_load(['runs/s2'], 'l.png'))"

Per run of more than one server, a panel of bars per server: KB in and out per timed step through its
socket (stepparts.server_bytes) and its share of the parameters (model/keyranges.py), with the load
imbalance (max / mean) in the title: `--shard-by layer` on 784-256-128-10 shows it at a glance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import rc_context

from parsgd.analysis.figures import (FIGSIZE, FONTS, add_legend, as_run, figure_title, new_figure, run_labels,
                                     save_png)
from parsgd.analysis.rundirs import Run
from parsgd.analysis.stepparts import server_bytes


def server_load_series(runs: list[Run]) -> list[dict]:
    """Per run with more than one server: {"label", "servers": [rank], "in_kb", "out_kb" (per timed step),
    "params_share" (fraction of the parameters), "imbalance_params", "imbalance_bytes"}."""
    out = []
    for run, label in zip(runs, run_labels(runs)):
        rows = server_bytes(run)
        if len(rows) < 2:
            continue
        sizes = np.array([r["elements"] for r in rows], dtype=float)
        out.append({"label": label, "servers": [r["server"] for r in rows],
                    "in_kb": [r["in"] / 1e3 for r in rows], "out_kb": [r["out"] / 1e3 for r in rows],
                    "params_share": list(sizes / sizes.sum()), "imbalance_params": float(sizes.max() / sizes.mean()),
                    "imbalance_bytes": max(r["imbalance"] for r in rows)})
    return out


@rc_context(FONTS)
def plot_server_load(runs, path) -> Path | None:
    """server_load.png for the runs (Runs or run-dir paths) with S > 1 servers; None (nothing written) when
    none has. Raises RunDirError, WriteError."""
    runs = [as_run(r) for r in runs]
    series = server_load_series(runs)
    if not series:
        return None
    fig, axes = new_figure((FIGSIZE[0], FIGSIZE[1] * 0.8 * len(series)), len(series), 1)
    for ax, s in zip(axes[:, 0], series):
        x = np.arange(len(s["servers"]))
        ax.bar(x - 0.2, s["in_kb"], 0.4, label="in (KB per timed step)", color="#1f77b4")
        ax.bar(x + 0.2, s["out_kb"], 0.4, label="out (KB per timed step)", color="#ff7f0e")
        ax.set_xticks(x, [f"server {r}\n{share:.0%} of the parameters" for r, share in zip(s["servers"],
                                                                                       s["params_share"])])
        ax.set_ylabel("KB per step through its socket")
        ax.set_title(f"{s['label']}: load imbalance (max / mean) {s['imbalance_params']:.2f} in parameters, "
                     f"{s['imbalance_bytes']:.2f} in bytes")
        add_legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(figure_title("What each parameter server holds and moves", runs))
    return save_png(fig, path)
