"""plots.py: every PNG exists, opens, has the configured size and actually shows something.

    python3 -m pytest -q tests/test_plots.py
"""
import json
import shutil
import time

import numpy as np
import pytest
from matplotlib import image as mpimg
from matplotlib.colors import to_rgb

from parsgd.analysis import figures, plots, timeline
from parsgd.analysis import timeline as tl  # test functions name an image `timeline`
from parsgd.analysis.rundirs import RunDirError, load_run
from rundir_factory import make_experiment, make_run

SMALL = (figures.FIGSIZE[1] * figures.DPI, figures.FIGSIZE[0] * figures.DPI)      # (rows, cols) in pixels
WIDE = (figures.WIDE_FIGSIZE[1] * figures.DPI, figures.WIDE_FIGSIZE[0] * figures.DPI)


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """{"sequential", "pool", "ps" (P=2 shm), "ps4" (P=4 tcp)}: run directory paths, shared by the module."""
    root = tmp_path_factory.mktemp("results")
    paths = make_experiment(root)
    paths["ps4"] = make_run(root, "ps", 4, "tcp")
    return paths


def check_png(path, shape):
    """Assert `path` is a non-blank, many-coloured PNG of `shape` (rows, cols); returns its RGB array."""
    assert path.is_file() and path.suffix == ".png", path
    img = mpimg.imread(path)
    assert img.shape[:2] == shape, (path.name, img.shape)
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.var(axis=0).sum() > 0, f"{path.name} is blank"
    packed = (rgb * 255).round().astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32)
    assert len(np.unique(packed)) > 10, f"{path.name} has too few colors"
    return img[..., :3]


def pixels_near(img, color, tol=0.02):
    """Number of pixels of the RGB array `img` within `tol` (per channel, 0..1) of the matplotlib `color`."""
    return int((np.abs(img - np.array(to_rgb(color))).max(axis=-1) < tol).sum())


EXPERIMENT_PNGS = ["loss.png", "accuracy.png", "epoch_time.png", "speedup.png", "comm_overhead.png",
                   "accuracy_time.png", "step_timeline.png"]  # what `parsgd experiment` draws for these bsp runs


def test_plot_experiment_writes_what_the_experiment_draws(exp, tmp_path):
    runs = [load_run(p) for p in exp.values()]
    start_s = time.perf_counter()
    paths = plots.plot_experiment(runs[1:], runs[0], tmp_path / "out")
    elapsed_s = time.perf_counter() - start_s
    assert [p.name for p in paths] == EXPERIMENT_PNGS
    assert all(p.parent == tmp_path / "out" for p in paths)
    for p in paths:
        check_png(p, {"comm_overhead.png": WIDE, "step_timeline.png": (2 * WIDE[0], WIDE[1])}.get(p.name, SMALL))
    assert elapsed_s < 7 * 2.0, f"plots took {elapsed_s:.1f} s"


def test_experiment_accepts_paths(exp, tmp_path):
    paths = plots.plot_experiment(list(exp.values()), exp["sequential"], tmp_path)
    assert [p.name for p in paths] == EXPERIMENT_PNGS


def test_plot_runs_single_ps_run(exp, tmp_path):
    paths = plots.plot_runs([exp["ps"]], tmp_path)
    names = [p.name for p in paths]
    assert names == ["loss.png", "accuracy.png", "epoch_time.png", "step_timeline.png", "comm_overhead.png"]
    timeline = check_png(tmp_path / "step_timeline.png", WIDE)
    for span in ("compute", "wait"):  # bars in the span colours are drawn (far more than a legend patch)
        assert pixels_near(timeline, tl.SPAN_COLORS[span]) > 2000, span
    for p in paths:
        check_png(p, WIDE if p.name in ("step_timeline.png", "comm_overhead.png") else SMALL)


def test_plot_runs_non_ps_has_no_timeline(exp, tmp_path):
    paths = plots.plot_runs([exp["sequential"], exp["pool"]], tmp_path)
    assert [p.name for p in paths] == ["loss.png", "accuracy.png", "epoch_time.png"]
    assert not (tmp_path / "step_timeline.png").exists()


def test_plot_runs_several_side_by_side(exp, tmp_path):
    paths = plots.plot_runs(list(exp.values()), tmp_path)
    assert len(paths) == 5
    timeline = mpimg.imread(tmp_path / "step_timeline.png")
    assert timeline.shape[:2] == (2 * WIDE[0], WIDE[1]), "one panel per PS run"
    one = plots.plot_runs([exp["sequential"]], tmp_path / "one")
    # more runs -> more series: more coloured pixels than the single-run loss plot
    colored = lambda p: int((mpimg.imread(p)[..., :3].std(axis=-1) > 0.1).sum())
    assert colored(tmp_path / "loss.png") > colored(one[0])


