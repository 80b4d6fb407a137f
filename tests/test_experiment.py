"""`parsgd experiment`, `parsgd plot` and `parsgd trace` through the CLI, on real runs (no mocks).

One small experiment (sequential, Pool P=2, PS P=2 over shm) is shared by the module; the report,
the PNGs and the trace are checked against the run directories it wrote. Never asserts on timings.
"""
import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib import image as mpimg

from parsgd.analysis import figures, progress_plots
from parsgd.cli import cli
from parsgd.jobs.experiment import eta, plan
from parsgd.analysis.report import comm_breakdown
from parsgd.analysis.rundirs import load_run
from parsgd.training.loop import WARMUP_STEPS

TINY = ["--dataset", "synthetic", "--num-samples", "2048", "--epochs", "2", "--hidden", "32", "--batch-size", "128"]
LABELS = {"sequential": "sequential", "pool-p2": "pool P=2", "ps-p2-shm": "ps P=2 shm"}
SMALL = (figures.FIGSIZE[1] * figures.DPI, figures.FIGSIZE[0] * figures.DPI)  # (rows, cols) in pixels
WIDE = (figures.WIDE_FIGSIZE[1] * figures.DPI, figures.WIDE_FIGSIZE[0] * figures.DPI)
PNG_SHAPES = {"loss.png": SMALL, "accuracy.png": SMALL, "epoch_time.png": SMALL, "speedup.png": SMALL,
              "comm_overhead.png": WIDE, "step_timeline.png": WIDE, "accuracy_time.png": SMALL}


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, code, *words):
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.output
    for w in words:
        assert w in err, err


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "results"
    result = invoke(["experiment", "--workers", "2", "--transport", "shm", *TINY, "--out", out])
    assert result.exit_code == 0, result.output
    return out, result.stdout


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """The Comparison table of a report, as {run label: {header: cell}}."""
    lines = text.split("Comparison\n----------\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    return {cells[0]: dict(zip(header, cells)) for cells in (re.split(r"\s{2,}", ln.strip()) for ln in lines[2:])}


def test_plan_and_eta():
    configs = plan((2, 4, 2), ("ps", "pool", "sequential"), ("shm", "tcp"))
    assert [c.dirname for c in configs] == ["sequential", "pool-p2", "ps-p2-shm", "ps-p2-tcp",
                                            "pool-p4", "ps-p4-shm", "ps-p4-tcp"]
    assert [c.label for c in configs][:3] == ["sequential", "pool P=2", "ps P=2 shm"]
    models = plan((3,), ("ps",), ("shm", "tcp"), consistencies=("bsp", "ssp", "async"), staleness=2)
    assert [c.label for c in models] == ["ps P=3 shm", "ps P=3 shm ssp", "ps P=3 shm async",
                                         "ps P=3 tcp", "ps P=3 tcp ssp", "ps P=3 tcp async"]
    assert [c.dirname for c in models][:3] == ["ps-p3-shm", "ps-p3-shm-ssp", "ps-p3-shm-async"]
    assert [c.staleness for c in models][:3] == [0, 2, 0]
    assert [c.label for c in plan((2,), ("ps",), (), ("100mbit",), ("bsp", "async"))] == [
        "ps P=2 tcp@100mbit", "ps P=2 tcp@100mbit async"]
    assert eta([], configs) is None
    done = [(configs[0], 1.0), (configs[1], 3.0)]
    assert eta(done, configs[2:]) == pytest.approx(2.0 * 2 + 3.0 + 2.0 * 2)  # ps: mean of all; pool: its own


def test_console_shows_progress_epochs_and_the_report(exp):
    out, stdout = exp
    progress = [ln for ln in stdout.splitlines() if re.match(r"\[\d/3\] ", ln)]
    assert [ln.split(" ...")[0] for ln in progress] == ["[1/3] sequential", "[2/3] pool P=2", "[3/3] ps P=2 shm"]
    assert "ETA" not in progress[0] and all("ETA" in ln for ln in progress[1:])
    epochs = [ln.strip() for ln in stdout.splitlines() if ln.strip().startswith("epoch ")]
    assert len(epochs) == 3 * 2, stdout
    assert "[server]" not in stdout and "[worker" not in stdout, "PS child chatter is filtered"
    assert "Comparison" in stdout and "Communication overhead" in stdout
    for name in LABELS:
        assert {"config.json", "metrics.jsonl", "summary.json", "model.npz"} <= {p.name for p in (out / name).iterdir()}
    assert (out / "ps-p2-shm" / "comm.jsonl").is_file()


def test_report_has_every_section(exp):
    out, _ = exp
    text = (out / "experiment_report.txt").read_text()
    for heading in ("date:", "configuration:", "machine:", "BLAS:", "versions:", "Comparison",
                    "Communication overhead", "How to read this"):
        assert heading in text, heading
    assert "synthetic (n=2048), 2 epochs, batch 128" in text
    section = text.split("Communication overhead", 1)[1]
    for span in ("serialize", "transfer", "wait", "deserialize", "compute", "update", "total"):
        assert re.search(rf"^\s+{span}\s", section, re.M), span
    assert set(table_rows(text)) == set(LABELS.values())


def test_report_numbers_agree_with_run_dirs(exp):
    out, _ = exp
    rows = table_rows((out / "experiment_report.txt").read_text())
    summaries = {LABELS[d]: json.loads((out / d / "summary.json").read_text()) for d in LABELS}
    base = summaries["sequential"]["timed_s"] / summaries["sequential"]["timed_steps"]
    for label, s in summaries.items():
        row = rows[label]
        assert float(row["timed s"]) == pytest.approx(s["timed_s"], abs=6e-4)
        assert row["speedup"] == f"{base / (s['timed_s'] / s['timed_steps']):.2f}x"
        assert row["test acc"] == f"{s['final_test_acc']:.4f}"
        assert row["comm %"] == f"{s['comm_share']:.1%}"
        assert row["same model"] in ("reference", "ok 0") or re.fullmatch(r"ok \de-0[5-9]", row["same model"])
    accs = [s["final_test_acc"] for s in summaries.values()]
    assert max(accs) - min(accs) < 0.02, "same seed, same model up to float rounding"


def test_the_timed_window_is_the_same_for_every_configuration(exp):
    out, _ = exp
    records = json.loads((out / "experiment.json").read_text())["records"]
    assert [r["run"] for r in records] == list(LABELS.values())
    for r in records:
        metrics = jsonl(out / r["path"].rsplit("/", 1)[1] / "metrics.jsonl")
        assert r["steps"] == 2 * 16 and r["warmup_steps"] == WARMUP_STEPS
        assert r["timed_steps"] == r["steps"] - WARMUP_STEPS == sum(m["timed_steps"] for m in metrics)
        assert [m["timed_steps"] for m in metrics] == [16 - WARMUP_STEPS, 16], "warm-up: the first steps of epoch 1"
        assert r["timed_s"] == pytest.approx(sum(m["timed_s"] for m in metrics))
        assert 0 < r["timed_s"] < r["total_s"] == pytest.approx(sum(m["epoch_time_s"] for m in metrics))
        assert r["ms_per_step"] == pytest.approx(1e3 * r["timed_s"] / r["timed_steps"])


def test_a_tiny_run_is_too_short_to_time(exp):
    out, _ = exp
    text = (out / "experiment_report.txt").read_text()
    for label, row in table_rows(text).items():  # 22 timed steps of a few ms
        assert row["note"] == "too short to time", row
    notes = text.split("Timing notes", 1)[1].split("\n\n", 1)[0]
    assert "sequential: too short to time: 22 timed steps" in notes and ">= 100 timed steps" in notes
    for r in json.loads((out / "experiment.json").read_text())["records"]:
        assert r["too_short"] is True and r["note"] == "too short to time"


def test_comm_shares_sum_to_one_and_match_comm_jsonl(exp):
    out, _ = exp
    run = load_run(out / "ps-p2-shm")
    spans = jsonl(out / "ps-p2-shm" / "comm.jsonl")
    breakdown = comm_breakdown(run)
    assert set(breakdown) == {"server", "worker"}
    for role, bd in breakdown.items():
        assert sum(bd["shares"].values()) == pytest.approx(1.0, abs=1e-9)
        assert bd["total_s"] == pytest.approx(sum(s["dur"] for s in spans if s["role"] == role), rel=1e-9)
    section = (out / "experiment_report.txt").read_text().split("Communication overhead", 1)[1]
    table = section.split("  span ", 1)[1].split("  total ", 1)[0]  # the span table of the first section
    shares = [[float(x) for x in re.findall(r"([\d.]+)%", ln)] for ln in table.splitlines()
              if re.match(r"\s+(serialize|transfer|wait|deserialize|compute|update)\s", ln)]
    assert len(shares) == 6
    for column in zip(*shares):  # printed shares (0.1% steps) of each role add up to about 100%
        assert sum(column) == pytest.approx(100.0, abs=0.5)


def check_png(path, shape):
    assert path.is_file(), path
    img = mpimg.imread(path)
    assert img.shape[:2] == shape, (path.name, img.shape)
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.var(axis=0).sum() > 1e-3, f"{path.name} is blank"
    packed = (rgb * 255).round().astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32)
    assert len(np.unique(packed)) > 10, f"{path.name} has too few colors"


