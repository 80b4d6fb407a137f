"""rundirs.py and report.py against run directories written by tests/rundir_factory.py.

    python3 -m pytest -q tests/test_report.py
"""
import json
import re

import numpy as np
import pytest

from parsgd.analysis.report import comm_breakdown, comparison_rows, format_table, write_report
from parsgd.analysis.rundirs import RunDirError, load_comm, load_run
from parsgd.training.loop import WARMUP_STEPS
from rundir_factory import make_experiment, make_run


@pytest.fixture
def exp(tmp_path):
    """{"sequential", "pool", "ps"}: fresh run directory paths for each test (they may be damaged)."""
    return make_experiment(tmp_path / "results")


def _summary(path):
    return json.loads((path / "summary.json").read_text())


def _lines(path):
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def test_load_run_reads_every_file(exp):
    run = load_run(exp["ps"])
    assert run.mode == "ps" and run.transport == "shm" and run.workers == 2
    assert run.metrics == _lines(exp["ps"] / "metrics.jsonl")
    assert run.summary == _summary(exp["ps"])
    assert run._comm is None, "comm.jsonl must be read lazily"
    assert len(run.comm) == len(_lines(exp["ps"] / "comm.jsonl"))
    assert run.comm.tracks() == [("server", 0), ("worker", 0), ("worker", 1)]
    assert load_run(exp["sequential"]).comm is None


def test_missing_dir_names_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(RunDirError, match=re.escape(str(missing))):
        load_run(missing)


@pytest.mark.parametrize("keep", [(), ("config.json",), ("metrics.jsonl",)])
def test_dir_without_logs_is_not_a_run(tmp_path, exp, keep):
    d = tmp_path / "partial"
    d.mkdir()
    for name in keep:
        (d / name).write_bytes((exp["pool"] / name).read_bytes())
    with pytest.raises(RunDirError, match=re.escape(f"{d} is not a parsgd run directory")) as info:
        load_run(d)
    assert "parsgd train/launch/experiment" in str(info.value)


@pytest.mark.parametrize("name", ["comm.jsonl", "metrics.jsonl"])
def test_corrupt_jsonl_line_is_named(exp, name):
    path = exp["ps"] / name
    lines = path.read_text().splitlines()
    bad = min(2, len(lines) - 1)
    lines[bad] = lines[bad][: len(lines[bad]) // 2]  # cut off mid-object
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError, match=re.escape(f"{path} line {bad + 1}: invalid JSON")):
        load_comm(exp["ps"]) if name == "comm.jsonl" else load_run(exp["ps"])


def test_missing_fields_are_named(exp):
    path = exp["ps"] / "comm.jsonl"
    rows = _lines(path)
    del rows[3]["dur"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RunDirError, match=r"comm\.jsonl line 4: missing field\(s\) dur"):
        load_comm(exp["ps"])
    cfg = json.loads((exp["pool"] / "config.json").read_text())
    del cfg["mode"]
    (exp["pool"] / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunDirError, match="config.json: missing field 'mode'"):
        load_run(exp["pool"])


def test_unfinished_run_has_derived_summary(exp):
    (exp["pool"] / "summary.json").unlink()
    run = load_run(exp["pool"])
    assert not run.finished
    assert run.summary["total_time_s"] == pytest.approx(sum(m["epoch_time_s"] for m in run.metrics))


def _s_per_step(summary):
    return summary["timed_s"] / summary["timed_steps"]


def test_speedup_and_efficiency_match_summaries(exp):
    runs = [load_run(p) for p in exp.values()]
    rows = comparison_rows(runs[1:], runs[0])  # the baseline is added when missing
    assert [r["path"] for r in rows] == [str(p) for p in exp.values()]
    base = _s_per_step(_summary(exp["sequential"]))
    for row, path in zip(rows, exp.values()):
        s = _summary(path)
        assert row["P"] == s["workers"] and row["runs"] == 1 and row["speedup_range"] is None
        assert row["timed_steps"] == s["timed_steps"] == s["steps"] - WARMUP_STEPS
        assert row["timed_s"] == pytest.approx(s["timed_s"])
        assert row["ms_per_step"] == pytest.approx(1e3 * _s_per_step(s))
        assert row["speedup"] == pytest.approx(base / _s_per_step(s))
        assert row["efficiency"] == pytest.approx(base / _s_per_step(s) / s["workers"])
        assert row["test_acc"] == pytest.approx(s["final_test_acc"])
        assert row["comm_share"] == pytest.approx(s["comm_share"])
        moved = sum(m["bytes_sent"] + m["bytes_recv"] for m in _lines(path / "metrics.jsonl"))
        assert row["bytes_per_step"] == pytest.approx(moved / s["steps"])
    assert rows[0]["speedup"] == pytest.approx(1.0)


