"""Comparison table and experiment_report.txt from run directories (numbers come only from the logs).

    parsgd experiment --workers 2 --dataset synthetic --num-samples 2048 --epochs 2 -q   # -> results/
    python -c "from parsgd.analysis.rundirs import load_run; from parsgd.analysis.report import *; \
rs = [load_run(p) for p in ('results/sequential', 'results/ps-p2-shm')]; \
print(format_table(comparison_rows(rs, rs[0])))"

Speedup and efficiency use the standard definitions (those of Amdahl's-law analyses):
speedup S(P) = T_seq / T_P and efficiency E(P) = S(P) / P, T being total training wall time.
A value a run does not have (null in its files: the accuracy of an empty test split, a loss that was
not finite) is None in the rows, "-" in the table, and the report says why (`missing_notes`).
"""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np

from parsgd.analysis.rundirs import Run
from parsgd.files import ensure_dir, write_file

# Span names of comm.jsonl grouped into what the report calls them.
CATEGORIES = {"serialize": ("serialize",), "transfer": ("send", "recv"), "wait": ("wait",),
              "deserialize": ("deserialize",), "compute": ("compute",), "update": ("update", "aggregate")}
ROLE_ORDER = ("server", "worker")

# (row key, header, format) of the comparison table, left to right.
COLUMNS = [("run", "run", "{}"), ("P", "P", "{:d}"), ("total_s", "total s", "{:.2f}"),
           ("s_per_epoch", "s/epoch", "{:.3f}"), ("speedup", "speedup", "{:.2f}x"),
           ("efficiency", "effic.", "{:.0%}"), ("train_acc", "train acc", "{:.4f}"),
           ("test_acc", "test acc", "{:.4f}"), ("train_loss", "train loss", "{:.4f}"),
           ("test_loss", "test loss", "{:.4f}"), ("comm_share", "comm %", "{:.1%}"),
           ("bytes_per_step", "KB/step", "{:.1f}")]
_SCALE = {"bytes_per_step": 1e-3}
# Why a column of the comparison table can be "-" (the value is null or not finite in the run's files).
MISSING_WHY = {
    "test_acc": "the test split is empty, or the value was not finite (written as null)",
    "test_loss": "the test split is empty, or the value was not finite (written as null)",
    "train_acc": "the value was not finite (written as null)",
    "train_loss": "the value was not finite, e.g. the run diverged (written as null)",
    "total_s": "no finite training time was recorded",
    "s_per_epoch": "no finite epoch time was recorded",
    "speedup": "it needs a finite, non-zero total time of this run and of the baseline",
}


def number(value) -> float | None:
    """`value` as a float, or None when it is missing: None (null in a file), NaN, +-Infinity, not a number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _final(run: Run, name: str) -> float | None:
    """summary.json final_NAME, else the last epoch's NAME; None when neither has a finite value."""
    v = number(run.summary.get(f"final_{name}"))
    return v if v is not None else number(run.metrics[-1].get(name))


def with_baseline(runs: list[Run], baseline: Run) -> list[Run]:
    """A new list: `baseline`, then the other runs in order (a run with the baseline's path is dropped)."""
    rest = [r for r in runs if r is not baseline and r.path != baseline.path]
    return [baseline, *rest]


def comparison_rows(runs: list[Run], baseline: Run) -> list[dict]:
    """One row dict per run, baseline first (added if missing), keyed as COLUMNS plus mode, transport, steps, path.

    speedup = T_baseline / T_run and efficiency = speedup / P (standard definitions, T = summary.json
    total_time_s in seconds; None when T_run is 0); s_per_epoch is the mean of metrics.jsonl
    epoch_time_s (s); bytes_per_step is (sent + received) / steps (None without a step count).
    """
    base_total_s = number(baseline.summary["total_time_s"])
    rows = []
    for run in with_baseline(runs, baseline):
        s = run.summary
        total_s, p = number(s["total_time_s"]), run.workers
        speedup = base_total_s / total_s if base_total_s is not None and total_s else None
        comm_share = number(s.get("comm_share"))
        if comm_share is None:
            busy_s = np.nansum(run.column("comm_s")) + np.nansum(run.column("compute_s"))
            comm_share = float(np.nansum(run.column("comm_s")) / busy_s) if busy_s > 0 else 0.0
        steps = s.get("steps")
        moved = float(np.nansum(run.column("bytes_sent")) + np.nansum(run.column("bytes_recv")))
        epoch_s = run.column("epoch_time_s")
        epoch_s = epoch_s[np.isfinite(epoch_s)]
        rows.append({
            "run": run.label, "mode": run.mode, "transport": run.transport, "P": p,
            "total_s": total_s, "s_per_epoch": float(epoch_s.mean()) if epoch_s.size else None,
            "speedup": speedup, "efficiency": speedup / p if speedup is not None else None,
            "train_acc": _final(run, "train_acc"), "test_acc": _final(run, "test_acc"),
            "train_loss": _final(run, "train_loss"), "test_loss": _final(run, "test_loss"),
            "comm_share": comm_share,
            "bytes_per_step": moved / steps if steps else None,
            "steps": steps, "path": str(run.path)})
    return rows


