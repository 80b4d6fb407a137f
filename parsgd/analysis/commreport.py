"""The report's communication sections: where a parameter-server configuration's time went, per role,
and what its steps wait for (the link, the slowest shard, the rest: analysis/stepparts.py).

    python -c "from parsgd.analysis.rundirs import load_run; from parsgd.analysis.commreport import *; \
print('\\n'.join(comm_section([load_run('results/ps-p2-shm')], None)))"

Every figure covers the timed steps (after the warm-up), as the table does; with repeats (`experiment
--repeat R`) a section shows the configuration's figures over all its runs: the table's medians on
its first line, and per span category the median over the runs of seconds per timed step, so no
figure of one repeat sits beside the table's medians.
"""
from __future__ import annotations

import textwrap

import numpy as np

from parsgd.analysis.rundirs import Run
from parsgd.analysis.overlapreport import overlap_figures, overlap_sentence
from parsgd.analysis.stepparts import WAIT_PARTS, bound_sentence, server_bytes, step_parts
from parsgd.analysis.tables import format_table

# Span names of comm.jsonl grouped into what the report calls them.
CATEGORIES = {"serialize": ("serialize",), "transfer": ("send", "recv"), "wait": ("wait",),
              "deserialize": ("deserialize",), "compute": ("compute",), "update": ("update", "aggregate")}
ROLE_ORDER = ("server", "worker")
WAIT_NAMES = {"link": "on the link", "shards": "the shards", "server": "server work", "rest": "rest"}  # WAIT_PARTS


def comm_breakdown(run: Run, since_step: int = 0) -> dict:
    """Per role ("server", "worker"): seconds and shares (summing to 1) of each span category.

    Reads comm.jsonl when present (its spans of steps >= since_step: the timed window with
    since_step = the run's warm-up steps), else summary.json's time_breakdown (the whole run); {} for
    runs with neither. Categories are CATEGORIES plus "other" for unknown span names; worker seconds
    are summed over all worker ranks. Returns {role: {"seconds": {category: s}, "shares": {category:
    fraction}, "total_s": s, "ranks": n, "source": "comm.jsonl" | "summary.json"}}.
    Raises RunDirError if comm.jsonl is corrupt.
    """
    comm = run.comm
    if comm is not None and len(comm):
        source = "comm.jsonl"
        keep = comm.step >= since_step if since_step > 0 else None  # 0: every span, those outside a step too
        per_role = {role: comm.seconds_by_span(role, keep) for role in ROLE_ORDER if (comm.role == role).any()}
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


def timed_breakdown(runs: list[Run]) -> dict:
    """comm_breakdown of a configuration's runs over their timed steps (after the warm-up): per role
    and category the median over the runs of seconds per timed step (summed over workers), shares
    from those medians; {} without a communication log."""
    each = []
    for r in runs:
        warm = int(r.summary.get("warmup_steps") or 0)
        steps = max(1, int(r.summary.get("steps") or 0) - warm)
        if (bd := comm_breakdown(r, warm)):
            each.append((bd, steps))
    if not each:
        return {}
    out = {}
    for role in ROLE_ORDER:
        per_run = [(bd[role], n) for bd, n in each if role in bd]
        if not per_run:
            continue
        cats = list(dict.fromkeys(c for b, _ in per_run for c in b["seconds"]))
        seconds = {c: float(np.median([b["seconds"].get(c, 0.0) / n for b, n in per_run])) for c in cats}
        total = sum(seconds.values())
        out[role] = {"seconds": seconds, "shares": {c: (v / total if total > 0 else 0.0) for c, v in seconds.items()},
                     "total_s": total, "ranks": per_run[0][0]["ranks"], "source": per_run[0][0]["source"]}
    return out


def median_parts(runs: list[Run]) -> dict | None:
    """step_parts of a configuration's runs, each figure the median over the runs (None if none splits)."""
    parts = [p for p in (step_parts(r) for r in runs) if p]
    if not parts:
        return None
    merged = dict(parts[0])
    for key, value in parts[0].items():
        if isinstance(value, float):
            merged[key] = float(np.median([p[key] for p in parts]))
    merged["bound"] = max(("link", "compute", "server", "rest"), key=merged.get)
    return merged


def wait_split(bd: dict, parts: dict | None, role: str) -> dict[str, float]:
    """The role's wait in `bd` (timed_breakdown: seconds per timed step) split into WAIT_PARTS (stepparts) in
    the proportions of that role's summed parts, {part: seconds}; {} when `parts` is None or splits nothing."""
    split = (parts or {}).get("waits", {}).get(role) or {}
    total = sum(split.values())
    if total <= 0:
        return {}
    wait = bd[role]["seconds"].get("wait", 0.0)
    return {part: wait * split.get(part, 0.0) / total for part in WAIT_PARTS}


