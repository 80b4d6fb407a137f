"""events.jsonl: one JSON object per membership change, fault and refused message.

    parsgd launch --workers 2 --dataset synthetic --num-samples 4096 --epochs 1 --out runs/e
    cat runs/e/events.jsonl

Events about untrusted input go through `limited`: at most HOSTILE_EVENTS_PER_S of one kind per
second, the rest counted in a `suppressed` event, so a flood of bad messages cannot fill the disk.
"""
from __future__ import annotations

import json
import time
from typing import Callable

from parsgd.files import AppendFile, WriteError, json_text, write_file

HOSTILE_EVENTS_PER_S = 50


class EventLog:
    """Appends `{"t": clock(), "event": name, **fields}` lines to `path` and flushes each one.

    `clock()` stamps lines (seconds since the server started); `window_clock()` times the rate limit.
    Lines are strict JSON (a NaN field is written as null). Raises WriteError if `path` cannot be
    opened for appending, and from the first line that cannot be written; after that failure the log
    drops its lines, so the server can still stop its workers while that error travels up.
    """

    def __init__(self, path, clock: Callable[[], float], window_clock: Callable[[], float] = time.monotonic):
        self.f = AppendFile(path)
        self.failed = False
        self.clock, self.window_clock = clock, window_clock
        self._budget: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}
        self._window = -float("inf")

    def __call__(self, event: str, **fields) -> None:
        if self.failed:
            return
        try:
            self.f.write((json_text({"t": round(self.clock(), 6), "event": event, **fields}) + "\n").encode())
        except WriteError:
            self.failed = True
            raise

    def limited(self, event: str, **fields) -> None:
        """Like calling the log, but at most HOSTILE_EVENTS_PER_S of this kind per second."""
        now = self.window_clock()
        if now - self._window >= 1.0:
            for kind, count in self._suppressed.items():
                self("suppressed", kind=kind, count=count)
            self._window, self._budget, self._suppressed = now, {}, {}
        left = self._budget.get(event, HOSTILE_EVENTS_PER_S)
        if left > 0:
            self._budget[event] = left - 1
            self(event, **fields)
        else:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1

    def close(self) -> None:
        self.f.close()


class UpdateLog:
    """updates.jsonl: one line per applied update, in the order applied (what `parsgd replay` redoes).

    `keep(n)` first cuts the file to its first n lines: a resumed run redoes the updates after its
    checkpoint, and they must not appear twice. Raises WriteError when the file cannot be written.
    """

    def __init__(self, path):
        self.path, self.f = path, None
        self.count, self.staleness_sum = 0, 0  # over the whole run's updates (the kept ones included)

    def keep(self, n: int) -> None:
        lines = self.path.read_bytes().splitlines(keepends=True)[:n] if n and self.path.exists() else []
        write_file(self.path, b"".join(lines))
        self.count = len(lines)
        self.staleness_sum = sum(int(json.loads(line).get("staleness") or 0) for line in lines)
        self.f = AppendFile(self.path)

    def write(self, record: dict) -> None:
        self.f.write((json_text(record) + "\n").encode())
        self.count += 1
        self.staleness_sum += int(record.get("staleness") or 0)

    @property
    def staleness_mean(self) -> float | None:
        """Mean staleness of the updates applied so far (None before the first)."""
        return self.staleness_sum / self.count if self.count else None

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
