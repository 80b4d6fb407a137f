"""rundirs.py and report.py against run directories written by tests/rundir_factory.py.

    python3 -m pytest -q tests/test_report.py
"""
import json
import re

import numpy as np
import pytest

from parsgd.analysis.report import comm_breakdown, comparison_rows, format_table, write_report
from parsgd.analysis.rundirs import RunDirError, load_comm, load_run
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


def test_speedup_and_efficiency_match_summaries(exp):
    runs = [load_run(p) for p in exp.values()]
    rows = comparison_rows(runs[1:], runs[0])  # the baseline is added when missing
    assert [r["path"] for r in rows] == [str(p) for p in exp.values()]
    base = _summary(exp["sequential"])["total_time_s"]
    for row, path in zip(rows, exp.values()):
        s = _summary(path)
        assert row["P"] == s["workers"]
        assert row["total_s"] == pytest.approx(s["total_time_s"])
        assert row["speedup"] == pytest.approx(base / s["total_time_s"])
        assert row["efficiency"] == pytest.approx(base / s["total_time_s"] / s["workers"])
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
    base = _summary(exp["sequential"])["total_time_s"]
    table = text.split("Comparison")[1].split("Communication overhead")[0]
    for run, p in zip(runs, exp.values()):
        s = _summary(p)
        row = next(ln for ln in table.splitlines() if ln.startswith(run.label + " "))
        assert f"{base / s['total_time_s']:.2f}x" in row.split()
        assert f"{base / s['total_time_s'] / s['workers']:.0%}" in row.split()
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
