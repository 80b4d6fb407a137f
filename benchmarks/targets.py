"""The benchmark of issue 16: parsgd's speed and memory targets, each checked against medians over
interleaved rounds and read against the ceiling these cores allow.

    python benchmarks/targets.py            # 3 rounds + memory, ~4-6 min on 2 cores -> benchmarks/targets.{json,md}
    python benchmarks/targets.py --rounds 1 --num-samples 8192 --epochs 2 --skip-memory   # smoke check, < 1 min

A round runs every case once, each as its own process tree (run.py's run_case, with OPENBLAS_CORETYPE
and OPENBLAS_L2_SIZE removed from the environment): sequential 1 and 2 BLAS threads, PS shm P=1 and
P=2 at batch 256 and 1024, PS tcp P=2 at batch 1024, and two sequential 1-thread trainers started
together (the co-run, at both batch sizes). A case's figure is the median over rounds of its runs'
sec/epoch; a target's ratio is the ratio of those medians, and its min-max is the spread of the
same ratio within each round. After the rounds, peak total PSS of `parsgd launch --workers 8` and
`--workers 1` (benchmarks/pss.py). See benchmarks/README.md, "Issue 16 targets".
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import machine  # noqa: E402
import proctree  # noqa: E402
from proctree import run_watched  # noqa: E402
from run import REMOVED_ENV, REPO, Case, add_ratios, argv_for, bench_env, run_case  # noqa: E402

F32 = "float32"
NOISY = 0.2                   # other_cpu_cores above this: the round (or run) was noisy
SERVER_SPANS = ("serialize", "send", "recv", "deserialize", "aggregate", "update")  # + wait
CORUN_KEY = "seq-1t-x2"
# Starts every argv in argv[1] (a JSON list) at once, waits for all; exit status: the first non-zero.
_CORUN = ("import json, subprocess, sys\n"
          "procs = [subprocess.Popen(a) for a in json.loads(sys.argv[1])]\n"
          "codes = [p.wait() for p in procs]\n"
          "sys.exit(next((1 if c < 0 else c for c in codes if c), 0))\n")


def round_cases() -> list[Case | tuple[str, int]]:
    """One round, in run order: per batch size the baselines, then PS, then the co-run ("corun", batch)."""
    out: list[Case | tuple[str, int]] = []
    for b in (256, 1024):
        out += [Case("seq", F32, b, threads=1), Case("seq", F32, b, threads=2),
                Case("ps", F32, b, workers=1, transport="shm"), Case("ps", F32, b, workers=2, transport="shm"),
                Case("ps", F32, b, workers=2, transport="shm", colocate=True)]
        if b == 1024:
            out.append(Case("ps", F32, b, workers=2, transport="tcp"))
        out.append(("corun", b))
    return out


def _epoch_times(out: Path, warmup: int) -> tuple[list[float], list[float]]:
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    times = [m["epoch_time_s"] for m in metrics]
    return times, times[warmup:]


def run_corun(batch: int, s: dict, work: Path, timeout_s: float) -> dict:
    """Two sequential 1-thread trainers started together: their sec/epoch, the mean of the two."""
    base = Case("seq", F32, batch, threads=1)
    outs = [work / f"{F32}-b{batch}-{CORUN_KEY}-{x}" for x in "ab"]
    log = work / f"{F32}-b{batch}-{CORUN_KEY}.log"
    row = {"key": CORUN_KEY, "label": "2 x sequential 1 BLAS thread, at once", "mode": "corun", "dtype": F32,
           "batch": batch, "workers": 2, "threads": 1, "num_samples": s["num_samples"], "epochs": s["epochs"],
           "warmup_epochs": s["warmup"], "load_1min_before": round(os.getloadavg()[0], 2)}
    argv = [sys.executable, "-c", _CORUN, json.dumps([argv_for(base, s, o) for o in outs])]
    w = run_watched(argv, bench_env(), log, timeout_s, cwd=str(REPO))
    row.update(wall_s=round(w.wall_s, 2), peak_rss=w.peak_by_role(), other_cpu_cores=w.other_cpu_cores)
    if w.timed_out or w.returncode != 0:
        why = f"timed out after {timeout_s:g} s" if w.timed_out else f"exit status {w.returncode}"
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-6:])
        return {**row, "status": "failed", "error": f"{why}: {tail}"}
    each = []
    for o in outs:
        times, measured = _epoch_times(o, s["warmup"])
        if not measured:
            return {**row, "status": "failed", "error": f"no epoch after the warm-up in {o.name}"}
        each.append({"epoch_times_s": [round(t, 4) for t in times],
                     "sec_per_epoch": round(statistics.median(measured), 4)})
    spe = statistics.mean(e["sec_per_epoch"] for e in each)
    steps = math.ceil(s["num_samples"] / batch)
    return {**row, "status": "ok", "trainers": each, "sec_per_epoch": round(spe, 4), "steps_per_epoch": steps,
            "ms_per_step": round(spe / steps * 1e3, 3)}


def run_memory(workers: int, s: dict, work: Path, timeout_s: float) -> dict:
    """Peak total PSS of `parsgd launch --workers N --transport shm`, 1 epoch (benchmarks/pss.py)."""
    import pss  # lazily: only the memory part needs it

    case = Case("ps", F32, 256, workers=workers, transport="shm")
    out = work / f"memory-p{workers}"
    log = work / f"memory-p{workers}.log"
    argv = argv_for(case, {**s, "epochs": 1}, out)
    roles: dict[int, str] = {}
    result: dict = {}
    busy0, ours0, t0 = proctree.busy_s(), proctree.ours_s(), time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=bench_env(),
                                cwd=str(REPO), start_new_session=True)
        done = threading.Event()

        def name_roles():  # which pid is the launcher, the server, a worker (read while they live)
            while not done.wait(0.3):
                for pid in proctree.tree(proc.pid):
                    role = proctree.role_of(pid, proc.pid)  # a zombie's empty cmdline reads as "child"
                    if roles.get(pid, "child") in ("child", "main") and role != "unknown":
                        roles[pid] = role

        sampler = threading.Thread(target=lambda: result.update(pss.sample_tree_pss(proc.pid)), daemon=True)
        namer = threading.Thread(target=name_roles, daemon=True)
        sampler.start()
        namer.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            proctree._stop_group(proc)
        finally:
            sampler.join(timeout=10)
            done.set()
            namer.join()
    wall = time.perf_counter() - t0
    row = {"workers": workers, "command": " ".join(argv[1:]), "wall_s": round(wall, 2),
           "other_cpu_cores": proctree.other_cores(busy0, ours0, wall)}
    if timed_out or proc.returncode != 0:
        why = f"timed out after {timeout_s:g} s" if timed_out else f"exit status {proc.returncode}"
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-6:])
        return {**row, "status": "failed", "error": f"{why}: {tail}"}
    by_role: dict[str, dict] = {}
    for pid, mb in result.get("peak_by_pid", {}).items():
        r = by_role.setdefault(roles.get(pid, "unknown"), {"max_mb": 0.0, "n": 0})
        r["max_mb"], r["n"] = max(r["max_mb"], mb), r["n"] + 1
    return {**row, "status": "ok", "peak_total_mb": result.get("peak_total_mb"), "samples": result.get("samples"),
            "peak_by_role": by_role, "peak_by_pid": {pid: {"role": roles.get(pid, "unknown"), "mb": mb}
                                                     for pid, mb in result.get("peak_by_pid", {}).items()}}


# -- summarising ------------------------------------------------------------------------------------
def _spread(values: list[float]) -> dict | None:
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": round(statistics.median(v), 4), "min": round(min(v), 4), "max": round(max(v), 4),
            "per_round": [None if x is None else round(x, 4) for x in values]}


def _ok(rows, batch, key):
    return [r for r in rows if r.get("status") == "ok" and r["batch"] == batch and r["key"] == key]


def summarise(rounds: list[dict]) -> dict:
    """Per case: sec/epoch over rounds. Per ratio: ratio of medians, and the per-round ratios' min-max."""
    rows = [r for rd in rounds for r in rd["runs"]]
    cases = {}
    for b, k in dict.fromkeys((r["batch"], r["key"]) for r in rows):
        sp = _spread([r["sec_per_epoch"] for r in _ok(rows, b, k)])
        if sp:
            cases[f"b{b} {k}"] = sp

    def med(b, k):
        c = cases.get(f"b{b} {k}")
        return c["median"] if c else None

    def ratio(b, key, base):
        """base sec/epoch / key sec/epoch: the ratio of medians, and each round's own ratio."""
        num, den = med(b, base), med(b, key)
        per_round = []
        for rd in rounds:
            a, z = _ok(rd["runs"], b, base), _ok(rd["runs"], b, key)
            per_round.append(a[0]["sec_per_epoch"] / z[0]["sec_per_epoch"] if a and z else None)
        sp = _spread(per_round) or {}
        return {**sp, "median": round(num / den, 4) if num and den else None}

    ceilings = {}
    for b in (256, 1024):
        c = ratio(b, "seq-1t", CORUN_KEY)   # corun / seq-1t: the slowdown c
        s1, s2 = med(b, "seq-1t"), med(b, "seq-2t")
        cm = c.get("median")
        ceilings[b] = {"c": c, "vs_seq1": round(2 / cm, 4) if cm else None,
                       "vs_seq2": round(2 / cm * s2 / s1, 4) if cm and s1 and s2 else None,
                       "seq2_over_seq1": round(s2 / s1, 4) if s1 and s2 else None}
    return {"cases": cases, "ratio": ratio, "ceilings": ceilings}


