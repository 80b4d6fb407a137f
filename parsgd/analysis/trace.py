"""Chrome / Perfetto trace JSON from a parameter-server run's comm.jsonl.

    parsgd trace runs/ps-p2 -o trace.json   # then open it in https://ui.perfetto.dev or chrome://tracing

One process per role (server = pid 0, workers = pid 1), one thread per rank, one complete event
("X") per span with its bytes and step, and a global instant marker where each step starts.
Event fields follow the public "Trace Event Format" document (Google, the format chrome://tracing
and Perfetto read): "ph" X = complete event, i = instant (scope "s": "g" = global), M = metadata
(process_name, thread_name, *_sort_index); "ts" and "dur" are in microseconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from parsgd.analysis.rundirs import load_comm
from parsgd.files import ensure_dir, json_text, write_file

PIDS = {"server": 0, "worker": 1}
US_PER_S = 1e6  # the format's "ts" and "dur" are microseconds


def _metadata(tracks: list[tuple[str, int]]) -> list[dict]:
    servers = sum(role == "server" for role, _ in tracks)
    events = []
    for role, pid in PIDS.items():
        if any(r == role for r, _ in tracks):
            name = "server" if role == "server" else "workers"
            events += [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}},
                       {"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
                        "args": {"sort_index": pid}}]
    for role, rank in tracks:
        name = "server" if role == "server" and servers == 1 else f"{role} {rank}"
        events += [{"name": "thread_name", "ph": "M", "pid": PIDS[role], "tid": rank, "args": {"name": name}},
                   {"name": "thread_sort_index", "ph": "M", "pid": PIDS[role], "tid": rank,
                    "args": {"sort_index": rank}}]
    return events


def trace_events(run_dir) -> tuple[list[dict], int]:
    """The trace events of a run and how many of them are spans.

    `run_dir`: a run directory or its comm.jsonl (str or Path). Returns (events, n_spans):
    metadata events first, then span ("X") and step-start ("i") events sorted by "ts"
    (microseconds since the run start, rounded to 1 ns). Raises RunDirError as load_comm does.
    """
    comm = load_comm(run_dir)
    ts_us = np.round(comm.t_s * US_PER_S, 3).tolist()
    dur_us = np.round(comm.dur_s * US_PER_S, 3).tolist()
    pids = [PIDS[r] for r in comm.role.tolist()]
    spans = [{"name": span, "cat": role, "ph": "X", "ts": t, "dur": d, "pid": pid, "tid": rank,
              "args": {"bytes": nbytes, "step": step}}
             for span, role, t, d, pid, rank, nbytes, step in zip(
                 comm.span.tolist(), comm.role.tolist(), ts_us, dur_us, pids, comm.rank.tolist(),
                 comm.bytes.tolist(), comm.step.tolist())]
    markers = []
    in_step = comm.step >= 0
    if in_step.any():
        order = np.argsort(comm.step[in_step], kind="stable")
        step, t_s = comm.step[in_step][order], comm.t_s[in_step][order]
        steps, bounds = np.unique(step, return_index=True)
        starts_s = np.minimum.reduceat(t_s, bounds)  # a step starts with its earliest span
        markers = [{"name": f"step {s}", "cat": "step", "ph": "i", "s": "g", "ts": round(t0_s * US_PER_S, 3),
                    "pid": 0, "tid": 0, "args": {"step": s}}
                   for s, t0_s in zip(steps.tolist(), starts_s.tolist())]
    timed = sorted(spans + markers, key=lambda e: e["ts"])
    return _metadata(comm.tracks()) + timed, len(spans)


def write_trace(run_dir, out_path) -> int:
    """`parsgd trace RUN_DIR -o OUT`: write the trace JSON of `run_dir` to `out_path` (str or Path).

    Creates the parent folders of out_path; returns the number of span events written.
    Raises RunDirError when run_dir is not a run directory or has no comm.jsonl (only
    parameter-server runs write one), before anything is written; WriteError (`cannot write PATH:
    REASON; FIX`) if out_path cannot be written. The JSON is strict: a NaN time is written as null.
    """
    events, n_spans = trace_events(run_dir)
    out_path = Path(out_path)
    ensure_dir(out_path.parent)
    doc = {"traceEvents": events, "displayTimeUnit": "ms",
           "otherData": {"run_dir": str(run_dir), "source": "comm.jsonl"}}
    # dumps, not dump: json.dump streams through the pure-Python encoder, dumps uses the C one
    write_file(out_path, json_text(doc, separators=(",", ":")).encode())
    return n_spans
