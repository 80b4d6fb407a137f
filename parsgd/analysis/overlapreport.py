"""How much communication a BSP run hid behind backprop (--overlap layer / bucket, ps/overlap.py).

    python -c "from parsgd.analysis.rundirs import load_run; from parsgd.analysis.overlapreport import *; \
print(overlap_sentence(overlap_figures(load_run('runs/ps-p2'))))"

Per timed step (analysis/stepparts.py's steps: server 0's, after the warm-up), medians of:

    step     server 0's step (its wait + its own work)
    compute  the slowest worker's own computation: its compute spans minus the send and recv spans
             inside them (with --overlap the parts leave, and the parameters arrive, within compute)
    comm     the step's communication done after the compute, as `none` does it: the busiest link's
             (out + in) / rate plus one round trip, 2 alpha (the GRAD out, the next TASK back; alpha =
             half the link check's round trip (link.json calibration.rtt.measured_s), 0 without); emulated links only
    hidden   max(0, compute + comm - step) / comm, at most 1: the share of comm the step did not pay
    early    the workers' gradient bytes (send spans) that left while backprop still had layers to compute
             (inside a compute span, all but its last part), as a share of all their bytes sent

Without a link (loopback, shared memory) comm is CPU work inside the step and only `early` is given.
benchmarks/overlap.py measures hidden against a `none` run of the same session instead:
(step_none - step) / (step_none - compute_none).
"""
from __future__ import annotations

import numpy as np

from parsgd.analysis.costmodel import one_way_latency_s, read_link
from parsgd.analysis.rundirs import Run, overlap_word
from parsgd.analysis.stepparts import step_parts


def _own_compute(comm, steps: list[int]) -> tuple[np.ndarray, float]:
    """(the slowest worker's own compute per step, aligned with `steps`; the share of worker send bytes
    that left inside a compute span)."""
    index = {s: i for i, s in enumerate(steps)}
    worker = comm.role == "worker"
    per: dict[int, np.ndarray] = {}
    inside_bytes = total_bytes = 0
    inner = worker & np.isin(comm.span, ("send", "recv"))
    computes = np.flatnonzero(worker & (comm.span == "compute"))
    by_track: dict[tuple[int, int], list[int]] = {}
    for j in np.flatnonzero(inner):
        by_track.setdefault((int(comm.rank[j]), int(comm.step[j])), []).append(int(j))
    for j in computes:
        rank, step = int(comm.rank[j]), int(comm.step[j])
        lo, hi = comm.t_s[j], comm.t_s[j] + comm.dur_s[j]
        own = comm.dur_s[j]
        inside = [k for k in by_track.get((rank, step), []) if lo <= comm.t_s[k] and comm.t_s[k] + comm.dur_s[k] <= hi]
        own -= sum(comm.dur_s[k] for k in inside)
        early = sorted((comm.t_s[k], k) for k in inside if comm.span[k] == "send")[:-1]  # the last one: after backprop
        inside_bytes += sum(int(comm.bytes[k]) for _, k in early)
        if step in index:
            per.setdefault(rank, np.zeros(len(steps)))[index[step]] += own
    sends = worker & (comm.span == "send")
    total_bytes = int(comm.bytes[sends].sum())
    slowest = np.max(np.stack(list(per.values())), axis=0) if per else np.zeros(len(steps))
    return slowest, (inside_bytes / total_bytes if total_bytes else 0.0)


def overlap_figures(run: Run) -> dict | None:
    """{"overlap", "steps", "step", "compute", "comm" (None off emulated links), "hidden" (None likewise),
    "early", "alpha", "messages"} in seconds / shares, for a BSP run with comm.jsonl; None otherwise.
    Raises RunDirError (corrupt comm.jsonl, link.json)."""
    parts = step_parts(run)
    comm = run.comm
    if parts is None or comm is None:
        return None
    first = int(run.summary.get("warmup_steps") or 1)
    server = (comm.role == "server") & (comm.rank == 0)
    steps = sorted({int(s) for s in comm.step[server & (comm.span == "wait") & (comm.step >= first)]})
    compute, early = _own_compute(comm, steps)
    link = read_link(run.path) or {}
    alpha = one_way_latency_s(link)
    sends = (comm.role == "worker") & (comm.span == "send") & (comm.step >= first)
    workers = max(1, len({int(r) for r in comm.rank[sends]}))
    messages = 2 * int(np.count_nonzero(sends)) / max(1, len(steps)) / workers  # each way, per worker
    out = {"overlap": str(run.config.get("overlap") or "none"), "steps": len(steps), "step": parts["step"],
           "compute": float(np.median(compute)), "early": early, "alpha": alpha, "messages": messages,
           "comm": None, "hidden": None}
    if parts["rate"]:
        out["comm"] = parts["link_need"] + 2 * alpha
        out["hidden"] = min(1.0, max(0.0, out["compute"] + out["comm"] - out["step"]) / out["comm"])
    return out


def hidden_vs_none(group: list[Run], groups: list[list[Run]]) -> list[str]:
    """`  against <the none run of the same configuration>: ...`: (step_none - step) / (step_none - compute_none),
    the share of the `none` step's communication this overlap mode removed (medians over the repeats);
    [] for a `none` group or when the experiment has no `none` twin."""
    first = group[0]
    overlap = str(first.config.get("overlap") or "none")
    if overlap == "none" or first.mode != "ps":
        return []
    twin_label = first.label.replace(overlap_word(overlap, first.config.get("bucket_bytes")), "", 1)
    twin = next((g for g in groups if g[0].label == twin_label), None)
    mine = [f for f in map(overlap_figures, group) if f]
    base = [f for f in map(overlap_figures, twin or []) if f]
    if not mine or not base:
        return []
    step = float(np.median([f["step"] for f in mine]))
    none_step, none_compute = (float(np.median([f[k] for f in base])) for k in ("step", "compute"))
    comm = none_step - none_compute
    share = (none_step - step) / comm if comm > 0 else 0.0
    what = (f"{share:.0%} hidden" if share >= 0 else
            f"nothing hidden: the extra messages cost {(step - none_step) * 1e3:.2f} ms more than they hid")
    return [f"  against {twin_label}: {none_step * 1e3:.2f} -> {step * 1e3:.2f} ms a step; of its "
            f"{comm * 1e3:.2f} ms beyond the compute, {what}"]


def overlap_sentence(fig: dict) -> str:
    """One sentence: overlap mode, the step against compute + comm, the hidden share, the early bytes."""
    head = (f"overlap {fig['overlap']}: step {fig['step'] * 1e3:.2f} ms, compute {fig['compute'] * 1e3:.2f} ms "
            f"(the slowest worker's own)")
    early = f"{fig['early']:.0%} of the gradient bytes left while backprop was still computing"
    if fig["comm"] is None:
        return f"{head}; {early}; no link rate (not emulated): the communication hidden is not split out"
    return (f"{head}, comm {fig['comm'] * 1e3:.2f} ms (the link's time for the step's bytes, one round trip); "
            f"one after the other {(fig['compute'] + fig['comm']) * 1e3:.2f} ms, so {fig['hidden']:.0%} of the "
            f"communication was hidden; {early}")
