"""Figure scaffolding shared by the plots: PNG size and DPI, fonts, markers, run labels and titles.

    python -c "from parsgd.analysis.figures import new_figure, save_png; fig, axes = new_figure(); \
axes[0, 0].plot([0, 1]); print(save_png(fig, 'blank.png'))"

Figures draw on an Agg canvas without pyplot, so they are plain objects with nothing to close.
"""
from __future__ import annotations

import io
import math
import textwrap
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.text import Annotation

from parsgd.analysis.repeats import repeat_note
from parsgd.analysis.rundirs import Run, load_run
from parsgd.files import ensure_dir, write_file

DPI = 100
FIGSIZE = (8, 5)          # loss, accuracy, epoch_time, speedup: 800 x 500 px
WIDE_FIGSIZE = (12, 5)    # comm_overhead and one step timeline panel: 1200 x 500 px
# Point sizes chosen so text stays legible when a wide figure is shown scaled down to 800 px.
FONTS = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9,
         "ytick.labelsize": 9, "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 11}
WIDE_FONTS = {key: size * 1.25 for key, size in FONTS.items()}
MIN_AXES_IN = (3.0, 1.6)  # (width, height) inches every panel keeps: the figure grows instead (fit_figure)
FIT_ROUNDS = 6            # layout passes fit_figure may take to make room
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

    fit_figure first: titles wrapped, the figure grown until every text lies inside it. Rendered in
    memory, then written with parsgd.files.write_file (atomically; a device in place).
    Raises WriteError (`cannot write PATH: REASON; FIX`) if the folder or the file cannot be written.
    """
    path = Path(path)
    ensure_dir(path.parent)
    fit_figure(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return write_file(path, buf.getvalue())


def add_legend(ax, handles=None, **kwargs):
    """ax.legend(handles=handles, **kwargs), or nothing (None) when there is no labelled artist to name:
    matplotlib would warn and draw an empty box."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    return ax.legend(handles=handles, **kwargs) if handles else None


def _wrappable(fig: Figure) -> list[tuple]:
    """(Text, the Axes it must fit in or None for the figure): the suptitle, the axes titles and the
    unrotated texts placed in axes coordinates (notes like 'nothing to draw'); not tick labels,
    legends or annotations, which the layout or the figure's size must make room for."""
    out = [(fig._suptitle, None)] if fig._suptitle is not None else []
    for ax in fig.axes:
        out += [(t, ax) for t in (ax.title, ax._left_title, ax._right_title)]
        out += [(t, ax) for t in ax.texts if not isinstance(t, Annotation) and t.get_transform() == ax.transAxes
                and not t.get_rotation()]
    return [(t, ax) for t, ax in out if t.get_visible() and t.get_text()]


def _wrap(text, source: str, width_px: float, renderer) -> None:
    """Set `text` to `source` wrapped at word boundaries to at most width_px (narrower each try, as
    characters differ in width)."""
    text.set_text(source)
    longest = max(len(line) for line in source.split("\n"))
    for shrink in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5):
        extent = text.get_window_extent(renderer)
        if extent.width <= width_px:
            return
        longest = max(8, int(longest * width_px / extent.width * shrink))
        text.set_text("\n".join(part for line in source.split("\n")
                                for part in (textwrap.wrap(line, longest, break_on_hyphens=False) or [""])))


def _wrap_all(fig: Figure, sources: dict, renderer) -> bool:
    """_wrap every _wrappable text, from its text as the plot set it (kept in `sources`, by id), to its
    panel's width (the figure's for the suptitle); True if any text changed."""
    w = fig.get_size_inches()[0]
    changed = False
    for text, ax in _wrappable(fig):
        before = text.get_text()
        share = ax.get_position().width if ax is not None else 0.96
        _wrap(text, sources.setdefault(id(text), before), max(share * w * fig.dpi, 100.0), renderer)
        changed |= text.get_text() != before
    return changed


def tick_labels(axis) -> list:
    """The major tick labels (Text) `axis` draws: visible, non-empty, at a tick inside its view."""
    lo, hi = sorted(axis.get_view_interval())
    slack = (hi - lo) * 1e-9
    return [t.label1 for t in axis.get_major_ticks() if lo - slack <= t.get_loc() <= hi + slack
            and t.label1.get_visible() and t.label1.get_text()]


def _needed_size(fig: Figure, renderer) -> tuple[float, float]:
    """(width, height) inches the figure needs: its size plus what its artists stick out of it, plus
    what brings every visible panel up to MIN_AXES_IN and gives its tick labels room side by side
    (one row of a bar chart per name: the names must not overlap)."""
    w, h = fig.get_size_inches()
    box = fig.get_tightbbox(renderer)   # inches
    need_w = w + max(0.0, -box.x0) + max(0.0, box.x1 - w)
    need_h = h + max(0.0, -box.y0) + max(0.0, box.y1 - h)
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison or ax.get_subplotspec() is None:
            continue
        rows, cols = ax.get_subplotspec().get_gridspec().get_geometry()
        pos = ax.get_position()
        labels_w, labels_h = (sum(getattr(t.get_window_extent(renderer), side) for t in tick_labels(axis))
                              * 1.2 / fig.dpi for axis, side in ((ax.xaxis, "width"), (ax.yaxis, "height")))
        need_w = max(need_w, w + cols * (max(MIN_AXES_IN[0], labels_w) - pos.width * w))
        need_h = max(need_h, h + rows * (max(MIN_AXES_IN[1], labels_h) - pos.height * h))
    return need_w, need_h


def fit_figure(fig: Figure) -> None:
    """Make every text of `fig` legible and inside it: wrap the titles and axes notes to the width
    they have, lay the figure out (constrained layout), and grow it while an artist sticks out of it,
    a panel is smaller than MIN_AXES_IN or the layout collapsed (long run labels, 20+ legend
    entries), at most FIT_ROUNDS times. A figure that fits keeps its size."""
    renderer, sources = fig.canvas.get_renderer(), {}
    for _ in range(FIT_ROUNDS):
        _wrap_all(fig, sources, renderer)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig.canvas.draw()   # runs the layout engine; a layout that does not fit warns
        collapsed = [c for c in caught if "not applied" in str(c.message)]
        for c in caught:        # any other warning is the caller's to see
            if c not in collapsed:
                warnings.warn_explicit(c.message, c.category, c.filename, c.lineno)
        w, h = fig.get_size_inches()
        need_w, need_h = _needed_size(fig, renderer)
        if collapsed:
            need_w, need_h = max(need_w, 1.15 * w), max(need_h, 1.15 * h)
        if need_w > w + 0.01 or need_h > h + 0.01:
            fig.set_size_inches(max(w, need_w + 0.05), max(h, need_h + 0.05))
        elif not _wrap_all(fig, sources, renderer):
            return


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
    """Figure title: `what`, with which repeat the runs are when each is one of several (repeats.repeat_note:
    'Loss per epoch (repeat 1 of 3 of each configuration)'); the configuration the runs share; and, when
    they differ, how many runs there are and every difference with its values and how many runs have
    each, e.g. '4 runs, not all alike: n=2048 (3 runs) vs n=4096 (1 run)' (more than 4 values: first,
    second, ..., last and how many)."""
    words = [config_words(r) for r in runs]
    differ = differing_fields(runs)
    note = repeat_note(runs)
    lines = [f"{what} ({note})" if note else what, ", ".join(v for f, v in words[0].items() if f not in differ)]
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
