"""Asynchronous (ASP) and stale-synchronous (SSP) scheduling, without sockets: whole mini-batches
of the global epoch order, one per idle worker, each applied the moment its gradient arrives.

    python -m pytest tests/test_batches.py -q      # the rules, on a fake clock, in milliseconds

ASP is Downpour SGD (Dean et al., NIPS 2012): no worker waits for another. SSP (Ho et al., NIPS
2013) bounds the drift: a worker's *clock* is the number of batches it has finished; a worker more
than S clocks ahead of the slowest live worker gets no batch until the slowest catches up. A
worker that joins mid-run starts at the slowest live clock (it neither stalls the others nor
runs ahead); a reassigned batch counts for the worker that finishes it.

The *staleness* of an update is the number of updates applied between its pull (the parameters
sent with the TASK, version v = updates applied so far) and its push. Under SSP with P live workers
it is at most (P - 1)(2S + 1): while worker w computes, its clock c_w is fixed, so the slowest live
clock stays <= c_w, and another worker u may start a batch only while c_u <= c_w + S, so its clock
ends at most at c_w + S + 1; at w's pull c_u >= m >= c_w - S (m the slowest clock then), so u
applies at most 2S + 1 updates meanwhile. With S = 0 that is P - 1: SSP at S = 0 is not BSP
(batches are still applied one by one).

Epochs are barriers: the next epoch's batches are handed out once every batch of this one is
applied, so an epoch's metrics and checkpoint hold exactly its batches.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from parsgd.ps.scheduler import NOT_OWED, OwnedWork


@dataclass
class Epoch:
    """One epoch's batches: batch b covers epoch-order positions rows[b]; `step` is the global
    index of batch 0 (epoch x batches per epoch), so TASK.step = step + b."""
    epoch: int
    step: int
    rows: list[tuple[int, int]]
    owner: list[int | None] = field(init=False)
    pulled: list[int] = field(init=False)        # version its parameters had when sent
    done: list[bool] = field(init=False)
    sent_at: list[float] = field(init=False)
    ever: list[set] = field(init=False)
    bad: list[int] = field(init=False)

    def __post_init__(self):
        k = len(self.rows)
        self.owner, self.pulled, self.done = [None] * k, [0] * k, [False] * k
        self.sent_at, self.bad = [0.0] * k, [0] * k
        self.ever = [set() for _ in range(k)]


class BatchScheduler(OwnedWork):
    """Which batch goes to whom, what is accepted, clocks and staleness (ASP with staleness=None).

    `version` counts the updates applied so far; `clock()` gives seconds (fake in tests).
    """

    def __init__(self, staleness: int | None, version: int = 0, clock: Callable[[], float] = time.monotonic):
        self.staleness, self.version, self.clock = staleness, version, clock
        self.clocks: dict[int, int] = {}     # live session -> batches it finished
        self.cur: Epoch | None = None

    def begin(self, epoch: int, step: int, rows: list[tuple[int, int]]) -> Epoch:
        self.cur = Epoch(epoch, step, rows)
        return self.cur

    def holding(self, session: int) -> bool:
        st = self.cur
        return st is not None and any(o == session and not d for o, d in zip(st.owner, st.done))

    def min_clock(self, live: list[int]) -> int:
        return min((self.clocks.get(s, 0) for s in live), default=0)

    def may_start(self, session: int, live: list[int]) -> bool:
        """SSP's rule: a worker more than S clocks ahead of the slowest live worker waits."""
        if session not in self.clocks:  # a newcomer starts at the slowest live clock
            self.clocks[session] = self.min_clock([s for s in live if s in self.clocks])
        return self.staleness is None or self.clocks[session] - self.min_clock(live) <= self.staleness

    def give(self, session: int, live: list[int]) -> int | None:
        """The next batch for an idle `session` (pulling version `self.version`), or None."""
        todo = self.unowned()
        if not todo or self.holding(session) or not self.may_start(session, live):
            return None
        b, st = todo[0], self.cur
        st.owner[b], st.pulled[b], st.sent_at[b] = session, self.version, self.clock()
        st.ever[b].add(session)
        return b

    def check(self, session: int, step: int, shard: int, lo: int, hi: int) -> str | None:
        """None if this GRAD is owed (as Scheduler.check: late or duplicate, unknown step, NOT_OWED)."""
        st = self.cur
        if st is None or step < st.step:
            return "late or duplicate"
        b = step - st.step
        if b >= len(st.rows):
            return "unknown step"
        if shard != 0 or session not in st.ever[b] or (lo, hi) != st.rows[b]:
            return NOT_OWED
        if st.owner[b] != session or st.done[b]:
            return "late or duplicate"
        return None

    def key(self, step: int, shard: int) -> int:
        """The batch index of an accepted GRAD."""
        return step - self.cur.step

    def applied(self, b: int, live: list[int]) -> dict:
        """Batch b's gradient was applied: the record for updates.jsonl (without rank and t)."""
        st = self.cur
        session = st.owner[b]
        st.done[b] = True
        record = {"update": self.version, "epoch": st.epoch, "batch": b, "version": st.pulled[b],
                  "staleness": self.version - st.pulled[b]}
        self.version += 1
        self.clocks[session] = self.clocks.get(session, 0) + 1
        if self.staleness is not None:
            record["clock"], record["min_live_clock"] = self.clocks[session], self.min_clock(live)
        return record

    def reject(self, b: int) -> bool:
        """Batch b came back non-finite: reopen it once (True), or False the second time."""
        st = self.cur
        st.bad[b] += 1
        st.owner[b] = None
        return st.bad[b] <= 1

    def reopen(self, b: int) -> None:
        """Batch b is taken from its owner (step timeout): the next idle worker gets it."""
        self.cur.owner[b] = None

    def release(self, session: int) -> list[int]:
        """A session is gone: its unfinished batches become unowned (returned); its clock goes."""
        self.clocks.pop(session, None)
        return super().release(session)
