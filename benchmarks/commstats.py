"""Per-step costs of a parameter-server run, from its comm.jsonl.

    python benchmarks/commstats.py RUN_DIR [--skip-steps N]

Control overhead of a step = the server's wait in that step minus the slowest worker's compute in
that step: the time the server spends waiting for anything other than the arithmetic of the
slowest shard (messages, wake-ups, payload copies, scheduling). A worker's compute span that began
before the server began sending the step's TASKs (rows gathered ahead of the TASK while the
server updated) is counted apart, as `prefetch` in the worker spans; a part of it that ran into
the wait counts as overhead. Steps below `skip_steps` (the warm-up
epoch) are left out.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def _ms(values) -> dict:
    a = np.asarray(values, dtype=np.float64) * 1e3
    if a.size == 0:
        return {}
    return {"mean": round(float(a.mean()), 4), "median": round(float(np.median(a)), 4),
            "p90": round(float(np.percentile(a, 90)), 4)}


def step_costs(run_dir: Path, skip_steps: int = 0) -> dict:
    """Control overhead per step (ms), and the mean ms per step of every span, per role."""
    server = defaultdict(lambda: defaultdict(float))              # span -> step -> seconds
    worker = defaultdict(lambda: defaultdict(float))              # (span, rank) -> step -> seconds
    first_send: dict[int, float] = {}                            # step -> when the server began sending TASKs
    computes = []
    with open(run_dir / "comm.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["step"] < skip_steps:
                continue
            if r["role"] == "server":
                server[r["span"]][r["step"]] += r["dur"]
                if r["span"] in ("serialize", "send"):
                    first_send[r["step"]] = min(r["t"], first_send.get(r["step"], r["t"]))
            elif r["span"] == "compute":
                computes.append(r)
            else:
                worker[(r["span"], r["rank"])][r["step"]] += r["dur"]
    for r in computes:  # after the file: a worker's LOGS arrive after the server's own spans of a step
        ahead = r["t"] < first_send.get(r["step"], -1.0)  # no TASK of the step existed yet
        worker[("prefetch" if ahead else "compute", r["rank"])][r["step"]] += r["dur"]
    steps = sorted(server["wait"])
    if not steps:
        return {"steps": 0}
    ranks = sorted({rank for (_, rank) in worker})
    slowest = [max((worker[("compute", k)].get(s, 0.0) for k in ranks), default=0.0) for s in steps]
    overhead = [server["wait"][s] - c for s, c in zip(steps, slowest)]
    per_step = lambda d: round(sum(d.values()) / len(steps) * 1e3, 4)  # noqa: E731
    server_ms = {span: per_step(d) for span, d in server.items()}
    worker_ms: dict[str, float] = defaultdict(float)
    for (span, _), d in worker.items():
        worker_ms[span] += per_step(d) / max(1, len(ranks))
    return {
        "steps": len(steps),
        "control_overhead_ms": _ms(overhead),
        "slowest_compute_ms": _ms(slowest),
        "server_ms_per_step": server_ms,
        "worker_ms_per_step_mean_over_workers": {k: round(v, 4) for k, v in worker_ms.items()},
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    skip = 0
    if "--skip-steps" in args:
        i = args.index("--skip-steps")
        skip = int(args[i + 1])
        del args[i:i + 2]
    print(json.dumps(step_costs(Path(args[0]), skip), indent=1))
