"""The span timer: the only place that measures communication.

Each span is (span, step, t, dur, bytes, server) with t in seconds since the run start on the server's
clock. Start and end are kept on a grid of ticks (0.1 us), so a span that starts where another
ended has exactly that one's end as its start in comm.jsonl, whatever clock shifts came between.
Workers ship theirs to the server in LOGS chunks every second and at STOP; `CommStream` appends
them, and the server's own spans every COMM_FLUSH_S, to comm.jsonl as they come, so an
interrupted run keeps its timeline (a SIGKILL loses at most the last second of spans).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from parsgd.files import AppendFile, json_text, write_file
from parsgd.ps.protocol import SPAN_COLUMNS, SPANS

SPAN_CODE = {name: i for i, name in enumerate(SPANS)}
COMM_SPANS = ("serialize", "send", "recv", "deserialize", "wait")  # time spent moving parameters
COMM_FLUSH_S = 1.0            # the server appends its spans to comm.jsonl at least this often
TICKS_PER_S = 10 ** 7         # comm.jsonl times are whole ticks of 1e-7 s (0.1 us)


def tick(x: float) -> float:
    """Seconds x on the tick grid: the float nearest a whole number of ticks (NaN and inf as they
    are). A sum or difference of such values is within a few ulp of a tick count, so rounding it
    again gives that count whatever the order of the arithmetic. ~0.1 us a call, half of round(x, 7)."""
    return round(x * TICKS_PER_S) / TICKS_PER_S if math.isfinite(x) else x


class CommLog:
    """Collects spans of one process; `offset` maps this process's clock onto the server's."""

    def __init__(self, t0: float | None = None):
        self.t0 = time.perf_counter() if t0 is None else t0
        self.offset = 0.0
        self.rows: list[tuple[int, int, float, float, int, int]] = []

    def now(self) -> float:
        return time.perf_counter() - self.t0 + self.offset

    def add(self, span: str, step: int, start: float, nbytes: int = 0, end: float | None = None,
            server: int = -1) -> float:
        """Record a span that began at `start` (a `now()` value) and ends now or at `end` (`server`: the
        parameter server a send / recv talked to, -1 for none); returns its end, on the tick grid (a span
        that starts there abuts this one exactly)."""
        start, end = tick(start), tick(self.now() if end is None else end)
        self.rows.append((SPAN_CODE[span], step, start, end - start, nbytes, server))
        return end

    def shift(self, since: int, delta: float) -> None:
        """Move rows[since:] and every later span by delta seconds (rounded to a tick): a better clock
        estimate came."""
        delta = tick(delta)  # grid + grid stays on the grid
        self.rows[since:] = [(c, s, t + delta, d, b, v) for c, s, t, d, b, v in self.rows[since:]]
        self.offset += delta

    def totals(self, since: int = 0) -> dict[str, float]:
        """Seconds per span name over rows[since:]."""
        out = dict.fromkeys(SPANS, 0.0)
        for code, _, _, dur, *_ in self.rows[since:]:
            out[SPANS[code]] += dur
        return out

    def bytes_since(self, since: int, span: str) -> int:
        code = SPAN_CODE[span]
        return int(sum(r[4] for r in self.rows[since:] if r[0] == code))

    def as_array(self) -> np.ndarray:
        """(k, SPAN_COLUMNS) float64 [span_code, step, t, dur, bytes, server]: the LOGS payload."""
        if not self.rows:
            return np.zeros((0, SPAN_COLUMNS), np.float64)
        return np.asarray(self.rows, dtype=np.float64).reshape(-1, SPAN_COLUMNS)


class WorkerSpans(CommLog):
    """A worker's span log: its clock aligned to the server's, shipped in chunks as it grows.

    At registration the offset is a midpoint estimate; it is then refined by the TASKs (none can
    arrive before the server stamped it): the registration midpoint is off by half the server's
    WELCOME processing (~1 ms measured), the earliest-looking TASK bounds it to within the fastest
    delivery (~0.05 ms). `unshipped` hands out the spans not sent yet, in chunks. Once some of a
    session's spans are shipped, a correction only moves the clock forward (a TASK that seems to
    arrive before it was sent): moving it back would start the next spans before the end of those
    already in comm.jsonl (measured: a 1-s window's fastest delivery varies by +-30 us under load).
    """

    def __init__(self, ship_every_s: float):
        super().__init__()
        self.ship_every_s = ship_every_s
        self.mark, self.fix = 0, -math.inf      # first row of this session; best offset correction so far
        self.shipped, self.next_ship = 0, time.monotonic() + ship_every_s
        self.track = None  # (server incarnation, rank) of this session

    def registered(self, t_sent: float, t_recv: float, t_server: float, track=None) -> None:
        """WELCOME came: the offset from the round-trip midpoint (all on this log's clock, s). `track`:
        (server incarnation, rank) of the new session. When it is not the last session's, that
        session's spans not shipped yet are dropped: they are on a server's clock this one does not
        share (a restarted server: up to 56 spans of steps it redid, measured), or would land on
        another rank's track, where they overlap its spans."""
        if track != self.track:
            del self.rows[self.shipped:]
        self.track = track
        self.offset += t_server - (t_sent + t_recv) / 2
        self.mark, self.fix = len(self.rows), -math.inf

    def task_stamp(self, t_send: float, received: float) -> None:
        """A TASK stamped t_send (server clock) was received at `received`: bound the offset by it."""
        self.fix = max(self.fix, t_send - received)

    def settle(self) -> None:
        """Shift this session's spans by the correction found so far (forward only once some are shipped)."""
        if math.isfinite(self.fix) and (self.fix > 0 or self.shipped <= self.mark):
            self.shift(self.mark, self.fix)
        self.fix = -math.inf

    def due(self) -> bool:
        return time.monotonic() >= self.next_ship

    def unshipped(self, rows_per_chunk: int) -> list[np.ndarray]:
        """The spans not shipped yet as (k, SPAN_COLUMNS) chunks; call `shipped_one` after each one leaves."""
        self.settle()
        self.next_ship = time.monotonic() + self.ship_every_s
        spans = self.as_array()[self.shipped:]
        return [np.ascontiguousarray(spans[lo:lo + rows_per_chunk]) for lo in range(0, len(spans), rows_per_chunk)]

    def shipped_one(self, chunk: np.ndarray) -> None:
        self.shipped += len(chunk)


_LINE = '{"role": "%s", "rank": %d, "step": %d, "span": "%s", "t": %r, "dur": %r, "bytes": %d, "server": %s}\n'


def _lines(role: str, rank: int, rows) -> bytes:
    """comm.jsonl lines, as json.dumps would write them; ~2.5x faster than it (the server writes
    ~10^4 a second at batch 256), so a flush delays a step less. A non-finite number (only a broken
    worker's LOGS can hold one) takes json_text's strict path: null, never a NaN token.

    Start and end are rounded to the tick and `dur` is their difference, so t + dur is the rounded
    end: a span starting where this one ends has exactly that t (rounding t and dur apart made 7%
    of a run's spans overlap the one before by a tick)."""
    out = []
    for code, step, t, dur, nbytes, server in (rows.tolist() if isinstance(rows, np.ndarray) else rows):
        t, dur = float(t), float(dur)  # a NumPy scalar's repr is not JSON
        # which parameter server the span belongs to: a server's own rank; for a worker the server it
        # talked to (a send / recv with --servers S), else none (null)
        server = rank if role == "server" else (int(server) if math.isfinite(server) and server >= 0 else None)
        t, end = tick(t), tick(t + dur)
        dur = tick(end - t) if math.isfinite(end) else tick(dur)
        if math.isfinite(t) and math.isfinite(dur) and math.isfinite(step) and math.isfinite(nbytes):
            out.append(_LINE % (role, rank, int(step), SPANS[int(code)], t, dur, int(nbytes),
                                "null" if server is None else server))
        else:
            out.append(json_text({"role": role, "rank": rank, "step": _int(step), "span": SPANS[int(code)],
                                  "t": t, "dur": dur, "bytes": _int(nbytes), "server": server}) + "\n")
    return "".join(out).encode()


def _int(x: float):
    return int(x) if math.isfinite(x) else None


class CommStream:
    """comm.jsonl, written as spans arrive: one strict-JSON object per span, whole lines only.

    The file is started afresh (a resumed run's comm.jsonl covers the part after the restart);
    lines are in arrival order, not sorted by `t`. Raises WriteError when the file cannot be written.
    """

    def __init__(self, path: Path):
        write_file(path, b"")
        self.f = AppendFile(path)
        self.mark = 0           # server rows already written
        self.count = 0          # spans written so far

    def server(self, log: CommLog) -> None:
        """Append the server's spans recorded since the last call."""
        rows = log.rows[self.mark:]
        if rows:
            self.f.write(_lines("server", 0, rows))
            self.mark += len(rows)
            self.count += len(rows)

    def worker(self, rank: int, spans: np.ndarray, role: str = "worker") -> None:
        """Append one LOGS chunk of worker `rank` (or of range server `rank`, role "server"): spans (k, 5)
        [code, step, t, dur, bytes]."""
        if len(spans):
            self.f.write(_lines(role, rank, spans))
            self.count += len(spans)

    def range_server(self, rank: int, spans: np.ndarray) -> None:
        """Append one LOGS chunk of range server `rank` (role server, rank s >= 1)."""
        self.worker(rank, spans, role="server")

    def close(self) -> None:
        self.f.close()


def summarize(server: CommLog, workers: dict[int, np.ndarray]) -> dict[str, dict[str, float]]:
    """Seconds per span per role, for summary.json and the console summary."""
    worker_totals = dict.fromkeys(SPANS, 0.0)
    for arr in workers.values():
        for code, _, _, dur, *_ in arr:
            worker_totals[SPANS[int(code)]] += float(dur)
    return {"server": server.totals(), "worker": worker_totals}


def format_summary(breakdown: dict[str, dict[str, float]], n_workers: int) -> str:
    """A few console lines: where time went, per role."""
    lines = ["where time went (seconds; worker figures summed over workers):"]
    for role, totals in breakdown.items():
        busy = {k: v for k, v in totals.items() if v > 0}
        total = sum(busy.values()) or 1.0
        parts = "  ".join(f"{k} {v:.3f} ({v / total:.0%})" for k, v in busy.items())
        label = role if role == "server" else f"{role}s ({n_workers})"
        lines.append(f"  {label:<12} {parts}")
    return "\n".join(lines)
