"""The spans of one track (the server, or one worker) nest or are disjoint, in comm.jsonl and in the
trace: the span timers that could overlap (a worker's clock corrections, its prefetch, the spans it
keeps across sessions, the BSP server's wait) and real runs of every kind (shm, tcp, ipc, async,
ssp, colocated, a resumed server; emulated hosts are in test_cluster.py).

    python3 -m pytest -q tests/test_span_overlaps.py
"""
import json
import subprocess
import time

import pytest

from parsgd.analysis.trace import write_trace
from parsgd.config import RunConfig
from parsgd.data import load_dataset
from parsgd.ps import protocol as proto
from parsgd.ps.commlog import WorkerSpans
from parsgd.ps.rows import ShardRows
from parsgd.training.loop import shard_bounds
from procs import PY, Procs, events
from tracecheck import comm_overlaps, comm_spans, trace_overlaps

TICK_S = 1e-7


def _ship(log: WorkerSpans) -> list[list[float]]:
    """What a worker sends now: the unshipped spans as [code, step, t, dur, bytes] rows."""
    rows = []
    for chunk in log.unshipped(1000):
        log.shipped_one(chunk)
        rows += chunk.tolist()
    return rows


def _end(row) -> float:
    return row[2] + row[3]


def test_a_clock_correction_never_moves_spans_back_before_those_already_shipped():
    """A worker's first correction may move its clock back (the registration midpoint is ~1 ms late);
    once spans are in comm.jsonl, a later window whose fastest TASK was slower (measured: +-30 us a
    second under load) must not: the next span would start before the end of the last one shipped
    (12 in 110,000 slices of a 4-worker run). A TASK that seems to arrive before it was sent still
    moves the clock forward."""
    log = WorkerSpans(ship_every_s=1.0)
    log.registered(t_sent=0.0, t_recv=0.0, t_server=0.0)
    t = log.now()
    log.task_stamp(t_send=t - 1e-3, received=t)  # the midpoint was 1 ms late
    end = log.add("recv", 0, log.add("wait", 0, t, end=t + 1e-4), end=t + 2e-4)
    first = _ship(log)
    assert first[0][2] == pytest.approx(t - 1e-3, abs=TICK_S), "the first correction applies"

    start = _end(first[-1])  # the next span starts where the shipped ones end, on the corrected clock
    log.add("compute", 0, start, end=start + 1e-4)
    log.task_stamp(t_send=end, received=end + 3e-5)  # this window's fastest TASK took 30 us
    second = _ship(log)
    assert second[0][2] == pytest.approx(start, abs=TICK_S / 2), "moved back before the shipped spans"

    start = _end(second[-1])
    log.add("serialize", 0, start, end=start + 1e-4)
    log.task_stamp(t_send=start, received=start - 2e-5)  # arrived 20 us before it was sent: the clock is late
    third = _ship(log)
    assert third[0][2] == pytest.approx(start + 2e-5, abs=TICK_S / 2)


def test_a_session_with_another_server_or_rank_drops_the_last_sessions_unshipped_spans():
    """Spans not shipped when a session ends go out in the next session's LOGS only to the same server
    under the same rank: a restarted server wrote another run's spans, on another clock, into its
    comm.jsonl (test_a_restarted_server_gets_no_span_of_the_run_before below); another rank's track
    would get spans that overlap its own."""
    log = WorkerSpans(ship_every_s=1.0)
    log.registered(0.0, 0.0, 0.0, track=(1, 0))
    for session, track in enumerate([(1, 0), (2, 0), (2, 1)]):
        t = log.now()
        log.add("send", session, t, end=t + 1e-4)  # not shipped: the server went silent
        log.settle()
        log.registered(t, t, t, track=track)
        assert len(_ship(log)) == (1 if session == 0 else 0), track


def test_a_prefetched_gather_keeps_its_place_when_the_clock_is_corrected_before_its_task():
    """BSP: the rows of the next shard are gathered right after the GRAD is sent, the LOGS go out
    (a clock correction), then the TASK comes: the gather's compute span is moved with the rest, so
    it still starts after that send ended (it did not: 0.6 to 27 us before it)."""
    cfg = RunConfig(dataset="synthetic", num_samples=400, batch_size=100, workers=2, hidden=(8,))
    data = load_dataset("synthetic", None, 400, cfg.seed, cfg.dtype)
    log = WorkerSpans(ship_every_s=1.0)
    log.registered(t_sent=0.0, t_recv=0.0, t_server=0.0)
    rows = ShardRows(cfg, data, log)
    lo, hi = shard_bounds(0, 100, 2)[1]
    task = proto.Task(1, 1, 0, 0, 1, lo, hi, 100, 0.0, None)
    sent = log.add("send", 0, log.now())  # ends now
    _ship(log)  # the first correction of the session is behind us
    rows.prefetch(task, rank=0)
    now = log.now()
    log.task_stamp(t_send=now + 5e-4, received=now)  # the clock is 0.5 ms late
    shipped = _ship(log)
    assert shipped == [] and log.offset == pytest.approx(5e-4, abs=TICK_S)
    lo, hi = shard_bounds(100, 200, 2)[0]  # batch 1's shard 0: the one prefetched for rank 0
    rows.gather(proto.Task(1, 1, 1, 0, 0, lo, hi, 100, 0.0, None))
    (compute,) = _ship(log)
    assert compute[1] == 1 and compute[2] >= sent + 5e-4 - TICK_S / 2, (compute, sent)


