"""compression.png: with --compress, the bytes of a step through the servers' sockets and their ratio to raw.

    python -c "from parsgd.analysis.compress_plots import plot_compression; print(plot_compression(['runs/a'], 'c.png'))"

Per parameter-server run (drawn when at least one of them compresses), one bar of KB per timed step:
what the servers sent (the pulls: TASK / PARAMS, raw) and received (the pushes: GRAD / PUSH, encoded),
summed over the servers (stepparts.server_bytes), with the pushes as they would be raw (received /
model/compressor.push_ratio) outlined, and the step's bytes / raw bytes written beside each bar.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import rc_context

from parsgd.analysis.figures import FIGSIZE, FONTS, add_legend, as_run, figure_title, new_figure, run_labels, save_png
from parsgd.analysis.rundirs import Run
from parsgd.analysis.stepparts import server_bytes
from parsgd.model.compressor import push_ratio


def compression_series(runs: list[Run]) -> list[dict]:
    """Per PS run with timed steps: {"label", "codec", "pull_kb", "push_kb", "raw_push_kb", "ratio"}
    (KB per timed step; ratio = (pull + push) / (pull + raw push)); [] unless one run compresses."""
    out = []
    for run, label in zip(runs, run_labels(runs)):
        rows = server_bytes(run) if run.mode == "ps" else []
        if not rows:
            continue
        pull, push = sum(r["out"] for r in rows) / 1e3, sum(r["in"] for r in rows) / 1e3
        raw_push = push / push_ratio(run.config)
        out.append({"label": label, "codec": run.config.get("compress") or "none", "pull_kb": pull,
                    "push_kb": push, "raw_push_kb": raw_push,
                    "ratio": (pull + push) / (pull + raw_push) if pull + raw_push > 0 else 1.0})
    return out if any(s["codec"] != "none" for s in out) else []


@rc_context(FONTS)
def plot_compression(runs, path) -> Path | None:
    """compression.png for the runs (Runs or run-dir paths); None (nothing written) when none compresses
    or has a timed step. Raises RunDirError, WriteError."""
    runs = [as_run(r) for r in runs]
    series = compression_series(runs)
    if not series:
        return None
    fig, axes = new_figure((FIGSIZE[0], max(FIGSIZE[1] * 0.6, 0.5 * len(series) + 1.5)), 1, 1)
    ax = axes[0, 0]
    y = np.arange(len(series))[::-1]
    pull = np.array([s["pull_kb"] for s in series])
    ax.barh(y, pull, 0.6, label="pulled (raw parameters)", color="#1f77b4")
    ax.barh(y, [s["push_kb"] for s in series], 0.6, left=pull, label="pushed (encoded gradients)", color="#ff7f0e")
    ax.barh(y, [s["raw_push_kb"] for s in series], 0.6, left=pull, fill=False, edgecolor="#555555",
            linestyle="--", label="pushed, if raw")
    for yi, s in zip(y, series):
        ax.text(s["pull_kb"] + max(s["push_kb"], s["raw_push_kb"]), yi, f"  {s['ratio']:.2f} of raw", va="center")
    ax.set_yticks(y, [s["label"] for s in series])
    ax.set_xlabel("KB per timed step through the servers' sockets")
    ax.set_title("Bytes of a step with --compress (pulls stay raw)")
    ax.set_xlim(0, max(s["pull_kb"] + max(s["push_kb"], s["raw_push_kb"]) for s in series) * 1.4)
    add_legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle(figure_title("What compression saves on the wire", runs))
    return save_png(fig, path)
