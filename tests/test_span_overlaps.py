"""The spans of one track (the server, or one worker) nest or are disjoint, in comm.jsonl and in the
trace: the span timers that could overlap (a worker's clock corrections, its prefetch).

    python3 -m pytest -q tests/test_span_overlaps.py
"""
import pytest

from parsgd.config import RunConfig
from parsgd.data import load_dataset
from parsgd.ps import protocol as proto
from parsgd.ps.commlog import WorkerSpans
from parsgd.ps.rows import ShardRows
from parsgd.training.loop import shard_bounds

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

