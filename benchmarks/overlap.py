"""--overlap none / layer / bucket on the emulated cluster: step times, the communication hidden, the
overlap model's estimate against the measurement, and the bucket size it advises.

    sudo python benchmarks/overlap.py [--workers 2,4] [--links 100mbit,1gbit] [--delays 0,5ms] [--rounds 1]
                                      [--out benchmarks] [--readme README.md]   # -> overlap.md, overlap.json

Each configuration runs `parsgd launch --workers P --link RATE [--link-delay D] --overlap MODE
--bucket-bytes 65536` on the default model (784-256-128-10, 940 KB float32 a message) over 5,120 synthetic
rows, one epoch (20 steps, 10 timed), modes interleaved within a round. Per configuration:

- step: the median timed step on server 0's clock (analysis/overlapreport.py);
- hidden: (step_none - step) / (step_none - compute_none), the share of the `none` step's communication
  (all of it that is not the slowest worker's compute) the mode removed, against the `none` run of the
  same round, P, link and delay; `none` is 0 by definition;
- estimate: analysis/overlapmodel.py calibrated on that `none` run (its compute, its server work, its
  measured link rate, alpha = half the link check's round trip, else D) predicting each mode; the ratio
  estimate / measured;
- advice: the model's best choice and bucket size at that P, link and delay.

A delay the launcher refuses (no netem, no delay relay yet: exit 2) is recorded as a missing row with the
launcher's line. Ratios within one run only: absolute times mean nothing on another machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from parsgd.analysis.overlapmodel import estimate_overlap
from parsgd.analysis.overlapreport import overlap_figures
from parsgd.analysis.rundirs import load_run

MODES = ("none", "layer", "bucket")
BUCKET = 65536
DATA = ["--dataset", "synthetic", "--num-samples", "5120", "--epochs", "1", "--batch-size", "256"]


def launch(out: Path, p: int, link: str, delay: str, mode: str, env=None) -> tuple[dict | None, str]:
    cmd = [sys.executable, "-m", "parsgd", "launch", "--workers", str(p), "--link", link, *DATA, "--overlap", mode,
           "--bucket-bytes", str(BUCKET), "--out", str(out)]
    if delay not in ("0", "0ms"):
        cmd[cmd.index("--overlap"):cmd.index("--overlap")] = ["--link-delay", delay]
    # `python -m` puts the working directory first on sys.path: with another checkout, run from the run's folder
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env,
                         cwd=str(out.parent) if env is not None else None)
    if got.returncode != 0:
        lines = [ln for ln in got.stderr.splitlines() if ln.startswith("error:")] or got.stderr.splitlines()[-1:]
        return None, (lines[0] if lines else f"exit {got.returncode}")
    fig = overlap_figures(load_run(out))
    return fig, ""


def measured_one_way(path: Path) -> float:
    """Half the link check's round trip (link.json `calibration.rtt.measured_s`, or an older `rtt_s`), 0 without."""
    link = json.loads(path.read_text())
    rtt = ((link.get("calibration") or {}).get("rtt") or {}).get("measured_s", link.get("rtt_s"))
    return float(rtt) / 2 if isinstance(rtt, (int, float)) and rtt > 0 else 0.0


