"""Consistency models with real processes: async with one worker equals the sequential trainer to the
bit; async and SSP runs with faults replay to the bit (`parsgd replay`); every batch is applied
once per epoch; the SSP staleness bound holds on every update; a straggler is a straggler."""
from __future__ import annotations

import collections
import json
import subprocess

import numpy as np
import pytest

from parsgd.training.divergence import EXIT_DIVERGED
from procs import PY, events, load_params

pytestmark = pytest.mark.slow  # real server and worker processes

ARGS = ["--dataset", "synthetic", "--num-samples", "2048", "--epochs", "2", "--hidden", "32,16",
        "--batch-size", "64", "--seed", "5"]
STEPS = 2 * 2048 // 64
KNOBS = ["--heartbeat", "0.2", "--liveness", "5", "--step-timeout", "2"]


def launch(out, workers, *extra, args=ARGS):
    """A run to its end: exit 0, or 3 when stale gradients made it diverge (at lr 0.1 and momentum 0.9 they
    may, README: Consistency models), which changes nothing these tests check (replay, bounds, order)."""
    result = subprocess.run(PY + ["launch", "--workers", str(workers), *args, *KNOBS, "--out", str(out), *extra],
                            capture_output=True, text=True, timeout=180)
    diverged = result.returncode == EXIT_DIVERGED and json.loads((out / "summary.json").read_text())["diverged"]
    assert (result.returncode == 0 or diverged) and "Traceback" not in result.stdout + result.stderr, \
        result.stdout[-3000:] + result.stderr[-3000:]
    return result


def updates(run) -> list[dict]:
    return [json.loads(line) for line in (run / "updates.jsonl").read_text().splitlines()]


def replay(run) -> subprocess.CompletedProcess:
    return subprocess.run(PY + ["replay", str(run)], capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_async_with_one_worker_equals_the_sequential_trainer_bit_for_bit(tmp_path, dtype):
    seq = tmp_path / "seq"
    subprocess.run(PY + ["train", *ARGS, "--dtype", dtype, "--blas-threads", "1", "--out", str(seq)],
                   check=True, capture_output=True, timeout=120)
    launch(tmp_path / "run", 1, "--consistency", "async", "--dtype", dtype)
    assert np.array_equal(load_params(tmp_path / "run"), load_params(seq))
    assert {u["staleness"] for u in updates(tmp_path / "run")} == {0}


@pytest.mark.parametrize("consistency, staleness, workers, faults", [
    ("async", 0, 3, "kill=worker1@step20,drop=0.1,dup=0.1,seed=3"),
    ("ssp", 1, 2, "delay=0.2:0.01,drop=0.1,seed=4"),
    ("ssp", 0, 3, "crash=worker2@step25,dup=0.2,seed=5"),
    ("ssp", 2, 3, "slow=worker1:3"),
])
def test_async_and_ssp_runs_with_faults_replay_to_the_bit(tmp_path, consistency, staleness, workers, faults):
    run = tmp_path / "run"
    extra = ["--consistency", consistency] + (["--staleness", str(staleness)] if consistency == "ssp" else [])
    launch(run, workers, *extra, "--faults", faults)
    log = updates(run)
    assert [u["update"] for u in log] == list(range(STEPS))
    applied = collections.Counter((u["epoch"], u["batch"]) for u in log)
    assert set(applied) == {(e, b) for e in range(2) for b in range(STEPS // 2)} and set(applied.values()) == {1}
    assert all(u["staleness"] == u["update"] - u["version"] >= 0 for u in log)
    if consistency == "ssp":  # Ho et al.'s bound in clocks, and the staleness in updates it implies
        assert all(u["clock"] - u["min_live_clock"] <= staleness + 1 for u in log), log
        assert max(u["staleness"] for u in log) <= (workers - 1) * (2 * staleness + 1)
    result = replay(run)
    assert result.returncode == 0 and "max |difference|" in result.stdout and result.stdout.rstrip().endswith(" 0"), \
        result.stdout + result.stderr
    if "kill" in faults or "crash" in faults:
        assert [e for e in events(run) if e["event"] == "dead"], "the fault must have happened"


def test_replay_catches_a_run_that_was_not_computed_as_logged(tmp_path):
    run = tmp_path / "run"
    launch(run, 2, "--consistency", "async")
    assert replay(run).returncode == 0
    log = updates(run)
    later = next(i for i, u in enumerate(log) if u["version"] < u["update"])  # a stale update
    log[later]["version"] = log[later]["update"]                             # claim it was fresh
    (run / "updates.jsonl").write_text("".join(json.dumps(u) + "\n" for u in log))
    result = replay(run)
    assert result.returncode == 1 and "differs" in result.stderr, result.stdout + result.stderr


def test_bsp_runs_replay_too(tmp_path):
    run = tmp_path / "run"
    launch(run, 3, "--faults", "kill=worker2@step10")
    assert {u["staleness"] for u in updates(run)} == {0} and len(updates(run)) == STEPS
    assert replay(run).returncode == 0


def test_a_slow_worker_computes_factor_times_longer(tmp_path):
    run = tmp_path / "run"
    launch(run, 3, "--consistency", "async", "--faults", "slow=worker1:3")
    spans = [json.loads(line) for line in (run / "comm.jsonl").read_text().splitlines()]
    compute = collections.defaultdict(list)
    for s in spans:
        if s["role"] == "worker" and s["span"] == "compute":
            compute[s["rank"]].append(s["dur"])
    median = {rank: float(np.median(d)) for rank, d in compute.items()}
    assert median[1] > 2 * max(median[0], median[2]), median
    per_rank = collections.Counter(u["rank"] for u in updates(run))
    assert per_rank[1] < per_rank[0] + per_rank[2], per_rank  # async: the others take more batches


def test_an_interrupted_async_run_resumes_and_still_replays_to_the_bit(tmp_path):
    """SIGINT after epoch 1, `launch --resume`: updates.jsonl holds the whole run once (the updates
    redone after the epoch-end checkpoint are not doubled), and replay reproduces model.npz."""
    run = tmp_path / "run"
    args = [*ARGS, "--epochs", "3", *KNOBS, "--consistency", "async", "--faults", "delay=1:0.01"]
    proc = subprocess.Popen(PY + ["launch", "--workers", "2", *args, "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "epoch   1/" in line:
                proc.send_signal(__import__("signal").SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
        proc.stdout.close()
    before = len(updates(run))
    assert STEPS // 2 <= before < 3 * STEPS // 2   # at least epoch 1, then some of epoch 2 maybe
    result = subprocess.run(PY + ["launch", "--workers", "2", "--resume", str(run)], capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = updates(run)
    assert [u["update"] for u in log] == list(range(3 * STEPS // 2))
    assert replay(run).returncode == 0