def breakdown(rounds: list[dict]) -> list[dict]:
    """ms/step of every PS case, medians over rounds: step, slowest compute, control overhead, server spans."""
    rows = [r for rd in rounds for r in rd["runs"] if r["mode"] == "ps" and r.get("status") == "ok"
            and r.get("comm", {}).get("steps")]
    out = []
    for b, k in dict.fromkeys((r["batch"], r["key"]) for r in rows):
        runs = [r for r in rows if (r["batch"], r["key"]) == (b, k)]

        def m(get):
            v = [get(r) for r in runs]
            v = [x for x in v if x is not None]
            return round(statistics.median(v), 4) if v else None

        sm = lambda r, x: r["comm"]["server_ms_per_step"].get(x)  # noqa: E731
        out.append({"batch": b, "key": k, "label": runs[0]["label"], "runs": len(runs),
                    "step_ms": m(lambda r: r["ms_per_step"]),
                    "slowest_compute_ms": m(lambda r: r["comm"]["slowest_compute_ms"].get("mean")),
                    "worker_compute_ms": m(lambda r: r["comm"]["worker_ms_per_step_mean_over_workers"].get("compute")),
                    "control_overhead_median_ms": m(lambda r: r["comm"]["control_overhead_ms"].get("median")),
                    "control_overhead_mean_ms": m(lambda r: r["comm"]["control_overhead_ms"].get("mean")),
                    "server_serial_ms": m(server_serial),
                    "server_ms": {x: m(lambda r, x=x: sm(r, x)) for x in (*SERVER_SPANS, "wait")}})
    return out