def _launch(out, *extra):
    args = ["--dataset", "synthetic", "--num-samples", "6000", "--epochs", "1", "--hidden", "32,16",
            "--batch-size", "6", "--lr", "0.01"]  # 1000 steps, over a second: LOGS (a clock correction) go mid-run
    result = subprocess.run(PY + ["launch", "--workers", "2", *args, "--out", str(out), *extra],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def assert_tracks_well_formed(run, tmp_path) -> list[dict]:
    """comm.jsonl's spans nest or are disjoint exactly (in ticks), and so do the trace's slices (in
    integer microseconds); returns the spans."""
    assert comm_overlaps(run / "comm.jsonl") == []
    write_trace(run, tmp_path / "trace.json")
    assert trace_overlaps(tmp_path / "trace.json") == []
    return comm_spans(run / "comm.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("kind,extra", [("shm", ["--transport", "shm"]), ("tcp", ["--transport", "tcp"]),
                                        ("ipc", ["--transport", "ipc"]),
                                        ("async", ["--consistency", "async"]),
                                        ("ssp", ["--consistency", "ssp", "--staleness", "1"]),
                                        ("colocated", ["--colocate"])])
def test_every_kind_of_run_gives_tracks_whose_slices_nest_or_are_disjoint(tmp_path, kind, extra):
    """Real runs. The BSP server's wait is the time blocked in poll: one span per poll, which the recv
    and deserialize of what it found follow (one span from the first poll to the sum of their
    times overlapped the last GRADs' recv by up to 50 us, and held every recv of the step)."""
    spans = assert_tracks_well_formed(_launch(tmp_path / kind, *extra), tmp_path)
    server = [s for s in spans if s["role"] == "server"]
    waits = sorted((round(s["t"] / TICK_S), round((s["t"] + s["dur"]) / TICK_S)) for s in server if s["span"] == "wait")
    inside = [s for s in server if s["span"] in ("recv", "deserialize")
              and any(lo <= round(s["t"] / TICK_S) < hi for lo, hi in waits)]
    assert inside == [], f"{len(inside)} recv / deserialize spans inside a wait"
    steps = {s["step"] for s in server if s["span"] == "update"}
    assert len(steps) == 1000
    if kind in ("async", "ssp"):
        assert not waits  # these servers apply each gradient on arrival: no step to wait for
    else:
        assert {s["step"] for s in server if s["span"] == "wait"} == steps
        # per step, wait + recv + deserialize fit between the step's last send and its aggregate
        for step in (10, 500, 999):
            mine = [s for s in server if s["step"] == step]
            last_send = max(s["t"] + s["dur"] for s in mine if s["span"] == "send")
            (aggregate,) = [s["t"] for s in mine if s["span"] == "aggregate"]
            busy = sum(s["dur"] for s in mine if s["span"] in ("wait", "recv", "deserialize"))
            assert busy <= aggregate - last_send + 1e-6, (step, busy, aggregate - last_send)


@pytest.mark.slow
def test_a_restarted_server_gets_no_span_of_the_run_before(tmp_path):
    """The server is SIGKILLed, and resumed once the workers noticed its silence: they register with
    it, and their spans of the run before (on the dead server's clock, under ranks that may have
    changed) stay out of the resumed run's comm.jsonl (42 to 56 spans per worker came, steps the
    resumed server redid, 43 of them overlapping the new spans of their track)."""
    run = tmp_path / "run"
    args = ["--dataset", "synthetic", "--num-samples", "2000", "--epochs", "2", "--hidden", "32,16",
            "--batch-size", "100", "--heartbeat", "0.2", "--liveness", "5", "--checkpoint-every", "7"]
    with Procs(tmp_path) as p:
        address = p.address("shm")
        first, _ = p.server(run, 2, *args, address=address)
        workers = [p.worker(address, "--faults", "delay=1:0.05") for _ in range(2)]  # >= 50 ms a step
        deadline = time.monotonic() + 60
        while not any(e["event"] == "checkpoint" and e["step"] >= 21 for e in events(run)):
            assert time.monotonic() < deadline, "no checkpoint at step 21 within 60 s"
            time.sleep(0.05)
        first.kill()
        for w in workers:
            w.wait_for("registering again", timeout=30)
        second, _ = p.server(run, 2, "--resume", str(run), *args, address=address)
        assert second.wait(60) == 0, second.output()[-3000:]
        assert all(w.wait(10) == 0 for w in workers)
    spans = assert_tracks_well_formed(run, tmp_path)
    resumed_at = min(s["step"] for s in spans if s["role"] == "server" and s["step"] >= 0)
    assert resumed_at >= 21 and all(s["step"] >= resumed_at or s["step"] == -1 for s in spans)
    end = max(s["t"] + s["dur"] for s in spans if s["role"] == "server")
    assert all(s["t"] <= end for s in spans)

