"""The membership rules on a fake clock, without sockets or processes (milliseconds).

Each test would fail on a plausible bug: a stale session's message accepted, a message from another
routing id accepted under a live session, a silent worker kept, a HELLO flood growing the table.
"""
from __future__ import annotations

from parsgd.ps.membership import MAX_TRACKED_PEERS, PENDING_SLACK, QUARANTINE_AFTER, Membership


class Clock:
    def __init__(self):
        self.t = 50.0

    def __call__(self):
        return self.t


def registry(n_shards=2, dead_after_s=3.0, register_timeout_s=60.0):
    clock = Clock()
    return Membership(n_shards, dead_after_s, register_timeout_s, clock), clock


def test_admit_gives_the_lowest_free_rank_and_ready_bumps_the_generation():
    reg, _ = registry()
    a = reg.admit(b"a", 101, "h", 1)
    b = reg.admit(b"b", 102, "h", 2)
    assert (a.rank, b.rank) == (0, 1) and reg.live() == [] and reg.pending() == [a, b]
    reg.mark_ready(a)
    assert reg.live() == [a] and reg.generation == 1
    assert reg.remove(a) is True and reg.generation == 2
    c = reg.admit(b"c", 103, "h", 3)
    assert c.rank == 0  # a's rank is free again
    assert reg.remove(b) is False and reg.generation == 2  # a pending peer leaving is no membership change


def test_fencing_refuses_stale_sessions_and_other_routing_ids():
    reg, clock = registry()
    a = reg.admit(b"a", 101, "h", 1)
    assert reg.fenced(b"a", 101) is a
    assert reg.fenced(b"a", 999) is None            # a session it never had (a zombie's earlier one)
    assert reg.fenced(b"x", 101) is None            # the right session from another connection
    assert reg.fenced(b"x", 101, any_identity=True) is a   # heartbeats come from their own socket
    reg.remove(a)
    assert reg.fenced(b"a", 101) is None            # gone: its messages are stale now


def test_a_fenced_message_counts_as_a_sign_of_life_a_stale_one_does_not():
    reg, clock = registry(dead_after_s=3.0)
    a = reg.admit(b"a", 101, "h", 1)
    reg.mark_ready(a)
    clock.t += 2.5
    reg.fenced(b"a", 999)
    reg.fenced(b"a", 101)
    clock.t += 2.5
    assert reg.overdue() == []
    reg.fenced(b"x", 101)  # wrong identity: no sign of life
    clock.t += 0.6
    [(member, reason)] = reg.overdue()
    assert member is a and reason.startswith("silent for 3.1 s")


def test_pending_members_expire_when_silent_or_without_ready_in_time():
    reg, clock = registry(dead_after_s=3.0, register_timeout_s=5.0)
    quiet = reg.admit(b"q", 1, "h", 1)
    chatty = reg.admit(b"c", 2, "h", 2)
    clock.t += 3.5
    reg.fenced(b"c", 2)
    assert reg.overdue() == [(quiet, "silent for 3.5 s before READY")]
    reg.remove(quiet)
    clock.t += 2.0
    reg.fenced(b"c", 2)
    assert reg.overdue() == [(chatty, "no READY within 5 s")]


def test_a_hello_flood_cannot_grow_the_table():
    reg, clock = registry(n_shards=2)
    for i in range(200):
        evict, room = reg.room_for()
        for m in evict:
            reg.remove(m)
        if room:
            reg.admit(bytes([i % 256, i // 256]), 1000 + i, "h", i)
        clock.t += 0.01
        assert len(reg.pending()) <= 2 + PENDING_SLACK
    assert max(m.rank for m in reg.members.values()) < 2 * 2 + PENDING_SLACK
    assert min(m.session for m in reg.pending()) == 1000 + 200 - (2 + PENDING_SLACK)  # the oldest went first


def test_the_table_is_full_at_twice_the_shards_plus_slack():
    reg, _ = registry(n_shards=1)
    for i in range(2 + PENDING_SLACK):
        m = reg.admit(bytes([i]), i + 1, "h", i)
        if i < 1 + PENDING_SLACK - 1:
            reg.mark_ready(m)
    evict, room = reg.room_for()
    assert not room and evict == []


def test_strangers_are_quarantined_after_three_strikes_or_one_severe():
    reg, _ = registry()
    for i in range(QUARANTINE_AFTER - 1):
        assert reg.strike(b"s") is False
    assert not reg.is_quarantined(b"s")
    assert reg.strike(b"s") is True and reg.is_quarantined(b"s")
    assert reg.strike(b"big", severe=True) is True and reg.is_quarantined(b"big")


def test_strike_and_quarantine_tables_are_bounded():
    reg, _ = registry()
    for i in range(MAX_TRACKED_PEERS + 10):
        reg.strike(i.to_bytes(4, "big"), severe=True)
        reg.strike((i + 10**6).to_bytes(4, "big"))
    assert len(reg.quarantined) == MAX_TRACKED_PEERS and len(reg.strikes) == MAX_TRACKED_PEERS
    assert not reg.is_quarantined((0).to_bytes(4, "big"))  # the oldest made room


def test_a_launch_worker_named_wN_gets_rank_N_when_it_is_free():
    """One number per worker for the user: launch's worker 2 (--name w2) is rank 2 whatever the order."""
    reg, _ = registry(n_shards=3)
    assert reg.admit(b"c", 3, "h", 3, name="w2").rank == 2
    assert reg.admit(b"a", 1, "h", 1, name="w0").rank == 0
    assert reg.admit(b"x", 9, "h", 9, name="w2").rank == 1      # taken: the lowest free rank
    assert reg.admit(b"y", 8, "h", 8, name="w7").rank == 3      # beyond the shards: lowest free
    assert reg.admit(b"z", 7, "h", 7, name="worker").rank == 4  # another name: lowest free


def test_a_task_sent_again_for_a_shard_still_owed_is_counted():
    """The server reads a shared-memory slot in place only while no second computation can write it:
    a TASK re-sent for a (step, shard) the worker still owes (a step timeout) is counted."""
    reg, _ = registry()
    a = reg.admit(b"a", 101, "h", 1)
    reg.mark_ready(a)
    reg.sent_task(a, 7, 0)
    assert a.resent == 0 and a.owes == {(7, 0)}
    reg.sent_task(a, 7, 0)
    reg.sent_task(a, 7, 1)
    assert a.resent == 1 and a.owes == {(7, 0), (7, 1)}
