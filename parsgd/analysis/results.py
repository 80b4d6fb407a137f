"""What `parsgd experiment` compares, per run and repeat: the timed window, speedup, the same-model check.

    python -c "from parsgd.analysis.rundirs import load_run; from parsgd.analysis.results import records; \
rs = [load_run(p) for p in ('results/sequential', 'results/ps-p2-shm')]; print(records(rs, rs[0]))"

Timing. Every trainer times each of its steps (parsgd/training/loop.py); the first WARMUP_STEPS are
warm-up and the others its timed window (summary.json `timed_steps`, `timed_s`): the same steps in
every configuration of an experiment. s/step = timed_s / timed_steps; speedup = the baseline's
median s/step / the run's s/step (the standard T_seq / T_P on the same steps); efficiency = speedup
/ P. A window of fewer than MIN_TIMED_STEPS steps or MIN_TIMED_S seconds, the run's own or the
baseline's, is `too short to time`.

Same model. A run's check.npz holds its parameter update after its first CHECK_STEPS steps, in
float64; `same_model` compares it with the reference run's (sequential): relative difference
||u - u_ref|| / ||u_ref||, which must stay within CHECK_TOL of the run's dtype.
"""
from __future__ import annotations

import csv
import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parsgd.analysis.rundirs import Run, RunDirError
from parsgd.model.compressor import push_ratio
from parsgd.files import json_text, write_file
from parsgd.config import N_CLASSES
from parsgd.training.divergence import MIN_JUDGED_STEPS, judge
from parsgd.training.loop import CHECK_FILE, CHECK_STEPS, WARMUP_STEPS

# A timed window shorter than this is `too short to time` (README "How it is timed" says how these
# were measured): on 2 vCPUs the mean s/step of a window of w steps (p5-p95 over every window of
# 3 runs of 470 steps per mode) held to about +-10% of the run's from w = 100 on (0.92-1.12x),
# +-15-30% below 50; and a step now and then stalls 16-22 ms, 8% of 0.25 s.
MIN_TIMED_STEPS = 100
MIN_TIMED_S = 0.25
# Same-model tolerance on the relative difference of the update after CHECK_STEPS steps: measured
# rounding is ~1e-6 in float32 and ~1e-15 in float64 (batch 32 and 256, P = 2 and 4); the seeded
# bugs (a mean where sum/B belongs, a lost shard, an update applied twice) give 0.25 to 3.
CHECK_TOL = {"float32": 1e-4, "float64": 1e-9}
TOO_SHORT = "too short to time"

# Fields of one experiment.json / experiment.csv record, in column order.
RECORD_FIELDS = ("run", "mode", "transport", "consistency", "P", "repeat", "steps", "warmup_steps", "timed_steps", "timed_s",
                 "ms_per_step", "speedup", "efficiency", "total_s", "wall_s", "train_acc", "test_acc",
                 "train_loss", "test_loss", "diverged", "diverged_why", "target_acc", "time_to_acc_s",
                 "comm_share", "bytes_per_step", "push_ratio", "check_steps", "check_diff",
                 "check_tol", "same_model", "staleness_mean", "staleness_max", "too_short", "note", "blas_threads",
                 "faults", "colocate", "link", "path")
# Final test accuracies further apart than this (or a diverged run): the runs reach different models, so
# the table adds the time to an accuracy every run that did not diverge reached (time_to_accuracy).
ACC_SPREAD = 0.02
DIVERGED = "diverged"