def test_comm_breakdown_shares_and_seconds(exp):
    bd = comm_breakdown(load_run(exp["ps"]))
    assert set(bd) == {"server", "worker"}
    spans = _lines(exp["ps"] / "comm.jsonl")
    for role, part in bd.items():
        assert sum(part["shares"].values()) == pytest.approx(1.0)
        mine = [s for s in spans if s["role"] == role]
        transfer = sum(s["dur"] for s in mine if s["span"] in ("send", "recv"))
        assert part["seconds"]["transfer"] == pytest.approx(transfer)
        assert part["total_s"] == pytest.approx(sum(s["dur"] for s in mine))
    assert bd["worker"]["ranks"] == 2
    assert comm_breakdown(load_run(exp["sequential"])) == {}


def test_breakdown_falls_back_to_summary(exp):
    from_log = comm_breakdown(load_run(exp["ps"]))
    (exp["ps"] / "comm.jsonl").unlink()
    from_summary = comm_breakdown(load_run(exp["ps"]))
    for role in from_log:
        assert from_summary[role]["source"] == "summary.json"
        for cat, share in from_log[role]["shares"].items():
            assert from_summary[role]["shares"][cat] == pytest.approx(share)


def test_format_table_is_aligned():
    rows = [{"run": "sequential", "P": 1, "speedup": 1.0}, {"run": "ps P=16 tcp", "P": 16, "speedup": 12.345}]
    lines = format_table(rows).splitlines()
    assert len(lines) == 4 and lines[0].split() == ["run", "P", "speedup"]
    assert lines[3].endswith("12.35x") and lines[2].endswith("1.00x")
    assert len({len(ln) for ln in lines[1:]}) == 1


def test_report_sections_and_numbers(exp, tmp_path):
    runs = [load_run(p) for p in exp.values()]
    path = write_report(tmp_path / "out", runs, runs[0], config=None, machine=None)
    assert path == tmp_path / "out" / "experiment_report.txt"
    text = path.read_text()
    for section in ("date:", "configuration:", "machine:", "BLAS:", "versions:", "Comparison",
                    "Communication overhead", "How to read this"):
        assert section in text, section
    cfg = json.loads((exp["ps"] / "config.json").read_text())
    assert f"{cfg['machine']['cores']} cores" in text
    assert cfg["machine"]["blas"][0]["internal_api"] in text and f"numpy {cfg['versions']['numpy']}" in text
    base = _s_per_step(_summary(exp["sequential"]))
    table = text.split("Comparison")[1].split("Timing notes")[0]
    for run, p in zip(runs, exp.values()):
        s = _summary(p)
        row = next(ln for ln in table.splitlines() if ln.startswith(run.label + " "))
        assert f"{base / _s_per_step(s):.2f}x" in row.split()
        assert f"{base / _s_per_step(s) / s['workers']:.0%}" in row.split()
        assert row.endswith("too short to time"), "the factory's runs have 8 timed steps"
    assert "Same-model check" in text and "all 2 other configurations pass" in text
    comm = text.split("Communication overhead")[1]
    assert "ps P=2 shm" in comm and "transfer" in comm and "pool P=2" not in comm


def test_report_takes_explicit_config_and_machine(exp, tmp_path):
    runs = [load_run(p) for p in exp.values()]
    cfg = dict(runs[0].config, epochs=77)
    machine = {"cores": 64, "blas": [{"internal_api": "mkl", "version": "2024", "num_threads": 8}]}
    text = write_report(tmp_path, runs, runs[0], cfg, machine).read_text()
    assert "77 epochs" in text and "64 cores" in text and "mkl 2024, 8 thread(s)" in text


def test_large_comm_log_loads_quickly(tmp_path):
    import time
    path = make_run(tmp_path, "ps", 2, "tcp", epochs=1, steps_per_epoch=2000)
    start_s = time.perf_counter()
    comm = load_comm(path)
    assert time.perf_counter() - start_s < 5
    assert len(comm) > 30_000 and np.all(comm.dur_s >= 0)


def _set_timing(path, timed_steps, timed_s):
    """Rewrite a run's timed window in summary.json (what the table is computed from)."""
    s = _summary(path)
    s.update(timed_steps=timed_steps, timed_s=timed_s, warmup_steps=s["steps"] - timed_steps)
    (path / "summary.json").write_text(json.dumps(s))


def _table(text):
    return text.split("Comparison\n----------\n", 1)[1].split("\n\n", 1)[0].splitlines()[2:]