def server_serial(r: dict) -> float | None:
    """The server's serial part of a step: its mean ms/step in every span that is not `wait`."""
    spans = r.get("comm", {}).get("server_ms_per_step")
    return sum(v for k, v in spans.items() if k != "wait") if spans else None


def targets(summary: dict, rounds: list[dict], memory: dict | None) -> list[dict]:
    ratio, ceil = summary["ratio"], summary["ceilings"]
    out = []

    def add(what, measured, op, bound, ceiling=None, **extra):
        v = (measured or {}).get("median")
        met = None if v is None or op is None else {">=": v >= bound, "<=": v <= bound, "<": v < bound}[op]
        out.append({"target": what, "measured": measured, "want": f"{op} {bound:g}" if op else "(for reading)",
                    "ceiling": ceiling, "met": met, **extra})

    for b in (256, 1024):
        add(f"PS shm P=1 vs seq 1 thread, batch {b}", ratio(b, "ps-shm-p1", "seq-1t"), ">=", 0.9, 1.0)
    add("PS shm P=2 vs seq 2 threads, batch 256", ratio(256, "ps-shm-p2", "seq-2t"), ">=", 0.9, ceil[256]["vs_seq2"])
    add("PS shm P=2 vs seq 2 threads, batch 1024", ratio(1024, "ps-shm-p2", "seq-2t"), ">=", 1.05,
        ceil[1024]["vs_seq2"])
    for b in (256, 1024):  # the same with worker 0 in the server's process: an option, read beside the target
        add(f"PS shm P=2 --colocate vs seq 2 threads, batch {b}", ratio(b, "ps-shm-p2-colocated", "seq-2t"), None, 0,
            ceil[b]["vs_seq2"])
    for b in (256, 1024):
        add(f"co-run slowdown c, batch {b} (2 seq 1-thread at once / 1 alone)", ceil[b]["c"], None, 0,
            ceil[b]["vs_seq1"])
    # control overhead (step median) + server serial part, per P=2 b256 run
    p2 = [[r for r in rd["runs"] if r.get("status") == "ok" and (r["batch"], r["key"]) == (256, "ps-shm-p2")
           and r.get("comm", {}).get("steps")] for rd in rounds]
    co = [x[0]["comm"]["control_overhead_ms"]["median"] if x else None for x in p2]
    ser = [server_serial(x[0]) if x else None for x in p2]
    tot = [a + z if a is not None and z is not None else None for a, z in zip(co, ser)]
    add("control overhead + server serial, ms/step, PS shm P=2, batch 256", _spread(tot), "<=", 0.4,
        components={"control_overhead_median_ms": _spread(co), "server_serial_ms": _spread(ser)})
    add("PS tcp P=2 vs seq 1 thread, batch 1024", ratio(1024, "ps-tcp-p2", "seq-1t"), ">=", 1.2, ceil[1024]["vs_seq1"])
    mem = memory or {}
    p8, p1 = mem.get("p8", {}), mem.get("p1", {})
    pk8 = p8.get("peak_total_mb") if p8.get("status") == "ok" else None
    pk1 = p1.get("peak_total_mb") if p1.get("status") == "ok" else None
    add("peak total PSS, launch --workers 8, MB", {"median": pk8} if pk8 is not None else None, "<=", 1200)
    add("PSS per extra worker, (PSS(8) - PSS(1)) / 7, MB",
        {"median": round((pk8 - pk1) / 7, 1)} if pk8 is not None and pk1 is not None else None, "<", 60)
    return out


