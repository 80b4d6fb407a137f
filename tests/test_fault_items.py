"""Faults that other tests never provoke: a kill after the push was applied, a kill in the middle of a
push over tcp, lost TASKs, an Inf gradient, a GRAD for a shard the worker was never given or of the
wrong size, and a worker that heartbeats but stops reading its socket.

Each run is compared byte for byte (float64) with the fault-free run, and its events.jsonl with what
the fault must cause and must not cause.
"""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from procs import PY, events, load_params, sequential_params

pytestmark = pytest.mark.slow  # real server and worker processes

# 2000 rows at batch 100: 20 steps per epoch, 40 in all; 2 shards of 50 rows
ARGS = ["--dataset", "synthetic", "--num-samples", "2000", "--epochs", "2", "--hidden", "32,16",
        "--batch-size", "100", "--dtype", "float64", "--seed", "7"]
KNOBS = ["--heartbeat", "0.2", "--liveness", "5", "--step-timeout", "1"]


def launch(out, *extra, args=ARGS, transport="shm", workers=2, timeout=120):
    result = subprocess.run(PY + ["launch", "--workers", str(workers), "--transport", transport, *args, *KNOBS,
                                  "--out", str(out), *extra], capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def named(run, event):
    return [e for e in events(run) if e["event"] == event]


def rank_of(run, name):
    return next(e["rank"] for e in named(run, "hello") if e["name"] == name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return sequential_params(tmp_path_factory.mktemp("reference"), *ARGS)


def same_model(run, reference):
    assert np.max(np.abs(load_params(run) - reference)) < 1e-12


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_a_kill_after_the_push_was_applied_leaves_that_shard_done(tmp_path, reference, transport):
    """Worker 0 pushes step 5, the server applies it, then worker 0 dies while worker 1's shard of the
    same step is still open: the finished shard is neither reassigned nor applied twice. Worker 1
    holds its shard 1 s, longer than noticing the death takes (~0.5 s), and the step timeout is 3 s:
    with the 1 s of KNOBS its GRAD raced the timeout (1 of 20 loaded runs lost: re-sent, ignored)."""
    run = tmp_path / "run"
    result = launch(run, "--faults", "killpush=worker0@step5,hang=worker1@step5:1s", "--step-timeout", "3",
                    transport=transport)
    assert result.returncode == 0, result.stdout[-3000:]
    victim = rank_of(run, "w0")
    dead = [e for e in named(run, "dead") if e["rank"] == victim]
    assert len(dead) == 1 and dead[0]["step"] == 5, named(run, "dead")
    assert [e for e in named(run, "reassign") if e["step"] == 5] == []
    assert named(run, "ignored_grad") == [] and named(run, "protocol_error") == []
    same_model(run, reference)


def test_a_kill_in_the_middle_of_a_push_over_tcp(tmp_path):
    """The default model's float64 gradient is 1.9 MB: worker 0 is SIGKILLed the moment it hands that
    frame to the socket, so the server's end sees a cut message. libzmq drops it whole: no
    protocol_error; the shard goes to the other worker; the model is unchanged."""
    args = ["--dataset", "synthetic", "--num-samples", "800", "--epochs", "1", "--batch-size", "100",
            "--dtype", "float64", "--seed", "7"]
    reference = sequential_params(tmp_path / "seq", *args)
    run = tmp_path / "run"
    result = launch(run, "--faults", "cutpush=worker0@step3", args=args, transport="tcp")
    assert result.returncode == 0, result.stdout[-3000:]
    victim = rank_of(run, "w0")
    assert [e["rank"] for e in named(run, "dead")] == [victim]
    assert named(run, "protocol_error") == []
    assert np.max(np.abs(load_params(run) - reference)) < 1e-12


def test_lost_tasks_time_out_and_go_to_another_worker(tmp_path, reference):
    run = tmp_path / "run"
    result = launch(run, "--faults", "droptask=0.1,seed=5", "--step-timeout", "0.5")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "fault injection: droptask=0.1,seed=5" in result.stdout
    assert len(named(run, "step_timeout")) >= 1 and named(run, "dead") == []
    assert named(run, "protocol_error") == []
    same_model(run, reference)


def test_an_inf_gradient_is_computed_again_elsewhere(tmp_path, reference):
    run = tmp_path / "run"
    result = launch(run, "--faults", "inf=worker0@step4")
    assert result.returncode == 0, result.stdout[-3000:]
    bad = named(run, "non_finite_grad")
    assert [(e["step"], e["rank"]) for e in bad] == [(4, rank_of(run, "w0"))]
    same_model(run, reference)


@pytest.mark.parametrize("fault, error", [("wrongshard", "not a shard it was given"),
                                          ("wrongsize", "does not match the model")])
def test_a_broken_worker_gets_bad_message_and_its_shard_goes_elsewhere(tmp_path, reference, fault, error):
    """A current-step GRAD for a shard the worker was never given, or sized for another model."""
    run = tmp_path / "run"
    result = launch(run, "--faults", f"{fault}=worker0@step4", transport="tcp")
    assert result.returncode == 0, result.stdout[-3000:]
    errors = [e for e in named(run, "protocol_error") if e["registered"]]
    assert len(errors) == 1 and error in errors[0]["error"], named(run, "protocol_error")
    assert "[worker 0] error: server refused this worker" in result.stdout, result.stdout[-3000:]
    victim = rank_of(run, "w0")
    assert [e["rank"] for e in named(run, "dead")] == [victim]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    same_model(run, reference)


def test_a_worker_that_heartbeats_but_stops_reading_is_dropped_within_the_dead_time(tmp_path, reference):
    """After its GRAD for step 5, worker 0 never reads its socket again while its heartbeat thread
    says it is alive and idle. The server sees the TASK it sent stay unread (HEARTBEAT.tasks) and drops
    it after --liveness x --heartbeat (1 s here), well before the 5 s step timeout would."""
    run = tmp_path / "run"
    result = launch(run, "--faults", "deaf=worker0@step5", "--step-timeout", "5")
    assert result.returncode == 0, result.stdout[-3000:]
    victim = rank_of(run, "w0")
    dead = named(run, "dead")
    assert [e["rank"] for e in dead] == [victim] and "not reading its socket" in dead[0]["reason"], dead
    assert dead[0]["step"] == 6 and named(run, "step_timeout") == []
    assert [e["step"] for e in named(run, "reassign")] == [6]
    same_model(run, reference)


def test_lost_gradients_do_not_make_an_idle_worker_look_deaf(tmp_path, reference):
    """A dropped GRAD leaves a TASK unanswered, but the worker read it: it is not dropped, only the
    shard times out."""
    run = tmp_path / "run"
    result = launch(run, "--faults", "drop=0.05,seed=2", "--step-timeout", "0.5")
    assert result.returncode == 0, result.stdout[-3000:]
    assert named(run, "step_timeout") and named(run, "dead") == []
    same_model(run, reference)
