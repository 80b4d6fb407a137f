"""Peak total PSS of a process tree: how much memory a run really costs the machine.

    python benchmarks/pss.py -- python -m parsgd launch --workers 8 --dataset synthetic --num-samples 60000 --epochs 1
    from pss import sample_tree_pss          # in a script here: sample_tree_pss(proc.pid)

PSS (proportional set size, `Pss:` in /proc/PID/smaps_rollup) charges each shared page 1/N to each
of the N processes mapping it, so the sum over a tree counts a page shared by 8 workers (a mapped
data cache, the interpreter's libraries) once, where the sum of RSS would count it 8 times. Every
SAMPLE_EVERY_S the root and all its descendants (found through /proc/PID/task/*/children, which
follows children into sessions of their own) are read in one pass; the peak of the per-pass sums is
the figure to compare. The command's own output goes to stderr; stdout gets one JSON object.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import proctree  # benchmarks/, beside this file

SAMPLE_EVERY_S = 0.2


def pss_kb(pid: int) -> int | None:
    """`Pss:` of /proc/PID/smaps_rollup in kB; None if the process is gone or a zombie (no mappings)."""
    return proctree.proc_kb(pid, "smaps_rollup", "Pss:")


def _running(pid: int) -> bool:
    """pid exists and is not a zombie (a child of ours that exited but is not waited for yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def sample_tree_pss(root_pid: int, interval_s: float = SAMPLE_EVERY_S) -> dict:
    """Sample the PSS of root_pid's process tree every interval_s until root_pid exits (or is a zombie).

    Returns {"peak_total_mb": the largest sum over one pass, "peak_by_pid": {pid: that process's own
    peak in MB}, "samples": passes made}. MB = 2**20 bytes. Blocks; never raises for vanished processes.
    """
    peak_total_kb, peak_kb, samples = 0, {}, 0
    while _running(root_pid):
        total = 0
        for pid in proctree.tree(root_pid):
            kb = pss_kb(pid)
            if kb is not None:
                total += kb
                peak_kb[pid] = max(peak_kb.get(pid, 0), kb)
        peak_total_kb, samples = max(peak_total_kb, total), samples + 1
        time.sleep(interval_s)
    return {"peak_total_mb": round(peak_total_kb / 1024, 1),
            "peak_by_pid": {pid: round(kb / 1024, 1) for pid, kb in peak_kb.items()},
            "samples": samples}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python benchmarks/pss.py -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    t = time.monotonic()
    proc = subprocess.Popen(argv, stdout=sys.stderr, stdin=subprocess.DEVNULL)
    result = sample_tree_pss(proc.pid)
    result["returncode"], result["wall_s"] = proc.wait(), round(time.monotonic() - t, 1)
    print(json.dumps(result))
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
