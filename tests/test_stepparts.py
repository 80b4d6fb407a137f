"""What a step waits for (analysis/stepparts.py) and the report's sections that show it, checked against
sums recomputed here from comm.jsonl; a repeated configuration's section shows the table's medians.

    python3 -m pytest -q tests/test_stepparts.py
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from parsgd.analysis.report import comparison_rows, write_report
from parsgd.analysis.rundirs import load_run
from parsgd.analysis.stepparts import step_parts
from rundir_factory import make_run


def spans(run_dir):
    return [json.loads(ln) for ln in (run_dir / "comm.jsonl").read_text().splitlines()]


def per_step(rows, first):
    """Oracle: per step >= first, the server's wait and work, its bytes out/in and the slowest compute."""
    steps = sorted({r["step"] for r in rows if r["role"] == "server" and r["span"] == "wait" and r["step"] >= first})
    out = {}
    for s in steps:
        mine = [r for r in rows if r["step"] == s]
        server = [r for r in mine if r["role"] == "server"]
        out[s] = {"wait": sum(r["dur"] for r in server if r["span"] == "wait"),
                  "work": sum(r["dur"] for r in server if r["span"] != "wait"),
                  "bytes": sum(r["bytes"] for r in server if r["span"] in ("send", "recv")),
                  "slowest": max(sum(r["dur"] for r in mine if r["role"] == "worker" and r["rank"] == w
                                     and r["span"] == "compute") for w in {r["rank"] for r in mine if r["role"] == "worker"})}
    return out


def test_without_a_link_the_wait_is_compute_and_the_rest(tmp_path):
    run_dir = make_run(tmp_path, "ps", 2, "shm", epochs=3, steps_per_epoch=8)
    parts = step_parts(load_run(run_dir))
    oracle = per_step(spans(run_dir), 10)
    assert parts["steps"] == len(oracle) == 14 and parts["link"] == 0 and parts["rate"] is None
    assert parts["wait"] == pytest.approx(np.median([o["wait"] for o in oracle.values()]))
    assert parts["compute"] == pytest.approx(np.median([min(o["wait"], o["slowest"]) for o in oracle.values()]))
    assert parts["bound"] != "link"


def test_on_a_link_the_bytes_over_the_measured_rate_are_the_link_part(tmp_path):
    run_dir = make_run(tmp_path, "ps", 2, "tcp@100mbit", epochs=3, steps_per_epoch=8)
    oracle = per_step(spans(run_dir), 10)
    step = next(iter(oracle.values()))
    rate = step["bytes"] / (0.9 * step["wait"])   # the step's bytes need 90% of its wait at this rate
    (run_dir / "link.json").write_text(json.dumps({
        "rate": "100mbit", "rate_bps": 1e8, "wire_efficiency": 1448 / 1514,
        "calibration": {"bound": "link", "measured_payload_bytes_per_s": rate, "expected_payload_bytes_per_s": rate,
                        "rate_ok": True, "capacity_bytes_per_s": 1e9}}))
    parts = step_parts(load_run(run_dir))
    links = [min(o["wait"], o["bytes"] / rate) for o in oracle.values()]
    assert parts["link"] == pytest.approx(np.median(links), rel=1e-9) and parts["bound"] == "link"
    computes = [min(o["wait"] - link, o["slowest"]) for o, link in zip(oracle.values(), links)]
    assert parts["compute"] == pytest.approx(np.median(computes), rel=1e-9) and parts["rest"] >= 0
    text = write_report(tmp_path / "report", [load_run(run_dir)], load_run(run_dir)).read_text()
    assert "bound by link" in text and "Here the steps are bound by the link (bandwidth)" in " ".join(text.split())


def test_a_repeated_configuration_shows_the_tables_medians_not_its_first_run(tmp_path):
    """Issue 21: the report once gave comm share 51.9% in the table and 47.1% (the first repeat) in its section."""
    base = make_run(tmp_path, "sequential", 1, name="sequential")
    reps = [make_run(tmp_path, "ps", 2, "shm", name=f"ps-r{i}", seed=i, epochs=3, steps_per_epoch=8) for i in (1, 2, 3)]
    for i, rep in enumerate(reps):  # three clearly different runs: the first is not the median
        summary = json.loads((rep / "summary.json").read_text())
        summary["comm_share"] = (0.60, 0.40, 0.50)[i]
        summary["timed_s"] *= (1.5, 0.8, 1.0)[i]
        (rep / "summary.json").write_text(json.dumps(summary))
    runs = [load_run(p) for p in (base, *reps)]
    row = comparison_rows(runs, runs[0])[1]
    assert row["runs"] == 3 and row["comm_share"] == pytest.approx(0.50)
    text = write_report(tmp_path / "report", runs, runs[0]).read_text()
    section = text.split("Communication overhead", 1)[1]
    headline = re.search(r"([\d.]+) ms per timed step, .* comm share ([\d.]+)% \(the table's figures, each the "
                         r"median of its 3 runs\)", section)
    assert headline, section
    assert float(headline.group(1)) == pytest.approx(row["ms_per_step"], abs=0.006)
    assert float(headline.group(2)) == pytest.approx(50.0)
