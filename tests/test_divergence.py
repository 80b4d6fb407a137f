"""Diverged runs are marked, never shown as winners: the rule (training/divergence.py) and real runs.

    python3 -m pytest -q tests/test_divergence.py
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from parsgd.training.divergence import EXIT_DIVERGED, MIN_JUDGED_STEPS, advice, chance_accuracy, judge
from test_experiment import table_rows

PY = [sys.executable, "-m", "parsgd"]


def epochs(*losses, acc=0.8):
    return [{"epoch": i + 1, "train_loss": loss, "train_acc": acc, "test_loss": loss, "test_acc": acc}
            for i, loss in enumerate(losses)]


def test_a_healthy_run_is_not_diverged():
    assert judge(epochs(0.9, 0.5, 0.45), 2.4, 0.1, 300) == (False, None)


def test_a_loss_above_the_start_is_diverged_even_if_it_fell_again():
    diverged, why = judge(epochs(5.87, 2.28, acc=0.16), 2.69, 0.1, 128)
    assert diverged and "5.87 in epoch 1 > 2.69" in why


def test_a_late_rise_is_diverged_a_small_wobble_is_not():
    assert judge(epochs(0.9, 0.5, 0.56), 2.4, 0.1, 300)[0] is True      # +12%
    assert judge(epochs(0.9, 0.5, 0.54), 2.4, 0.1, 300)[0] is False     # +8%


def test_accuracy_at_chance_is_diverged_and_the_advice_says_the_step_was_too_small():
    diverged, why = judge(epochs(2.35, 2.30, acc=0.11), 2.40, 0.10, 300)
    assert diverged and "at chance" in why and "loss" not in why
    assert "too little learning" in advice({"lr": 1e-4, "epochs": 2}, None, why)


def test_chance_is_the_majority_class_share():
    assert chance_accuracy(np.array([0, 0, 0, 1]), 10) == 0.75
    assert chance_accuracy(np.array([], dtype=np.int64), 10) == 0.1


def test_too_few_steps_are_not_judged():
    assert judge(epochs(3.0, acc=0.1), 2.4, 0.1, MIN_JUDGED_STEPS - 1)[0] is None


def test_the_advice_follows_the_consistency_model():
    stale = advice({"consistency": "async", "lr": 0.1, "momentum": 0.9, "lr_staleness": "none"}, 1.9, "train loss")
    assert "try --momentum 0.5 with --lr-staleness inverse" in stale and "staleness 1.90" in stale
    assert "try a lower --lr" in advice({"consistency": "async", "lr": 0.1, "momentum": 0.5,
                                         "lr_staleness": "inverse"}, 1.9, "train loss")
    assert "lower --lr" in advice({"consistency": "bsp", "lr": 2.0, "momentum": 0.9}, 0.0, "train loss")


@pytest.mark.slow
def test_async_at_the_defaults_is_marked_diverged_with_exit_3(tmp_path):
    """README's measurement: async with 3 workers at lr 0.1, momentum 0.9 ends at chance on Fashion-MNIST."""
    out = tmp_path / "run"
    p = subprocess.run(PY + ["launch", "--workers", "3", "--consistency", "async", "--dataset", "fashion-mnist",
                             "--num-samples", "8192", "--epochs", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=180)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["diverged"] is True, summary
    assert p.returncode == EXIT_DIVERGED, p.stdout[-2000:] + p.stderr
    assert "[server] done: DIVERGED: test acc" in p.stdout
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the run diverged: "), p.stderr
    assert "--momentum 0.5 with --lr-staleness inverse" in err[0] and str(out) in err[0]
    assert (out / "model.npz").is_file() and (out / "metrics.jsonl").read_text().count("\n") == 2


@pytest.mark.slow
def test_the_advised_fix_trains(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run(PY + ["launch", "--workers", "3", "--consistency", "async", "--lr-staleness", "inverse",
                             "--momentum", "0.5", "--dataset", "fashion-mnist", "--num-samples", "8192", "--epochs", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    assert json.loads((out / "summary.json").read_text())["diverged"] is False


@pytest.mark.slow
def test_an_experiment_claims_no_speedup_for_a_diverged_run_and_times_to_accuracy(tmp_path):
    out = tmp_path / "exp"
    p = subprocess.run(PY + ["experiment", "--workers", "3", "--modes", "sequential,ps", "--transport", "shm",
                             "--consistency", "bsp,async", "--dataset", "fashion-mnist", "--num-samples", "8192",
                             "--epochs", "2", "--quiet", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == EXIT_DIVERGED, p.stdout[-3000:] + p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: 1 of 3 configurations diverged: ps P=3 shm async (the report says why and the likely fix; every "
        "file is written)"]
    records = {r["run"]: r for r in json.loads((out / "experiment.json").read_text())["records"]}
    bad = records["ps P=3 shm async"]
    assert bad["diverged"] is True and bad["speedup"] is None and bad["note"] == "diverged"
    assert records["ps P=3 shm"]["diverged"] is False and records["ps P=3 shm"]["speedup"] is not None
    target = bad["target_acc"]
    assert target is not None and target <= min(records[r]["test_acc"] for r in ("sequential", "ps P=3 shm"))
    assert bad["time_to_acc_s"] is None and records["sequential"]["time_to_acc_s"] > 0
    text = (out / "experiment_report.txt").read_text()
    rows = table_rows(text)
    row = rows["ps P=3 shm async"]
    assert row["speedup"] == row["effic."] == row["time to acc"] == "-" and row["note"] == "diverged", row
    assert rows["ps P=3 shm"]["speedup"].endswith("x") and rows["sequential"]["tta speedup"] == "1.00x"
    assert rows["ps P=3 shm"]["time to acc"].endswith(" s")
    assert f"first reached {target:.2f}" in " ".join(text.split())
    assert "ps P=3 shm async: DIVERGED" in text and "--momentum 0.5" in text
