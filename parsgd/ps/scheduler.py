"""BSP shard scheduling, without sockets: what each step owes, who owns it, what is accepted.

    python -m pytest tests/test_scheduler.py -q      # the rules, on a fake clock, in milliseconds

Every batch `order[lo:hi]` is cut into `n_shards` contiguous shards, however many workers are
alive. A shard is owned by one live session at a time; a gradient is accepted only from its owner,
for the current step and the same rows, once. When every shard is in, `reduce` adds the shard
gradients in shard order (never arrival order), so the model does not depend on who computed what
or when it arrived: the bulk synchronous parallel (BSP) scheme of Valiant (1990), with shards
reassigned on failure as in ps-lite (Li et al., OSDI 2014).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from parsgd.errors import UserError
from parsgd.model.optim import all_finite
from parsgd.training.loop import shard_bounds


NOT_OWED = "not a shard it was given"


class ServerExit(UserError):
    """Training cannot go on; the message says why and what to do. Exit 1 after a checkpoint."""


class NonFiniteGradient(ServerExit):
    """A shard stayed non-finite on a second worker, or the sum overflowed (exit 1 after a checkpoint)."""


class Worker(Protocol):
    """What scheduling needs of a live worker (membership.Member has it)."""
    session: int
    rank: int


@dataclass
class Step:
    """One BSP step: shard s covers epoch-order positions shards[s] of a `batch`-row batch."""
    step: int
    epoch: int
    batch: int
    shards: list[tuple[int, int]]
    owner: list[int | None] = field(init=False)        # session that holds shard s, or None
    done: list[bool] = field(init=False)
    sent_at: list[float] = field(init=False)            # clock time of the last assignment (s)
    src: list[np.ndarray | None] = field(init=False)    # shard s's gradient, shape (n_params,)
    loss: list[float] = field(init=False)               # sum of its rows' losses
    correct: list[int] = field(init=False)
    compute_s: list[float] = field(init=False)
    bad: list[int] = field(init=False)                  # non-finite results seen for shard s
    flagged: list[bool] = field(init=False)             # a range server found shard s's part non-finite
    ever: list[set] = field(init=False)                 # sessions shard s was ever given this step

    def __post_init__(self):
        k = len(self.shards)
        self.owner, self.done, self.sent_at = [None] * k, [False] * k, [0.0] * k
        self.src, self.loss, self.correct = [None] * k, [0.0] * k, [0] * k
        self.compute_s, self.bad, self.flagged = [0.0] * k, [0] * k, [False] * k
        self.ever = [set() for _ in range(k)]


class OwnedWork:
    """What both schedulers share: the current piece of work `cur` (a BSP step's shards, an SSP/ASP
    epoch's batches) has lists `owner` (session or None), `done` and `sent_at` (clock s) per piece."""

    cur = None
    clock: Callable[[], float]

    def end(self) -> None:
        self.cur = None

    def finished(self) -> bool:
        return self.cur is not None and all(self.cur.done)

    def unowned(self) -> list[int]:
        """Unfinished pieces nobody holds (every worker was gone when they were due), in order."""
        st = self.cur
        return [] if st is None else [s for s, o in enumerate(st.owner) if o is None and not st.done[s]]

    def release(self, session: int) -> list[int]:
        """A session is gone: its unfinished pieces become unowned; returns them (finished ones stay)."""
        st = self.cur
        if st is None:
            return []
        lost = [s for s, o in enumerate(st.owner) if o == session and not st.done[s]]
        for s in lost:
            st.owner[s] = None
        return lost

    def overdue(self, timeout_s: float) -> list[tuple[int, int]]:
        """(piece, owner session) of unfinished pieces assigned more than timeout_s ago."""
        st, now = self.cur, self.clock()
        if st is None:
            return []
        return [(s, o) for s, o in enumerate(st.owner)
                if o is not None and not st.done[s] and now - st.sent_at[s] > timeout_s]


class Scheduler(OwnedWork):
    """The current step's shards: assignment, acceptance, reassignment and the ordered reduction.

    `clock()` gives seconds (time.monotonic by default; tests pass a fake one).
    """

    def __init__(self, n_shards: int, clock: Callable[[], float] = time.monotonic):
        assert n_shards >= 1
        self.n_shards, self.clock = n_shards, clock
        self.cur: Step | None = None

    def begin(self, step: int, epoch: int, lo: int, hi: int) -> Step:
        """Start step `step` on batch rows [lo, hi) of the epoch order; no shard is owned yet."""
        st = self.cur = Step(step, epoch, hi - lo, shard_bounds(lo, hi, self.n_shards))
        for s, (a, b) in enumerate(st.shards):
            st.done[s] = a == b  # a batch with fewer rows than shards: an empty shard is owed nothing
        return st

    def todo(self) -> list[int]:
        """Shards of the current step still owed (all but the empty ones, right after `begin`)."""
        return [s for s, done in enumerate(self.cur.done) if not done]


    def assign(self, s: int, live: list[Worker], avoid: int | None = None) -> Worker | None:
        """Give shard s to the live worker with the fewest unfinished shards, not `avoid` if another exists.

        Ties rotate with the step, so every live worker gets shards and a newcomer takes its first
        shard within one rotation. Returns the new owner, or None (shard left unowned) if none is live.
        """
        st = self.cur
        if avoid is not None and len(live) > 1:
            live = [w for w in live if w.session != avoid]
        if not live:
            st.owner[s] = None
            return None
        load = {w.session: 0 for w in live}
        for i, o in enumerate(st.owner):
            if o in load and not st.done[i]:
                load[o] += 1
        turn = 1 + max(w.rank for w in live)
        chosen = min(live, key=lambda w: (load[w.session], (w.rank - st.step) % turn))
        st.owner[s], st.sent_at[s] = chosen.session, self.clock()
        st.ever[s].add(chosen.session)
        return chosen

    def check(self, session: int, step: int, shard: int, lo: int, hi: int) -> str | None:
        """None if a GRAD with these fields is the one owed, else why it is refused.

        Accepted only from the session that owns the shard now, for the current step, with the same
        rows, and only once. Late, duplicate and reassigned gradients are "late or duplicate" (an
        honest worker sends them after a timeout or a fault); a current-step shard or rows the session
        was never given are NOT_OWED (only a broken worker sends that; the server answers BAD_MESSAGE).
        """
        st = self.cur
        if st is None or step < st.step:
            return "late or duplicate"
        if step > st.step:
            return "unknown step"
        if shard >= len(st.shards) or session not in st.ever[shard] or (lo, hi) != st.shards[shard]:
            return NOT_OWED  # a shard or rows it was never given in this step: a broken worker
        if st.owner[shard] != session or st.done[shard]:
            return "late or duplicate"
        return None

    def key(self, step: int, shard: int) -> int:
        """Which of this step's slots an accepted GRAD fills: its shard."""
        return shard

    def complete(self, s: int, src: np.ndarray, loss_sum: float, correct: int, compute_s: float,
                 finite: bool = True) -> None:
        """Record shard s's accepted result; `src` must stay valid until `reduce`. `finite` False: a range
        server found its part non-finite (GRAD.finite), so the shard is non-finite whatever `src` holds."""
        st = self.cur
        st.src[s], st.loss[s], st.correct[s], st.compute_s[s] = src, loss_sum, correct, compute_s
        st.flagged[s] = not finite
        st.done[s] = True

    def reduce(self, out: np.ndarray) -> np.ndarray | None:
        """The sum of the shard gradients in shard order, or None if it is not finite.

        Returns `out` (n_params,) holding the sum, or, when one shard has rows (P=1), that shard's
        own gradient, uncopied: valid until the next step. The first two shards are added in one
        pass (np.add(a, b, out)), then the rest one by one: the same roundings as copying the first
        and adding the others, never arrival order.
        """
        st = self.cur
        assert all(st.done)
        sources = [src for src in st.src if src is not None]  # empty shards add nothing
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported, not warned about
            if len(sources) == 1:
                out = sources[0]
            else:
                np.add(sources[0], sources[1], out=out)
                for src in sources[2:]:
                    out += src
        return out if all_finite(out) and math.isfinite(sum(st.loss)) and not any(st.flagged) else None

    def reject_non_finite(self, seen: Callable[[int, int | None], None]) -> list[tuple[int, int | None]]:
        """After a non-finite `reduce`: reopen each non-finite shard; returns [(shard, its last owner)].

        `seen(shard, owner)` is called for every non-finite shard first (the server logs it). A shard
        is recomputed once, elsewhere if possible. Raises NonFiniteGradient when a shard is non-finite
        a second time, or when every shard is finite and only their sum overflowed.
        """
        st, redo = self.cur, []
        for s, src in enumerate(st.src):
            if (src is not None and not np.isfinite(src).all()) or not math.isfinite(st.loss[s]) or st.flagged[s]:
                st.bad[s] += 1
                seen(s, st.owner[s])
                if st.bad[s] > 1:
                    raise NonFiniteGradient(
                        f"shard {s} of step {st.step} gave a non-finite gradient (NaN or Inf) twice: "
                        "the model diverged or a worker is broken; try a lower --lr")
                st.done[s] = False
                redo.append((s, st.owner[s]))
        if not redo:
            raise NonFiniteGradient(f"the gradient of step {st.step} overflowed: try a lower --lr")
        return redo

    def totals(self) -> tuple[float, int, float]:
        """(loss sum, correct, slowest shard's compute s) of the finished step."""
        st = self.cur
        return float(sum(st.loss)), int(sum(st.correct)), max(st.compute_s)
