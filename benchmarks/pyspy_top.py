"""Where the CPU goes in each process of a PS run, from a py-spy raw profile (training steps only).

    py-spy record --subprocesses --nonblocking -r 250 --format raw -o /tmp/ps.txt -- \\
        python -m parsgd launch --workers 2 --transport shm --dataset synthetic --epochs 3 --out /tmp/ps
    python benchmarks/pyspy_top.py /tmp/ps.txt [--top 15]

py-spy samples only threads that are running (not sleeping in poll), so the shares are of CPU
time. Samples outside the training loop (imports, data generation, evaluation) are left out:
a sample counts if its stack passes through one of TRAINING_FRAMES.
"""
from __future__ import annotations

import argparse
import collections
import re

TRAINING_FRAMES = ("Worker._work", "ParameterServer.batch_gradient", "ParameterServer.update",
                   "ParameterServer._serve_until")
_LOCATION = re.compile(r" \((?:/[^)]*/)?([^/)]+\.py):(\d+)\)")


def _role(proc_frame: str) -> str:
    m = re.search(r"process (\d+):\"(.*)\"", proc_frame)
    if not m:
        return proc_frame[:40]
    words = m.group(2).split()
    for role in ("server", "worker"):
        if role in words:
            return f"{role} {m.group(1)}"
    return f"other {m.group(1)}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    own = collections.defaultdict(collections.Counter)       # role -> innermost frame -> samples
    incl = collections.defaultdict(collections.Counter)      # role -> function -> samples
    total, kept = collections.Counter(), collections.Counter()
    with open(a.profile, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            procs = [i for i, x in enumerate(frames) if x.startswith("process ")]
            if not procs:
                continue
            role = _role(frames[procs[-1]])
            frames = [_LOCATION.sub(r" (\1:\2)", x) for x in frames[procs[-1] + 1:]]
            total[role] += int(n)
            if not any(fr.startswith(TRAINING_FRAMES) for fr in frames):
                continue
            kept[role] += int(n)
            own[role][frames[-1]] += int(n)
            for fn in {fr.split(" (")[0] + " (" + fr.split(" (")[1].split(":")[0] + ")" for fr in frames if " (" in fr}:
                incl[role][fn] += int(n)
    for role in sorted(kept):
        k = kept[role]
        print(f"== {role}: {k} training samples of {total[role]}")
        print("  innermost frame (self):")
        for frame, c in own[role].most_common(a.top):
            print(f"    {c / k:6.1%}  {frame}")
        print("  function (inclusive):")
        inner = [(fn, c) for fn, c in incl[role].most_common() if c < k]  # drop the frames every sample passes
        for fn, c in inner[:a.top]:
            print(f"    {c / k:6.1%}  {fn}")


if __name__ == "__main__":
    main()
