"""Issue 21 (d): every text of every plot lies inside its PNG, with long run labels and 20+ runs, and
drawing them warns nothing (no collapsed layout, no empty legend).

    python3 -m pytest -q tests/test_plot_fit.py

Real runs (`parsgd train`, `parsgd launch`) made once for the module, copied into 25 run directories
whose config.json gives them other labels (P, mode, transport, consistency, servers, faults); every
figure drawn from them is checked with the renderer that drew it.
"""
from __future__ import annotations

import json
import shutil
import warnings

import pytest
from matplotlib.text import Text

from parsgd.analysis import figures, plots, progress_plots, server_plots, timeline
from parsgd.analysis.rundirs import load_run
from procs import cli_run, parsgd

pytestmark = pytest.mark.slow   # a real parameter-server run, then ~10 figures of 25 runs
ARGS = ["--dataset", "synthetic", "--num-samples", "512", "--batch-size", "32", "--epochs", "1"]  # 16 steps: 6 timed
LONG = {"workers": 4, "transport": "tcp@100mbit", "consistency": "ssp", "staleness": 2, "servers": 2,
        "shard_by": "layer", "setup": {"faults": "slow=worker1:3"}}   # 'ps P=4 tcp@100mbit ssp S=2 by layer, faults ...'


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """{"sequential": run dir of `parsgd train`, "ps": of `parsgd launch --workers 2` (shm)}."""
    root = tmp_path_factory.mktemp("real")
    assert cli_run(["train", *ARGS, "--out", root / "sequential"]).exit_code == 0
    result = parsgd("launch", "--workers", "2", *ARGS, "--out", root / "ps")
    assert result.returncode == 0, result.stderr[-2000:]
    return {"sequential": root / "sequential", "ps": root / "ps"}


def relabel(src, dst, mode=None, workers=None, transport=None, setup=None, **config):
    """A copy of the run directory `src` at `dst` whose config.json / summary.json name another
    configuration (its files otherwise those of the real run); returns dst."""
    shutil.copytree(src, dst)
    meta, summary = (json.loads((dst / f).read_text()) for f in ("config.json", "summary.json"))
    meta["config"].update(config)
    for doc in (meta, summary):
        doc.update({k: v for k, v in (("mode", mode), ("workers", workers)) if v is not None})
    if workers is not None:
        meta["config"]["workers"] = workers
    if transport is not None:
        meta["transport"] = summary["transport"] = meta["setup"]["transport"] = transport
    meta["setup"].update(setup or {})
    (dst / "config.json").write_text(json.dumps(meta))
    (dst / "summary.json").write_text(json.dumps(summary))
    return dst


@pytest.fixture(scope="module")
def many(real, tmp_path_factory):
    """25 runs as `experiment --workers 1,2,3,4,5,6 --modes sequential,pool,ps --transport shm,tcp` draws
    them, the last six with long labels (ssp, async, S=2 by layer, faults, emulated links)."""
    root = tmp_path_factory.mktemp("many")
    dirs = [real["sequential"]]
    for p in range(1, 7):
        dirs.append(relabel(real["sequential"], root / f"pool-p{p}", mode="pool", workers=p))
        for transport in ("shm", "tcp"):
            dirs.append(relabel(real["ps"], root / f"ps-p{p}-{transport}", workers=p, transport=transport))
    for i, p in enumerate((2, 3, 4, 5, 6, 4)):
        setup = {**LONG["setup"], "colocate": i == 5, "blas_threads": 2 if i == 4 else None}
        dirs.append(relabel(real["ps"], root / f"long-{i}", **{**LONG, "workers": p, "setup": setup,
                                                               "consistency": ("ssp", "async")[i % 2]}))
    runs = [load_run(d) for d in dirs]
    assert len({r.label for r in runs}) == len(runs) == 25
    assert max(len(r.label) for r in runs) > 60, [r.label for r in runs]
    return runs