def seconds(delay: str) -> float:
    m = re.fullmatch(r"([0-9.]+)\s*(ms|s|us)?", delay.strip())
    if not m:
        raise SystemExit(f"error: --delays {delay}: give e.g. 0,5ms")
    return float(m.group(1)) * {"ms": 1e-3, "us": 1e-6, "s": 1.0, None: 1e-3}[m.group(2)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="2,4")
    ap.add_argument("--links", default="100mbit,1gbit")
    ap.add_argument("--delays", default="0,5ms")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    ap.add_argument("--readme", default="", help="replace the table between <!-- overlap-table --> markers here")
    ap.add_argument("--parsgd", default="", help="run the launches with this parsgd checkout first on PYTHONPATH")
    args = ap.parse_args()
    env = None
    if args.parsgd:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([args.parsgd, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    workers = [int(p) for p in args.workers.split(",")]
    links, delays = args.links.split(","), args.delays.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="parsgd-overlap-"))
    runs, missing = [], {}
    for rnd in range(args.rounds):
        for p in workers:
            for link in links:
                for delay in delays:
                    key = (p, link, delay)
                    if key in missing:
                        continue
                    got = {}
                    for mode in MODES:
                        out = tmp / f"r{rnd}-p{p}-{link}-{delay}-{mode}"
                        fig, why = launch(out, p, link, delay, mode, env)
                        if fig is None:
                            missing[key] = why
                            print(f"missing P={p} {link} {delay}: {why}", flush=True)
                            break
                        got[mode] = {**fig, "path": str(out)}
                    if key in missing:
                        continue
                    none = got["none"]
                    alpha = measured_one_way(Path(none["path"]) / "link.json") or seconds(delay)  # the check's, else D
                    est = estimate_overlap(none["path"], [p], None, alpha)
                    advice = est["advice"][0]
                    for mode in MODES:
                        row = got[mode]
                        choice = "none" if mode == "none" else "layer" if mode == "layer" else f"bucket {BUCKET}"
                        comm = none["step"] - none["compute"]
                        runs.append({"round": rnd, "workers": p, "link": link, "delay": delay, "mode": mode,
                                     "step_s": row["step"], "compute_s": row["compute"],
                                     "hidden": (none["step"] - row["step"]) / comm if comm > 0 else 0.0,
                                     "early": row["early"], "estimate_s": advice["choices"][choice]["step_s"],
                                     "advice": advice["best"], "advice_bucket": advice["bucket_bytes"],
                                     "path": row["path"]})
                        print(json.dumps(runs[-1]), flush=True)
    table = table_lines(runs, workers, links, delays, missing)
    out = Path(args.out)
    (out / "overlap.json").write_text(json.dumps({"data": DATA, "bucket_bytes": BUCKET, "rounds": args.rounds,
                                                  "runs": runs, "missing": {" ".join(map(str, k)): v for k, v in
                                                                            missing.items()}}, indent=2) + "\n")
    (out / "overlap.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    if args.readme:
        path = Path(args.readme)
        text = path.read_text()
        new = re.sub(r"(<!-- overlap-table -->\n).*?(<!-- /overlap-table -->)",
                     lambda m: m.group(1) + "\n".join(table) + "\n" + m.group(2), text, flags=re.S)
        path.write_text(new)


def table_lines(runs, workers, links, delays, missing) -> list[str]:
    lines = ["| P | link | delay | none ms | layer ms | bucket 64 KiB ms | hidden layer / bucket | "
             "estimate / measured (none, layer, bucket) | advised | bucket to pick |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for p in workers:
        for link in links:
            for delay in delays:
                mine = [r for r in runs if (r["workers"], r["link"], r["delay"]) == (p, link, delay)]
                if not mine:
                    why = missing.get((p, link, delay), "not run")
                    lines.append(f"| {p} | {link} | {delay} | - | - | - | - | - | missing: {why} | - |")
                    continue
                med = {m: {k: statistics.median(r[k] for r in mine if r["mode"] == m)
                           for k in ("step_s", "hidden", "estimate_s")} for m in MODES}
                ratio = ", ".join(f"{med[m]['estimate_s'] / med[m]['step_s']:.2f}" for m in MODES)
                adv = statistics.mode(r["advice"] for r in mine)
                bucket = statistics.mode(r["advice_bucket"] for r in mine)
                lines.append(f"| {p} | {link} | {delay} | {med['none']['step_s'] * 1e3:.1f} | "
                             f"{med['layer']['step_s'] * 1e3:.1f} | {med['bucket']['step_s'] * 1e3:.1f} | "
                             f"{med['layer']['hidden']:.0%} / {med['bucket']['hidden']:.0%} | {ratio} | {adv} | "
                             f"{bucket // 1024} KiB |")
    return lines


if __name__ == "__main__":
    main()
