"""Figure scaffolding shared by the plots: PNG size and DPI, fonts, markers, run labels and titles.

    python -c "from parsgd.analysis.figures import new_figure, save_png; fig, axes = new_figure(); \
axes[0, 0].plot([0, 1]); print(save_png(fig, 'blank.png'))"

Figures draw on an Agg canvas without pyplot, so they are plain objects with nothing to close.
"""
from __future__ import annotations

import io
import math
from collections import Counter
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

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
COLORS = tuple(f"C{i}" for i in range(10))   # matplotlib's default colour cycle


def new_figure(figsize: tuple[float, float] = FIGSIZE, nrows: int = 1, ncols: int = 1) -> tuple[Figure, np.ndarray]:
    """A Figure of `figsize` inches at DPI on an Agg canvas, and its axes as an (nrows, ncols) array."""
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")  # room for titles, outside legends
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def marker_style(i: int, n: int) -> dict:
    """Plot keyword arguments for series i of n: a hollow marker shrinking with i, so series drawn on
    the same points nest inside one another instead of hiding the ones drawn earlier, and a
    (colour, marker) pair no other series of the n has: the 10 colours x 10 markers, the marker
    shifted by one every 10 series (100 pairs), beyond that a colour per series from a colormap."""
    size = 11 - 7 * i / (n - 1) if n > 1 else 6
    if n <= len(COLORS) * len(MARKERS):
        color, marker = COLORS[i % len(COLORS)], MARKERS[(i + i // len(COLORS)) % len(MARKERS)]
    else:
        color, marker = to_hex(colormaps["turbo"](i / (n - 1))), MARKERS[i % len(MARKERS)]
    return {"marker": marker, "ms": size, "mfc": "none", "mew": 1.5, "color": color}


def epoch_axis(runs: list[Run]) -> tuple[tuple[float, float], list[int]]:
    """x limits and ticks of a per-epoch plot: whole epochs only, half an epoch of margin on each side
    (a 1-epoch run: 0.5-1.5, tick 1), at most 12 ticks."""
    epochs = np.concatenate([r.column("epoch") for r in runs])
    lo, hi = int(np.nanmin(epochs)), int(np.nanmax(epochs))
    every = max(1, math.ceil((hi - lo + 1) / 12))
    return (lo - 0.5, hi + 0.5), list(range(lo, hi + 1, every))


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


CONFIG_FIELDS = ("dataset", "num_samples", "epochs", "batch_size", "lr", "momentum", "hidden", "dtype", "seed")


def config_words(run: Run) -> dict[str, str]:
    """The run's training configuration in words, {field: text} in CONFIG_FIELDS order, e.g.
    "num_samples": "n=2048" ("all rows" when unset), "epochs": "1 epoch". Mode and workers are
    left out: run.label names them."""
    c = run.config
    hidden, n, epochs = c.get("hidden"), c.get("num_samples"), c.get("epochs")
    hidden = ",".join(map(str, hidden)) if isinstance(hidden, (list, tuple)) else hidden
    return {"dataset": run.dataset, "num_samples": f"n={n}" if n else "all rows",
            "epochs": f"{epochs} epoch{'' if epochs == 1 else 's'}", "batch_size": f"batch {c.get('batch_size')}",
            "lr": f"lr {c.get('lr')}", "momentum": f"momentum {c.get('momentum')}", "hidden": f"hidden {hidden}",
            "dtype": str(c.get("dtype")), "seed": f"seed {c.get('seed')}"}


def differing_fields(runs: list[Run]) -> list[str]:
    """The CONFIG_FIELDS whose config_words are not the same in every run."""
    words = [config_words(r) for r in runs]
    return [f for f in CONFIG_FIELDS if len({w[f] for w in words}) > 1]


def folder_names(paths) -> list[str]:
    """The fewest trailing parts of each folder's absolute path that tell them apart: ['run', 'other']
    or ['r1/run', 'r2/run']; a folder given twice keeps its whole path."""
    parts = [Path(p).resolve().parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = [str(Path(*p[-k:])) for p in parts]
        if len(set(names)) == len(names):
            break
    return names


def run_labels(runs: list[Run]) -> list[str]:
    """Legend name per run, different for every run: run.label, plus the settings in which the runs
    differ (differing_fields: 'sequential, n=4096'); where two would still be alike, the folders that
    tell them apart ('sequential (r1/run)'); the same folder given twice is numbered ('#2')."""
    differ = differing_fields(runs)
    labels = [", ".join([r.label, *(config_words(r)[f] for f in differ)]) for r in runs]
    for label in dict.fromkeys(labels):
        alike = [i for i, lb in enumerate(labels) if lb == label]
        if len(alike) > 1:
            for i, folder in zip(alike, folder_names([runs[i].path for i in alike])):
                labels[i] = f"{label} ({folder})"
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        labels[i] = label if seen[label] == 1 else f"{label} #{seen[label]}"
    return labels


def _value_key(word: str):
    """Sort key of a config word: by its number ('n=4096', 'seed 12'), else alphabetically."""
    try:
        return (0, float(word.split()[-1].split("=")[-1]), word)
    except ValueError:
        return (1, 0.0, word)


def figure_title(what: str, runs: list[Run]) -> str:
    """Figure title: `what`; the configuration the runs share; and, when they differ, how many runs
    there are and every difference with its values and how many runs have each, e.g.
    '4 runs, not all alike: n=2048 (3 runs) vs n=4096 (1 run)' (more than 4 values: first, second,
    ..., last and how many)."""
    words = [config_words(r) for r in runs]
    differ = differing_fields(runs)
    lines = [what, ", ".join(v for f, v in words[0].items() if f not in differ)]
    parts = []
    for f in differ:
        counts = Counter(w[f] for w in words)
        values = sorted(counts, key=_value_key)
        if len(values) <= 4:
            parts.append(" vs ".join(f"{v} ({counts[v]} run{'s' if counts[v] > 1 else ''})" for v in values))
        else:
            parts.append(f"{values[0]}, {values[1]}, ..., {values[-1]} ({len(values)} values)")
    if parts:
        lines.append(f"{len(runs)} runs, not all alike: {'; '.join(parts)}")
    return "\n".join(line for line in lines if line)