def test_every_png_exists_opens_and_shows_something(exp):
    out, stdout = exp
    for name, shape in PNG_SHAPES.items():
        check_png(out / name, shape)
        assert str(out / name) in stdout


def test_plot_one_run(exp, tmp_path):
    out, _ = exp
    result = invoke(["plot", out / "ps-p2-shm", "-o", tmp_path])
    assert result.exit_code == 0, result.output
    names = ["loss.png", "accuracy.png", "epoch_time.png", "step_timeline.png", "comm_overhead.png"]
    assert result.stdout.split() == [str(tmp_path / n) for n in names]
    for name in names:
        check_png(tmp_path / name, PNG_SHAPES[name])


def test_plot_two_runs_side_by_side(exp, tmp_path):
    out, _ = exp
    result = invoke(["plot", out / "sequential", out / "pool-p2", "-o", tmp_path])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.png", "epoch_time.png", "loss.png"]
    for p in tmp_path.iterdir():
        check_png(p, SMALL)
    img = mpimg.imread(tmp_path / "epoch_time.png")[..., :3]
    for color in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)):  # both series drawn (C0, C1)
        assert (np.abs(img - np.array(color) / 255).max(axis=-1) < 0.02).sum() > 50, color


def test_trace_of_a_real_ps_run(exp, tmp_path):
    out, _ = exp
    trace = tmp_path / "trace.json"
    result = invoke(["trace", out / "ps-p2-shm", "-o", trace])
    assert result.exit_code == 0, result.output
    spans = jsonl(out / "ps-p2-shm" / "comm.jsonl")
    assert f"wrote {len(spans)} spans" in result.stdout
    xs = [e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == len(spans) > 0
    for e in xs:
        assert {"ph", "ts", "dur", "pid", "tid"} <= e.keys(), e
        assert e["dur"] >= 0 and isinstance(e["pid"], int) and isinstance(e["tid"], int)
    assert {(e["pid"], e["tid"]) for e in xs} == {(0, 0), (1, 0), (1, 1)}


def _broken(kind, exp, tmp_path):
    """A path that is not a usable run directory, and a word the error must contain."""
    if kind == "missing":
        return tmp_path / "nope", "does not exist"
    if kind == "no logs":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty", "is not a parsgd run directory"
    run = shutil.copytree(exp[0] / "ps-p2-shm", tmp_path / "corrupt")
    for name in ("metrics.jsonl", "comm.jsonl"):
        lines = (run / name).read_text().splitlines()
        lines[1] = lines[1][: len(lines[1]) // 2]  # cut off mid-object
        (run / name).write_text("\n".join(lines) + "\n")
    return run, "line 2: invalid JSON"


@pytest.mark.parametrize("command", ["plot", "trace"])
@pytest.mark.parametrize("kind", ["missing", "no logs", "corrupt"])
def test_bad_run_dir_is_one_line_error(exp, tmp_path, command, kind):
    path, words = _broken(kind, exp, tmp_path)
    result = invoke([command, path, "-o", tmp_path / "out.json" if command == "trace" else tmp_path / "png"])
    assert_one_line_error(result, 1, str(path), words)


@pytest.mark.parametrize("args,words", [
    (["--workers", "0"], ["--workers", "between 1 and --batch-size"]),
    (["--workers", "129"], ["--workers", "(128)"]),
    (["--workers", "2,x"], ["--workers", "'x'"]),
    (["--modes", "sequential,gpu"], ["--modes", "'gpu'"]),
    (["--modes", ","], ["--modes", "at least one"]),
    (["--transport", "udp"], ["--transport", "'udp'"]),
    (["--transport", " ", "--modes", "ps"], ["--transport", "at least one"]),
])
def test_bad_experiment_flags_exit_2(tmp_path, args, words):
    result = invoke(["experiment", *TINY, "--out", tmp_path / "r", *args])
    assert_one_line_error(result, 2, *words)
    assert not (tmp_path / "r").exists(), "nothing runs before the flags are checked"


def test_a_failing_configuration_is_reported_and_the_rest_compared(tmp_path, monkeypatch):
    monkeypatch.setenv("PARSGD_FAULTS", "crash@2")  # every PS worker exits with status 1 at step 2
    out = tmp_path / "results"
    result = invoke(["experiment", "--workers", "2", "--modes", "ps,sequential", "--transport", "shm", *TINY,
                     "--num-samples", "1024", "--quiet", "--out", out])
    assert_one_line_error(result, 1, "1 of 2 configurations failed", "ps P=2 shm", "the report covers the other 1")
    assert "FAILED: ps P=2 shm" in result.stdout
    assert not [ln for ln in result.stdout.splitlines() if ln.strip().startswith("epoch ")], "--quiet"
    rows = table_rows((out / "experiment_report.txt").read_text())
    assert list(rows) == ["sequential"]
    check_png(out / "loss.png", SMALL)
    assert not (out / "step_timeline.png").exists()


def test_repeat_2_gives_two_records_per_configuration_and_the_median(tmp_path):
    import csv
    out = tmp_path / "results"
    result = invoke(["experiment", "--workers", "2", "--modes", "sequential,pool", "--repeat", "2", *TINY,
                     "--num-samples", "1024", "--quiet", "--out", out])
    assert result.exit_code == 0, result.output
    progress = [ln.split(" ...")[0] for ln in result.stdout.splitlines() if re.match(r"\[\d/4\] ", ln)]
    assert progress == ["[1/4] sequential (run 1/2)", "[2/4] pool P=2 (run 1/2)",
                        "[3/4] sequential (run 2/2)", "[4/4] pool P=2 (run 2/2)"], "rounds, interleaved"
    records = json.loads((out / "experiment.json").read_text())["records"]
    assert [(r["run"], r["repeat"]) for r in records] == [("sequential", 1), ("sequential", 2),
                                                         ("pool P=2", 1), ("pool P=2", 2)]
    assert [r["path"] for r in records] == [str(out / d) for d in ("sequential-r1", "sequential-r2",
                                                                   "pool-p2-r1", "pool-p2-r2")]
    rows = list(csv.DictReader((out / "experiment.csv").open()))
    assert [(r["run"], r["repeat"]) for r in rows] == [(r["run"], str(r["repeat"])) for r in records]
    assert [float(r["timed_s"]) for r in rows] == pytest.approx([r["timed_s"] for r in records])
    table = table_rows((out / "experiment_report.txt").read_text())
    pool = [r for r in records if r["run"] == "pool P=2"]
    base_ms = float(np.median([r["ms_per_step"] for r in records if r["run"] == "sequential"]))
    speedups = [r["speedup"] for r in pool]
    assert table["pool P=2"]["runs"] == "2"
    assert table["pool P=2"]["ms/step"] == f"{np.median([r['ms_per_step'] for r in pool]):.2f}"
    assert table["pool P=2"]["speedup"] == f"{base_ms / np.median([r['ms_per_step'] for r in pool]):.2f}x"
    assert table["pool P=2"]["min-max"] == f"{min(speedups):.2f}-{max(speedups):.2f}x"
    assert table["sequential"]["speedup"] == "1.00x"
    check_png(out / "speedup.png", SMALL)


@pytest.mark.slow
def test_consistency_models_each_get_a_configuration_staleness_and_plots(tmp_path):
    import csv
    out = tmp_path / "results"
    result = invoke(["experiment", "--modes", "ps", "--workers", "2", "--transport", "shm", "--consistency",
                     "bsp,async", "--dataset", "synthetic", "--num-samples", "1024", "--hidden", "16",
                     "--epochs", "1", "--batch-size", "64", "--quiet", "--out", out])
    assert result.exit_code == 0, result.output
    progress = [ln.split(" ...")[0] for ln in result.stdout.splitlines() if re.match(r"\[\d/2\] ", ln)]
    assert progress == ["[1/2] ps P=2 shm", "[2/2] ps P=2 shm async"]
    assert (out / "ps-p2-shm").is_dir() and (out / "ps-p2-shm-async").is_dir()
    records = json.loads((out / "experiment.json").read_text())["records"]
    assert [(r["run"], r["consistency"]) for r in records] == [("ps P=2 shm", "bsp"), ("ps P=2 shm async", "async")]
    for r in records:  # staleness columns: what updates.jsonl says
        stale = [u["staleness"] for u in jsonl(out / r["path"].rsplit("/", 1)[1] / "updates.jsonl")]
        assert len(stale) == r["steps"] and r["staleness_max"] == max(stale)
        assert r["staleness_mean"] == pytest.approx(sum(stale) / len(stale))
    bsp, asy = records
    assert bsp["staleness_mean"] == 0 and bsp["staleness_max"] == 0
    assert 0 <= asy["staleness_mean"] <= asy["staleness_max"]
    assert asy["same_model"] is None, "async trains another model by design: not judged"
    rows = list(csv.DictReader((out / "experiment.csv").open()))
    assert [(r["consistency"], r["staleness_max"]) for r in rows] == [("bsp", "0"), ("async", str(asy["staleness_max"]))]
    table = table_rows((out / "experiment_report.txt").read_text())
    assert table["ps P=2 shm"]["consistency"] == "bsp" and table["ps P=2 shm"]["stale max"] == "0"
    assert table["ps P=2 shm async"]["stale mean"] == f"{asy['staleness_mean']:.2f}"
    for name in ("accuracy_time.png", "staleness.png"):
        assert str(out / name) in result.stdout
    check_png(out / "accuracy_time.png", SMALL)
    check_png(out / "staleness.png", SMALL)  # one panel: one row

    runs = [load_run(out / d) for d in ("ps-p2-shm", "ps-p2-shm-async")]
    series = progress_plots.accuracy_time_series(runs)
    assert [s["label"] for s in series] == ["ps P=2 shm", "ps P=2 shm async"]
    for s, run in zip(series, runs):  # x: cumulative epoch_time_s, y: test accuracy, one point per epoch
        metrics = jsonl(run.path / "metrics.jsonl")
        assert s["t_s"].tolist() == pytest.approx(np.cumsum([m["epoch_time_s"] for m in metrics]).tolist())
        assert s["test_acc"].tolist() == [m["test_acc"] for m in metrics]
    hists = progress_plots.staleness_histograms(runs)
    assert [h["label"] for h in hists] == ["ps P=2 shm async"], "bsp has no stale update: no panel"
    assert hists[0]["values"].tolist() == [u["staleness"] for u in jsonl(out / "ps-p2-shm-async" / "updates.jsonl")]
    assert hists[0]["counts"].sum() == asy["steps"] and len(hists[0]["counts"]) == asy["staleness_max"] + 1
    assert hists[0]["mean"] == pytest.approx(asy["staleness_mean"])


def test_bad_consistency_flags_exit_2(tmp_path):
    for args, words in ((["--consistency", "bsp,eventual"], ["--consistency", "'eventual'"]),
                        (["--consistency", "async,async"], ["--consistency", "twice"]),
                        (["--consistency", "bsp,async", "--staleness", "2"], ["--staleness", "ssp only"]),
                        (["--consistency", "ssp", "--staleness", "-1"], ["--staleness", ">= 0"]),
                        (["--workers", "2", "--faults", "slow=worker2:3"], ["--faults", "workers 0..1"])):
        result = invoke(["experiment", *TINY, "--out", tmp_path / "r", *args])
        assert_one_line_error(result, 2, *words)
        assert not (tmp_path / "r").exists()
