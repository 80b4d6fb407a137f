"""Issue 21 (d): every text of every plot lies inside its PNG, with long run labels and 20+ runs, and
drawing them warns nothing (no collapsed layout, no empty legend).

    python3 -m pytest -q tests/test_plot_fit.py

Real runs (`parsgd train`, `parsgd launch`) made once for the module, copied into 25 run directories
whose config.json gives them other labels (P, mode, transport, consistency, servers, faults); every
figure drawn from them is checked with the renderer that drew it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest
from matplotlib.text import Text

from parsgd.analysis import figures, overhead_plots, plots, progress_plots, server_plots, speedup_plots, timeline
from parsgd.analysis.commreport import comm_section
from parsgd.analysis.repeats import repeat_note, repeat_of
from parsgd.analysis.rundirs import load_run
from parsgd.analysis.stepparts import step_parts
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

    for module in (plots, overhead_plots, speedup_plots, timeline, progress_plots, server_plots):
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


# -- (f) what a step waits for: the plots draw the report's split -----------------------------------------
def report_shares(run) -> dict[str, dict[str, float]]:
    """The `%` columns of the run's communication section in the report, {role: {category: share}}; the
    indented rows under `wait` (what the wait holds) as "wait: NAME"."""
    lines = comm_section([run], None)
    start = next(i for i, ln in enumerate(lines) if ln.split()[:1] == ["span"])
    roles = [c.split()[0] for c in re.split(r"\s{2,}", lines[start].strip())[2::2]]
    out = {role: {} for role in roles}
    for line in lines[start + 2:]:
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == "total" or len(cells) != 1 + 2 * len(roles):
            break
        name = f"wait: {cells[0]}" if line.startswith("    ") else cells[0]
        for role, cell in zip(roles, cells[2::2]):
            out[role][name] = float(cell.rstrip("%")) / 100
    return out


def drawn_bars(ax) -> dict[str, dict[str, float]]:
    """The stacked bars of a comm_overhead panel: {row name: {category: width as a share}}."""
    names = [t.get_text() for t in ax.get_yticklabels()]
    out = {name: {} for name in names}
    for container in ax.containers:
        for name, bar in zip(names, container.patches):
            out[name][container.get_label()] = bar.get_width() / 100
    return out


def check_bars_are_the_report(run, fig):
    """Every bar of the run's roles in the right panel of comm_overhead `fig` is the report's % (rounded
    to 0.1%); where the report splits the wait, the bars are its parts (adding up to its wait)."""
    bars, label = drawn_bars(fig.axes[1]), run.label
    for role, shares in report_shares(run).items():
        drawn = {k: v for k, v in bars[f"{label} {role}"].items() if v > 0}
        split = {k for k in shares if k.startswith("wait: ")}
        if split:
            assert "wait" not in drawn, drawn
            drawn["wait"] = sum(v for k, v in drawn.items() if k.startswith("wait: "))
        for name, share in shares.items():
            assert drawn.get(name, 0.0) == pytest.approx(share, abs=0.0006), (role, name, drawn, shares)
        assert {k for k, v in drawn.items() if v > 0.0005} <= set(shares), (drawn, shares)
    return bars


def test_comm_overhead_splits_the_wait_as_the_report_does(real, drawn, tmp_path):
    run = load_run(real["ps"])   # shm: no link; the wait is the shards' compute, server work and the rest
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_comm_overhead([load_run(real["sequential"]), run], tmp_path / "comm_overhead.png")
    bars = check_bars_are_the_report(run, drawn[0])
    server = bars[f"{run.label} server"]
    assert "wait" not in server and server["wait: the shards"] > 0 and "wait: on the link" not in server, server
    assert sum(server.values()) == pytest.approx(1.0, abs=1e-6)


def test_a_run_without_timed_steps_is_named_so_and_warns_nothing(tmp_path, real, drawn):
    short = relabel(real["ps"], tmp_path / "short")
    summary = json.loads((short / "summary.json").read_text())
    summary.update(warmup_steps=summary["steps"], timed_steps=0)   # as a run of fewer steps than the warm-up
    (short / "summary.json").write_text(json.dumps(summary))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_comm_overhead([load_run(short)], tmp_path / "comm_overhead.png")
    names = [t.get_text() for t in drawn[0].axes[1].get_yticklabels()]
    assert names == [f"ps P=2 shm {role} {overhead_plots.NO_TIMED_STEP}" for role in ("server", "worker")]


@pytest.fixture(scope="module")
def link_run(tmp_path_factory):
    """A real BSP run of 2 workers on emulated 100mbit links (network namespaces; root): 32 steps, 22 timed."""
    if os.environ.get("PARSGD_TESTS_NO_NETNS") == "1":
        pytest.skip("PARSGD_TESTS_NO_NETNS=1: emulated-host tests skipped")
    out = tmp_path_factory.mktemp("link") / "ps-link"
    result = parsgd("launch", "--workers", "2", "--link", "100mbit", "--dataset", "synthetic", "--num-samples", "2048",
                    "--batch-size", "64", "--hidden", "32", "--epochs", "1", "--out", out, env={"PARSGD_LINK_CHECK": "0"})
    assert result.returncode == 0, result.stderr[-2000:]
    return load_run(out)


@pytest.mark.xdist_group("machine-wide")  # network namespaces: tests/conftest.py
def test_on_an_emulated_link_both_plots_draw_the_reports_link_time(link_run, drawn, tmp_path):
    parts = step_parts(link_run)
    assert parts["link"] > 0.5 * parts["step"], parts   # 100mbit: the bytes on the link are most of a step
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_comm_overhead([link_run], tmp_path / "comm_overhead.png")
        timeline.plot_step_timeline(link_run, tmp_path / "step_timeline.png", max_steps=1000)
    bars = check_bars_are_the_report(link_run, drawn[0])
    assert bars[f"{link_run.label} server"]["wait: on the link"] > 0.5
    # the timeline: per role, the link pieces of the timed steps' waits add up to stepparts' link time
    comm, first = link_run.comm, int(link_run.summary["warmup_steps"])
    steps = timeline.timeline_steps(comm, 1000)
    pieces = timeline.link_segments(link_run, steps, np.isfinite(comm.t_s + comm.dur_s))
    for role in ("server", "worker"):
        timed_s = sum(d for (r, _), ps in pieces.items() if r == role for step, _, d in ps if step >= first)
        assert timed_s == pytest.approx(parts["waits"][role]["link"], rel=1e-9), role
    ax = drawn[1].axes[0]   # the pieces drawn: from the start of the first step shown on
    drawn_ms = sum(np.ptp(path.vertices[:, 0]) for c in ax.collections if c.get_gid() == "link" for path in c.get_paths())
    t0_s = comm.t_s[(comm.step == steps[0]) & (comm.role == "server")].min()
    shown_ms = sum(max(0.0, t + d - max(t, t0_s)) for ps in pieces.values() for _, t, d in ps) * 1e3
    assert drawn_ms == pytest.approx(shown_ms, rel=1e-6) and drawn_ms > 0.5 * ax.get_xlim()[1]
    assert timeline.LINK_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]


def test_speedup_says_diverged_where_the_point_would_be(tmp_path, drawn):
    """A real diverged run (lr 50: the loss rose, summary.json diverged) is no point of speedup.png, and
    not 'no timed steps' either: the word 'diverged' stands at its P."""
    args = ["--dataset", "synthetic", "--num-samples", "2048", "--batch-size", "64", "--hidden", "32", "--epochs", "1"]
    assert cli_run(["train", *args, "--out", tmp_path / "sequential"]).exit_code == 0
    assert cli_run(["train", "--workers", "2", "--lr", "50", *args, "--out", tmp_path / "pool"]).exit_code == 3
    assert cli_run(["train", "--workers", "3", *args, "--out", tmp_path / "pool3"]).exit_code == 0
    runs = [load_run(tmp_path / name) for name in ("sequential", "pool", "pool3")]
    assert runs[1].summary["diverged"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_speedup(runs, runs[0], tmp_path / "speedup.png")
    ax = drawn[0].axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert not any("no timed steps" in t for t in texts), texts
    marks = [t for t in ax.texts if t.get_text() == "diverged"]
    assert [t.xy[0] for t in marks] == [2], texts
    xs = {x for line in ax.get_lines() if line.get_label() not in ("ideal (speedup = P)", "sequential baseline")
          for x in line.get_xdata()}   # the points, their error bars' caps
    assert xs == {3}, "the diverged run has no point; pool P=3 has one"
    assert "pool (diverged at P=2)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert outside(drawn[0]) == []


# -- (e) a plot of one repeat of several says so ------------------------------------------------------------
def test_experiment_repeat_2_titles_say_which_repeat_and_speedup_says_median(tmp_path, drawn):
    out = tmp_path / "results"
    result = cli_run(["experiment", "--workers", "2", "--modes", "sequential,pool", "--repeat", "2", *ARGS,
                      "--quiet", "--out", out])
    assert result.exit_code == 0, result.output
    titles = {fig.get_suptitle().split("\n")[0].split(" (")[0]: fig.get_suptitle() for fig in drawn}
    one_of = [t for t in titles.values() if "repeat 1 of 2 of each configuration" in t.replace("\n", " ")]
    assert len(one_of) == len(drawn) - 1 == 5, titles   # loss, accuracy, epoch_time, comm_overhead, accuracy_time
    speedup = next(t for t in titles.values() if t.startswith("Speedup")).replace("\n", " ")
    assert "median of 2 runs each, bars min-max" in speedup and "repeat" not in speedup, speedup
    runs = {name: load_run(out / name) for name in ("sequential-r1", "sequential-r2", "pool-p2-r1")}
    assert repeat_of(runs["sequential-r2"]) == (2, 2)
    assert repeat_note([runs["sequential-r1"], runs["sequential-r2"]]) is None, "both repeats drawn"
    assert repeat_note([runs["sequential-r2"], runs["pool-p2-r1"]]) == "sequential: repeat 2 of 2; pool P=2: repeat 1 of 2"
    stale = relabel(out / "sequential-r2", out / "sequential-r3")   # left by an earlier experiment: started before r1
    meta = json.loads((stale / "config.json").read_text())
    meta["started"] = "2000-01-01T00:00:00+00:00"
    (stale / "config.json").write_text(json.dumps(meta))
    assert repeat_of(runs["sequential-r1"]) == (1, 2)
    solo = relabel(out / "sequential-r1", tmp_path / "alone" / "sequential")
    assert repeat_note([load_run(solo)]) is None and "repeat" not in figures.figure_title("x", [load_run(solo)])
