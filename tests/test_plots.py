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

from parsgd.analysis import figures, plots
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


def test_plot_experiment_writes_five_pngs(exp, tmp_path):
    runs = [load_run(p) for p in exp.values()]
    start_s = time.perf_counter()
    paths = plots.plot_experiment(runs[1:], runs[0], tmp_path / "out")
    elapsed_s = time.perf_counter() - start_s
    assert [p.name for p in paths] == ["loss.png", "accuracy.png", "epoch_time.png", "speedup.png",
                                       "comm_overhead.png"]
    assert all(p.parent == tmp_path / "out" for p in paths)
    for p in paths:
        check_png(p, WIDE if p.name == "comm_overhead.png" else SMALL)
    assert elapsed_s < 5 * 2.0, f"plots took {elapsed_s:.1f} s"


def test_experiment_accepts_paths(exp, tmp_path):
    paths = plots.plot_experiment(list(exp.values()), exp["sequential"], tmp_path)
    assert len(paths) == 5


def test_plot_runs_single_ps_run(exp, tmp_path):
    paths = plots.plot_runs([exp["ps"]], tmp_path)
    names = [p.name for p in paths]
    assert names == ["loss.png", "accuracy.png", "epoch_time.png", "step_timeline.png", "comm_overhead.png"]
    timeline = check_png(tmp_path / "step_timeline.png", WIDE)
    for span in ("compute", "wait"):  # bars in the span colours are drawn (far more than a legend patch)
        assert pixels_near(timeline, plots.SPAN_COLORS[span]) > 2000, span
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
    assert list(plots.timeline_steps(load_run(run).comm)) == [1]
    path = plots.plot_step_timeline(run, tmp_path / "step_timeline.png", max_steps=20)
    check_png(path, WIDE)


def test_timeline_of_one_step_shows_step_0(tmp_path):
    run = make_run(tmp_path, "ps", 2, "shm", epochs=1, steps_per_epoch=1)
    assert list(plots.timeline_steps(load_run(run).comm)) == [0]
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
    assert list(plots.timeline_steps(run.comm)) == list(range(1, 21))
    fig, axes = figures.new_figure(figures.WIDE_FIGSIZE)
    plots._draw_timeline(axes[0, 0], run, plots.TIMELINE_STEPS)
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
