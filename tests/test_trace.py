"""trace.py: Chrome trace events that mirror comm.jsonl one to one, in integer microseconds, with
the slices of every track nested or disjoint (and commlog.py writes comm.jsonl so that they are).

    python3 -m pytest -q tests/test_trace.py
"""
import json
import re
from collections import defaultdict

import numpy as np
import pytest

from parsgd.analysis.rundirs import RunDirError
from parsgd.analysis.trace import write_trace
from parsgd.ps.commlog import CommLog, CommStream
from parsgd.ps.protocol import SPANS
from rundir_factory import make_run
from tracecheck import comm_overlaps, trace_overlaps


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
    # the same spans, in whole microseconds: start and end each within 1 us of comm.jsonl's
    want, got = defaultdict(list), defaultdict(list)
    for s in spans:
        want[s["role"], s["rank"], s["span"], s["step"], s["bytes"]].append((s["t"] * 1e6, (s["t"] + s["dur"]) * 1e6))
    for e in xs:
        assert type(e["ts"]) is int and type(e["dur"]) is int, e
        got[e["cat"], e["tid"], e["name"], e["args"]["step"], e["args"]["bytes"]].append((e["ts"], e["ts"] + e["dur"]))
    assert got.keys() == want.keys()
    for key, ours in got.items():
        for (ts, end), (t_us, end_us) in zip(sorted(ours), sorted(want[key]), strict=True):
            assert abs(ts - t_us) <= 1 and abs(end - end_us) <= 1, (key, ts, end, t_us, end_us)


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
        assert type(m["ts"]) is int and first_s * 1e6 - 1 < m["ts"] <= first_s * 1e6 + 0.1


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


def _chained_log(rng, n: int, shift_at: int | None = None) -> CommLog:
    """A CommLog of n spans, each starting where the one before ended (as a worker's wait, recv,
    deserialize, compute, serialize and send do), at times with all their digits; with shift_at, the
    clock is shifted by an odd delta there (a worker's settle)."""
    log, t = CommLog(), 0.05 + rng.random()
    for i in range(n):
        if i == shift_at:
            log.shift(0, 1.234567891e-5)
            t += 1.234567891e-5
        t = log.add(SPANS[i % len(SPANS)], i // 8, t, end=t + 1e-7 + rng.random() * 3e-5)
    return log


def test_spans_that_abut_start_exactly_where_the_one_before_ends(tmp_path):
    """Spans chained at times with every digit, written by the real CommStream: in comm.jsonl each
    t + dur is the next span's t exactly (in 0.1 us ticks), and in the trace each end the next ts.
    (t and dur rounded apart to 0.1 us made ~7% of a run's spans overlap the one before by a tick,
    which Perfetto drops or misdraws.)"""
    rng = np.random.default_rng(1)
    comm = CommStream(tmp_path / "comm.jsonl")
    comm.server(_chained_log(rng, 400, shift_at=200))
    comm.close()
    rows = [json.loads(line) for line in (tmp_path / "comm.jsonl").read_text().splitlines()]
    ticks = [(round(r["t"] * 1e7), round((r["t"] + r["dur"]) * 1e7)) for r in rows]
    assert all(end == nxt for (_, end), (nxt, _) in zip(ticks, ticks[1:])), "an end that is not the next start"
    assert comm_overlaps(tmp_path / "comm.jsonl") == []
    assert write_trace(tmp_path / "comm.jsonl", tmp_path / "t.json") == 400
    assert trace_overlaps(tmp_path / "t.json") == []
    xs = [e for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"] if e["ph"] == "X"]
    assert [e["args"]["step"] for e in xs] == [i // 8 for i in range(400)], "in the order they happened"
    assert all(a["ts"] + a["dur"] == b["ts"] for a, b in zip(xs, xs[1:]))


def _write_comm(path, spans):
    path.write_text("".join(json.dumps({"role": role, "rank": rank, "step": 0, "span": span, "t": t, "dur": dur,
                                        "bytes": 0}) + "\n" for role, rank, span, t, dur in spans))
    return path


def test_a_file_rounded_the_old_way_still_gives_slices_that_nest_or_are_disjoint(tmp_path):
    """comm.jsonl files written before t and dur were made consistent: an end one tick past the next
    start (here recv ends at 11.0 us, deserialize starts at 10.9) is a rounding, and the next slice
    starts at that end; deserialize nested in compute stays nested. The factory's runs are rounded
    that way too."""
    comm = _write_comm(tmp_path / "comm.jsonl", [
        ("worker", 0, "recv", 1.04e-5, 6e-7), ("worker", 0, "deserialize", 1.09e-5, 2.1e-6),
        ("worker", 0, "compute", 2e-5, 5e-6), ("worker", 0, "serialize", 2.1e-5, 1e-6),
        ("server", 0, "send", 1.09e-5, 1e-7)])  # another track: not moved
    assert comm_overlaps(comm) != []  # the input has the fault
    write_trace(comm, tmp_path / "t.json")
    assert trace_overlaps(tmp_path / "t.json") == []
    xs = {e["name"]: (e["ts"], e["dur"]) for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"]
          if e["ph"] == "X"}
    assert xs == {"recv": (10, 1), "deserialize": (11, 2), "compute": (20, 5), "serialize": (21, 1), "send": (10, 1)}
    run = make_run(tmp_path, "ps", 3, "shm", epochs=2, steps_per_epoch=8)
    bad = comm_overlaps(run / "comm.jsonl")
    assert bad and all(round((a["t"] + a["dur"] - b["t"]) * 1e7) == 1 for a, b in bad), "the factory rounds so"
    write_trace(run, tmp_path / "f.json")
    assert trace_overlaps(tmp_path / "f.json") == []


def test_an_overlap_longer_than_a_rounding_is_not_hidden(tmp_path):
    """Two ticks or more is no rounding: the trace keeps it (a fault at the source, for the tests of
    real runs to catch), rather than moving slices."""
    comm = _write_comm(tmp_path / "comm.jsonl", [("server", 0, "wait", 1e-5, 2e-5), ("server", 0, "recv", 2.5e-5, 1e-5)])
    write_trace(comm, tmp_path / "t.json")
    assert [(a["name"], b["name"]) for a, b in trace_overlaps(tmp_path / "t.json")] == [("wait", "recv")]
