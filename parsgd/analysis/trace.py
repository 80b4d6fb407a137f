"""Chrome / Perfetto trace JSON from a parameter-server run's comm.jsonl.

    parsgd trace runs/ps-p2 -o trace.json   # then open it in https://ui.perfetto.dev or chrome://tracing

One process per role (server = pid 0, workers = pid 1), one thread per rank, one complete event
("X") per span with its bytes and step, and a global instant marker where each step starts.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from parsgd.analysis.rundirs import load_comm

PIDS = {"server": 0, "worker": 1}
US = 1e6  # trace timestamps are microseconds


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
    """All trace events of a run (metadata, spans, step markers) and the number of span events."""
    comm = load_comm(run_dir)
    ts = np.round(comm.t * US, 3).tolist()
    dur = np.round(comm.dur * US, 3).tolist()
    pids = [PIDS[r] for r in comm.role.tolist()]
    spans = [{"name": span, "cat": role, "ph": "X", "ts": t, "dur": d, "pid": pid, "tid": rank,
              "args": {"bytes": nbytes, "step": step}}
             for span, role, t, d, pid, rank, nbytes, step in zip(
                 comm.span.tolist(), comm.role.tolist(), ts, dur, pids, comm.rank.tolist(),
                 comm.bytes.tolist(), comm.step.tolist())]
    markers = []
    in_step = comm.step >= 0
    if in_step.any():
        order = np.argsort(comm.step[in_step], kind="stable")
        step, t = comm.step[in_step][order], comm.t[in_step][order]
        steps, bounds = np.unique(step, return_index=True)
        starts = np.minimum.reduceat(t, bounds)  # a step starts with its earliest span
        markers = [{"name": f"step {s}", "cat": "step", "ph": "i", "s": "g", "ts": round(t0 * US, 3),
                    "pid": 0, "tid": 0, "args": {"step": s}}
                   for s, t0 in zip(steps.tolist(), starts.tolist())]
    timed = sorted(spans + markers, key=lambda e: e["ts"])
    return _metadata(comm.tracks()) + timed, len(spans)


def write_trace(run_dir, out_path) -> int:
    """`parsgd trace RUN_DIR -o OUT`: write the trace JSON to out_path, return the number of spans.

    Raises RunDirError when RUN_DIR is not a run directory or has no comm.jsonl (only
    parameter-server runs write one).
    """
    events, n_spans = trace_events(run_dir)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"traceEvents": events, "displayTimeUnit": "ms",
           "otherData": {"run_dir": str(run_dir), "source": "comm.jsonl"}}
    out_path.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")  # dumps: C encoder
    return n_spans
