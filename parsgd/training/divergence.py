"""Is a finished run diverged? The judgement every summary, table and console line shows.

    parsgd launch --workers 3 --consistency async --dataset synthetic --num-samples 8192 --epochs 2
    # -> done: DIVERGED ... (exit 3); README "Diverged runs" gives the rule and the measured fixes

A run is `diverged` when, at its end, (a) its loss rose: some epoch's mean train loss is above the loss
of the run's first step (the model became worse than its random start), or the last epoch's is more
than LATE_RISE above the lowest earlier epoch's; or (b) its accuracy is at chance: the final test
accuracy (train accuracy when the test split is empty) is at most CHANCE_MARGIN above the share of the
split's most frequent class (what always guessing that class scores). A run of fewer than
MIN_JUDGED_STEPS steps is not judged (`None`): that few updates prove nothing either way. The advice
follows the evidence: stale gradients (ssp, async), a step too large (the loss rose), or too small (the
loss only fell, slowly, and the accuracy stayed at chance).
"""
from __future__ import annotations

import math

import numpy as np

from parsgd.errors import UserError

CHANCE_MARGIN = 0.02      # accuracy within 2 points of the majority-class share counts as chance
MIN_JUDGED_STEPS = 20     # fewer steps: too short to tell learning slowly from not learning
LATE_RISE = 0.10          # the last epoch's train loss this far above the best earlier epoch's: it rose
EXIT_DIVERGED = 3         # train / server / launch / experiment: trained to the end, files written, diverged


def chance_accuracy(labels: np.ndarray, classes: int) -> float:
    """The accuracy of always answering the most frequent class of `labels` (int array, shape (n,));
    1 / classes for an empty split."""
    if len(labels) == 0:
        return 1.0 / classes
    return float(np.bincount(labels.astype(np.int64), minlength=classes).max() / len(labels))


def judge(metrics: list[dict], initial_loss: float | None, chance_acc: float | None,
          steps: int) -> tuple[bool | None, str | None]:
    """(diverged, why) of a run from its per-epoch metrics (metrics.jsonl dicts), the mean loss of its
    first step (nats), the chance accuracy of its test split and its step count.

    (None, why) when it cannot be judged: fewer than MIN_JUDGED_STEPS steps, or no epoch. `why` names
    the figures, e.g. "train loss 5.87 in epoch 1 > 2.69 at the first step".
    """
    if not metrics or steps < MIN_JUDGED_STEPS:
        return None, f"not judged: {steps} steps (fewer than {MIN_JUDGED_STEPS})"
    reasons = []
    losses = [m.get("train_loss") for m in metrics]
    worst = max(((loss, i) for i, loss in enumerate(losses) if loss is not None and math.isfinite(loss)),
                default=None)
    if any(loss is None or not math.isfinite(loss) for loss in losses):
        reasons.append("the train loss was not finite")
    elif initial_loss is not None and math.isfinite(initial_loss) and worst[0] > initial_loss:
        reasons.append(f"train loss {worst[0]:.3g} in epoch {worst[1] + 1} > {initial_loss:.3g} at the first step")
    elif len(losses) > 1 and losses[-1] > (1 + LATE_RISE) * min(losses[:-1]):
        best = min(range(len(losses) - 1), key=losses.__getitem__)
        reasons.append(f"train loss rose to {losses[-1]:.3g} in the last epoch from {losses[best]:.3g} in "
                       f"epoch {best + 1}")
    last = metrics[-1]
    acc, split = last.get("test_acc"), "test"
    if acc is None:
        acc, split = last.get("train_acc"), "train"
    if acc is not None and chance_acc is not None and acc <= chance_acc + CHANCE_MARGIN:
        reasons.append(f"{split} accuracy {acc:.4f} is at chance ({chance_acc:.3f}: always the most frequent class)")
    return (True, "; ".join(reasons)) if reasons else (False, None)


def advice(config: dict, staleness_mean: float | None = None, why: str | None = None) -> str:
    """The likely cause and the fix, from the run's config (a RunConfig dict), its mean staleness and
    `why` it diverged (judge's text: a loss that only fell means a step too small, not too large)."""
    lr, momentum = config.get("lr"), config.get("momentum")
    if why and "loss" not in why:  # at chance while the loss only fell: not learning fast enough
        return (f"likely cause: too little learning (lr {lr}, {config.get('epochs')} epochs): the loss only fell "
                "and slowly; try a higher --lr or more --epochs")
    if config.get("consistency", "bsp") != "bsp" and (staleness_mean is None or staleness_mean > 0):
        stale = f" (mean staleness {staleness_mean:.2f})" if staleness_mean is not None else ""
        fixes = ["--momentum 0.5"] if (momentum or 0) > 0.5 else []
        fixes += ["--lr-staleness inverse"] if config.get("lr_staleness", "none") == "none" else []
        fix = " with ".join(fixes) if fixes else f"a lower --lr (now {lr})"
        return (f"likely cause: stale gradients{stale} applied with momentum {momentum} at lr {lr} (asynchrony "
                f"adds momentum of its own); try {fix} (measured in README, Consistency models)")
    return f"likely cause: a step too large for this model (lr {lr}, momentum {momentum}); try a lower --lr"


def verdict_line(summary: dict, config: dict) -> str:
    """`DIVERGED (why); likely cause ...; try ...` for a diverged summary, "" otherwise."""
    if not summary.get("diverged"):
        return ""
    why = summary.get("diverged_why")
    return f"DIVERGED ({why}); {advice(config, summary.get('staleness_mean'), why)}"


class RunDiverged(UserError):
    """The run trained to its end and wrote every file, but diverged (exit EXIT_DIVERGED = 3)."""

    exit_code = EXIT_DIVERGED


def done_line(summary: dict, run_dir) -> str:
    """The last console line of a finished run: `done: test acc A in T s of training; run directory D`,
    with `DIVERGED` first when it diverged."""
    from parsgd.training.progress import fmt

    mark = "DIVERGED: " if summary.get("diverged") else ""
    return (f"done: {mark}test acc {fmt(summary.get('final_test_acc'))} in {summary['total_time_s']:.2f} s of "
            f"training; run directory {run_dir}")


def raise_if_diverged(summary: dict, config: dict, run_dir) -> None:
    """RunDiverged naming why, the likely cause and the fix when `summary` says the run diverged."""
    if summary.get("diverged"):
        raise RunDiverged(f"the run diverged: {summary.get('diverged_why')}; "
                          f"{advice(config, summary.get('staleness_mean'), summary.get('diverged_why'))}; "
                          f"its files are in {run_dir}")
