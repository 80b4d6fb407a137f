"""Sharded parameter servers against the bandwidth floor: P = 4 workers on emulated 100mbit links, S = 1, 2, 4.

    sudo python benchmarks/servers.py [--rounds 3] [--out benchmarks]    # -> servers.md, servers.json

One server's link carries 2 x P x M bytes a step (P TASKs out, P GRADs in); with S servers each carries
2PM/S, until the workers' own links (M in, M out each) bind. Each configuration runs `parsgd launch
--workers 4 --servers S --link 100mbit --hidden 64` (so a run takes seconds), in interleaved rounds;
the table gives per S the median step time (server 0's clock, comm.jsonl), the bytes per step through
the busiest link, the ratio to S = 1's step, the workers' own link bound (2 M / rate, each worker's
whole vector in and its gradient out) and `parsgd estimate`'s prediction calibrated on the S = 1 run
of the same round (`--servers S`). Ratios in one run only: an absolute time means nothing on another VM.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from parsgd.analysis.costmodel import calibrate, step_figures
from parsgd.analysis.rundirs import load_run
from parsgd.analysis.stepparts import link_needs
from parsgd.cluster.emulated import wire_efficiency

SERVERS = (1, 2, 4)
ARGS = ["--workers", "4", "--link", "100mbit", "--hidden", "64", "--dataset", "synthetic", "--num-samples", "8192",
        "--epochs", "1"]
RATE_BPS = 100e6


def run(out: Path, servers: int) -> dict:
    subprocess.run([sys.executable, "-m", "parsgd", "launch", *ARGS, "--servers", str(servers), "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    r = load_run(out)
    f = step_figures(r)
    steps = sorted({int(s) for s in r.comm.step if s >= 1})
    needs = link_needs(r, steps)
    busiest = max(needs, key=lambda k: statistics.median(needs[k][0]))
    model_bytes = r.key_ranges.n * 4
    return {"servers": servers, "step_s": f["step_s"], "busiest_link": busiest,
            "busiest_bytes": statistics.median(needs[busiest][0]) * RATE_BPS * wire_efficiency() / 8,
            "worker_bound_s": 2 * model_bytes * 8 / (RATE_BPS * wire_efficiency()), "path": str(out)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="parsgd-servers-"))
    rows = []
    for rnd in range(args.rounds):
        base = None
        for s in SERVERS:
            row = run(tmp / f"r{rnd}-s{s}", s)
            if s == 1:
                base = calibrate(row["path"])
            row["estimate_s"] = base.predict(4, RATE_BPS, s)["step_s"]
            row["round"] = rnd
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = ["| S | step ms (median) | x S=1 | busiest link | KB/step through it | workers' own link bound ms | "
             "estimate ms (from S=1) | estimate error |", "|---:|---:|---:|---|---:|---:|---:|---:|"]
    one = statistics.median(r["step_s"] for r in rows if r["servers"] == 1)
    summary = []
    for s in SERVERS:
        mine = [r for r in rows if r["servers"] == s]
        step, est = statistics.median(r["step_s"] for r in mine), statistics.median(r["estimate_s"] for r in mine)
        summary.append({"servers": s, "step_s": step, "ratio": step / one, "estimate_s": est,
                        "worker_bound_s": mine[0]["worker_bound_s"], "busiest_link": mine[0]["busiest_link"],
                        "busiest_bytes": statistics.median(r["busiest_bytes"] for r in mine)})
        table.append(f"| {s} | {step * 1e3:.1f} | {step / one:.2f} | {mine[0]['busiest_link']} | "
                     f"{summary[-1]['busiest_bytes'] / 1e3:.1f} | {mine[0]['worker_bound_s'] * 1e3:.1f} | "
                     f"{est * 1e3:.1f} | {est / step - 1:+.0%} |")
    out = Path(args.out)
    (out / "servers.json").write_text(json.dumps({"args": ARGS, "rounds": args.rounds, "runs": rows,
                                                  "summary": summary}, indent=2) + "\n")
    (out / "servers.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
