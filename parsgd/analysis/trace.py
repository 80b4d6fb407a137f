"""Chrome / Perfetto trace JSON from a parameter-server run's comm.jsonl.

    parsgd trace runs/ps-p2 -o trace.json   # then open it in https://ui.perfetto.dev or chrome://tracing

One process per role (server = pid 0, workers = pid 1), one thread per rank, one complete event
("X") per span with its bytes and step, and a global instant marker where each step starts.
Event fields follow the public "Trace Event Format" document (Google, the format chrome://tracing
and Perfetto read): "ph" X = complete event, i = instant (scope "s": "g" = global), M = metadata
(process_name, thread_name, *_sort_index); "ts" and "dur" are in microseconds.

Every "ts" and "dur" is an integer: comm.jsonl's times are ticks of 0.1 us (commlog.TICKS_PER_S);
a slice's start and end are floored to the microsecond and dur is end - start, so two slices of a
track that nest or are disjoint in ticks still do in microseconds (viewers drop or misdraw a slice
that overlaps another one partially, and Perfetto turns fractional microseconds into nanoseconds
with rounding errors of its own). Slices are written in their order in ticks (start, then the
longer first), which keeps slices that end and start in the same microsecond in their true order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from parsgd.analysis.rundirs import CommSpans, load_comm
from parsgd.files import ensure_dir, json_text, write_file
from parsgd.ps.commlog import TICKS_PER_S

PIDS = {"server": 0, "worker": 1}
TICKS_PER_US = TICKS_PER_S // 10 ** 6  # the format's "ts" and "dur" are microseconds


def _metadata(tracks: list[tuple[str, int]]) -> list[dict]:
    servers = sum(role == "server" for role, _ in tracks)
    events = []
    for role, pid in PIDS.items():
        if any(r == role for r, _ in tracks):
            name = ("server" if servers == 1 else "servers") if role == "server" else "workers"
            events += [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}},
                       {"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
                        "args": {"sort_index": pid}}]
    for role, rank in tracks:
        name = "server" if role == "server" and servers == 1 else f"{role} {rank}"
        events += [{"name": "thread_name", "ph": "M", "pid": PIDS[role], "tid": rank, "args": {"name": name}},
                   {"name": "thread_sort_index", "ph": "M", "pid": PIDS[role], "tid": rank,
                    "args": {"sort_index": rank}}]
    return events


def _ticks(comm: CommSpans) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, finite) per span: int64 ticks and where both times are numbers (a null time is
    no slice). A negative dur is taken as 0."""
    finite = np.isfinite(comm.t_s) & np.isfinite(comm.dur_s)
    start = np.rint(np.where(finite, comm.t_s, 0.0) * TICKS_PER_S).astype(np.int64)
    dur = np.rint(np.where(finite, comm.dur_s, 0.0) * TICKS_PER_S).astype(np.int64)
    return start, start + np.maximum(dur, 0), finite


def _abut_rounded(start: np.ndarray, end: np.ndarray, track: np.ndarray) -> None:
    """In place: a slice that starts at most one tick before the end of the slice open on its track,
    and ends after it, starts at that end. comm.jsonl files written before t and dur were made
    consistent (commlog._lines) rounded them apart, so the end of one span could pass the start of
    the next by that tick; a longer overlap is left as it is (it is no rounding)."""
    stack: list[int] = []  # ends of the slices open on the current track, innermost last
    current = None
    for i in np.lexsort((-end, start, track)).tolist():
        if track[i] != current:
            current, stack = track[i], []
        s, e = int(start[i]), int(end[i])
        while stack and (stack[-1] <= s or (e > stack[-1] and stack[-1] - s <= 1)):
            s = max(s, stack.pop())
        start[i] = s
        stack.append(e)


def trace_events(run_dir) -> tuple[list[dict], int]:
    """The trace events of a run and how many of them are spans.

    `run_dir`: a run directory or its comm.jsonl (str or Path). Returns (events, n_spans):
    metadata events first, then span ("X") and step-start ("i") events in time order. "ts" and
    "dur" are integer microseconds since the run start (null for a span whose time is null);
    on every track (pid, tid) the slices nest or are disjoint when they do in comm.jsonl.
    Raises RunDirError as load_comm does.
    """
    comm = load_comm(run_dir)
    start, end, finite = _ticks(comm)
    pids = np.array([PIDS[r] for r in comm.role.tolist()], dtype=np.int64)
    _abut_rounded(start, end, pids * (1 + int(comm.rank.max(initial=0))) + comm.rank)
    ts_us, end_us = start // TICKS_PER_US, end // TICKS_PER_US
    timed = []  # (sort key, event): by start in ticks, a step's marker then the longer first, null times last
    for i, (span, role, rank, nbytes, step) in enumerate(zip(
            comm.span.tolist(), comm.role.tolist(), comm.rank.tolist(), comm.bytes.tolist(), comm.step.tolist())):
        ok = bool(finite[i])
        ts, dur = (int(ts_us[i]), int(end_us[i] - ts_us[i])) if ok else (None, None)
        timed.append(((0, int(start[i]), -int(end[i])) if ok else (1, 0, 0),
                      {"name": span, "cat": role, "ph": "X", "ts": ts, "dur": dur, "pid": int(pids[i]),
                       "tid": rank, "args": {"bytes": nbytes, "step": step}}))
    n_spans = len(timed)
    in_step = (comm.step >= 0) & finite
    if in_step.any():
        order = np.argsort(comm.step[in_step], kind="stable")
        step, first = comm.step[in_step][order], start[in_step][order]
        steps, bounds = np.unique(step, return_index=True)
        starts = np.minimum.reduceat(first, bounds)  # a step starts with its earliest span
        timed += [((0, int(t), -1 << 62), {"name": f"step {s}", "cat": "step", "ph": "i", "s": "g",
                                    "ts": int(t // TICKS_PER_US), "pid": 0, "tid": 0, "args": {"step": s}})
                  for s, t in zip(steps.tolist(), starts.tolist())]
    timed.sort(key=lambda pair: pair[0])
    return _metadata(comm.tracks()) + [event for _, event in timed], n_spans


def _run_info(run_dir) -> dict:
    """The run's label (with what shaped it: faults, servers, ...), its setup and config, for the trace's
    otherData (a viewer's metadata panel); {} when the folder is not a whole run directory."""
    from parsgd.analysis.rundirs import RunDirError, load_run

    try:
        run = load_run(run_dir)
    except RunDirError:
        return {}
    return {"run": run.label, "setup": run.setup, "config": run.config}


def write_trace(run_dir, out_path) -> int:
    """`parsgd trace RUN_DIR -o OUT`: write the trace JSON of `run_dir` to `out_path` (str or Path).

    Creates the parent folders of out_path; returns the number of span events written.
    Raises RunDirError when run_dir is not a run directory or has no comm.jsonl (only
    parameter-server runs write one), before anything is written; WriteError (`cannot write PATH:
    REASON; FIX`) if out_path cannot be written. The JSON is strict: a null (NaN) time is written as null.
    """
    events, n_spans = trace_events(run_dir)
    out_path = Path(out_path)
    ensure_dir(out_path.parent)
    doc = {"traceEvents": events, "displayTimeUnit": "ms",
           "otherData": {"run_dir": str(run_dir), "source": "comm.jsonl", **_run_info(run_dir)}}
    # dumps, not dump: json.dump streams through the pure-Python encoder, dumps uses the C one
    write_file(out_path, json_text(doc, separators=(",", ":")).encode())
    return n_spans
