"""Progress inside an epoch: a rate-limited console line with steps done, the rate and an ETA.

    parsgd launch --workers 2 --link 100mbit --dataset synthetic --num-samples 16384 --epochs 1
    # [server] progress: epoch 1/1, step 21/64 (33%), 2.1 steps/s, about 20 s left

Every trainer (sequential, Pool, the parameter servers) counts its steps through `Progress.step`;
a line is printed at most every PROGRESS_EVERY_S seconds, so a run of fast steps prints none and a
run on a slow link one line per interval instead of minutes of silence.
"""
from __future__ import annotations

import os
import time

PROGRESS_EVERY_S = 10.0   # at most one progress line this often (and none before the first interval)


def fmt(value, spec: str = ".4f") -> str:
    """A metric for the console; None (e.g. the accuracy of an empty test split) prints as n/a."""
    return "n/a" if value is None else format(value, spec)


def format_duration(s: float) -> str:
    """`< 1 s`, `42 s`, `3 min 05 s`, `2 h 07 min` for a duration of `s` seconds."""
    if s < 1:
        return "< 1 s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s // 60:.0f} min {s % 60:02.0f} s"
    return f"{s // 3600:.0f} h {s % 3600 // 60:02.0f} min"


class Progress:
    """Counts steps towards `total` and prints `progress: ...` through `echo` every `every_s` seconds.

    `enabled` False prints nothing (a terminal shows click's progress bar instead). `clock`: seconds,
    monotonic (a fake one in tests). The rate and ETA count only the steps this process ran (a resumed
    run starts its rate afresh); the ETA is training time only (evaluations at epoch ends add to it).
    """

    def __init__(self, total: int, echo, enabled: bool = True, every_s: float = PROGRESS_EVERY_S,
                 clock=time.monotonic):
        self.total, self.echo, self.enabled, self.every_s, self.clock = total, echo, enabled, every_s, clock
        self.t0 = self.next_at = None
        self.first_step = 0

    def step(self, done: int, epoch: int, epochs: int) -> None:
        """`done` steps of the run are applied (epoch `epoch` of `epochs`, from 1): print a line if due."""
        if not self.enabled:
            return
        now = self.clock()
        if self.t0 is None:
            self.t0, self.next_at, self.first_step = now, now + self.every_s, done
            return
        if now < self.next_at or done >= self.total:
            return
        self.next_at = now + self.every_s
        self.echo(self.line(done, epoch, epochs, now))

    def line(self, done: int, epoch: int, epochs: int, now: float) -> str:
        """The progress line at `done` steps, `now` on the clock."""
        rate = (done - self.first_step) / max(now - self.t0, 1e-9)
        left = (self.total - done) / rate if rate > 0 else float("inf")
        return (f"progress: epoch {epoch}/{epochs}, step {done}/{self.total} ({done / self.total:.0%}), "
                f"{rate:.3g} steps/s, about {format_duration(left)} left")


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def oversubscribed(workers: int, cores: int | None = None) -> str | None:
    """The warning for `workers` worker processes on more than the usable cores, else None."""
    cores = usable_cores() if cores is None else cores
    if workers <= cores:
        return None
    return (f"warning: {workers} worker processes on {cores} core{'s' if cores > 1 else ''}: they take turns on the "
            f"cores, so a shard's compute runs up to {workers / cores:.1f}x slower than alone and the step times "
            "measure that sharing, not parallel speed")


def warn_oversubscribed(workers: int, echo) -> None:
    """Print `oversubscribed(workers)` once through `echo` when there are more workers than cores."""
    line = oversubscribed(workers)
    if line:
        echo(line)
