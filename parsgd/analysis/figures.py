"""Figure scaffolding shared by the plots: PNG size and DPI, fonts, markers, run labels and titles.

    python -c "from parsgd.analysis.figures import new_figure, save_png; fig, axes = new_figure(); \
axes[0, 0].plot([0, 1]); print(save_png(fig, 'blank.png'))"

Figures draw on an Agg canvas without pyplot, so they are plain objects with nothing to close.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from parsgd.analysis.report import describe_config
from parsgd.analysis.rundirs import Run, load_run
from parsgd.files import ensure_dir, write_file

DPI = 100
FIGSIZE = (8, 5)          # loss, accuracy, epoch_time, speedup: 800 x 500 px
WIDE_FIGSIZE = (12, 5)    # comm_overhead and one step timeline panel: 1200 x 500 px
# Point sizes chosen so text stays legible when a wide figure is shown scaled down to 800 px.
FONTS = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9,
         "ytick.labelsize": 9, "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 11}
WIDE_FONTS = {key: size * 1.25 for key, size in FONTS.items()}
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "h", "<")


def new_figure(figsize: tuple[float, float] = FIGSIZE, nrows: int = 1, ncols: int = 1) -> tuple[Figure, np.ndarray]:
    """A Figure of `figsize` inches at DPI on an Agg canvas, and its axes as an (nrows, ncols) array."""
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")  # room for titles, outside legends
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def marker_style(i: int, n: int) -> dict:
    """Plot keyword arguments for series i of n: a hollow marker, a different shape per series,
    shrinking with i, so series drawn on the same points nest inside one another instead of
    hiding the ones drawn earlier."""
    size = 11 - 7 * i / (n - 1) if n > 1 else 6
    return {"marker": MARKERS[i % len(MARKERS)], "ms": size, "mfc": "none", "mew": 1.5, "color": f"C{i % 10}"}


def save_png(fig: Figure, path) -> Path:
    """Write `fig` as a PNG at DPI to `path` (str or Path), creating its folders; returns the Path.

    Rendered in memory, then written with parsgd.files.write_file (atomically; a device in place).
    Raises WriteError (`cannot write PATH: REASON; FIX`) if the folder or the file cannot be written.
    """
    path = Path(path)
    ensure_dir(path.parent)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return write_file(path, buf.getvalue())


def as_run(run) -> Run:
    """`run` itself if it is a Run, else load_run(run); raises RunDirError as load_run does."""
    return run if isinstance(run, Run) else load_run(run)


def run_labels(runs: list[Run]) -> list[str]:
    """Legend name per run: run.label, with the folder name added where two runs would share a label."""
    labels = [r.label for r in runs]
    return [f"{lb} ({r.path.name})" if labels.count(lb) > 1 else lb for lb, r in zip(labels, runs)]


def figure_title(what: str, runs: list[Run]) -> str:
    """Two-line figure title: `what`, then the runs' common configuration (or how many there are)."""
    configs = {describe_config({**r.config, "workers": 1}, r.dataset) for r in runs}
    if len(configs) == 1:
        return f"{what}\n{configs.pop()}"
    return f"{what}\n{len(configs)} different configurations"
