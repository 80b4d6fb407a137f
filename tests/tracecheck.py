"""Checks that a Chrome trace and a comm.jsonl draw every slice: on each track the slices nest or are
disjoint (a viewer drops or misdraws one that overlaps another partially), with integer times.

    from tracecheck import trace_overlaps, comm_overlaps   # [] when every track is well formed
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

TICKS_PER_S = 10 ** 7  # comm.jsonl times are multiples of 0.1 us


def _overlaps(slices) -> list[tuple]:
    """slices: (track, start, end, what) in the order a viewer reads them; the (open slice, slice)
    pairs where the second starts inside the first and ends after it."""
    stacks, bad = defaultdict(list), []
    for track, start, end, what in slices:
        stack = stacks[track]
        while stack and stack[-1][0] <= start:
            stack.pop()
        if stack and end > stack[-1][0]:
            bad.append((stack[-1][1], what))
        stack.append((end, what))
    return bad


def trace_overlaps(path) -> list[tuple]:
    """The partially overlapping slice pairs of a trace JSON, read as a viewer does: X events sorted
    by ts (stable: the file's order for equal ts). Asserts every ts and dur is an int, dur >= 0."""
    xs = [e for e in json.loads(Path(path).read_text())["traceEvents"] if e["ph"] == "X"]
    for e in xs:
        assert type(e["ts"]) is int and type(e["dur"]) is int and e["dur"] >= 0, e
    xs.sort(key=lambda e: e["ts"])
    return _overlaps(((e["pid"], e["tid"]), e["ts"], e["ts"] + e["dur"], e) for e in xs)


def comm_spans(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def comm_overlaps(path) -> list[tuple]:
    """The partially overlapping span pairs of a comm.jsonl, exactly, in ticks (no rounding allowed)."""
    rows = []
    for r in comm_spans(path):
        start = round(r["t"] * TICKS_PER_S)
        rows.append(((r["role"], r["rank"]), start, start + round(r["dur"] * TICKS_PER_S), r))
    rows.sort(key=lambda x: (x[0], x[1], -x[2]))
    return _overlaps(rows)