def test_plot_runs_default_out_dir_is_the_run(exp):
    paths = plots.plot_runs([exp["pool"]])
    assert all(p.parent == exp["pool"] for p in paths)
    for p in paths:
        p.unlink()


def test_timeline_needs_comm_log(exp, tmp_path):
    with pytest.raises(RunDirError, match="no communication log"):
        plots.plot_step_timeline(load_run(exp["pool"]), tmp_path / "t.png")


def test_timeline_of_few_steps(tmp_path):
    run = make_run(tmp_path, "ps", 3, "ipc", epochs=1, steps_per_epoch=2)
    assert list(tl.timeline_steps(load_run(run).comm)) == [1]
    path = plots.plot_step_timeline(run, tmp_path / "step_timeline.png", max_steps=20)
    check_png(path, WIDE)


def test_timeline_of_one_step_shows_step_0(tmp_path):
    run = make_run(tmp_path, "ps", 2, "shm", epochs=1, steps_per_epoch=1)
    assert list(tl.timeline_steps(load_run(run).comm)) == [0]
    check_png(plots.plot_step_timeline(run, tmp_path / "t.png"), WIDE)


def test_timeline_skips_warm_up(tmp_path):
    """A 450 ms start-up wait in step 0, and a worker's wait that began before step 1, stay out of
    the window: it starts where the server starts step 1 and ends with step 20."""
    path = make_run(tmp_path, "ps", 2, "shm", epochs=4, steps_per_epoch=6)
    spans = [json.loads(line) for line in (path / "comm.jsonl").read_text().splitlines()]
    start_1_s = min(s["t"] for s in spans if s["step"] == 1 and s["role"] == "server")
    end_20_s = max(s["t"] + s["dur"] for s in spans if s["step"] == 20)
    spans += [{"role": "worker", "rank": 0, "step": 0, "span": "wait", "t": 0.0, "dur": 0.45, "bytes": 0},
              {"role": "worker", "rank": 1, "step": 1, "span": "wait", "t": 0.0, "dur": start_1_s + 1e-3,
               "bytes": 0}]
    (path / "comm.jsonl").write_text("".join(json.dumps(s) + "\n" for s in spans))
    run = load_run(path)
    assert list(tl.timeline_steps(run.comm)) == list(range(1, 21))
    fig, axes = figures.new_figure(figures.WIDE_FIGSIZE)
    tl._draw_timeline(axes[0, 0], run, tl.TIMELINE_STEPS)
    left, right = axes[0, 0].get_xlim()
    assert left == 0 and right == pytest.approx((end_20_s - start_1_s) * 1e3, rel=0.02)
    assert right < 450
    check_png(plots.plot_step_timeline(run, tmp_path / "t.png"), WIDE)


def test_identical_curves_are_named_in_the_legend(exp, tmp_path):
    twin = shutil.copytree(exp["ps"], tmp_path / "ps-twin")
    runs = [load_run(exp["sequential"]), load_run(exp["ps"]), load_run(twin)]
    labels = figures.run_labels(runs)
    assert plots._same_as(runs, labels, ("train_loss", "test_loss")) == [None, None, labels[1]]
    check_png(plots.plot_loss(runs, tmp_path / "loss.png"), SMALL)


# -- what the figures are drawn from: every series told apart, axes and titles from the data -----------
def set_config(path, **fields):
    """Change fields of the run's config.json "config" (the factory writes one configuration)."""
    meta = json.loads((path / "config.json").read_text())
    meta["config"].update(fields)
    (path / "config.json").write_text(json.dumps(meta))
    return path


def styles(series):
    return [(s["style"]["color"], s["style"]["marker"]) for s in series if s["field"] == series[0]["field"]]


def test_runs_in_folders_of_the_same_name_get_different_legends_and_styles(tmp_path):
    runs = [load_run(make_run(tmp_path / f"r{i}", name="run", seed=i)) for i in range(1, 13)]
    assert figures.run_labels(runs) == [f"sequential (r{i}/run)" for i in range(1, 13)]
    series = plots.epoch_series(runs, ("train_loss", "test_loss"))
    assert [s["label"] for s in series if s["label"]] == figures.run_labels(runs)
    assert len(set(styles(series))) == 12, "colour and marker repeat"
    check_png(plots.plot_loss(runs, tmp_path / "loss.png"), SMALL)
    twice = [runs[0], load_run(runs[0].path)]
    labels = figures.run_labels(twice)
    assert len(set(labels)) == 2 and labels[1].endswith("#2"), labels


@pytest.mark.parametrize("n", [1, 2, 10, 11, 12, 99, 100, 101, 150])
def test_the_style_cycle_never_repeats_within_a_figure(n):
    pairs = [(figures.marker_style(i, n)["color"], figures.marker_style(i, n)["marker"]) for i in range(n)]
    assert len(set(pairs)) == n


