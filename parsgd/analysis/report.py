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

from parsgd.analysis.results import (CHECK_STEPS, CHECK_TOL, MIN_TIMED_S, MIN_TIMED_STEPS, TOO_SHORT,  # noqa: F401
                                     grouped, number, records, table_rows, with_baseline)
from parsgd.analysis.commreport import (CATEGORIES, ROLE_ORDER, comm_breakdown, comm_section,  # noqa: F401
                                        median_parts)
from parsgd.analysis.linkreport import link_section
from parsgd.analysis.overlapreport import hidden_vs_none
from parsgd.analysis.tables import COLUMNS, format_table  # noqa: F401 (format_table: re-exported)
from parsgd.analysis.rundirs import Run
from parsgd.files import ensure_dir, write_file
from parsgd.training.divergence import verdict_line

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


def missing_notes(rows: list[dict]) -> list[str]:
    """One line per run and column of MISSING_WHY whose value is None in `rows` (comparison_rows),
    saying why the table shows "-" there; [] when nothing is missing."""
    headers = {key: header for key, header, _ in COLUMNS}
    return [f"  {row['run']}: no {headers[key]}: {why}" for row in rows
            for key, why in MISSING_WHY.items() if key in headers and key in row and row[key] is None
            and not (key == "speedup" and row.get("diverged"))]  # said under the table: it diverged


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


def accuracy_lines(rows: list[dict], runs: list[Run]) -> list[str]:
    """Lines under the table when the runs reach different models: what `time to acc` is, and each diverged
    configuration with why and the likely fix (training/divergence.py); [] when every run agrees."""
    out = []
    target = rows[0].get("target_acc") if rows else None
    if target is not None:
        out += textwrap.wrap(
            f"The runs reach different accuracies, so compare `time to acc`, not ms/step: the seconds of training "
            f"until the test accuracy first reached {target:.2f} (the lowest final accuracy of the runs that did "
            "not diverge, read after each epoch; `-`: never reached); tta speedup = the baseline's time to acc / "
            "the run's.", 100, initial_indent="  ", subsequent_indent="  ")
    configs = {g[0].label: g[0].config for g in grouped(runs)}
    for row in rows:
        if row.get("diverged"):
            line = verdict_line({"diverged": True, "diverged_why": row["diverged_why"],
                                 "staleness_mean": row.get("staleness_mean")}, configs.get(row["run"], {}))
            out += textwrap.wrap(f"{row['run']}: {line}; no speedup is claimed for it", 100,
                                 initial_indent="  ", subsequent_indent="    ")
    return out


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
                       "synchronous or asynchronous run, or one with a lossy --compress: another model by design")
    return [*text, *verdict, *textwrap.wrap(FLOAT32_DIVERGENCE, 100), ""]


HOW_TO_READ = """\
How to read this
  steps = timed steps per run, timed s = their seconds (median over the runs); ms/step = timed s /
  steps. speedup = ms/step of the baseline ({base}, median of its runs) / ms/step of the run, the
  median over its runs and their min-max; efficiency = speedup / P, so 100% means perfect linear
  scaling. For the baseline itself min-max is its own run-to-run spread. A row marked `too short to
  time` rests on fewer than {min_steps} timed steps or {min_s:g} s (its own or the baseline's): do not
  read its speedup. same model: the check above (ok + the difference, or FAILED). comm % is the
  share of step time spent communicating (summary.json comm_share); push/raw = a pushed gradient's
  encoded bytes / its raw bytes (--compress; pulls stay raw); KB/step counts bytes sent plus
  received per optimisation step. consistency: the parameter server's model (ssp with its bound S);
  stale mean / max: how many updates were applied between an update's pull and its push (updates.jsonl;
  0 under bsp). Every record is in experiment.json and experiment.csv.
  In the communication sections, transfer = send + recv (the time to hand bytes to the socket or
  take them from it, not the time on a link) and update includes aggregation; worker figures are
  summed over all workers, and a worker's wait is its idle time before each task. A wait holds the
  time the step's bytes spend on the link, so a large wait alone does not say what bounds a step:
  each section splits a BSP step into its bytes on the link ((out + in) / the measured link rate,
  emulated links only), the slowest shard's compute, the server's own work and the rest (latency,
  wake-ups, processes sharing the cores), and names the largest. Shares of each role sum to 100%.
"""


def bounds_line(groups: list[list[Run]]) -> list[str]:
    """`Here the steps are bound by ...`: which part bounds each BSP parameter-server configuration's
    steps (commreport.median_parts), grouped by part; [] when none was split."""
    by_part: dict[str, list[str]] = {}
    for group in groups:
        parts = median_parts(group)
        if parts:
            by_part.setdefault(parts["bound"], []).append(group[0].label)
    if not by_part:
        return []
    words = {"link": "the link (bandwidth)", "compute": "the slowest shard's compute",
             "server": "the server's own work", "rest": "the rest (latency, wake-ups, cores shared)"}
    text = "; ".join(f"by {words[part]}: {', '.join(labels)}" for part, labels in by_part.items())
    return textwrap.wrap(f"Here the steps are bound {text}.", 100, initial_indent="  ", subsequent_indent="  ")


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
    ps_groups = [g for g in grouped(runs) if g[0].mode == "ps" or g[0].has_comm]  # every repeat of each
    rows = comparison_rows(runs, baseline)
    by_label = {row["run"]: row for row in rows}
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
        *([*accuracy, ""] if (accuracy := accuracy_lines(rows, runs)) else []),
        *(["Timing notes (the note column)", *timing, ""] if timing else []),
        *(["Missing values (- in the table)", *notes, ""] if notes else []),
        "Same-model check", "-" * 16, *check_lines(rows),
        "Communication overhead (parameter-server runs)", "-" * 46]
    for group in ps_groups:
        section = comm_section(group, by_label.get(group[0].label))
        lines += section[:2] + hidden_vs_none(group, ps_groups) + section[2:]  # --overlap: against its none twin
    if not ps_groups:
        lines += ["no parameter-server runs in this experiment", ""]
    lines += link_section(runs, out_dir)  # emulated hosts (launch --link): capacity, floor, bounds, estimate
    lines.append(HOW_TO_READ.format(base=baseline.label, min_steps=MIN_TIMED_STEPS, min_s=MIN_TIMED_S).rstrip())
    lines += [*bounds_line(ps_groups), ""]
    return write_file(out_dir / "experiment_report.txt", "\n".join(lines).encode())
