"""Which repeat of its configuration a run is: `parsgd experiment --repeat R` (R > 1) writes the runs of a
configuration as NAME-r1 ... NAME-rR side by side, and the plots that draw one of them say so.

    python -c "from parsgd.analysis.rundirs import load_run; from parsgd.analysis.repeats import repeat_of; \
print(repeat_of(load_run('results/ps-p2-shm-r1')))"
"""
from __future__ import annotations

import glob
import re

from parsgd.analysis.rundirs import Run, RunDirError, load_run

REPEAT_DIR = re.compile(r"(?P<stem>.+)-r(?P<r>[1-9][0-9]*)")   # jobs/experiment.py: config.dirname + -rR


def repeat_of(run: Run) -> tuple[int, int] | None:
    """(r, n): `run` is repeat r of the n finished runs of its configuration in its experiment; None when
    its folder is not named NAME-rR or it is the only one (n = 1).

    The runs of the configuration are the folders NAME-rK beside it that hold a finished run (summary.json)
    of the same label. The experiment runs its repeats in rounds, so one NAME-rK of an earlier experiment
    into the same folder is told apart by its start (config.json `started`): a K below r started no later
    than `run`, a K above r no earlier. Unreadable folders are not counted."""
    match = REPEAT_DIR.fullmatch(run.path.name)
    if not match:
        return None
    r, started = int(match["r"]), str(run.meta.get("started") or "")
    count = 0
    for folder in run.path.parent.glob(f"{glob.escape(match['stem'])}-r*"):
        other = REPEAT_DIR.fullmatch(folder.name)
        if not other or other["stem"] != match["stem"]:
            continue
        k = int(other["r"])
        if k == r:
            count += 1
            continue
        try:
            sibling = load_run(folder)
        except RunDirError:
            continue
        when = str(sibling.meta.get("started") or "")
        if sibling.finished and sibling.label == run.label and (when <= started if k < r else when >= started):
            count += 1
    return (r, count) if count > 1 else None


def repeat_note(runs: list[Run]) -> str | None:
    """What the figure of `runs` shows of their repeats, for its title: 'repeat 1 of 3' (one run),
    'repeat 1 of 3 of each configuration', or per configuration 'ps P=2 shm: repeat 2 of 3; ...' when they
    differ; None when no run is one repeat of several, or the runs of a configuration are all drawn
    (two runs of one label: speedup.png, `parsgd plot` of several repeats)."""
    labels = [run.label for run in runs]
    shown = [(run, repeat_of(run)) for run in runs if labels.count(run.label) == 1]
    shown = [(run, rep) for run, rep in shown if rep]
    if not shown:
        return None
    if len(shown) == len(runs) and len({rep for _, rep in shown}) == 1:
        r, n = shown[0][1]
        return f"repeat {r} of {n}" + (" of each configuration" if len(runs) > 1 else "")
    return "; ".join(f"{run.label}: repeat {r} of {n}" for run, (r, n) in shown)