def test_train_and_test_differ_in_line_and_marker_fill(exp):
    series = plots.epoch_series([load_run(exp["sequential"]), load_run(exp["pool"])], ("train_acc", "test_acc"))
    train, test = series[0]["style"], series[1]["style"]
    assert (train["ls"], train["mfc"]) == ("-", "none")
    assert (test["ls"], test["mfc"]) == ("--", test["color"]) and test["color"] == train["color"]


@pytest.mark.parametrize("epochs,xlim,ticks", [(1, (0.5, 1.5), [1]), (3, (0.5, 3.5), [1, 2, 3]),
                                               (30, (0.5, 30.5), list(range(1, 31, 3)))])
def test_epoch_axis_has_whole_epochs_and_room_for_one(tmp_path, epochs, xlim, ticks):
    run = load_run(make_run(tmp_path, epochs=epochs, steps_per_epoch=1))
    assert figures.epoch_axis([run]) == (xlim, ticks)
    check_png(plots.plot_accuracy([run], tmp_path / "a.png"), SMALL)


def test_titles_and_legends_say_what_differs(tmp_path):
    paths = [make_run(tmp_path, "sequential", 1), make_run(tmp_path, "pool", 2), make_run(tmp_path, "ps", 2, "shm"),
             set_config(make_run(tmp_path, "sequential", 1, name="seq-4096"), num_samples=4096)]
    runs = [load_run(p) for p in paths]
    title = figures.figure_title("Loss per epoch", runs).splitlines()
    assert title[0] == "Loss per epoch" and "n=" not in title[1] and "1 epoch" not in title[1]
    assert title[2] == "4 runs, not all alike: n=2048 (3 runs) vs n=4096 (1 run)"
    assert figures.run_labels(runs) == ["sequential, n=2048", "pool P=2, n=2048", "ps P=2 shm, n=2048",
                                        "sequential, n=4096"]
    alike = figures.figure_title("Loss per epoch", runs[:3]).splitlines()
    assert len(alike) == 2 and "n=2048, 3 epochs, batch 128" in alike[1]
    seeds = [load_run(set_config(make_run(tmp_path, name=f"s{i}"), seed=i)) for i in range(1, 13)]
    assert figures.figure_title("x", seeds).splitlines()[-1] == \
        "12 runs, not all alike: seed 1, seed 2, ..., seed 12 (12 values)"


def test_comm_overhead_left_panel_has_every_run(exp, tmp_path, monkeypatch):
    runs = [load_run(exp[k]) for k in ("pool", "sequential", "ps")]
    left, right = plots.overhead_rows(runs)
    assert [name for name, _ in left] == ["pool P=2", "sequential", "ps P=2 shm"]
    assert [name for name, _ in right] == ["ps P=2 shm server", "ps P=2 shm worker"]
    assert left[1][1]["communication"] == 0 and left[0][1]["communication"] > 0 and left[2][1]["communication"] > 0
    drawn = []
    monkeypatch.setattr(plots, "plot_comm_overhead", lambda rs, path: drawn.append(rs) or path)
    plots.plot_runs([exp["pool"], exp["sequential"], exp["ps"]], tmp_path)
    assert [r.label for r in drawn[0]] == ["pool P=2", "sequential", "ps P=2 shm"]


def test_timeline_labels_the_evaluation_gap_at_each_epoch_end(tmp_path):
    run = load_run(make_run(tmp_path, "ps", 2, "shm", epochs=4, steps_per_epoch=6))
    assert tl.steps_per_epoch(run) == 6
    fig, axes = figures.new_figure(figures.WIDE_FIGSIZE)
    gaps = tl._draw_timeline(axes[0, 0], run, tl.TIMELINE_STEPS)
    assert [epoch for epoch, _, _ in gaps] == [1, 2, 3]   # steps 1-20 cross the ends of epochs 1-3
    spans = [json.loads(line) for line in (run.path / "comm.jsonl").read_text().splitlines()]
    for epoch, start_s, end_s in gaps:
        last = max(s["t"] + s["dur"] for s in spans if s["step"] == 6 * epoch - 1 and s["role"] == "server")
        first = min(s["t"] for s in spans if s["step"] == 6 * epoch and s["role"] == "server")
        assert (start_s, end_s) == pytest.approx((last, first)) and end_s - start_s > 0.0099  # the factory's eval
    legend = [t.get_text() for t in axes[0, 0].get_legend().get_texts()]
    assert legend[-1] == timeline.GAP_LABEL
    assert [t.get_text() for t in axes[0, 0].texts] == ["end of\nepoch 1", "end of\nepoch 2", "end of\nepoch 3"]
    one = load_run(make_run(tmp_path, "ps", 2, "tcp", epochs=1, steps_per_epoch=8))
    fig, axes = figures.new_figure(figures.WIDE_FIGSIZE)
    assert tl._draw_timeline(axes[0, 0], one, tl.TIMELINE_STEPS) == []
    check_png(plots.plot_step_timeline(run, tmp_path / "t.png"), WIDE)