# -- the report --------------------------------------------------------------------------------------
def _f(x, fmt="{:.2f}", none="-"):
    return none if x is None else fmt.format(x)


def _m(sp, fmt="{:.3f}") -> str:
    if not sp or sp.get("median") is None:
        return "-"
    if "min" not in sp or len([x for x in sp.get("per_round", []) if x is not None]) < 2:
        return fmt.format(sp["median"])
    return f"{fmt.format(sp['median'])} ({fmt.format(sp['min'])}-{fmt.format(sp['max'])})"


def markdown(res: dict) -> str:
    s, m = res["settings"], res["machine"]
    blas = "; ".join(f"{b['internal_api']} {b['version']} ({b['architecture']}, {b['threading_layer']})"
                     for b in m.get("blas", []))
    L = ["# parsgd issue 16 targets", "",
         f"`{res['command']}` on {m['date']}: {res['runtime_s']:.0f} s in all.", "",
         f"- machine: {m['cores']} cores ({m['cpu']}), parsgd {m['parsgd_commit']}, BLAS {blas}, "
         f"removed from the runs' environment: {', '.join(REMOVED_ENV)}",
         f"- {s['rounds']} interleaved round(s) of {s['runs_per_round']} runs, {s['num_samples']:,} synthetic rows, "
         f"float32, {s['epochs']} epochs per run (sec/epoch = median of the epochs after {s['warmup']} warm-up); "
         "a case's figure is the median over rounds; a ratio is the ratio of those medians, (min-max) the same "
         "ratio within each round (a ratio of medians can fall outside that range).",
         f"- noise: other processes took {_f(res['other_cpu_cores'])} of the 2 cores during the rounds; per round: "
         + ", ".join(f"{rd['round']}: {_f(rd['other_cpu_cores'])}" for rd in res["rounds"])
         + f" (above {NOISY} is noisy)."]
    if s["rounds"] < 3:
        L.append(f"- **only {s['rounds']} round(s): a smoke test, not a verdict (the issue asks for 3 or more).**")
    if any(rd["noisy"] for rd in res["rounds"]):
        L.append("- **noisy round(s): " + ", ".join(str(rd["round"]) for rd in res["rounds"] if rd["noisy"])
                 + "; the ratios are not to be trusted.**")
    L += ["", "## Targets", "",
          "| target | measured: median (min-max over rounds) | want | ceiling on these cores | met |",
          "|---|---:|---|---:|---|"]
    for t in res["targets"]:
        met = "info" if t["want"].startswith("(") else ("n/a" if t["met"] is None else ("met" if t["met"] else "NOT met"))
        fmt = "{:.1f}" if "MB" in t["target"] else "{:.3f}"
        L.append(f"| {t['target']} | {_m(t['measured'], fmt)} | {t['want']} | {_f(t['ceiling'])} | {met} |")
    tc = next(t for t in res["targets"] if t["target"].startswith("control overhead"))
    L += ["", f"Control overhead + server serial (P=2 b256): control overhead, median over steps, "
          f"{_m(tc['components']['control_overhead_median_ms'])} ms + server serial part "
          f"{_m(tc['components']['server_serial_ms'])} ms = {_m(tc['measured'])} ms per step (medians over rounds, "
          "so the sum may differ from the sum of the two)."]
    L += ["", "## The ceiling on these 2 cores", "",
          "c = sec/epoch of two sequential 1-thread trainers run at once (mean of the two) / sec/epoch of one "
          "alone. P=2 cannot beat running two independent trainers side by side, so its ceiling is 2 / c times "
          "sequential 1 thread, and (2 / c) x seq2t / seq1t times sequential 2 threads (the units of the targets).",
          "", "| batch | seq 1t s/epoch | seq 2t s/epoch | co-run s/epoch | c | ceiling vs seq 1t | ceiling vs seq 2t |",
          "|---:|---:|---:|---:|---:|---:|---:|"]
    cs = res["cases"]
    for b, c in res["ceilings"].items():
        L.append(f"| {b} | {_m(cs.get(f'b{b} seq-1t'))} | {_m(cs.get(f'b{b} seq-2t'))} | "
                 f"{_m(cs.get(f'b{b} {CORUN_KEY}'))} | {_m(c['c'])} | {_f(c['vs_seq1'])} | {_f(c['vs_seq2'])} |")
    L += ["", "## Cases (sec/epoch, median (min-max) over rounds)", "", "| case | s/epoch | other CPU per round |",
          "|---|---:|---|"]
    for key, sp in cs.items():
        b, k = key.split(" ", 1)
        runs = [r for rd in res["rounds"] for r in rd["runs"] if f"b{r['batch']}" == b and r["key"] == k]
        L.append(f"| {b} {runs[0]['label']} | {_m(sp)} | {', '.join(_f(r.get('other_cpu_cores')) for r in runs)} |")
    failed = [r for rd in res["rounds"] for r in rd["runs"] if r.get("status") != "ok"]
    for r in failed:
        L.append(f"| b{r['batch']} {r['label']} | {r['status']}: {r.get('error', '')[:160]} | |")
    spans = (*SERVER_SPANS, "wait")
    L += ["", "## Where a PS step goes (ms per step, after warm-up, medians over rounds, from comm.jsonl)", "",
          "step = sec/epoch / steps; slowest compute = the slowest worker's compute in each step (mean); control "
          "overhead = server wait - slowest compute (median over steps / mean); server serial = every server span "
          "but wait.", "",
          "| run | step | slowest compute | ctrl overhead med / mean | server serial | "
          + " | ".join(f"srv {x}" for x in spans) + " |", "|---|" + "---:|" * (4 + len(spans))]
    for r in res["breakdown"]:
        L.append(f"| b{r['batch']} {r['label']} | {_f(r['step_ms'])} | {_f(r['slowest_compute_ms'])} | "
                 f"{_f(r['control_overhead_median_ms'])} / {_f(r['control_overhead_mean_ms'])} | "
                 f"{_f(r['server_serial_ms'], '{:.3f}')} | "
                 + " | ".join(_f(r["server_ms"].get(x), "{:.3f}") for x in spans) + " |")
    mem = res.get("memory")
    L += ["", "## Memory (peak total PSS of the process tree, benchmarks/pss.py)", ""]
    if not mem:
        L.append("Skipped (--skip-memory).")
    elif "error" in mem:
        L.append(f"Not measured: {mem['error']}")
    else:
        L += [f"`parsgd launch --transport shm`, {s['num_samples']:,} rows, batch 256, 1 epoch.", "",
              "| workers | peak total PSS MB | largest per role MB | samples | wall s | other CPU |",
              "|---:|---:|---|---:|---:|---:|"]
        for k in ("p1", "p8"):
            r = mem.get(k, {})
            if r.get("status") != "ok":
                L.append(f"| {r.get('workers', k)} | {r.get('status')}: {r.get('error', '')[:160]} | | | | |")
                continue
            roles = ", ".join(f"{role} {v['max_mb']:.0f} (x{v['n']})" for role, v in sorted(r["peak_by_role"].items()))
            L.append(f"| {r['workers']} | {r['peak_total_mb']:.1f} | {roles} | {r['samples']} | {r['wall_s']:.1f} | "
                     f"{_f(r['other_cpu_cores'])} |")
    return "\n".join(L)


