"""Gradient compression on emulated links: P = 4 workers, Fashion-MNIST, 3 epochs, every codec at 100mbit and 1gbit.

    sudo nice -n 10 python benchmarks/compress.py [--out benchmarks]    # -> compress.md, compress.json

Each configuration is one `parsgd launch --workers 4 --link RATE --compress CODEC --dataset fashion-mnist
--epochs 3 --batch-size 1024` (a larger batch than the default, so 14 runs of 3 epochs fit one session on
2 vCPUs: 177 steps a run). Per run: the bytes through the server's link per step (comm.jsonl, server 0's
send + recv, the median over steps >= 1), its ratio to `none` on the same link, the median step time
(server 0's clock), the training seconds until the test accuracy (read after each epoch) first reached
TARGET ("not reached" otherwise), and the final test accuracy. Pulls stay raw (README "Gradient
compression"), so no codec can take the bytes below half of `none`'s. Ratios within one run of this
script only: absolute times mean nothing on another VM.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from parsgd.analysis.costmodel import step_figures
from parsgd.analysis.rundirs import load_run
from parsgd.model.compressor import push_ratio

CODECS = ("none", "fp16", "sign", "qsgd:16", "topk:0.01", "randk:0.01", "powersgd:4")
LINKS = ("100mbit", "1gbit")
TARGET = 0.85
ARGS = ["--workers", "4", "--dataset", "fashion-mnist", "--epochs", "3", "--batch-size", "1024"]


def run(out: Path, link: str, codec: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "parsgd", "launch", *ARGS, "--link", link, "--compress", codec,
                           "--out", str(out)], capture_output=True, text=True, timeout=3600)
    if proc.returncode not in (0, 3):  # 3: diverged, still a finished run to report; else a row saying why
        why = next((line for line in proc.stderr.splitlines() if line.startswith("error: ")), proc.stderr[-300:])
        return {"link": link, "codec": codec, "failed": why, "path": str(out)}
    r = load_run(out)
    f = step_figures(r)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    elapsed, reached = 0.0, None
    for m in metrics:
        elapsed += m["epoch_time_s"]
        if reached is None and m["test_acc"] >= TARGET:
            reached = elapsed
    return {"link": link, "codec": codec, "bytes_per_step": f["out_bytes"] + f["in_bytes"],
            "push_ratio": push_ratio(r.config), "step_s": f["step_s"], "time_to_target_s": reached,
            "train_s": elapsed, "final_test_acc": metrics[-1]["test_acc"], "diverged": proc.returncode == 3,
            "path": str(out)}


def table(rows: list[dict]) -> str:
    lines = [f"| link | codec | KB/step (server link) | ratio to none | push/raw | step ms | time to {TARGET} test acc | "
             "final test acc |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['link']} | {r['codec']} | - | - | - | - | stopped: {r['failed'][7:]} | - |")
            continue
        base = next(b for b in rows if b["link"] == r["link"] and b["codec"] == "none")
        tta = f"{r['time_to_target_s']:.1f} s" if r["time_to_target_s"] is not None else "not reached"
        lines.append(f"| {r['link']} | {r['codec']} | {r['bytes_per_step'] / 1e3:.0f} | "
                     f"{r['bytes_per_step'] / base['bytes_per_step']:.2f} | {r['push_ratio']:.3f} | "
                     f"{r['step_s'] * 1e3:.0f} | {tta} | {r['final_test_acc']:.4f}"
                     f"{' (diverged)' if r['diverged'] else ''} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).parent))
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--links", default=",".join(LINKS))
    ap.add_argument("--done", help="JSON lines this script printed earlier in the same session: rows to keep")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="parsgd-compress-"))
    done = [json.loads(line) for line in Path(args.done).read_text().splitlines()
            if line.startswith("{")] if args.done else []
    rows = []
    for link in args.links.split(","):
        for codec in args.codecs.split(","):
            kept = [r for r in done if r["link"] == link and r["codec"] == codec and "failed" not in r]
            rows.append(kept[0] if kept else run(tmp / f"{link}-{codec.replace(':', '')}", link, codec))
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    (out / "compress.json").write_text(json.dumps({"args": ARGS, "target": TARGET, "rows": rows}, indent=1) + "\n")
    md = (f"P = 4 workers, `{' '.join(ARGS)}`, emulated links (`--link`), one session of "
          f"`benchmarks/compress.py`.\n\n{table(rows)}\n")
    (out / "compress.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
