"""The BSP scheduling rules on a fake clock, without sockets or processes (milliseconds).

Each test would fail on a plausible bug: shards summed in arrival order, a late or duplicate
gradient accepted, a finished shard handed out again, a gradient from a stale owner accepted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from parsgd.ps.scheduler import NOT_OWED, NonFiniteGradient, Scheduler


@dataclass
class W:
    session: int
    rank: int


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def started(n_shards=3, step=5, lo=0, hi=10, workers=(W(11, 0), W(12, 1), W(13, 2))):
    clock = Clock()
    sched = Scheduler(n_shards, clock)
    sched.begin(step, epoch=0, lo=lo, hi=hi)
    for s in range(n_shards):
        sched.assign(s, list(workers))
    return sched, clock


def test_begin_cuts_the_batch_into_contiguous_shards_and_each_live_worker_gets_one():
    sched, _ = started()
    st = sched.cur
    assert st.shards == [(0, 4), (4, 7), (7, 10)] and st.batch == 10
    assert sorted(st.owner) == [11, 12, 13]
    assert sched.unowned() == [] and not sched.finished()


def test_reduce_sums_in_shard_order_not_arrival_order():
    """Float addition is not associative: the sum must follow shard order whatever the arrival order."""
    sched, _ = started()
    st = sched.cur
    grads = [np.array([1e8], np.float32), np.array([1.0], np.float32), np.array([-1e8], np.float32)]
    for s in (2, 0, 1):  # arrival order differs from shard order
        lo, hi = st.shards[s]
        assert sched.check(st.owner[s], 5, s, lo, hi) is None
        sched.complete(s, grads[s], loss_sum=1.0, correct=1, compute_s=0.1 * s)
    out = np.empty(1, np.float32)
    assert sched.finished() and sched.reduce(out) is out
    assert out[0] == (grads[0] + grads[1]) + grads[2]  # == 0.0: 1e8 + 1 rounds to 1e8 in float32
    assert out[0] != (grads[2] + grads[0]) + grads[1]  # arrival order would give 1.0
    assert sched.totals() == (3.0, 3, pytest.approx(0.2))


@pytest.mark.parametrize("change, why", [
    (dict(step=4), "late or duplicate"),
    (dict(step=6), "unknown step"),
    (dict(session=99), NOT_OWED),                 # never given this shard
    (dict(lo=1), NOT_OWED),                       # other rows
    (dict(shard=7), NOT_OWED),                    # no such shard
])
def test_only_the_owner_gradient_for_this_step_and_rows_is_accepted(change, why):
    sched, _ = started()
    st = sched.cur
    args = dict(session=st.owner[1], step=5, shard=1, lo=4, hi=7)
    assert sched.check(**args) is None
    assert sched.check(**{**args, **change}) == why


def test_a_shard_is_accepted_once():
    sched, _ = started()
    owner = sched.cur.owner[0]
    assert sched.check(owner, 5, 0, 0, 4) is None
    sched.complete(0, np.zeros(1), 0.0, 0, 0.0)
    assert sched.check(owner, 5, 0, 0, 4) == "late or duplicate"


def test_a_dead_owner_loses_only_its_unfinished_shards_and_its_late_gradient_is_refused():
    sched, _ = started(n_shards=4, workers=(W(11, 0), W(12, 1)))
    st = sched.cur
    mine = [s for s, o in enumerate(st.owner) if o == 11]
    assert len(mine) == 2
    sched.complete(mine[0], np.zeros(1), 0.0, 0, 0.0)  # applied before it died
    assert sched.release(11) == [mine[1]]             # the finished shard is not reassigned
    assert st.done[mine[0]] and st.owner[mine[0]] == 11
    new = sched.assign(mine[1], [W(12, 1)])
    assert new.session == 12 and st.owner[mine[1]] == 12
    lo, hi = st.shards[mine[1]]
    assert sched.check(11, 5, mine[1], lo, hi) == "late or duplicate"   # the zombie's copy
    other = next(s for s, o in enumerate(st.owner) if o == 12 and s != mine[1])
    assert sched.check(11, 5, other, *st.shards[other]) == NOT_OWED    # a shard it never had
    assert sched.check(12, 5, mine[1], lo, hi) is None


def test_least_loaded_worker_gets_the_shard_and_avoid_is_honoured():
    sched, _ = started(n_shards=4, workers=(W(11, 0),))
    assert sched.cur.owner == [11] * 4
    st = sched.cur
    assert sched.assign(2, [W(11, 0), W(12, 1)], avoid=11).session == 12
    assert sched.assign(3, [W(11, 0)], avoid=11).session == 11   # nobody else: the same worker again
    assert sched.assign(1, [], avoid=None) is None and st.owner[1] is None
    assert sched.unowned() == [1]


def test_ties_rotate_with_the_step_so_every_worker_gets_work():
    firsts = set()
    for step in range(3):
        sched = Scheduler(1, Clock())
        sched.begin(step, 0, 0, 4)
        firsts.add(sched.assign(0, [W(11, 0), W(12, 1), W(13, 2)]).session)
    assert firsts == {11, 12, 13}


def test_overdue_shards_after_the_step_timeout_on_the_fake_clock():
    sched, clock = started()
    assert sched.overdue(10.0) == []
    clock.t += 10.5
    sched.complete(0, np.zeros(1), 0.0, 0, 0.0)
    assert sorted(s for s, _ in sched.overdue(10.0)) == [1, 2]


def test_non_finite_shard_is_reopened_once_then_the_step_fails():
    sched, _ = started(n_shards=2, workers=(W(11, 0), W(12, 1)))
    st = sched.cur
    bad = np.array([np.nan, 1.0])
    sched.complete(0, np.ones(2), 1.0, 1, 0.0)
    sched.complete(1, bad, 1.0, 1, 0.0)
    out = np.empty(2)
    assert sched.reduce(out) is None
    seen = []
    redo = sched.reject_non_finite(lambda s, o: seen.append((s, o)))
    assert redo == [(1, st.owner[1])] and seen == redo and not st.done[1] and st.done[0]
    sched.complete(1, np.array([np.inf, 0.0]), 1.0, 1, 0.0)
    assert sched.reduce(out) is None
    with pytest.raises(NonFiniteGradient, match="twice"):
        sched.reject_non_finite(lambda s, o: seen.append((s, o)))
    assert len(seen) == 2


def test_an_overflowing_sum_of_finite_shards_fails_at_once():
    sched, _ = started(n_shards=2, workers=(W(11, 0), W(12, 1)))
    big = np.array([np.finfo(np.float32).max], np.float32)
    sched.complete(0, big, 0.0, 0, 0.0)
    sched.complete(1, big, 0.0, 0, 0.0)
    out = np.empty(1, np.float32)
    with np.errstate(over="ignore"):
        assert sched.reduce(out) is None
    with pytest.raises(NonFiniteGradient, match="overflowed"):
        sched.reject_non_finite(lambda s, o: None)


def test_one_shard_with_rows_is_used_in_place_and_a_huge_finite_one_passes():
    """P=1 (or every other shard empty): no copy; squares that overflow are not a non-finite gradient."""
    sched, _ = started(n_shards=2, workers=(W(11, 0), W(12, 1)))
    only = np.array([1e30, -2.0], np.float32)  # 1e30 ** 2 overflows float32: the exact check decides
    sched.complete(0, only, 1.0, 1, 0.0)
    sched.complete(1, None, 0.0, 0, 0.0)  # an empty shard
    out = np.zeros(2, np.float32)
    assert sched.reduce(out) is only and not out.any()
    only[1] = -np.inf
    assert sched.reduce(out) is None


def test_empty_shards_are_owed_nothing_and_add_nothing():
    """A 1-row batch over 3 shards: two shards are empty, done at once, never assigned, not summed."""
    sched = Scheduler(3, Clock())
    st = sched.begin(9, 0, 100, 101)
    assert st.shards == [(100, 101), (101, 101), (101, 101)] and st.batch == 1
    assert sched.todo() == [0] and sched.unowned() == [0] and not sched.finished()
    assert sched.assign(0, [W(11, 0), W(12, 1)]) is not None
    sched.complete(0, np.array([2.0, -1.0]), 0.5, 1, 0.01)
    out = np.full(2, np.nan)
    assert sched.finished() and sched.reduce(out).tolist() == [2.0, -1.0]
    assert sched.totals() == (0.5, 1, 0.01)
