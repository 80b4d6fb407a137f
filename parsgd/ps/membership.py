"""Who the server's workers are: sessions, ranks, liveness, registration limits, strikes, quarantine.

    python -m pytest tests/test_membership.py -q      # the rules, on a fake clock, in milliseconds

In the spirit of the zguide's Paranoid Pirate worker queue (ready / purge apart from the poll
loop): a peer becomes a *pending* member with HELLO, a *live* worker with READY, and is removed
when it leaves, dies (silent for liveness x heartbeat) or registers again. Every member is keyed by
the random session it chose in HELLO; every message it sends carries that session as a fencing
token, so a zombie's or an earlier registration's messages never pass `fenced`. No sockets here.
"""
from __future__ import annotations

import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

QUARANTINE_AFTER = 3          # protocol errors from one unregistered peer before it is ignored
MAX_TRACKED_PEERS = 4096      # bound on the strike and quarantine tables
PENDING_SLACK = 8             # welcomed-but-not-READY peers allowed beyond --workers; the oldest goes first


@dataclass
class Member:
    """One registration of a worker: routing `identity`, `session` token, `rank`, times in clock seconds."""
    identity: bytes
    session: int
    rank: int
    host: str
    pid: int
    welcomed: float
    last_seen: float
    ready: bool = False
    buf: object = None            # its shared-memory SessionBuffer, owned by the server's Segments
    gone: str = ""                # why a send to it failed: it is dropped once its queued messages are read
    owes: set = field(default_factory=set)   # (step, shard) of TASKs sent, not answered, not reported idle
    unread: deque = field(default_factory=deque)  # send times (clock s) of TASKs it has not said it read
    tasks_read: int = 0           # TASKs it said (HEARTBEAT.tasks) it has read
    resent: int = 0               # TASKs sent again for a (step, shard) it still owed (a step timeout)

    def busy(self) -> bool:
        """It is computing (or has queued) a TASK: it reads nothing else meanwhile."""
        return bool(self.owes)

    def heard(self, tasks_read: int, busy: bool) -> float | None:
        """A HEARTBEAT said it has read `tasks_read` TASKs and is (not) busy. Returns the send time of
        its oldest unread TASK if it says it is idle, else None. An idle worker that has read every
        TASK owes nothing any more (a GRAD it sent may have been lost)."""
        while self.tasks_read < tasks_read and self.unread:
            self.unread.popleft()
            self.tasks_read += 1
        if busy:
            return None
        if not self.unread:
            self.owes.clear()
            return None
        return self.unread[0]

    def stuck_before(self, step: int) -> bool:
        """It still computes a TASK of an earlier step: a new shard would wait behind it."""
        return any(s < step for s, _ in self.owes)


