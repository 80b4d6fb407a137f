"""The benchmark suite of issue 6: seconds per epoch of every training mode, as ratios against the
sequential baseline measured in the same run, plus the floors of moving the parameter vector.

    python benchmarks/run.py            # full suite, < 10 min on 2 cores -> benchmarks/results.{json,md}
    python benchmarks/run.py --quick    # smoke check, < 1 min -> benchmarks/results-quick.{json,md}

Every mode runs as its own process with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from its
environment. sec/epoch is the median of the epochs after the warm-up epoch(s); for parsgd's own
modes it is metrics.jsonl's `epoch_time_s` (training steps only, evaluation excluded). See
benchmarks/README.md for what each row means.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import commstats  # noqa: E402
import machine  # noqa: E402
import proctree  # noqa: E402
from proctree import run_watched  # noqa: E402

REMOVED_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
SEED = 42
FULL = {"num_samples": 60_000, "epochs": 3, "warmup": 1, "budget_s": 540, "case_timeout_s": 150,
        "floor_reps": 2000}
QUICK = {"num_samples": 16_384, "epochs": 2, "warmup": 1, "budget_s": 50, "case_timeout_s": 40,
         "floor_reps": 200}


@dataclass(frozen=True)
class Case:
    mode: str            # seq | textbook-seq | textbook-pool | pool | ps | torch | torch-ddp
    dtype: str
    batch: int
    workers: int = 1     # Pool processes, PS workers or DDP ranks
    threads: int = 1     # BLAS threads (seq) or torch threads (per rank)
    transport: str = ""  # PS only
    repeat: int = 0      # > 0: the same case again later in the group (baselines bracket their group)
    colocate: bool = False  # PS only: worker 0 in the server's process (--colocate)

    @property
    def key(self) -> str:
        return {"seq": f"seq-{self.threads}t", "textbook-seq": "textbook-seq-1t",
                "textbook-pool": f"textbook-pool-p{self.workers}", "pool": f"pool-p{self.workers}",
                "ps": f"ps-{self.transport}-p{self.workers}" + ("-colocated" if self.colocate else ""),
                "torch": f"torch-{self.threads}t",
                "torch-ddp": f"torch-ddp-{self.workers}x{self.threads}t"}[self.mode]

    @property
    def label(self) -> str:
        return self._label + (" (again)" if self.repeat else "")

    @property
    def _label(self) -> str:
        return {"seq": f"sequential, {self.threads} BLAS thread{'s' if self.threads > 1 else ''}",
                "textbook-seq": "textbook NumPy MLP, sequential, 1 thread",
                "textbook-pool": f"textbook Pool P={self.workers} (params + rows pickled per step)",
                "pool": f"parsgd Pool baseline P={self.workers}",
                "ps": f"PS {self.transport} P={self.workers}" + (" colocated" if self.colocate else ""),
                "torch": f"torch CPU, {self.threads} thread{'s' if self.threads > 1 else ''}",
                "torch-ddp": f"torch DDP gloo, {self.workers} ranks x {self.threads} thread"}[self.mode]

    @property
    def group(self) -> tuple[str, int]:
        return self.dtype, self.batch


def matrix(quick: bool) -> list[Case]:
    """The cases, in run order: the two issue-target groups first, then extra points, then torch."""
    def baselines(dtype, batch):
        return [Case("seq", dtype, batch, threads=1), Case("seq", dtype, batch, threads=2)]

    if quick:
        f, b = "float32", 256
        return baselines(f, b) + [
            Case("textbook-pool", f, b, workers=2), Case("pool", f, b, workers=2),
            Case("ps", f, b, workers=1, transport="shm"),
            *[Case("ps", f, b, workers=2, transport=t) for t in ("shm", "tcp", "ipc")],
            Case("ps", f, b, workers=4, transport="shm"),
            *[Case("seq", f, b, threads=t, repeat=1) for t in (1, 2)]]
    cases: list[Case] = []
    for batch in (256, 1024):                      # float32, every mode: the targets
        f = "float32"
        cases += baselines(f, batch) + [
            Case("textbook-seq", f, batch), Case("textbook-pool", f, batch, workers=2),
            Case("pool", f, batch, workers=2)]
        cases += [Case("ps", f, batch, workers=p, transport=t) for t in ("shm", "tcp", "ipc") for p in (1, 2, 4)]
        cases += [Case("seq", f, batch, threads=t, repeat=1) for t in (1, 2)]  # drift check; pooled below
    cases += baselines("float64", 256) + [Case("pool", "float64", 256, workers=2)] + [
        Case("ps", "float64", 256, workers=2, transport=t) for t in ("shm", "tcp")]
    cases += baselines("float32", 64) + [Case("ps", "float32", 64, workers=2, transport=t) for t in ("shm", "tcp")]
    for batch in (256, 1024):
        cases += [Case("torch", "float32", batch, threads=1), Case("torch", "float32", batch, threads=2),
                  Case("torch-ddp", "float32", batch, workers=2, threads=1)]
    return cases


def bench_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in REMOVED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def argv_for(case: Case, s: dict, out: Path) -> list[str]:
    py = sys.executable
    common = ["--num-samples", str(s["num_samples"]), "--epochs", str(s["epochs"]),
              "--batch-size", str(case.batch), "--dtype", case.dtype, "--seed", str(SEED)]
    parsgd = common + ["--dataset", "synthetic", "--out", str(out)]
    if case.mode == "seq":
        return [py, "-m", "parsgd", "train", "--workers", "1", "--blas-threads", str(case.threads), *parsgd]
    if case.mode == "pool":
        return [py, "-m", "parsgd", "train", "--workers", str(case.workers), *parsgd]
    if case.mode == "ps":
        return [py, "-m", "parsgd", "launch", "--workers", str(case.workers), "--transport", case.transport,
                "--wait-timeout", "60", *(["--colocate"] if case.colocate else []), *parsgd]
    if case.mode in ("textbook-seq", "textbook-pool"):
        workers = 0 if case.mode == "textbook-seq" else case.workers
        return [py, str(HERE / "textbook_pool.py"), "--workers", str(workers), *common]
    ranks = case.workers if case.mode == "torch-ddp" else 1
    return [py, str(HERE / "torch_ref.py"), "--ranks", str(ranks), "--threads", str(case.threads), *common]


def _last_json(log: Path) -> dict | None:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def _tail(log: Path, n: int = 6) -> str:
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-n:])


def run_case(case: Case, s: dict, work: Path, timeout_s: float) -> dict:
    out = work / f"{case.dtype}-b{case.batch}-{case.key}{'-again' if case.repeat else ''}"
    log = work / f"{out.name}.log"
    row = {"key": case.key, "label": case.label, **asdict(case), "num_samples": s["num_samples"],
           "epochs": s["epochs"], "warmup_epochs": s["warmup"], "load_1min_before": round(os.getloadavg()[0], 2)}
    watched = run_watched(argv_for(case, s, out), bench_env(), log, timeout_s, cwd=str(REPO))
    row.update(wall_s=round(watched.wall_s, 2), peak_rss=watched.peak_by_role(), other_cpu_cores=watched.other_cpu_cores)
    if watched.timed_out or watched.returncode != 0:
        why = f"timed out after {timeout_s:g} s" if watched.timed_out else f"exit status {watched.returncode}"
        return {**row, "status": "failed", "error": f"{why}: {_tail(log)}"}
    if case.mode in ("seq", "pool", "ps"):
        metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
        times = [m["epoch_time_s"] for m in metrics]
    else:
        result = _last_json(log) or {}
        if "skipped" in result:
            return {**row, "status": "skipped", "error": result["skipped"]}
        times = result.get("epoch_times", [])
        row["extra"] = {k: v for k, v in result.items() if k not in ("epoch_times", "train_loss")}
    measured = times[s["warmup"]:]
    if not measured:
        return {**row, "status": "failed", "error": f"no epoch after the warm-up: {_tail(log)}"}
    steps = math.ceil(s["num_samples"] / case.batch)
    spe = statistics.median(measured)
    row.update(status="ok", epoch_times_s=[round(t, 4) for t in times], sec_per_epoch=round(spe, 4),
               measured_epoch_s=[round(t, 4) for t in measured],
               steps_per_epoch=steps, ms_per_step=round(spe / steps * 1e3, 3))
    if case.mode == "ps":
        try:
            row["comm"] = commstats.step_costs(out, skip_steps=steps * s["warmup"])
        except (OSError, ValueError, KeyError) as exc:
            row["comm"] = {"error": f"{type(exc).__name__}: {exc}"}
    return row


def add_ratios(rows: list[dict]) -> dict:
    """speedup = baseline sec/epoch / this row's sec/epoch, against the same dtype and batch size.

    A baseline run more than once in its group (before and after the other rows) counts as the
    median of all its measured epochs: the same process can land 20% apart from one run to the next.
    """
    pooled: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("status") == "ok" and r["mode"] == "seq":
            pooled.setdefault((r["dtype"], r["batch"], r["key"]), []).extend(r["measured_epoch_s"])
    base = {k: statistics.median(v) for k, v in pooled.items()}
    for r in rows:
        if r.get("status") != "ok":
            continue
        for name, key in (("speedup_vs_seq1", "seq-1t"), ("speedup_vs_seq2", "seq-2t")):
            b = base.get((r["dtype"], r["batch"], key))
            r[name] = round(b / r["sec_per_epoch"], 3) if b else None
    return {f"{d} b{b} {k}": round(v, 4) for (d, b, k), v in base.items()}


def _find(rows, dtype, batch, key):
    return next((r for r in rows if r.get("status") == "ok" and (r["dtype"], r["batch"], r["key"]) == (dtype, batch, key)),
                None)


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets (float32, P=2), each measured from this run; None where a row is missing."""
    def ratio(batch, key, other):
        a, b = _find(rows, "float32", batch, key), _find(rows, "float32", batch, other)
        if a and other in ("seq-1t", "seq-2t"):  # the pooled baseline
            return a.get("speedup_vs_seq1" if other == "seq-1t" else "speedup_vs_seq2")
        return round(b["sec_per_epoch"] / a["sec_per_epoch"], 3) if a and b else None

    def overhead(batch, key, stat):
        r = _find(rows, "float32", batch, key)
        return (r or {}).get("comm", {}).get("control_overhead_ms", {}).get(stat)

    out = []
    for what, value, op, bound in (
            ("PS shm P=2 vs seq 1 thread, batch 256", ratio(256, "ps-shm-p2", "seq-1t"), ">=", 1.4),
            ("PS shm P=2 vs seq 2 threads, batch 256", ratio(256, "ps-shm-p2", "seq-2t"), ">=", 0.9),
            ("PS shm P=2 vs seq 1 thread, batch 1024", ratio(1024, "ps-shm-p2", "seq-1t"), ">=", 1.7),
            ("PS shm P=2 vs seq 2 threads, batch 1024", ratio(1024, "ps-shm-p2", "seq-2t"), ">", 1.0),
            ("PS shm P=2 vs textbook Pool P=2, batch 256", ratio(256, "ps-shm-p2", "textbook-pool-p2"), ">=", 4.0),
            ("PS shm P=2 vs torch DDP gloo 2 ranks, batch 256", ratio(256, "ps-shm-p2", "torch-ddp-2x1t"), ">=", 2.5),
            ("PS tcp P=2 vs seq 1 thread, batch 256", ratio(256, "ps-tcp-p2", "seq-1t"), ">=", 1.0),
            ("control overhead ms/step, PS shm P=2, batch 256 (mean)", overhead(256, "ps-shm-p2", "mean"), "<=", 0.5),
            ("control overhead ms/step, PS shm P=2, batch 256 (median)", overhead(256, "ps-shm-p2", "median"), "<=", 0.5)):
        met = None if value is None else {">=": value >= bound, ">": value > bound, "<=": value <= bound}[op]
        out.append({"target": what, "measured": value, "want": f"{op} {bound:g}", "met": met})
    return out