def number(value) -> float | None:
    """`value` as a float, or None when it is missing: None (null in a file), NaN, +-Infinity, not a number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def with_baseline(runs: list[Run], baseline: Run) -> list[Run]:
    """A new list: `baseline`, then the other runs in order (a run with the baseline's path is dropped)."""
    rest = [r for r in runs if r is not baseline and r.path != baseline.path]
    return [baseline, *rest]


@dataclass(frozen=True)
class Window:
    """A run's timed window: `steps` timed steps taking `seconds`, after `warmup_steps` left out."""
    warmup_steps: int
    steps: int
    seconds: float | None

    @property
    def s_per_step(self) -> float | None:
        return self.seconds / self.steps if self.steps and self.seconds else None

    @property
    def too_short(self) -> bool:
        return self.steps < MIN_TIMED_STEPS or (self.seconds or 0.0) < MIN_TIMED_S


def window(run: Run) -> Window:
    """The timed window of `run` (summary.json); a run written before parsgd had one is timed on
    all its steps, warm-up included."""
    s = run.summary
    if s.get("timed_steps") is not None:
        steps = int(s["timed_steps"])
        total = s.get("steps")
        return Window(int(total) - steps if total is not None else WARMUP_STEPS, steps, number(s.get("timed_s")))
    return Window(0, int(s.get("steps") or 0), number(s.get("total_time_s")))


def grouped(runs: list[Run]) -> list[list[Run]]:
    """The runs of each configuration (same label: the repeats of --repeat), in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return list(groups.values())


def check_update(run: Run) -> tuple[np.ndarray, int] | None:
    """(update after the first steps as float64, number of steps) from check.npz; None without one.
    Raises RunDirError when the file is corrupt."""
    path = run.path / CHECK_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["update"].astype(np.float64), int(z["steps"].reshape(-1)[0])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise RunDirError(f"{path}: cannot read the same-model check ({exc}): re-run to rewrite it") from None


def same_model(run: Run, reference: Run) -> dict:
    """{"steps", "diff", "tol", "ok", "not_bsp"}: the relative difference of run's update after its
    first steps from reference's, and whether it is within CHECK_TOL. ok is None when one of them has
    no check.npz, or when one is not bulk-synchronous or compresses (`not_bsp`: --consistency ssp / async and --compress train
    another model by design, so their difference is reported, not judged)."""
    tol = max(CHECK_TOL.get(str(r.config.get("dtype")), CHECK_TOL["float32"]) for r in (run, reference))
    not_bsp = any(r.config.get("consistency", "bsp") != "bsp" or r.config.get("compress", "none") != "none"
                  for r in (run, reference))  # a lossy codec also trains another model by design
    mine, ref = check_update(run), check_update(reference)
    if mine is None or ref is None:
        return {"steps": None, "diff": None, "tol": tol, "ok": None, "not_bsp": not_bsp}
    if mine[0].shape != ref[0].shape or mine[1] != ref[1]:
        diff = math.inf
    else:
        scale, gap = float(np.linalg.norm(ref[0])), float(np.linalg.norm(mine[0] - ref[0]))
        diff = gap / scale if scale > 0 else (0.0 if gap == 0 else math.inf)
    return {"steps": mine[1], "diff": diff, "tol": tol, "ok": None if not_bsp else bool(diff <= tol),
            "not_bsp": not_bsp}


def _final(run: Run, name: str) -> float | None:
    """summary.json final_NAME, else the last epoch's NAME; None when neither has a finite value."""
    v = number(run.summary.get(f"final_{name}"))
    return v if v is not None else number(run.metrics[-1].get(name))


def _comm_share(run: Run) -> float:
    share = number(run.summary.get("comm_share"))
    if share is not None:
        return share
    comm_s, compute_s = np.nansum(run.column("comm_s")), np.nansum(run.column("compute_s"))
    return float(comm_s / (comm_s + compute_s)) if comm_s + compute_s > 0 else 0.0


def divergence(run: Run) -> tuple[bool | None, str | None]:
    """(diverged, why): summary.json's judgement (training/divergence.py); a run of an older parsgd is
    judged from its metrics on accuracy alone (it kept no first-step loss), chance = 1 / classes."""
    if "diverged" in run.summary:
        return run.summary.get("diverged"), run.summary.get("diverged_why")
    steps = int(run.summary.get("steps") or 0) or MIN_JUDGED_STEPS
    return judge(run.metrics, None, 1.0 / N_CLASSES, steps)


def time_to_accuracy(run: Run, target: float | None) -> float | None:
    """Seconds of training (the running sum of epoch_time_s) until the end of the first epoch whose test
    accuracy is at least `target`; None when no epoch reached it (or no target)."""
    if target is None:
        return None
    elapsed = 0.0
    for m in run.metrics:
        elapsed += number(m.get("epoch_time_s")) or 0.0
        acc = number(m.get("test_acc"))
        if acc is not None and acc >= target - 1e-12:
            return elapsed
    return None


def accuracy_target(recs: list[dict]) -> float | None:
    """The accuracy the table times every run to, when runs differ in accuracy (a diverged run, or final
    test accuracies more than ACC_SPREAD apart): the lowest final test accuracy of the runs that did not
    diverge, down to 0.01; None when they agree (or none has an accuracy)."""
    finals = [r["test_acc"] for r in recs if r["test_acc"] is not None]
    kept = [r["test_acc"] for r in recs if r["test_acc"] is not None and not r["diverged"]]
    if not kept or (max(finals) - min(finals) <= ACC_SPREAD and not any(r["diverged"] for r in recs)):
        return None
    return math.floor(min(kept) * 100 + 1e-9) / 100


def staleness_stats(run: Run) -> tuple[float | None, int | None]:
    """(mean, max) staleness of the run's applied updates (updates.jsonl): 0, 0 for BSP; (None, None)
    for a run without the file (sequential, Pool) or without updates. Raises RunDirError if corrupt."""
    s = run.staleness
    if s is None or not len(s):
        return None, None
    return float(s.mean()), int(s.max())


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def records(runs: list[Run], baseline: Run) -> list[dict]:
    """One dict per run (RECORD_FIELDS), grouped by configuration, the baseline's group first.

    `repeat` counts the runs of a configuration in the given order (1, 2, ...); speedup is against
    the median s/step of the baseline's group; `too_short` when the run's window or the baseline
    group's median window is too short to time; `note` is TOO_SHORT, "above P" (a speedup above P
    that is not too short: timing_notes says its likely cause) or "". Raises RunDirError when a
    check.npz is corrupt.
    """
    groups = grouped(with_baseline(runs, baseline))
    base = [window(r) for r in groups[0]]
    base_sps = _median(w.s_per_step for w in base)
    base_short = Window(0, int(np.median([w.steps for w in base])), _median(w.seconds for w in base)).too_short
    out = []
    for g, group in enumerate(groups):
        for repeat, run in enumerate(group, 1):
            w, s = window(run), run.summary
            sps = w.s_per_step
            speedup = base_sps / sps if base_sps and sps else None
            check = same_model(run, baseline)
            steps = s.get("steps")
            moved = float(np.nansum(run.column("bytes_sent")) + np.nansum(run.column("bytes_recv")))
            too_short = w.too_short or base_short
            diverged, why = divergence(run)
            if diverged:  # no speedup is claimed for a run that did not train
                speedup = None
            above = g > 0 and speedup is not None and speedup > run.workers
            stale_mean, stale_max = staleness_stats(run)
            setup = run.setup
            out.append({
                "run": run.label, "mode": run.mode, "transport": run.transport, "consistency": run.consistency,
                "ssp_bound": run.config.get("staleness") if run.consistency == "ssp" else None, "P": run.workers,
                "repeat": repeat, "steps": steps, "warmup_steps": w.warmup_steps, "timed_steps": w.steps,
                "timed_s": w.seconds, "ms_per_step": sps * 1e3 if sps else None, "speedup": speedup,
                "efficiency": speedup / run.workers if speedup is not None else None,
                "total_s": number(s.get("total_time_s")), "wall_s": number(s.get("wall_time_s")),
                "train_acc": _final(run, "train_acc"), "test_acc": _final(run, "test_acc"),
                "train_loss": _final(run, "train_loss"), "test_loss": _final(run, "test_loss"),
                "comm_share": _comm_share(run), "bytes_per_step": moved / steps if steps else None,
                "push_ratio": push_ratio(run.config),  # --compress: a GRAD's encoded / raw bytes
                "check_steps": check["steps"], "check_diff": check["diff"], "check_tol": check["tol"],
                "same_model": check["ok"], "not_bsp": check["not_bsp"], "staleness_mean": stale_mean,
                "staleness_max": stale_max, "too_short": too_short,
                "note": DIVERGED if diverged else TOO_SHORT if too_short else ("above P" if above else ""),
                "diverged": diverged, "diverged_why": why,
                "blas_threads": max((b.get("num_threads") or 0 for b in run.meta.get("machine", {}).get("blas") or []),
                                    default=None),
                "faults": setup.get("faults") or None, "colocate": setup.get("colocate"), "link": setup.get("link"),
                "path": str(run.path), "_run": run})
    target = accuracy_target(out)
    for r in out:
        r["target_acc"], r["time_to_acc_s"] = target, time_to_accuracy(r.pop("_run"), target)
    return out


def write_results(out_dir, recs: list[dict], meta: dict) -> list[Path]:
    """Write out_dir/experiment.json ({"experiment": meta, "records": recs}) and experiment.csv (one
    row per record, RECORD_FIELDS as columns, an empty cell for None); returns both paths.
    Raises WriteError."""
    out_dir = Path(out_dir)
    doc = {"experiment": meta, "records": [{k: r.get(k) for k in RECORD_FIELDS} for r in recs]}
    json_path = write_file(out_dir / "experiment.json", (json_text(doc, indent=2) + "\n").encode())
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RECORD_FIELDS)
    for r in recs:
        writer.writerow(["" if (v := r.get(k)) is None or (isinstance(v, float) and not math.isfinite(v)) else v
                         for k in RECORD_FIELDS])
    return [json_path, write_file(out_dir / "experiment.csv", buf.getvalue().encode())]


