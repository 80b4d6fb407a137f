"""Comparison table and experiment_report.txt from run directories (numbers come only from the logs).

    parsgd experiment --workers 2 --dataset synthetic --num-samples 2048 --epochs 2 -q   # -> results/
    python -c "from parsgd.analysis.rundirs import load_run; from parsgd.analysis.report import *; \
rs = [load_run(p) for p in ('results/sequential', 'results/ps-p2-shm')]; \
print(format_table(comparison_rows(rs, rs[0])))"

Speedup and efficiency use the standard definitions (those of Amdahl's-law analyses):
speedup S(P) = T_seq / T_P and efficiency E(P) = S(P) / P, T being the training time of the same
timed steps (warm-up left out) per step; with repeats, the median over them (results.py).
A value a run does not have (null in its files: the accuracy of an empty test split, a loss that was
not finite) is None in the rows, "-" in the table, and the report says why (`missing_notes`).
"""
from __future__ import annotations

import datetime as _dt
import textwrap
from pathlib import Path

import numpy as np

from parsgd.analysis.results import (CHECK_STEPS, CHECK_TOL, MIN_TIMED_S, MIN_TIMED_STEPS, TOO_SHORT,  # noqa: F401
                                     grouped, number, records, table_rows, with_baseline)
from parsgd.analysis.linkreport import link_section
from parsgd.analysis.rundirs import Run
from parsgd.files import ensure_dir, write_file

# Span names of comm.jsonl grouped into what the report calls them.
CATEGORIES = {"serialize": ("serialize",), "transfer": ("send", "recv"), "wait": ("wait",),
              "deserialize": ("deserialize",), "compute": ("compute",), "update": ("update", "aggregate")}
ROLE_ORDER = ("server", "worker")

# (row key, header, format) of the comparison table, left to right.
COLUMNS = [("run", "run", "{}"), ("P", "P", "{:d}"), ("runs", "runs", "{:d}"), ("timed_steps", "steps", "{:d}"),
           ("timed_s", "timed s", "{:.3f}"), ("ms_per_step", "ms/step", "{:.2f}"), ("speedup", "speedup", "{:.2f}x"),
           ("speedup_range", "min-max", "{:.2f}-{:.2f}x"), ("efficiency", "effic.", "{:.0%}"),
           ("test_acc", "test acc", "{:.4f}"), ("test_loss", "test loss", "{:.4f}"),
           ("same_model", "same model", "{}"), ("consistency", "consistency", "{}"),
           ("staleness_mean", "stale mean", "{:.2f}"), ("staleness_max", "stale max", "{:d}"),
           ("comm_share", "comm %", "{:.1%}"),
           ("bytes_per_step", "KB/step", "{:.1f}"), ("note", "note", "{}")]
_SCALE = {"bytes_per_step": 1e-3}
# Why a column of the comparison table can be "-" (the value is null or not finite in the run's files).
MISSING_WHY = {
    "test_acc": "the test split is empty, or the value was not finite (written as null)",
    "test_loss": "the test split is empty, or the value was not finite (written as null)",
    "train_acc": "the value was not finite (written as null)",
    "train_loss": "the value was not finite, e.g. the run diverged (written as null)",
    "timed_s": "no step after the warm-up was timed (a run no longer than the warm-up, or a trainer that "
               "does not time single steps)",
    "ms_per_step": "no step after the warm-up was timed (see timed s)",
    "speedup": "it needs timed steps after the warm-up in this run and in the baseline",
    "same_model": "no check.npz in this run or the reference run (written by an older parsgd)",
}


def comparison_rows(runs: list[Run], baseline: Run) -> list[dict]:
    """One row dict per configuration (repeats of one label are one row), baseline first (added if
    missing), keyed as COLUMNS plus mode, transport, steps, warmup_steps, check_ok, check_diff,
    too_short, above_p, path and paths: results.table_rows(results.records(runs, baseline)).

    speedup = the baseline's median s/step / the run's s/step over the timed steps, median over the
    repeats, speedup_range = (min, max); efficiency = speedup / P. Raises RunDirError for a corrupt
    check.npz.
    """
    return table_rows(records(runs, baseline))


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
        return fmt.format(*value) if isinstance(value, tuple) else fmt.format(value)
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
    left = [i == 0 or any(isinstance(r.get(k), str) for r in rows) for i, (k, _, _) in enumerate(columns)]

    def line(values):
        return "  ".join(v.ljust(w) if lf else v.rjust(w) for v, w, lf in zip(values, widths, left)).rstrip()

    out = [line([h for _, h, _ in columns]), line(["-" * w for w in widths])]
    return "\n".join(out + [line(r) for r in cells])