def comm_breakdown(run: Run) -> dict:
    """Per role ("server", "worker"): seconds and shares (summing to 1) of each span category.

    Reads comm.jsonl when present, else summary.json's time_breakdown; {} for runs with neither.
    Categories are CATEGORIES plus "other" for unknown span names; worker seconds are summed over
    all worker ranks. Returns {role: {"seconds": {category: s}, "shares": {category: fraction},
    "total_s": s, "ranks": n, "source": "comm.jsonl" | "summary.json"}}.
    Raises RunDirError if comm.jsonl is corrupt.
    """
    comm = run.comm
    if comm is not None and len(comm):
        source = "comm.jsonl"
        per_role = {role: comm.seconds_by_span(role) for role in ROLE_ORDER if (comm.role == role).any()}
        ranks = {role: len({k for r, k in comm.tracks() if r == role}) for role in per_role}
    else:
        source = "summary.json"
        per_role = {role: spans for role, spans in (run.summary.get("time_breakdown") or {}).items() if spans}
        ranks = {role: (run.workers if role == "worker" else 1) for role in per_role}
    out = {}
    for role, spans in per_role.items():
        seconds = {cat: float(sum(spans.get(s, 0.0) for s in names)) for cat, names in CATEGORIES.items()}
        known = {s for names in CATEGORIES.values() for s in names}
        other_s = sum(v for s, v in spans.items() if s not in known)
        if other_s:
            seconds["other"] = float(other_s)
        total_s = sum(seconds.values())
        shares = {cat: (v / total_s if total_s > 0 else 0.0) for cat, v in seconds.items()}
        out[role] = {"seconds": seconds, "shares": shares, "total_s": total_s,
                     "ranks": ranks.get(role, 1), "source": source}
    return out


