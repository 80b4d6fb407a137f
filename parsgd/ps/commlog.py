"""The span timer: the only place that measures communication.

Each span is (span, step, t, dur, bytes) with t in seconds since the run start on the server's
clock. Workers keep theirs in memory (a few hundred KB per epoch) and ship them to the server
in LOGS at the end; the server writes comm.jsonl.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from parsgd.files import json_text, write_file
from parsgd.ps.protocol import SPANS

SPAN_CODE = {name: i for i, name in enumerate(SPANS)}
COMM_SPANS = ("serialize", "send", "recv", "deserialize", "wait")  # time spent moving parameters


class CommLog:
    """Collects spans of one process; `offset` maps this process's clock onto the server's."""

    def __init__(self, t0: float | None = None):
        self.t0 = time.perf_counter() if t0 is None else t0
        self.offset = 0.0
        self.rows: list[tuple[int, int, float, float, int]] = []

    def now(self) -> float:
        return time.perf_counter() - self.t0 + self.offset

    def add(self, span: str, step: int, start: float, nbytes: int = 0, end: float | None = None) -> float:
        """Record a span that began at `start` (a `now()` value) and ends now or at `end`; returns its end."""
        end = self.now() if end is None else end
        self.rows.append((SPAN_CODE[span], step, start, end - start, nbytes))
        return end

    def shift(self, since: int, delta: float) -> None:
        """Move rows[since:] and every later span by delta seconds: a better clock estimate came."""
        self.rows[since:] = [(c, s, t + delta, d, b) for c, s, t, d, b in self.rows[since:]]
        self.offset += delta

    def totals(self, since: int = 0) -> dict[str, float]:
        """Seconds per span name over rows[since:]."""
        out = dict.fromkeys(SPANS, 0.0)
        for code, _, _, dur, _ in self.rows[since:]:
            out[SPANS[code]] += dur
        return out

    def bytes_since(self, since: int, span: str) -> int:
        code = SPAN_CODE[span]
        return int(sum(r[4] for r in self.rows[since:] if r[0] == code))

    def as_array(self) -> np.ndarray:
        """(k, 5) float64 [span_code, step, t, dur, bytes]: the LOGS payload."""
        if not self.rows:
            return np.zeros((0, 5), np.float64)
        return np.asarray(self.rows, dtype=np.float64).reshape(-1, 5)


def write_comm_jsonl(path: Path, server: CommLog, workers: dict[int, np.ndarray]) -> int:
    """comm.jsonl: the server's spans, then each worker's (by rank), sorted by start time; returns how many.

    Written atomically as strict JSON lines (a NaN time is written as null); raises WriteError.
    """
    rows = [("server", 0, *r) for r in server.rows]
    for rank, arr in sorted(workers.items()):
        rows += [("worker", rank, int(c), int(s), float(t), float(d), int(b)) for c, s, t, d, b in arr]
    rows.sort(key=lambda r: r[4])
    lines = [json_text({"role": role, "rank": rank, "step": step, "span": SPANS[code],
                        "t": round(t, 7), "dur": round(dur, 7), "bytes": nbytes}) + "\n"
             for role, rank, code, step, t, dur, nbytes in rows]
    write_file(path, "".join(lines).encode())
    return len(rows)


def summarize(server: CommLog, workers: dict[int, np.ndarray]) -> dict[str, dict[str, float]]:
    """Seconds per span per role, for summary.json and the console summary."""
    worker_totals = dict.fromkeys(SPANS, 0.0)
    for arr in workers.values():
        for code, _, _, dur, _ in arr:
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