def missing_notes(rows: list[dict]) -> list[str]:
    """One line per run and column of MISSING_WHY whose value is None in `rows` (comparison_rows),
    saying why the table shows "-" there; [] when nothing is missing."""
    headers = {key: header for key, header, _ in COLUMNS}
    return [f"  {row['run']}: no {headers[key]}: {why}" for row in rows
            for key, why in MISSING_WHY.items() if key in headers and key in row and row[key] is None]


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


def window_line(rows: list[dict]) -> list[str]:
    """What every figure of the table rests on: the timed steps, the warm-up left out, the repeats."""
    runs = sorted({r["runs"] for r in rows})
    each = f"{runs[0]} run{'s' if runs[0] > 1 else ''}" if len(runs) == 1 else f"{runs[0]}-{runs[-1]} runs"
    spans = {(r["steps"], r["warmup_steps"], r["timed_steps"]) for r in rows}
    if len(spans) == 1 and None not in (steps := spans.pop()):
        total, warm, timed = steps
        where = f"steps {warm + 1}-{total} of every run's {total} ({timed} steps; the first {warm} are warm-up)"
    else:
        where = "the steps column (not the same in every run)"
    return [f"timed window:  {where},", f"               the median of {each} per configuration "
            "(min-max: over the runs); `timed s` is the seconds each figure rests on"]


def timing_notes(rows: list[dict]) -> list[str]:
    """Lines saying why each row marked in the note column is too short to time, or the likely cause
    of its speedup above P; [] when no row is marked. rows[0] is the baseline."""
    base, out = rows[0], []
    blas = (f" or by its own {base['blas_threads']} BLAS threads on busy cores (a parallel worker uses 1: "
            "compare `parsgd train --blas-threads 1`)" if (base["blas_threads"] or 0) > 1 else "")
    for row in rows:
        steps, secs, p = row["timed_steps"], row["timed_s"] or 0.0, row["P"]
        lo, hi = row["speedup_range"] or (row["speedup"], row["speedup"])
        above = (f"; its speedup above P={p} comes from that, or from a baseline slowed by another process{blas}"
                 if row["above_p"] else "")
        if row["too_short"] and (steps < MIN_TIMED_STEPS or secs < MIN_TIMED_S):
            out.append(f"  {row['run']}: {TOO_SHORT}: {steps} timed steps, {secs:.3f} s{above}")
        elif row["too_short"]:
            out.append(f"  {row['run']}: {TOO_SHORT}: its speedup rests on the baseline, {base['run']}{above}")
        elif row["above_p"] and row["runs"] == 1:
            out.append(f"  {row['run']}: speedup {hi:.2f}x above P={p} from one run: likely the baseline was "
                       f"slowed by another process{blas}; rerun with --repeat 3")
        elif row["above_p"] and row["speedup"] <= p:
            out.append(f"  {row['run']}: only the fastest of its {row['runs']} runs is above P={p} "
                       f"({lo:.2f}-{hi:.2f}x): timing noise")
        elif row["above_p"]:
            b_lo, b_hi = base["speedup_range"] or (1.0, 1.0)
            out.append(f"  {row['run']}: median speedup {row['speedup']:.2f}x above P={p}: likely the baseline "
                       f"(its runs spread {b_lo:.2f}-{b_hi:.2f}x) was slowed by another process{blas}, or each "
                       "process's share of the batch fits the caches better than the whole batch (superlinear)")
    if any(r["too_short"] for r in rows):
        out += textwrap.wrap(
            f"A figure needs >= {MIN_TIMED_STEPS} timed steps and >= {MIN_TIMED_S:g} s, in the run and in the "
            "baseline: below that, what is left of the warm-up, one stall by another process (tens of ms) or a "
            "page fault moves it more than the modes differ. Use more --num-samples or --epochs.",
            100, initial_indent="  ", subsequent_indent="  ")
    return out


FLOAT32_DIVERGENCE = (
    "In float32 the final accuracy and loss may still differ between modes (by a point or more at small "
    "batches): a sum of P shard gradients rounds differently from one whole-batch sum (~1e-7 relative), and "
    "SGD amplifies such differences chaotically over hundreds of steps, so correct runs part ways; in "
    "float64 they agree to ~1e-12.")