@pytest.mark.parametrize("base_s,run_s,steps,marked", [
    (1.0, 0.60, 200, ""),                    # 1.67x at P=2 on a long window: no mark
    (1.0, 0.50, 200, ""),                    # exactly P: no mark
    (1.0, 0.30, 200, "above P"),             # 3.33x at P=2 on a long window: above P, with a cause
    (1.0, 0.30, 40, "too short to time"),    # the same on 40 steps: too short
    (0.2, 0.05, 200, "too short to time"),   # the baseline's 0.2 s is too short: every row is
])
def test_a_speedup_above_p_is_never_printed_unmarked(exp, tmp_path, base_s, run_s, steps, marked):
    _set_timing(exp["sequential"], steps, base_s)
    _set_timing(exp["pool"], steps, 0.8)
    _set_timing(exp["ps"], steps, run_s)
    meta = json.loads((exp["sequential"] / "config.json").read_text())
    meta["machine"]["blas"][0]["num_threads"] = 2  # a likely cause: the baseline's own BLAS threads
    (exp["sequential"] / "config.json").write_text(json.dumps(meta))
    runs = [load_run(p) for p in exp.values()]
    rows = comparison_rows(runs, runs[0])
    text = write_report(tmp_path, runs, runs[0]).read_text()
    table = _table(text)
    ps_row = next(r for r in rows if r["mode"] == "ps")
    assert ps_row["note"] == marked
    assert table[2].startswith("ps P=2 shm") and table[2].endswith(marked)
    for row, line in zip(rows, table):
        if row is not rows[0] and (row["speedup"] > row["P"] or row["efficiency"] > 1):
            assert row["note"] and line.endswith(row["note"]), line
            assert f"  {row['run']}: " in text.split("Timing notes", 1)[1], "each mark says its likely cause"
    if marked == "above P":
        assert "ps P=2 shm: speedup 3.33x above P=2 from one run: likely the baseline was slowed" in text
        assert "or by its own 2 BLAS threads on busy cores" in text and "rerun with --repeat 3" in text
    if marked == "too short to time":
        assert "A figure needs >= 100 timed steps and >= 0.25 s" in text


def test_repeats_are_one_row_with_median_and_min_max(tmp_path):
    from parsgd.analysis.results import records, write_results
    from rundir_factory import make_run
    root = tmp_path / "results"
    paths = [make_run(root, mode, p, tr, epochs=3, steps_per_epoch=100, name=f"{name}-r{r}", seed=r)
             for r in (1, 2, 3) for mode, p, tr, name in (("sequential", 1, None, "sequential"), ("pool", 2, None, "pool-p2"))]
    for path, secs in zip(paths, (1.0, 2.0, 1.2, 1.9, 0.9, 2.2)):  # seq 1.0, 1.2, 0.9; pool 2.0, 1.9, 2.2
        _set_timing(path, 290, secs)
    runs = [load_run(p) for p in paths]
    rows = comparison_rows(runs, runs[0])
    assert [(r["run"], r["runs"]) for r in rows] == [("sequential", 3), ("pool P=2", 3)]
    assert rows[0]["speedup"] == pytest.approx(1.0) and rows[0]["timed_s"] == pytest.approx(1.0)
    assert rows[1]["timed_s"] == pytest.approx(2.0) and rows[1]["speedup"] == pytest.approx(0.5)
    assert rows[1]["speedup_range"] == pytest.approx((1.0 / 2.2, 1.0 / 1.9))
    line = _table(write_report(tmp_path, runs, runs[0]).read_text())[1]
    assert line.split()[2:8] == ["2", "3", "290", "2.000", "6.90", "0.50x"] and "0.45-0.53x" in line
    recs = records(runs, runs[0])
    json_path, csv_path = write_results(tmp_path, recs, {"repeat": 3})
    doc = json.loads(json_path.read_text())
    got = [(r["run"], r["repeat"], r["timed_s"], r["path"]) for r in doc["records"]]
    assert sorted(got) == sorted((load_run(p).label, int(p.name[-1]), s, str(p))
                                 for p, s in zip(paths, (1.0, 2.0, 1.2, 1.9, 0.9, 2.2)))
    import csv
    table = list(csv.DictReader(csv_path.open()))
    assert len(table) == 6 and [r["repeat"] for r in table if r["run"] == "pool P=2"] == ["1", "2", "3"]
    assert {r["same_model"] for r in table} == {"True"} and table[0]["transport"] == ""


def test_a_different_first_update_fails_the_same_model_check(tmp_path):
    from rundir_factory import make_run
    paths = [make_run(tmp_path, "sequential", 1), make_run(tmp_path, "pool", 2, check_error=0.3),
             make_run(tmp_path, "ps", 2, "shm", check_error=1e-6)]
    runs = [load_run(p) for p in paths]
    rows = comparison_rows(runs, runs[0])
    assert [r["check_ok"] for r in rows] == [True, False, True]
    assert rows[1]["check_diff"] == pytest.approx(0.3, rel=1e-6) and rows[2]["check_diff"] < 1e-5
    text = write_report(tmp_path, runs, runs[0]).read_text()
    assert "FAILED 3.0e-01" in _table(text)[1]
    assert "FAILED: pool P=2: difference 3.0e-01 > 1e-04: it does not train the same model as sequential" in text
    assert "1 other configuration pass" in text and "chaotically" in text
    (paths[2] / "check.npz").unlink()
    rows = comparison_rows([load_run(p) for p in paths], runs[0])
    assert rows[2]["check_ok"] is None and rows[2]["same_model"] is None
