"""trace.py: Chrome trace events that mirror comm.jsonl one to one.

    python3 -m pytest -q tests/test_trace.py
"""
import json
import re
from collections import Counter

import pytest

from parsgd.analysis.rundirs import RunDirError
from parsgd.analysis.trace import write_trace
from parsgd.ps.protocol import SPANS
from rundir_factory import make_run


@pytest.fixture
def ps_run(tmp_path):
    """Path of a fresh ps P=2 tcp run directory: 2 epochs of 5 steps."""
    return make_run(tmp_path, "ps", 2, "tcp", epochs=2, steps_per_epoch=5)


def _spans(run):
    return [json.loads(ln) for ln in (run / "comm.jsonl").read_text().splitlines() if ln.strip()]


def test_one_complete_event_per_span(ps_run, tmp_path):
    out = tmp_path / "sub" / "trace.json"
    n = write_trace(ps_run, out)
    spans = _spans(ps_run)
    doc = json.loads(out.read_text())
    assert doc["displayTimeUnit"] == "ms"
    events = doc["traceEvents"]
    xs = [e for e in events if e["ph"] == "X"]
    assert n == len(xs) == len(spans)
    for e in xs:
        for key in ("name", "ph", "ts", "dur", "pid", "tid"):
            assert key in e, (key, e)
        assert e["name"] in SPANS and e["dur"] >= 0 and isinstance(e["tid"], int)
        assert e["pid"] == (0 if e["cat"] == "server" else 1)
        assert set(e["args"]) >= {"bytes", "step"}
    # the same spans, in microseconds: compare as multisets
    want = Counter((s["span"], s["rank"], s["step"], round(s["t"] * 1e6), round(s["dur"] * 1e6), s["bytes"])
                   for s in spans)
    got = Counter((e["name"], e["tid"], e["args"]["step"], round(e["ts"]), round(e["dur"]), e["args"]["bytes"])
                  for e in xs)
    assert got == want


def test_tracks_are_named(ps_run, tmp_path):
    write_trace(ps_run, tmp_path / "t.json")
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e["ph"] == "M" and e["name"] == "thread_name"}
    assert threads == {(0, 0): "server", (1, 0): "worker 0", (1, 1): "worker 1"}
    procs = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert procs == {0: "server", 1: "workers"}


def test_step_markers(ps_run, tmp_path):
    write_trace(ps_run, tmp_path / "t.json")
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    marks = [e for e in events if e["ph"] == "i"]
    spans = _spans(ps_run)
    steps = sorted({s["step"] for s in spans if s["step"] >= 0})
    assert [m["args"]["step"] for m in marks] == steps
    for m in marks:
        assert m["s"] == "g"
        first_s = min(s["t"] for s in spans if s["step"] == m["args"]["step"])
        assert m["ts"] == pytest.approx(first_s * 1e6, abs=1e-2)


def test_run_without_comm_log(tmp_path):
    seq = make_run(tmp_path, "sequential", 1)
    with pytest.raises(RunDirError, match=re.escape(f"{seq} has no communication log")) as info:
        write_trace(seq, tmp_path / "t.json")
    assert "parameter-server" in str(info.value)
    assert not (tmp_path / "t.json").exists()


def test_missing_or_foreign_dir(tmp_path):
    with pytest.raises(RunDirError, match=re.escape(str(tmp_path / "gone"))):
        write_trace(tmp_path / "gone", tmp_path / "t.json")
    with pytest.raises(RunDirError, match="is not a parsgd run directory"):
        write_trace(tmp_path, tmp_path / "t.json")


def test_corrupt_comm_line(ps_run, tmp_path):
    path = ps_run / "comm.jsonl"
    lines = path.read_text().splitlines()
    lines[16] = '{"role": "worker", "rank": 0,'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError, match=re.escape(f"{path} line 17: invalid JSON")):
        write_trace(ps_run, tmp_path / "t.json")