def _cell(key: str, fmt: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and key in _SCALE:
        value = value * _SCALE[key]
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def format_table(rows: list[dict], columns=None) -> str:
    """Aligned plain-text table (a header line, a dashes line, one line per row) of `rows`.

    `rows`: dicts such as comparison_rows() returns; `columns`: (key, header, format) triples,
    default COLUMNS (keys the first row lacks are left out). Text is left-aligned, numbers right;
    None prints as "-". `parsgd experiment` prints it as is.
    """
    columns = [c for c in (columns or COLUMNS) if not rows or c[0] in rows[0]]
    cells = [[_cell(k, f, row.get(k)) for k, _, f in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, (_, h, _) in enumerate(columns)]
    left = [i == 0 or (rows and isinstance(rows[0].get(k), str)) for i, (k, _, _) in enumerate(columns)]

    def line(values):
        return "  ".join(v.ljust(w) if lf else v.rjust(w) for v, w, lf in zip(values, widths, left)).rstrip()

    out = [line([h for _, h, _ in columns]), line(["-" * w for w in widths])]
    return "\n".join(out + [line(r) for r in cells])


def missing_notes(rows: list[dict]) -> list[str]:
    """One line per run and column of MISSING_WHY whose value is None in `rows` (comparison_rows),
    saying why the table shows "-" there; [] when nothing is missing."""
    headers = {key: header for key, header, _ in COLUMNS}
    return [f"  {row['run']}: no {headers[key]}: {why}" for row in rows
            for key, why in MISSING_WHY.items() if key in row and row[key] is None]


def describe_config(config: dict, dataset: str | None = None) -> str:
    """One line naming the training configuration (also the plots' subtitle).

    `config`: a RunConfig as a dict (config.json "config"); `dataset` overrides config["dataset"].
    """
    hidden = ",".join(str(h) for h in config.get("hidden", []))
    n = config.get("num_samples")
    return (f"{dataset or config.get('dataset', '?')}{f' (n={n})' if n else ''}, "
            f"{config.get('epochs')} epochs, batch {config.get('batch_size')}, lr {config.get('lr')}, "
            f"momentum {config.get('momentum')}, hidden {hidden}, {config.get('dtype')}, seed {config.get('seed')}")


def describe_blas(machine: dict) -> str:
    """One line naming the BLAS libraries of `machine` (rundir.machine_info()), "none detected" if none."""
    blas = machine.get("blas") or []
    if not blas:
        return "none detected"
    return "; ".join(f"{b.get('internal_api', '?')} {b.get('version') or ''}".strip()
                     + (f" ({b['architecture']})" if b.get("architecture") else "")
                     + f", {b.get('num_threads', '?')} thread(s)" for b in blas)


def _comm_section(run: Run) -> list[str]:
    bd = comm_breakdown(run)
    out = [f"{run.label}  ({run.path})"]
    if not bd:
        return out + ["  no communication log in this run directory", ""]
    steps = run.summary.get("steps")
    total_s = number(run.summary["total_time_s"]) or 0.0
    if steps:
        moved = np.nansum(run.column("bytes_sent")) + np.nansum(run.column("bytes_recv"))
        out.append(f"  {steps} steps, {1e3 * total_s / steps:.2f} ms wall time per step, "
                   f"{moved / steps / 1e3:.1f} KB moved per step, "
                   f"comm share {float(run.summary.get('comm_share') or 0):.1%}")
    roles = [r for r in ROLE_ORDER if r in bd]
    cats = list(dict.fromkeys(c for r in roles for c in bd[r]["seconds"]))
    rows = []
    for cat in cats:
        row = {"span": cat}
        for role in roles:
            row[f"{role}_s"] = bd[role]["seconds"].get(cat, 0.0)
            row[f"{role}_share"] = bd[role]["shares"].get(cat, 0.0)
        rows.append(row)
    rows.append({"span": "total", **{k: v for role in roles for k, v in
                                     ((f"{role}_s", bd[role]["total_s"]), (f"{role}_share", 1.0))}})
    cols = [("span", "span", "{}")]
    for role in roles:
        who = f"{role} x{bd[role]['ranks']}" if role == "worker" else role
        cols += [(f"{role}_s", f"{who} s", "{:.4f}"), (f"{role}_share", f"{role} %", "{:.1%}")]
    table = format_table(rows, cols)
    out += ["  " + ln for ln in table.splitlines()]
    return out + [f"  (source: {bd[roles[0]]['source']})", ""]


HOW_TO_READ = """\
How to read this
  speedup = total time of the baseline ({base}) / total time of the run; efficiency = speedup / P,
  so 100% means perfect linear scaling. s/epoch is the mean epoch wall time from metrics.jsonl.
  comm % is the share of step time spent communicating (summary.json comm_share); KB/step counts
  bytes sent plus received per optimisation step. With the same seed every configuration should
  reach nearly the same accuracy and loss: a large gap means a correctness problem, not a speed one.
  In the communication sections, transfer = send + recv and update includes aggregation; worker
  seconds are summed over all workers, and a worker's wait is its idle time before each task, so
  large wait shares on both sides mean the step is bound by its serial parts (the server's update,
  the slowest shard, message latency), not by bandwidth. Shares of each role sum to 100%.
"""


def write_report(out_dir, runs: list[Run], baseline: Run, config=None, machine: dict | None = None) -> Path:
    """Write out_dir/experiment_report.txt and return its path (`parsgd experiment` calls this).

    `runs`: the loaded runs (the baseline is added first if missing); `baseline`: the run speedups
    are relative to. `config`: the RunConfig (or its dict) the experiment used; default: the
    baseline's config.json. `machine`: {"cores", "blas", "platform"} (rundir.machine_info());
    default: the baseline's. Creates out_dir if needed. Raises WriteError if the file cannot be
    written, RunDirError if a run's comm.jsonl is corrupt.
    """
    out_dir = ensure_dir(out_dir)
    if config is None:
        config = baseline.config
    elif hasattr(config, "to_dict"):
        config = config.to_dict()
    machine = machine if machine is not None else baseline.meta.get("machine", {})
    versions = baseline.meta.get("versions", {})
    runs = with_baseline(runs, baseline)
    ps_runs = [r for r in runs if r.mode == "ps" or r.has_comm]
    rows = comparison_rows(runs, baseline)
    notes = missing_notes(rows)
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    lines = [
        "parsgd experiment report", "=" * 24,
        f"date:          {now}",
        f"configuration: {describe_config(config, baseline.dataset)}",
        f"machine:       {machine.get('cores', '?')} cores, host {baseline.meta.get('host', '?')}"
        + (f", {machine['platform']}" if machine.get("platform") else ""),
        f"BLAS:          {describe_blas(machine)}",
        "versions:      " + (", ".join(f"{k} {v}" for k, v in versions.items()) or "unknown"),
        f"runs:          {', '.join(str(r.path) for r in runs)}",
        "", "Comparison", "-" * 10, format_table(rows), "",
        *(["Missing values (- in the table)", *notes, ""] if notes else []),
        "Communication overhead (parameter-server runs)", "-" * 46]
    for run in ps_runs:
        lines += _comm_section(run)
    if not ps_runs:
        lines += ["no parameter-server runs in this experiment", ""]
    lines.append(HOW_TO_READ.format(base=baseline.label))
    return write_file(out_dir / "experiment_report.txt", "\n".join(lines).encode())