def _finite(x):
    """Strict JSON: NaN and infinities become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the issue asks for >= 3) [default 3]")
    ap.add_argument("--num-samples", type=int, default=60_000, help="synthetic training rows [default 60000]")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per speed run, the first is the warm-up [default 3]")
    ap.add_argument("--out", type=Path, default=HERE / "targets.json",
                    help="results JSON; the markdown goes next to it (.md) [default benchmarks/targets.json]")
    ap.add_argument("--keep-runs", type=Path, help="keep the run directories and logs here")
    ap.add_argument("--skip-memory", action="store_true", help="do not run the PSS measurement")
    ap.add_argument("--case-timeout", type=float, default=150.0, help="seconds before a run is stopped [default 150]")
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")
    if a.epochs < 2:
        ap.error("--epochs must be >= 2 (the first is the warm-up)")
    if not 1024 <= a.num_samples <= 60_000:
        ap.error("--num-samples must be in 1024..60000")
    s = {"rounds": a.rounds, "num_samples": a.num_samples, "epochs": a.epochs, "warmup": 1,
         "runs_per_round": len(round_cases())}
    # seconds on 2 idle cores: ~1.2 s of start-up per run, the rest scales with rows x epochs
    est = a.rounds * (13 + 37 * a.num_samples * a.epochs / 180_000)
    est += 0 if a.skip_memory else 8 + 17 * a.num_samples / 60_000
    t0 = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    print(f"parsgd targets: {a.rounds} round(s) x {s['runs_per_round']} runs"
          f"{'' if a.skip_memory else ' + memory'}, {a.num_samples} rows x {a.epochs} epochs, load {load_start}; "
          f"about {est / 60:.1f} min on 2 idle cores", flush=True)
    mach = machine.info(bench_env(), str(REPO))
    work = a.keep_runs or Path(tempfile.mkdtemp(prefix="parsgd-targets-"))
    work.mkdir(parents=True, exist_ok=True)
    rounds: list[dict] = []
    memory: dict | None = None
    busy0, ours0 = proctree.busy_s(), proctree.ours_s()
    try:
        for n in range(1, a.rounds + 1):
            rdir = work / f"round{n}"
            rdir.mkdir(parents=True, exist_ok=True)
            rb0, ro0, rt0 = proctree.busy_s(), proctree.ours_s(), time.perf_counter()
            runs = []
            for i, case in enumerate(round_cases(), 1):
                if isinstance(case, tuple):
                    r = run_corun(case[1], s, rdir, a.case_timeout)
                else:
                    r = run_case(case, s, rdir, a.case_timeout)
                r["round"] = n
                runs.append(r)
                shown = f"{r['sec_per_epoch']:.3f} s/epoch" if r["status"] == "ok" else f"{r['status']}: {r['error'][:200]}"
                print(f"[round {n} {i:2}/{s['runs_per_round']}] b{r['batch']} {r['label']}: {shown} "
                      f"(other CPU {_f(r.get('other_cpu_cores'))} cores, {r.get('wall_s', 0):.1f} s)", flush=True)
            add_ratios(runs)   # each run's speedup against the baselines of its own round
            other = proctree.other_cores(rb0, ro0, time.perf_counter() - rt0)
            noisy = other is not None and other > NOISY
            rounds.append({"round": n, "other_cpu_cores": other, "noisy": noisy, "runs": runs})
            if noisy:
                worst = [f"b{r['batch']} {r['label']} {r['other_cpu_cores']:.2f}" for r in runs
                         if (r.get("other_cpu_cores") or 0) > NOISY]
                print(f"WARNING: round {n} was noisy: other processes took {other:.2f} of the 2 cores "
                      f"(> {NOISY}); noisy runs: {'; '.join(worst) or 'none alone'}", flush=True)
        other_speed = proctree.other_cores(busy0, ours0, time.perf_counter() - t0)
        if not a.skip_memory:
            try:
                memory = {}
                for w in (1, 8):
                    memory[f"p{w}"] = r = run_memory(w, s, work, a.case_timeout)
                    shown = f"peak total PSS {r['peak_total_mb']:.1f} MB" if r["status"] == "ok" else r["error"][:200]
                    print(f"[memory] launch --workers {w}: {shown} ({r['wall_s']:.1f} s)", flush=True)
            except ImportError as exc:
                memory = {"error": f"benchmarks/pss.py is not importable ({exc})"}
                print(f"[memory] {memory['error']}", flush=True)
    finally:
        if not a.keep_runs:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarise(rounds)
    res = {"command": " ".join(["python", "benchmarks/targets.py", *sys.argv[1:]]), "machine": mach,
           "settings": s, "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
           "other_cpu_cores": other_speed, "runtime_s": round(time.perf_counter() - t0, 1),
           "cases": summary["cases"], "ceilings": summary["ceilings"], "targets": targets(summary, rounds, memory),
           "breakdown": breakdown(rounds), "memory": memory, "rounds": rounds}
    res = _finite(res)
    md = markdown(res)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, allow_nan=False) + "\n")
    a.out.with_suffix(".md").write_text(md + "\n")
    print("\n" + md)
    print(f"\nwritten: {a.out} and {a.out.with_suffix('.md')}")
    runs_ok = all(r["status"] == "ok" for rd in rounds for r in rd["runs"])
    mem_ok = not memory or ("error" not in memory and all(v.get("status") == "ok" for v in memory.values()))
    return 0 if runs_ok and mem_ok else 1


if __name__ == "__main__":
    sys.exit(main())