def span_shares(runs: list[Run]) -> dict[str, dict[str, float]]:
    """Per role, the shares of its span time per timed step that the role's `%` column of comm_section
    prints: {category: share}, the wait split into "wait: " + WAIT_NAMES[part] where the section
    indents it (BSP runs), else "wait"; {} without a communication log. Raises RunDirError."""
    bd = timed_breakdown(runs)
    parts = median_parts(runs) if bd else None
    out = {}
    for role, b in bd.items():
        split, total = wait_split(bd, parts, role), b["total_s"]
        shares = {}
        for cat, seconds in b["seconds"].items():
            pieces = {f"wait: {WAIT_NAMES[k]}": v for k, v in split.items()} if cat == "wait" and split else {cat: seconds}
            shares.update({k: v / total if total > 0 else 0.0 for k, v in pieces.items()})
        out[role] = shares
    return out


def _wait_rows(bd: dict, parts: dict | None, roles: list[str]) -> list[dict]:
    """Sub-rows under `wait`: each role's wait split into WAIT_PARTS (wait_split), as ms per step and
    shares of the role's total."""
    rows = []
    for part in WAIT_PARTS:
        line = {"span": f"  {WAIT_NAMES[part]}"}
        for role in roles:
            seconds = wait_split(bd, parts, role).get(part, 0.0)
            line[f"{role}_s"] = seconds * 1e3
            line[f"{role}_share"] = seconds / bd[role]["total_s"] if bd[role]["total_s"] > 0 else 0.0
        if any(line[f"{role}_s"] > 0 for role in roles):
            rows.append(line)
    return rows


def comm_section(runs: list[Run], row: dict | None) -> list[str]:
    """The section of one configuration: `runs` its repeats (first one names it), `row` its row of the
    comparison table (results.table_rows), whose medians the first line repeats (None: from the run).
    Every figure covers the timed steps (after the warm-up), the median over the repeats."""
    first, n = runs[0], len(runs)
    where = first.path if n == 1 else f"{n} runs: {', '.join(r.path.name for r in runs)}"
    out = [f"{first.label}  ({where})"]
    bd = timed_breakdown(runs)
    if not bd:
        return out + ["  no communication log in this run directory", ""]
    each = "" if n == 1 else f", each the median of its {n} runs"
    if row is not None and row.get("ms_per_step") is not None:
        out.append(f"  {row['ms_per_step']:.2f} ms per timed step, {(row['bytes_per_step'] or 0) / 1e3:.1f} KB moved "
                   f"per step, comm share {row['comm_share'] or 0:.1%} (the table's figures{each})")
    parts = median_parts(runs)
    if parts:
        out += textwrap.wrap(f"what a step waits for ({parts['steps']} timed steps{each}): {bound_sentence(parts)}",
                             100, initial_indent="  ", subsequent_indent="    ")
    fig = overlap_figures(first)
    if fig is not None and fig["overlap"] != "none":  # --overlap: what the parts hid (analysis/overlapreport.py)
        out += textwrap.wrap(overlap_sentence(fig), 100, initial_indent="  ", subsequent_indent="    ")
    out += server_lines(first)
    roles = [r for r in ROLE_ORDER if r in bd]
    cats = list(dict.fromkeys(c for r in roles for c in bd[r]["seconds"]))
    rows = []
    for cat in cats:
        line = {"span": cat}
        for role in roles:
            line[f"{role}_s"] = bd[role]["seconds"].get(cat, 0.0) * 1e3
            line[f"{role}_share"] = bd[role]["shares"].get(cat, 0.0)
        rows.append(line)
        if cat == "wait":
            rows += _wait_rows(bd, parts, roles)
    rows.append({"span": "total", **{k: v for role in roles for k, v in
                                     ((f"{role}_s", bd[role]["total_s"] * 1e3), (f"{role}_share", 1.0))}})
    cols = [("span", "span", "{}")]
    for role in roles:
        who = f"{role} x{bd[role]['ranks']}" if role == "worker" else role
        cols += [(f"{role}_s", f"{who} ms/step", "{:.3f}"), (f"{role}_share", f"{role} %", "{:.1%}")]
    out += ["  " + ln for ln in format_table(rows, cols).splitlines()]
    split = "; indented rows: what the wait holds (analysis/stepparts.py)" if parts else ""
    return out + [f"  (source: {bd[roles[0]]['source']}; ms per timed step{each}{split})", ""]


def server_lines(run: Run) -> list[str]:
    """With S > 1 parameter servers: per server its key ranges, parameters and KB in / out per timed step
    through its socket, and the load imbalance (max / mean) of parameters and of bytes; [] for one server."""
    rows = server_bytes(run)
    if len(rows) < 2:
        return []
    table = format_table([{**r, "in_kb": r["in"] / 1e3, "out_kb": r["out"] / 1e3} for r in rows],
                         [("server", "server", "{:d}"), ("ranges", "key ranges", "{}"), ("elements", "parameters", "{:d}"),
                          ("in_kb", "KB in/step", "{:.1f}"), ("out_kb", "KB out/step", "{:.1f}"),
                          ("imbalance", "bytes / mean", "{:.2f}")])
    sizes = [r["elements"] for r in rows]
    by_bytes = max(r["imbalance"] for r in rows)
    return ["  " + ln for ln in table.splitlines()] + [
        f"  load imbalance (max / mean): {max(sizes) / (sum(sizes) / len(sizes)):.2f} in parameters, {by_bytes:.2f} "
        "in bytes through the servers' sockets (shared memory moves parameters outside them)"]