def thresholds() -> dict:
    """The constants the records were judged by, for experiment.json."""
    return {"warmup_steps": WARMUP_STEPS, "min_timed_steps": MIN_TIMED_STEPS, "min_timed_s": MIN_TIMED_S,
            "check_steps": CHECK_STEPS, "check_tol": CHECK_TOL}


def _check_cell(first_group: bool, ok: bool | None, diffs: list[float], not_bsp: bool) -> str | None:
    if not_bsp:
        return "n/a (not bsp)"
    if not diffs:
        return None
    worst = max(diffs)
    if first_group and ok:
        return "reference"
    if ok:
        return "ok 0" if worst == 0 else f"ok {worst:.0e}"
    return f"FAILED {worst:.1e}"


def table_rows(recs: list[dict]) -> list[dict]:
    """One row per configuration from its records (records()): every figure the median over its repeats
    (timed_s, ms_per_step, accuracy and loss, comm_share, bytes_per_step, time_to_acc); speedup = the
    baseline's median ms_per_step / this median; `speedup_range` (min, max) of the repeats' speedups
    (None for one run); `same_model` as the table prints it and `check_ok` (False if any repeat failed);
    `too_short` if any repeat is; `above_p` when a speedup shown (median or max) is above P; `diverged`
    if any repeat diverged (then no speedup, efficiency or time to accuracy); with an accuracy_target,
    `time_to_acc` (s), `tta_speedup` (the baseline's / this) and `target_acc`."""
    groups: dict[str, list[dict]] = {}
    for r in recs:
        groups.setdefault(r["run"], []).append(r)
    rows = []
    base_ms = _median(r["ms_per_step"] for r in next(iter(groups.values()), []))
    for i, rs in enumerate(groups.values()):
        first, p = rs[0], rs[0]["P"]
        speedups = [r["speedup"] for r in rs if r["speedup"] is not None]
        ms = _median(r["ms_per_step"] for r in rs)
        speedup = base_ms / ms if base_ms and ms else None  # of the medians: exactly 1 for the baseline
        oks = [r["same_model"] for r in rs]
        diffs = [r["check_diff"] for r in rs if r["check_diff"] is not None]
        too_short = any(r["too_short"] for r in rs)
        diverged = any(r["diverged"] for r in rs)
        if diverged:
            speedup, speedups = None, []
        above = i > 0 and bool(speedups) and max(speedups) > p
        tta = _median(r["time_to_acc_s"] for r in rs) if not diverged else None
        base_tta = _median(r["time_to_acc_s"] for r in next(iter(groups.values())))
        rows.append({
            "run": first["run"], "mode": first["mode"], "transport": first["transport"], "P": p, "runs": len(rs),
            "consistency": first["consistency"] and first["consistency"] + (
                f" S={first['ssp_bound']}" if first["ssp_bound"] is not None else ""),
            "staleness_mean": _median(r["staleness_mean"] for r in rs),
            "staleness_max": max((r["staleness_max"] for r in rs if r["staleness_max"] is not None), default=None),
            "timed_steps": int(np.median([r["timed_steps"] for r in rs])),
            "timed_s": _median(r["timed_s"] for r in rs), "ms_per_step": ms,
            "speedup": speedup, "speedup_range": (min(speedups), max(speedups)) if len(speedups) > 1 else None,
            "efficiency": speedup / p if speedup is not None else None,
            **{k: _median(r[k] for r in rs) for k in ("train_acc", "test_acc", "train_loss", "test_loss")},
            **{k: first[k] for k in ("steps", "warmup_steps", "blas_threads")},
            "same_model": _check_cell(i == 0, None if None in oks else all(oks), diffs,
                                      any(r.get("not_bsp") for r in rs)),
            "check_ok": None if None in oks else all(oks), "check_diff": max(diffs) if diffs else None,
            "check_tol": first["check_tol"],
            "comm_share": _median(r["comm_share"] for r in rs),
            "bytes_per_step": _median(r["bytes_per_step"] for r in rs), "push_ratio": first["push_ratio"],
            "too_short": too_short, "above_p": above, "diverged": diverged,
            "diverged_why": next((r["diverged_why"] for r in rs if r["diverged"]), None),
            **({"time_to_acc": tta, "tta_speedup": base_tta / tta if base_tta and tta else None,
                "target_acc": first["target_acc"]} if first["target_acc"] is not None else {}),
            "note": DIVERGED if diverged else TOO_SHORT if too_short else ("above P" if above else ""),
            "path": first["path"], "paths": [r["path"] for r in rs]})
    return rows