@pytest.fixture
def drawn(monkeypatch):
    """The Figures the plot functions save, in order (the real save_png writes each)."""
    figs = []

    def keep(fig, path):
        figs.append(fig)
        return figures.save_png(fig, path)

    for module in (plots, timeline, progress_plots, server_plots):
        monkeypatch.setattr(module, "save_png", keep)
    return figs


def drawn_texts(fig):
    """Every non-empty visible text the last draw of `fig` placed: titles, axis labels, the tick labels
    of the ticks inside the view, legend entries and titles, notes."""
    axes = fig.axes + [child for ax in fig.axes for child in ax.child_axes]   # child: a secondary axis
    every_tick, in_view = set(), set()
    for axis in (a for ax in axes for a in (ax.xaxis, ax.yaxis)):
        every_tick |= {id(lb) for t in axis.get_major_ticks() + axis.get_minor_ticks() for lb in (t.label1, t.label2)}
        in_view |= {id(lb) for t in axis._update_ticks() for lb in (t.label1, t.label2)}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
            and (id(t) in in_view or id(t) not in every_tick)]


def outside(fig) -> list[str]:
    """The texts of `fig` that stick out of the figure (more than half a pixel), with their extents."""
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    bad = []
    for text in drawn_texts(fig):
        e = text.get_window_extent(renderer)
        if e.x0 < box.x0 - 0.5 or e.y0 < box.y0 - 0.5 or e.x1 > box.x1 + 0.5 or e.y1 > box.y1 + 0.5:
            bad.append(f"{text.get_text()[:70]!r} at x {e.x0:.0f}..{e.x1:.0f}, y {e.y0:.0f}..{e.y1:.0f} "
                       f"of {box.width:.0f} x {box.height:.0f}")
    return bad


def test_every_plot_of_25_runs_with_long_labels_fits_and_warns_nothing(many, drawn, tmp_path):
    ps_runs = [r for r in many if r.mode == "ps"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_loss(many, tmp_path / "loss.png")
        plots.plot_accuracy(many, tmp_path / "accuracy.png")
        plots.plot_epoch_time(many, tmp_path / "epoch_time.png")
        plots.plot_speedup(many, many[0], tmp_path / "speedup.png")
        plots.plot_comm_overhead(many, tmp_path / "comm_overhead.png")
        progress_plots.plot_accuracy_time(many, tmp_path / "accuracy_time.png")
        progress_plots.plot_staleness(many, tmp_path / "staleness.png")
        timeline.plot_step_timeline(ps_runs[-3:], tmp_path / "step_timeline.png")
        server_plots.plot_server_load(many, tmp_path / "server_load.png")
    assert len(drawn) == 9
    for fig in drawn:
        assert len(drawn_texts(fig)) > 10
        assert outside(fig) == [], fig.get_suptitle()[:40]
        assert overlapping_ticks(fig) == [], fig.get_suptitle()[:40]


def test_a_figure_that_fits_keeps_its_size(real, drawn, tmp_path):
    runs = [load_run(real["sequential"]), load_run(real["ps"])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_loss(runs, tmp_path / "loss.png")
        plots.plot_comm_overhead(runs, tmp_path / "comm_overhead.png")
    assert [tuple(f.get_size_inches()) for f in drawn] == [figures.FIGSIZE, figures.WIDE_FIGSIZE]
    assert all(outside(f) == [] for f in drawn)


def overlapping_ticks(fig) -> list[str]:
    """Neighbouring tick labels of one axis that overlap (by more than a pixel): names drawn over each other."""
    renderer, bad = fig.canvas.get_renderer(), []
    for axis in (a for ax in fig.axes for a in (ax.xaxis, ax.yaxis)):
        lo, hi = ("x0", "x1") if axis.axis_name == "x" else ("y0", "y1")
        labels = [t.label1 for t in axis._update_ticks() if t.label1.get_visible() and t.label1.get_text()]
        extents = sorted(((t.get_window_extent(renderer), t.get_text()) for t in labels), key=lambda e: getattr(e[0], lo))
        bad += [f"{a!r} / {b!r}" for (ea, a), (eb, b) in zip(extents, extents[1:]) if getattr(eb, lo) < getattr(ea, hi) - 1]
    return bad