# -- the report --------------------------------------------------------------------------------------
def _f(x, fmt="{:.2f}", none="-"):
    return none if x is None else fmt.format(x)


def _rss(r) -> str:
    p = r.get("peak_rss", {})
    order = ("server", "worker", "launcher", "main", "child")
    return ", ".join(f"{role} {p[role]['max_mb']:.0f}" for role in order if role in p)


def markdown(res: dict) -> str:
    m, s = res["machine"], res["settings"]
    blas = "; ".join(f"{b['internal_api']} {b['version']} ({b['architecture']}, {b['threading_layer']}, "
                     f"{b['num_threads']} threads by default)" for b in m.get("blas", []))
    L = [f"# parsgd benchmark results{' (--quick)' if s['quick'] else ''}", "",
         f"`{res['command']}` on {m['date']}: {res['runtime_s']:.0f} s in all.", "",
         f"- machine: {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, parsgd {m['parsgd_commit']}",
         f"- BLAS (threadpoolctl, in the benchmark's environment): {blas}",
         f"- python {m.get('python')}, numpy {m.get('numpy')}, pyzmq {m.get('pyzmq')}, libzmq {m.get('libzmq')}, "
         f"msgpack {m.get('msgpack')}, torch {m.get('torch') or 'not installed'}",
         f"- removed from the runs' environment: {', '.join(REMOVED_ENV)} "
         f"(set here: {m['env_removed_for_runs'] or 'neither'})",
         f"- noise: other processes took {_f(res.get('other_cpu_cores'))} of the 2 cores on average during the "
         f"suite (load average at start {res['load_start']}, at end {res['load_end']}, which counts the suite's "
         "own processes too). The `other CPU` column is that figure during each row: rows above ~0.2 are "
         "noisy, and modes that use both cores suffer most.",
         f"- {s['num_samples']:,} synthetic rows, {s['epochs']} epochs per run, sec/epoch = median of epochs "
         f"after {s['warmup']} warm-up epoch(s); speedup = sequential sec/epoch / this row's sec/epoch "
         "(> 1: faster), same dtype and batch size.",
         f"- matrix: {s['matrix']}", "",
         "Control overhead = server wait per step minus the slowest worker's compute in that step (comm.jsonl), "
         "mean / median. Peak RSS (MB) = VmHWM of each process, sampled from /proc while it runs "
         "(largest of each role).", ""]
    rows = res["rows"]
    for g in dict.fromkeys((r["dtype"], r["batch"]) for r in rows):
        b1, b2 = (res["baselines_s_per_epoch"].get(f"{g[0]} b{g[1]} {k}") for k in ("seq-1t", "seq-2t"))
        L += [f"## {g[0]}, batch {g[1]}", "",
              f"Baselines (median of every measured epoch of their runs): sequential 1 thread {_f(b1, '{:.3f}')} "
              f"s/epoch, 2 threads {_f(b2, '{:.3f}')} s/epoch.", "",
              "| mode | s/epoch | ms/step | x seq 1t | x seq 2t | ctrl overhead ms | peak RSS MB | other CPU |",
              "|---|---:|---:|---:|---:|---:|---|---:|"]
        for r in (r for r in rows if (r["dtype"], r["batch"]) == g):
            if r.get("status") != "ok":
                L.append(f"| {r['label']} | {r['status']}: {r.get('error', '')[:120]} | | | | | | "
                         f"{_f(r.get('other_cpu_cores'))} |")
                continue
            co = r.get("comm", {}).get("control_overhead_ms", {})
            ctrl = f"{co['mean']:.2f} / {co['median']:.2f}" if co else "-"
            L.append(f"| {r['label']} | {r['sec_per_epoch']:.3f} | {r['ms_per_step']:.2f} | "
                     f"{_f(r.get('speedup_vs_seq1'))} | {_f(r.get('speedup_vs_seq2'))} | {ctrl} | {_rss(r)} | "
                     f"{_f(r.get('other_cpu_cores'))} |")
        L.append("")
    fl = res.get("floors") or {}
    if "memcpy" in fl:
        L += ["## Floors: moving the 0.94 MB float32 parameter vector (median ms; p10-p90)", "",
              "| what | median ms | p10-p90 ms |", "|---|---:|---|",
              f"| numpy memcpy (np.copyto) | {fl['memcpy']['median_ms']:.3f} | "
              f"{fl['memcpy']['p10_ms']:.3f}-{fl['memcpy']['p90_ms']:.3f} |"]
        for t in ("tcp", "ipc"):
            for kind, what in (("vector", "vector both ways"), ("small", f"64-byte message both ways")):
                x = fl[f"zmq_{t}"][kind]
                L.append(f"| ZeroMQ DEALER/ROUTER {t} round trip, {what} | {x['median_ms']:.3f} | "
                         f"{x['p10_ms']:.3f}-{x['p90_ms']:.3f} |")
        L.append("")
    elif fl:
        L += [f"Floors: failed ({fl.get('error', '')[:200]})", ""]
    L += ["## Issue 6 targets (float32, P=2)", "", "| target | measured | want | met |", "|---|---:|---|---|"]
    for t in res["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "NO")
        L.append(f"| {t['target']} | {_f(t['measured'])} | {t['want']} | {met} |")
    L.append("")
    ps = [r for r in rows if r["mode"] == "ps" and r.get("status") == "ok" and "server_ms_per_step" in r.get("comm", {})]
    if ps:
        spans = ("serialize", "send", "wait", "recv", "deserialize", "aggregate", "update")
        L += ["## Parameter-server step breakdown (ms per step, after warm-up, from comm.jsonl)", "",
              "| run | step | " + " | ".join(f"server {x}" for x in spans) + " | worker compute | slowest compute |",
              "|---|" + "---:|" * (len(spans) + 3)]
        for r in ps:
            c = r["comm"]
            L.append(f"| {r['dtype']} b{r['batch']} {r['label']} | {r['ms_per_step']:.2f} | "
                     + " | ".join(_f(c["server_ms_per_step"].get(x)) for x in spans)
                     + f" | {_f(c['worker_ms_per_step_mean_over_workers'].get('compute'))}"
                     + f" | {_f(c['slowest_compute_ms'].get('mean'))} |")
        L.append("")
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke check: fewer rows, fewer samples, < 1 min")
    ap.add_argument("--out", type=Path, help="results JSON; the markdown table goes next to it (.md) "
                                            "[default benchmarks/results.json, or results-quick.json with --quick]")
    ap.add_argument("--only", help="run only cases whose key contains this (e.g. ps-shm, seq-, torch)")
    ap.add_argument("--keep-runs", type=Path, help="keep the run directories and logs here")
    ap.add_argument("--num-samples", type=int, help="override the number of training rows")
    ap.add_argument("--epochs", type=int, help="override epochs per run (the first is the warm-up)")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch rows even if torch imports")
    a = ap.parse_args()
    s = dict(QUICK if a.quick else FULL)
    s.update({k: v for k, v in (("num_samples", a.num_samples), ("epochs", a.epochs)) if v})
    s["quick"] = a.quick
    if s["epochs"] <= s["warmup"]:
        ap.error(f"--epochs must be more than the {s['warmup']} warm-up epoch(s)")
    out = a.out or HERE / ("results-quick.json" if a.quick else "results.json")
    cases = [c for c in matrix(a.quick) if (not a.only or a.only in c.key)
             and not (a.no_torch and c.mode.startswith("torch"))]
    s["matrix"] = ("quick: float32 batch 256 only" if a.quick else
                   "float32 batch 256 and 1024: every mode (PS P=1,2,4 x shm,tcp,ipc; torch when importable); "
                   "float64 batch 256: sequential, Pool, PS P=2 shm and tcp; float32 batch 64: sequential, "
                   "PS P=2 shm and tcp")
    t0 = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    busy0, ours0 = proctree.busy_s(), proctree.ours_s()
    print(f"parsgd benchmarks: {len(cases)} runs + floors, {s['num_samples']} rows x {s['epochs']} epochs, "
          f"load {load_start}", flush=True)
    mach = machine.info(bench_env(), str(REPO))
    work = a.keep_runs or Path(tempfile.mkdtemp(prefix="parsgd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    floors: dict = {}
    try:
        if not a.only:
            log = work / "floors.log"
            w = run_watched([sys.executable, str(HERE / "floors.py"), "--reps", str(s["floor_reps"])], bench_env(),
                            log, s["case_timeout_s"], cwd=str(REPO))
            floors = (_last_json(log) or {}) if w.returncode == 0 else {"error": _tail(log)}
            print(f"[floors] {json.dumps(floors)[:300]}", flush=True)
        for i, case in enumerate(cases, 1):
            elapsed = time.perf_counter() - t0
            if elapsed > s["budget_s"]:
                rows.append({"key": case.key, "label": case.label, **asdict(case), "status": "skipped",
                             "error": f"time budget of {s['budget_s']} s used up", "load_1min_before": None})
                print(f"[{i:2}/{len(cases)}] {case.dtype} b{case.batch} {case.label}: skipped (time budget)")
                continue
            timeout = min(s["case_timeout_s"], max(20.0, s["budget_s"] + 45 - elapsed))
            r = run_case(case, s, work, timeout)
            rows.append(r)
            shown = f"{r['sec_per_epoch']:.3f} s/epoch" if r["status"] == "ok" else f"{r['status']}: {r['error'][:200]}"
            print(f"[{i:2}/{len(cases)}] {case.dtype} b{case.batch} {case.label}: {shown} "
                  f"(other CPU {_f(r.get('other_cpu_cores'))} cores, {r.get('wall_s', 0):.1f} s)", flush=True)
    finally:
        if not a.keep_runs:
            shutil.rmtree(work, ignore_errors=True)
    baselines = add_ratios(rows)
    res = {"command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]), "machine": mach, "settings": s,
           "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
           "other_cpu_cores": proctree.other_cores(busy0, ours0, time.perf_counter() - t0),
           "runtime_s": round(time.perf_counter() - t0, 1), "floors": floors, "baselines_s_per_epoch": baselines,
           "rows": rows, "targets": targets(rows)}
    md = markdown(res)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(md + "\n")
    print("\n" + md)
    print(f"written: {out} and {out.with_suffix('.md')}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