class Membership:
    """The member table. `clock()` gives seconds (time.monotonic by default; tests pass a fake one).

    `n_shards` bounds the table: at most n_shards + PENDING_SLACK pending members and
    2 n_shards + PENDING_SLACK members in all. `generation` counts joins and removals of workers.
    """

    def __init__(self, n_shards: int, dead_after_s: float, register_timeout_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.n_shards, self.dead_after_s, self.register_timeout_s = n_shards, dead_after_s, register_timeout_s
        self.clock = clock
        self.members: dict[int, Member] = {}
        self.by_identity: dict[bytes, int] = {}
        self.generation = 0
        self.strikes: OrderedDict[bytes, int] = OrderedDict()
        self.quarantined: OrderedDict[bytes, None] = OrderedDict()

    # -- lookups ---------------------------------------------------------------------------------
    def live(self) -> list[Member]:
        """Workers that sent READY and can still be sent to, in registration order."""
        return [m for m in self.members.values() if m.ready and not m.gone]

    def pending(self) -> list[Member]:
        return [m for m in self.members.values() if not m.ready]

    def get(self, session: int) -> Member | None:
        return self.members.get(session)

    def of_identity(self, identity: bytes) -> Member | None:
        session = self.by_identity.get(identity)
        return None if session is None else self.members[session]

    def fenced(self, identity: bytes, session: int, any_identity: bool = False) -> Member | None:
        """The member a message with this session belongs to, or None if the session is stale.

        The message must come from the member's routing identity, unless `any_identity` (a worker's
        heartbeats come from a socket of their own). A match counts as a sign of life.
        """
        member = self.members.get(session)
        if member is None or (not any_identity and member.identity != identity):
            return None
        member.last_seen = self.clock()
        return member

    # -- changes ---------------------------------------------------------------------------------
    def room_for(self) -> tuple[list[Member], bool]:
        """Before admitting a newcomer: (pending members to evict, oldest first; whether there is room).

        A HELLO flood cannot grow the table: the oldest pending member makes room for a new one.
        """
        pending = self.pending()
        evict = [min(pending, key=lambda m: m.welcomed)] if len(pending) >= self.n_shards + PENDING_SLACK else []
        return evict, len(self.members) - len(evict) < 2 * self.n_shards + PENDING_SLACK

    def admit(self, identity: bytes, session: int, host: str, pid: int, name: str = "") -> Member:
        """A new pending member; call `room_for` first. A worker named `wN` (what `parsgd launch`
        calls its worker N) gets rank N if it is free, so a user meets one number per worker in the
        console, the events and the --faults schedule; any other gets the lowest free rank."""
        used = {m.rank for m in self.members.values()}
        wanted = int(name[1:]) if re.fullmatch(r"w\d{1,6}", name) else -1
        rank = wanted if 0 <= wanted < self.n_shards and wanted not in used else (
            next(r for r in range(len(used) + 1) if r not in used))
        now = self.clock()
        member = Member(identity, session, rank, host, pid, welcomed=now, last_seen=now)
        self.members[session] = member
        self.by_identity[identity] = session
        return member

    def mark_ready(self, member: Member) -> None:
        member.ready = True
        self.generation += 1

    def remove(self, member: Member) -> bool:
        """Forget a member; True if it was a live worker (the generation then changes)."""
        if self.members.pop(member.session, None) is None:
            return False
        if self.by_identity.get(member.identity) == member.session:
            del self.by_identity[member.identity]
        if member.ready:
            self.generation += 1
        return member.ready

    def overdue(self) -> list[tuple[Member, str]]:
        """Members to remove now, with the reason: silent past dead_after_s, or no READY in time."""
        now, out = self.clock(), []
        for m in list(self.members.values()):
            silent = now - m.last_seen
            if silent > self.dead_after_s:
                out.append((m, f"silent for {silent:.1f} s" + ("" if m.ready else " before READY")))
            elif not m.ready and now - m.welcomed > self.register_timeout_s:
                out.append((m, f"no READY within {self.register_timeout_s:g} s"))
        return out

    def sent_task(self, member: Member, step: int, shard: int) -> None:
        if (step, shard) in member.owes:
            member.resent += 1
        member.owes.add((step, shard))
        member.unread.append(self.clock())

    def not_reading(self, member: Member, tasks_read: int, busy: bool) -> str | None:
        """Why an idle member that leaves a TASK unread for more than dead_after_s must be dropped
        (it heartbeats but does not read its socket), or None."""
        since = member.heard(tasks_read, busy)
        if since is None or self.clock() - since <= self.dead_after_s:
            return None
        return f"not reading its socket: a TASK unread for {self.clock() - since:.1f} s while it says it is idle"

    # -- misbehaving peers -------------------------------------------------------------------------
    def is_quarantined(self, identity: bytes) -> bool:
        return identity in self.quarantined

    def strike(self, identity: bytes, severe: bool = False) -> bool:
        """Count a bad message from a non-member; True when it puts the peer in quarantine.

        QUARANTINE_AFTER strikes (or one severe one) quarantine it; both tables keep the
        MAX_TRACKED_PEERS most recent peers, so a flood of identities cannot grow them.
        """
        n = self.strikes.pop(identity, 0) + (QUARANTINE_AFTER if severe else 1)
        if n < QUARANTINE_AFTER:
            self.strikes[identity] = n
            while len(self.strikes) > MAX_TRACKED_PEERS:
                self.strikes.popitem(last=False)
            return False
        self.quarantined[identity] = None
        while len(self.quarantined) > MAX_TRACKED_PEERS:
            self.quarantined.popitem(last=False)
        return True