def check_lines(rows: list[dict]) -> list[str]:
    """The same-model section: what is compared, with which tolerance, and which configurations fail."""
    base = rows[0]["run"]
    tol = ", ".join(f"{v:.0e} in {k}" for k, v in CHECK_TOL.items())
    failed = [r for r in rows if r["check_ok"] is False]
    passed = [r for r in rows[1:] if r["check_ok"]]
    text = textwrap.wrap(
        f"Each run's parameter update after its first {CHECK_STEPS} steps (check.npz, float64) is compared with "
        f"{base}'s: relative difference ||u - u_ref|| / ||u_ref||, tolerance {tol}. Rounding gives ~1e-6 "
        "in float32 and ~1e-15 in float64 there; a wrong gradient scale, a lost shard or an update applied "
        "twice gives 0.25 or more.", 100)
    verdict = [f"  FAILED: {r['run']}: difference {r['check_diff']:.1e} > {r['check_tol']:.0e}: it does not "
               f"train the same model as {base}" for r in failed]
    if passed:
        worst = max(r["check_diff"] for r in passed)
        verdict.append(f"  {'all ' if not failed else ''}{len(passed)} other configuration"
                       f"{'s' if len(passed) > 1 else ''} pass (largest difference {worst:.1e})")
    if any(r["check_ok"] is None and r["same_model"] != "reference" for r in rows):
        verdict.append("  not judged: '-' has no check.npz (an older parsgd), 'n/a (not bsp)' is a stale-"
                       "synchronous or asynchronous run, another model by design")
    return [*text, *verdict, *textwrap.wrap(FLOAT32_DIVERGENCE, 100), ""]


HOW_TO_READ = """\
How to read this
  steps = timed steps per run, timed s = their seconds (median over the runs); ms/step = timed s /
  steps. speedup = ms/step of the baseline ({base}, median of its runs) / ms/step of the run, the
  median over its runs and their min-max; efficiency = speedup / P, so 100% means perfect linear
  scaling. For the baseline itself min-max is its own run-to-run spread. A row marked `too short to
  time` rests on fewer than {min_steps} timed steps or {min_s:g} s (its own or the baseline's): do not
  read its speedup. same model: the check above (ok + the difference, or FAILED). comm % is the
  share of step time spent communicating (summary.json comm_share); KB/step counts bytes sent plus
  received per optimisation step. consistency: the parameter server's model (ssp with its bound S);
  stale mean / max: how many updates were applied between an update's pull and its push (updates.jsonl;
  0 under bsp). Every record is in experiment.json and experiment.csv.
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
    ps_runs = [g[0] for g in grouped(runs) if g[0].mode == "ps" or g[0].has_comm]  # first repeat of each
    rows = comparison_rows(runs, baseline)
    notes, timing = missing_notes(rows), timing_notes(rows)
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    lines = [
        "parsgd experiment report", "=" * 24,
        f"date:          {now}",
        f"configuration: {describe_config(config, baseline.dataset)}",
        f"machine:       {machine.get('cores', '?')} cores, host {baseline.meta.get('host', '?')}"
        + (f", {machine['platform']}" if machine.get("platform") else ""),
        f"BLAS:          {describe_blas(machine)}",
        "versions:      " + (", ".join(f"{k} {v}" for k, v in versions.items()) or "unknown"),
        f"runs:          {len(runs)} in {runs[0].path.parent}: {', '.join(r.path.name for r in runs)}"
        if len(runs) > 8 and len({r.path.parent for r in runs}) == 1 else  # --repeat: one folder
        f"runs:          {', '.join(str(r.path) for r in runs)}",
        *window_line(rows),
        "", "Comparison", "-" * 10, format_table(rows), "",
        *(["Timing notes (the note column)", *timing, ""] if timing else []),
        *(["Missing values (- in the table)", *notes, ""] if notes else []),
        "Same-model check", "-" * 16, *check_lines(rows),
        "Communication overhead (parameter-server runs)", "-" * 46]
    for run in ps_runs:
        lines += _comm_section(run)
    if not ps_runs:
        lines += ["no parameter-server runs in this experiment", ""]
    lines += link_section(runs, out_dir)  # emulated hosts (launch --link): capacity, floor, bounds, estimate
    lines.append(HOW_TO_READ.format(base=baseline.label, min_steps=MIN_TIMED_STEPS, min_s=MIN_TIMED_S))
    return write_file(out_dir / "experiment_report.txt", "\n".join(lines).encode())
