"""SSP and ASP scheduling rules on a fake clock, without sockets or processes (milliseconds)."""
from __future__ import annotations

from parsgd.ps.batches import BatchScheduler
from parsgd.ps.scheduler import NOT_OWED


class Clock:
    def __init__(self):
        self.t = 10.0

    def __call__(self):
        return self.t


def epoch(staleness, batches=8):
    sched = BatchScheduler(staleness, clock=Clock())
    sched.begin(0, 0, [(b * 4, b * 4 + 4) for b in range(batches)])
    return sched


def finish(sched, b, live):
    return sched.applied(b, live)


def test_batches_go_out_in_order_one_per_idle_worker_and_staleness_counts_updates_in_between():
    sched = epoch(None)
    assert sched.give(1, [1, 2]) == 0 and sched.give(2, [1, 2]) == 1
    assert sched.give(1, [1, 2]) is None                  # still holding batch 0
    assert finish(sched, 1, [1, 2])["staleness"] == 0    # pulled at version 0, applied first
    assert finish(sched, 0, [1, 2])["staleness"] == 1    # one update (batch 1) came in between
    assert sched.give(2, [1, 2]) == 2 and sched.cur.pulled[2] == 2


def test_ssp_makes_a_worker_more_than_s_clocks_ahead_wait():
    sched = epoch(1)
    live = [1, 2]
    assert sched.give(2, live) == 0           # the slow worker holds batch 0 for a long time
    for expected in (1, 2):
        b = sched.give(1, live)
        assert b == expected
        record = finish(sched, b, live)
    assert record["clock"] == 2 and record["min_live_clock"] == 0
    assert sched.give(1, live) is None         # 2 clocks ahead of the slowest (0) > S = 1: it waits
    finish(sched, 0, live)                     # the slow one catches up
    assert sched.give(1, live) == 3


def test_async_never_waits():
    sched = epoch(None)
    sched.give(2, [1, 2])
    for _ in range(5):
        finish(sched, sched.give(1, [1, 2]), [1, 2])
    assert sched.clocks[1] == 5 and sched.clocks.get(2, 0) == 0


def test_a_newcomer_starts_at_the_slowest_live_clock_and_a_dead_worker_gives_its_batch_back():
    sched = epoch(2)
    live = [1, 2]
    for _ in range(3):
        finish(sched, sched.give(1, live), live)
    b = sched.give(2, live)
    finish(sched, b, live)
    assert sched.clocks == {1: 3, 2: 4}   # its first batch came when the slowest clock was 3
    assert sched.give(3, [1, 2, 3]) is not None and sched.clocks[3] == 3   # the slowest live clock
    held = sched.cur.owner.index(3)
    assert sched.release(3) == [held] and 3 not in sched.clocks
    assert sched.unowned()[0] == held                                      # next out, to anyone


def test_only_the_owner_gradient_for_its_batch_is_accepted():
    sched = epoch(None)
    b = sched.give(1, [1, 2])
    assert sched.check(1, b, 0, 0, 4) is None
    assert sched.check(2, b, 0, 0, 4) == NOT_OWED           # never given to session 2
    assert sched.check(1, b, 0, 4, 8) == NOT_OWED           # other rows
    assert sched.check(1, b, 1, 0, 4) == NOT_OWED           # only shard 0 exists here
    assert sched.check(1, 100, 0, 0, 4) == "unknown step"
    sched.reopen(b)
    assert sched.check(1, b, 0, 0, 4) == "late or duplicate"  # taken back after a timeout
    finish(sched, sched.give(2, [1, 2]), [1, 2])
    assert sched.check(2, b, 0, 0, 4) == "late or duplicate"  # applied once


def test_overdue_and_a_non_finite_batch_is_reopened_once():
    sched = epoch(None)
    b = sched.give(1, [1])
    sched.clock.t += 5
    assert sched.overdue(4.0) == [(b, 1)]
    assert sched.reject(b) is True and sched.cur.owner[b] is None
    sched.give(1, [1])
    assert sched.reject(b) is False


def test_the_epoch_is_finished_when_every_batch_is_applied():
    sched = epoch(None, batches=2)
    finish(sched, sched.give(1, [1]), [1])
    assert not sched.finished()
    finish(sched, sched.give(1, [1]), [1])
    assert sched.finished() and sched.version == 2
