"""Process faults with real processes and real signals, each run compared with the fault-free run.

    python -m pytest tests/test_faults.py -q -s     # -s prints the measured detection times

Every batch is cut into --workers shards whatever the live membership, and the server sums the
shards in shard order, so a run that survives faults must end with the SAME BYTES as the
fault-free run with the same --workers: the tests assert exact equality (stronger than the issue's
float64 max abs diff < 1e-8). Heartbeats are shortened (0.2 s x 3 = 0.6 s to declare a worker dead).
"""
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from parsgd.ps.checkpoint import load_checkpoint
from procs import PY, Procs, ends_cleanly, events, free_port, load_params, no_traceback

pytestmark = pytest.mark.slow  # real server and worker processes, faults waited out

# 2000 rows at batch 100: 20 steps per epoch, 60 in all; shards of 34/33/33 rows for 3 workers
ARGS = ["--dataset", "synthetic", "--num-samples", "2000", "--epochs", "3", "--hidden", "32,16",
        "--batch-size", "100", "--dtype", "float64", "--seed", "7"]
HB, LIVENESS = 0.2, 3
T_DEAD = HB * LIVENESS
KNOBS = ["--heartbeat", str(HB), "--liveness", str(LIVENESS), "--step-timeout", "2"]
SLOW = "delay=1:0.05"  # every GRAD leaves 50 ms late: about 3.5 s of training, time to act mid-run
DEADLINE = 2 * T_DEAD  # detection within HB x L; the bound is twice that to allow for the poll phase


def launch(out, workers, *extra, timeout=90):
    result = subprocess.run(PY + ["launch", "--workers", str(workers), *ARGS, *KNOBS, "--out", str(out), *extra],
                            capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Fault-free final parameters for 2 and 3 shards per step."""
    ref = {}
    for workers in (2, 3):
        out = tmp_path_factory.mktemp(f"ref{workers}") / "run"
        result = launch(out, workers)
        assert result.returncode == 0, result.stdout[-3000:]
        ref[workers] = load_params(out)
        ref[f"metrics{workers}"] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return ref


def named(run, event):
    return [e for e in events(run) if e["event"] == event]


def session_of(run, pid=None, name=None) -> list[int]:
    """Sessions registered by a worker process (by pid) or a launch worker (by name), oldest first."""
    return [e["session"] for e in named(run, "hello")
            if (pid is None or e["pid"] == pid) and (name is None or e["name"] == name)]


def assert_same_model(run, expected):
    assert np.array_equal(load_params(run), expected), np.max(np.abs(load_params(run) - expected))


def wait_for_event(run, pred, timeout=10.0) -> float:
    """Seconds until an event matching pred is in events.jsonl (polled every 10 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if any(pred(e) for e in events(run)):
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"no such event within {timeout} s: {events(run)[-10:]}")


def declared_dead(run, session, label: str) -> None:
    """The server declares `session` dead within DEADLINE (the time is printed with -s)."""
    detect = wait_for_event(run, lambda e: e["event"] == "dead" and e["session"] == session)
    print(f"\n{label}: dead event after {detect:.3f} s")
    assert detect < DEADLINE


def worker_steps(run, rank, since: float = -1.0) -> set[int]:
    """Steps computed by worker `rank` (started at `since` or later on the server clock: a rank is
    reused after a death, and comm.jsonl keeps the spans a killed worker shipped before it died)."""
    rows = [json.loads(line) for line in (run / "comm.jsonl").read_text().splitlines()]
    return {r["step"] for r in rows if r["role"] == "worker" and r["rank"] == rank and r["span"] == "compute"
            and r["t"] >= since}


def stopped_by_server(w, timeout=5.0) -> float:
    start = time.monotonic()
    assert w.wait(timeout) == 0, w.output()[-2000:]
    return time.monotonic() - start


# -- worker death -----------------------------------------------------------------------------------
def test_launch_kill_schedule_sigkills_a_worker_mid_epoch(tmp_path, reference):
    run = tmp_path / "run"
    result = launch(run, 3, "--faults", "kill=worker1@step25")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "[launch] worker 1 exited with status -9" in result.stdout
    victim = session_of(run, name="w1")[0]
    dead = [e for e in named(run, "dead") if e["session"] == victim]
    assert len(dead) == 1 and dead[0]["step"] == 25 and len(named(run, "dead")) == 1
    assert [(e["step"], e["from_rank"]) for e in named(run, "reassign")] == [(25, dead[0]["rank"])]
    # detection: from the step's first TASK (the victim dies on receiving it) to the dead event
    sent = [json.loads(line) for line in (run / "comm.jsonl").read_text().splitlines()]
    t_task = min(r["t"] for r in sent if r["role"] == "server" and r["span"] == "send" and r["step"] == 25)
    detect = dead[0]["t"] - t_task
    print(f"\nlaunch kill@25: dead {detect:.3f} s after the TASK ({dead[0]['reason']})")
    assert 0 <= detect < DEADLINE
    assert_same_model(run, reference[3])


def test_external_sigkill_then_the_worker_started_again_rejoins(tmp_path, reference):
    run = tmp_path / "run"
    with Procs(tmp_path) as p:
        server, address = p.server(run, 3, *ARGS, *KNOBS)
        workers = [p.worker(address, "--faults", SLOW) for _ in range(3)]
        server.wait_for("epoch   1/")
        victim = workers[1]
        os.kill(victim.pid, signal.SIGKILL)
        session = session_of(run, pid=victim.pid)[0]
        declared_dead(run, session, "external SIGKILL")
        again = p.worker(address, "--faults", SLOW)
        wait_for_event(run, lambda e: e["event"] == "join" and e["pid"] == again.pid, timeout=30)
        ends_cleanly(server, workers[0], workers[2], again, timeout=60, worker_timeout=10)
        no_traceback(workers[1])
    dead = [e for e in named(run, "dead") if e["session"] == session]
    join = [e for e in named(run, "join") if e["pid"] == again.pid]
    assert len(dead) == 1 and len(join) == 1 and len(named(run, "dead")) == 1
    steps = worker_steps(run, join[0]["rank"], since=join[0]["t"])
    assert steps and min(steps) in (join[0]["step"], join[0]["step"] + 1), (join, sorted(steps)[:5])
    assert_same_model(run, reference[3])


def process_state(pid: int) -> str:
    """The one-letter state in /proc/PID/stat: 'T' while stopped by a signal."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_sigstopped_zombie_is_fenced_off_and_registers_again(tmp_path, reference):
    run = tmp_path / "run"
    # The zombie SIGSTOPs itself before computing step 25 and is SIGCONTed 1.5 s later, so it always
    # wakes up holding a task of a step the server has moved past: its GRAD must be refused.
    # (Stopped from outside at a random moment it may instead be idle and only notice the silence.)
    with Procs(tmp_path) as p:
        server, address = p.server(run, 3, *ARGS, *KNOBS)
        workers = [p.worker(address, "--faults", SLOW) for _ in range(2)]
        zombie = p.worker(address, "--faults", SLOW + ",stop@25:1.5")
        workers.append(zombie)
        server.wait_for("epoch   1/")
        session = session_of(run, pid=zombie.pid)[0]
        deadline = time.monotonic() + 20
        while process_state(zombie.pid) != "T":
            assert time.monotonic() < deadline and zombie.p.poll() is None, zombie.output()[-2000:]
            time.sleep(0.005)
        declared_dead(run, session, "SIGSTOP")
        wait_for_event(run, lambda e: e["event"] == "join" and e["pid"] == zombie.pid and e["session"] != session)
        ends_cleanly(server, *workers, timeout=60, worker_timeout=10)
        assert "registering again" in zombie.output()
    stale = [e for e in named(run, "stale") if e["session"] == session]
    kinds = {(e["type"], e["step"]) for e in stale}
    # its stale GRAD, and maybe the LOGS chunk it ships right after (its old session's spans are refused too)
    assert ("Grad", 25) in kinds and kinds <= {("Grad", 25), ("Logs", None)}, named(run, "stale")
    assert len(session_of(run, pid=zombie.pid)) == 2 and len(named(run, "dead")) == 1
    assert_same_model(run, reference[3])  # nothing computed on old parameters was applied


def test_slow_but_alive_worker_loses_its_shard_but_is_not_declared_dead(tmp_path, reference):
    run = tmp_path / "run"
    # hangs 1.5 s: past --step-timeout 1, far past heartbeat x liveness, yet its heartbeat thread goes on
    result = launch(run, 3, "--step-timeout", "1", "--faults", "hang=worker1@step10:1.5s")
    assert result.returncode == 0, result.stdout[-3000:]
    slow = session_of(run, name="w1")[0]
    rank = next(e["rank"] for e in named(run, "hello") if e["session"] == slow)
    assert named(run, "dead") == []
    assert [(e["step"], e["rank"]) for e in named(run, "step_timeout")] == [(10, rank)]
    assert any(e["step"] == 10 and e["rank"] == rank for e in named(run, "ignored_grad"))  # its late GRAD
    assert_same_model(run, reference[3])


def test_a_worker_busy_far_longer_than_its_queue_lasts_is_never_declared_dead(tmp_path, reference):
    """Heartbeats every 0.05 s for a 6 s shard: once 16 unread pings fill the busy worker's receive
    queue (RCVHWM), libzmq stops reading its connection, ZMTP pings go unanswered and the connection
    is dropped 3 s later (HEARTBEAT_TIMEOUT). A busy worker must be sent nothing it cannot read now."""
    run = tmp_path / "run"
    result = launch(run, 3, "--heartbeat", "0.05", "--liveness", "10", "--step-timeout", "1",
                    "--faults", "hang=worker1@step10:6s")
    assert result.returncode == 0, result.stdout[-3000:]
    slow = session_of(run, name="w1")[0]
    rank = next(e["rank"] for e in named(run, "hello") if e["session"] == slow)
    assert named(run, "dead") == [], named(run, "dead")
    assert [(e["step"], e["rank"]) for e in named(run, "step_timeout")] == [(10, rank)]
    assert_same_model(run, reference[3])


# -- membership ---------------------------------------------------------------------------------------
def test_worker_joining_mid_run_takes_shards_from_the_next_step(tmp_path, reference):
    run = tmp_path / "run"
    with Procs(tmp_path) as p:
        server, address = p.server(run, 2, *ARGS, *KNOBS)
        workers = [p.worker(address, "--faults", SLOW) for _ in range(2)]
        server.wait_for("epoch   1/")
        third = p.worker(address, env={"PARSGD_FAULTS": SLOW})  # the env var stands for --faults
        ends_cleanly(server, *workers, third, timeout=60, worker_timeout=10)
        assert f"fault injection: {SLOW}" in third.output()
    join = [e for e in named(run, "join") if e["pid"] == third.pid]
    assert len(join) == 1 and 20 <= join[0]["step"] < 60, join
    first, steps = join[0]["step"], worker_steps(run, join[0]["rank"])
    # 2 shards rotate over 3 workers: the newcomer's first turn comes within 3 steps, then 2 steps in 3
    assert steps and first < min(steps) <= first + 3, (join, sorted(steps)[:5])
    assert len(steps) >= 2 * (60 - first - 3) // 3, sorted(steps)
    assert_same_model(run, reference[2])


def test_launch_restarts_a_crashed_worker(tmp_path, reference):
    run = tmp_path / "run"
    result = launch(run, 3, "--restart-workers", "1", "--faults", f"crash=worker1@step8,{SLOW}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "[launch] worker 1 exited with status 1" in result.stdout
    assert "[launch] restarting worker 1 (1/1)" in result.stdout
    w1 = [e for e in named(run, "hello") if e["name"] == "w1"]
    assert len(w1) == 2 and w1[0]["pid"] != w1[1]["pid"]
    assert w1[1]["session"] in {e["session"] for e in named(run, "join")}
    assert_same_model(run, reference[3])


# -- the server -----------------------------------------------------------------------------------------
def test_server_sigkilled_then_resumed_keeps_the_same_workers(tmp_path, reference):
    run = tmp_path / "run"
    port = free_port()
    with Procs(tmp_path) as p:
        first, address = p.server(run, 3, *ARGS, *KNOBS, "--checkpoint-every", "7", port=port)
        workers = [p.worker(address, "--faults", SLOW) for _ in range(3)]
        first.wait_for("epoch   1/")
        time.sleep(0.3)
        first.kill()
        ckpt = named(run, "checkpoint")[-1]["step"]
        assert 20 <= ckpt < 60
        # SIGKILL: spans of the last second (one flush or LOGS interval) may be lost, not the rest
        assert_interrupted_run_kept_its_timeline(run, tmp_path, server_steps=10, worker_steps=3)
        second, _ = p.server(run, 3, "--resume", str(run), *KNOBS, "--checkpoint-every", "7", port=port)
        assert second.wait(60) == 0, second.output()[-3000:]
        assert all(w.wait(10) == 0 for w in workers)  # the same processes, never restarted
        no_traceback(first, second, *workers)
        assert f"resuming {run} at step {ckpt}" in second.output()
    listening = named(run, "listening")
    assert len(listening) == 2 and listening[0]["incarnation"] != listening[1]["incarnation"]
    pids = {w.pid for w in workers}
    hellos = named(run, "hello")
    assert {e["pid"] for e in hellos} == pids and len(hellos) == 6  # each worker registered twice
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [1, 2, 3]
    assert_same_model(run, reference[3])


def test_resume_from_an_epoch_end_checkpoint_keeps_every_metrics_line(tmp_path, reference):
    """--checkpoint-every 20 = one epoch: the checkpoint at step 20 must hold epoch 1's metrics, so the
    resumed run's metrics.jsonl equals the uninterrupted run's line for line (timings aside)."""
    run, port = tmp_path / "run", free_port()
    with Procs(tmp_path) as p:
        first, address = p.server(run, 3, *ARGS, *KNOBS, "--checkpoint-every", "20", port=port)
        workers = [p.worker(address, "--faults", SLOW) for _ in range(3)]
        deadline = time.monotonic() + 30
        while not named(run, "checkpoint") and time.monotonic() < deadline:
            time.sleep(0.01)
        first.kill()
        assert [e["step"] for e in named(run, "checkpoint")] == [20]
        second, _ = p.server(run, 3, "--resume", str(run), *KNOBS, "--checkpoint-every", "20", port=port)
        assert second.wait(60) == 0, second.output()[-3000:]
        assert all(w.wait(10) == 0 for w in workers)
        no_traceback(first, second, *workers)
    got = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    want = reference["metrics3"]
    assert [m["epoch"] for m in got] == [1, 2, 3]
    for g, w in zip(got, want):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert g[key] == pytest.approx(w[key], rel=1e-12, abs=1e-15), (g["epoch"], key)
    assert_same_model(run, reference[3])


def assert_interrupted_run_kept_its_timeline(run, tmp_path, server_steps: int, worker_steps: int) -> None:
    """comm.jsonl of an interrupted run holds server and worker spans of its first steps, and
    `parsgd trace` / `parsgd plot` read it."""
    rows = [json.loads(line) for line in (run / "comm.jsonl").read_text().splitlines()]
    for role, done in (("server", server_steps), ("worker", worker_steps)):
        steps = {r["step"] for r in rows if r["role"] == role}
        assert set(range(done)) <= steps, (role, sorted(steps)[-5:], len(rows))
    for argv in (["trace", str(run), "-o", str(tmp_path / "trace.json")], ["plot", str(run), "-o", str(tmp_path / "png")]):
        result = subprocess.run(PY + argv, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert (tmp_path / "png" / "step_timeline.png").is_file()


def test_launch_resume_after_sigint(tmp_path, reference):
    run = tmp_path / "run"
    proc = subprocess.Popen(PY + ["launch", "--workers", "3", *ARGS, *KNOBS, "--faults", SLOW, "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "epoch   1/" in line:
                proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130, "".join(lines)
    finally:
        proc.kill()  # a no-op once it exited; its children die with it (PR_SET_PDEATHSIG)
        proc.stdout.close()
    out = "".join(lines)
    assert "Traceback" not in out and f"continue with `parsgd launch --resume {run}`" in out, out[-3000:]
    step = named(run, "checkpoint")[-1]["step"]
    assert 20 <= step < 60
    assert_interrupted_run_kept_its_timeline(run, tmp_path, server_steps=20, worker_steps=20)
    result = launch(run, 3, "--resume", str(run))
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"resuming {run} at step {step}" in result.stdout
    assert_same_model(run, reference[3])


# -- lost, repeated and poisoned messages ---------------------------------------------------------------
def test_ten_percent_dropped_grads_change_nothing(tmp_path, reference):
    run = tmp_path / "run"
    result = launch(run, 3, "--step-timeout", "0.15", "--faults", "drop=0.1,seed=3")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "fault injection: drop=0.1,seed=3 (seed 3, stream 'w0')" in result.stdout
    assert len(named(run, "step_timeout")) >= 5  # ~18 of 180 GRADs were lost, each one reassigned
    assert named(run, "dead") == []
    assert_same_model(run, reference[3])


def test_injected_drops_and_duplicates_replay_from_the_logged_seed(tmp_path, reference):
    """One worker drops and duplicates GRADs: the same seed gives the same event sequence, twice."""
    seen = []
    for attempt in range(2):
        run = tmp_path / f"run{attempt}"
        with Procs(tmp_path) as p:
            server, address = p.server(run, 3, *ARGS, *KNOBS, "--step-timeout", "0.4")
            flaky = p.worker(address, "--faults", "drop=0.1,dup=0.2,seed=5", "--name", "flaky")
            others = [p.worker(address) for _ in range(2)]
            ends_cleanly(server, flaky, *others, timeout=60, worker_timeout=10)
            assert "seed 5, stream 'flaky'" in flaky.output()
        rank = next(e["rank"] for e in named(run, "hello") if e["name"] == "flaky")
        seen.append([(e["event"], e["step"]) for e in events(run)
                     if e["event"] in ("step_timeout", "ignored_grad") and e["rank"] == rank])
        assert named(run, "dead") == []
        assert_same_model(run, reference[3])
    kinds = {kind for kind, _ in seen[0]}
    assert kinds == {"step_timeout", "ignored_grad"}, seen[0]  # drops, and duplicates ignored
    assert seen[0] == seen[1]


def test_nan_gradient_once_is_recomputed_elsewhere(tmp_path, reference):
    run = tmp_path / "run"
    result = launch(run, 3, "--faults", "nan=worker1@step12")
    assert result.returncode == 0, result.stdout[-3000:]
    bad = named(run, "non_finite_grad")
    assert [e["step"] for e in bad] == [12]
    assert_same_model(run, reference[3])


def test_nan_gradient_on_every_attempt_stops_the_run(tmp_path):
    run = tmp_path / "run"
    result = launch(run, 2, "--faults", "nan=worker0@step5,nan=worker1@step5")
    assert result.returncode == 1, result.stdout[-3000:]
    errors = [line for line in result.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1 and "step 5 gave a non-finite gradient (NaN or Inf) twice" in errors[0], errors
    assert len(named(run, "non_finite_grad")) >= 2
    assert named(run, "checkpoint")[-1]["step"] == 5 and (run / "checkpoint.npz").is_file()
    assert "stopped by the server (server stopped)" in result.stdout


# -- nobody left, and shutting down ----------------------------------------------------------------------
def test_no_worker_left_checkpoints_and_exits_1_after_wait_timeout(tmp_path):
    run = tmp_path / "run"
    port = free_port()
    with Procs(tmp_path) as p:
        workers = [p.worker(f"tcp://127.0.0.1:{port}", "--faults", SLOW) for _ in range(3)]
        server, _ = p.server(run, 3, *ARGS, *KNOBS, "--wait-timeout", "2.5", port=port)
        server.wait_for("epoch   1/")
        for w in workers:
            w.signal(signal.SIGKILL)
        start = time.monotonic()
        assert server.wait(15) == 1
        took = time.monotonic() - start
        no_traceback(server)
        out = server.output()
    print(f"\nno worker left: server exited {took:.2f} s after the kills (--wait-timeout 2.5)")
    assert 2.5 <= took < 2.5 + DEADLINE + 2
    assert "no workers left: waiting up to 2.5 s" in out
    error = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "no workers for 2.5 s" in error[0] and f"--resume {run}" in error[0]
    step = named(run, "checkpoint")[-1]["step"]
    assert len(named(run, "dead")) == 3 and 20 <= step < 60
    state = load_checkpoint(run)  # written atomically: params, velocity, step, epoch, metrics so far
    assert state["step"] == step and state["epoch"] == step // 20 and len(state["metrics"]) == state["epoch"]
    assert np.isfinite(state["params"]).all() and np.abs(state["velocity"]).sum() > 0


def test_worker_whose_server_vanished_exits_1_after_connect_timeout(tmp_path):
    with Procs(tmp_path) as p:
        server, address = p.server(tmp_path / "run", 1, *ARGS, *KNOBS)
        worker = p.start("worker", ["worker", "--connect", address, "--connect-timeout", "1.5", "--faults", SLOW])
        server.wait_for("epoch   1/")
        server.kill()
        start = time.monotonic()
        assert worker.wait(15) == 1
        took = time.monotonic() - start
        no_traceback(worker)
        out = worker.output()
    print(f"\nserver vanished: worker exited {took:.2f} s later (silence {T_DEAD} s + --connect-timeout 1.5)")
    assert took < T_DEAD + 1.5 + 2.5
    error = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "no parameter server answered" in error[0] and "within 1.5 s" in error[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_on_a_worker_and_then_on_the_server(tmp_path, sig):
    run = tmp_path / "run"
    with Procs(tmp_path) as p:
        server, address = p.server(run, 3, *ARGS, *KNOBS)
        workers = [p.worker(address, "--faults", SLOW) for _ in range(3)]
        server.wait_for("epoch   1/")
        start = time.monotonic()
        workers[0].signal(sig)
        assert workers[0].wait(5) in (1, 130)
        took_worker = time.monotonic() - start
        # a signalled worker says it leaves: "left", not "dead", and its shard moves at once
        wait_for_event(run, lambda e: e["event"] == "left" and e["session"] == session_of(run, pid=workers[0].pid)[0])
        start = time.monotonic()
        server.signal(sig)
        assert server.wait(10) == 1
        took_server = time.monotonic() - start
        took_workers = [stopped_by_server(w) + took_server for w in workers[1:]]
        no_traceback(server, *workers)
        outs = [w.output() for w in workers]
        server_out = server.output()
    print(f"\n{sig.name}: worker exited in {took_worker:.2f} s; server in {took_server:.2f} s, "
          f"its workers by {max(took_workers):.2f} s")
    assert took_worker < 2 and took_server < 3 and max(took_workers) < 3
    assert "error: " in outs[0]
    victim = session_of(run, pid=workers[0].pid)[0]
    assert [e for e in named(run, "dead") if e["session"] == victim] == []
    assert f"worker {named(run, 'left')[0]['rank']} left: 2 live" in server_out
    error = [line for line in server_out.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"interrupted by {sig.name}" in error[0] and f"--resume {run}" in error[0]
    assert all("stopped by the server (server stopped)" in out for out in outs[1:])
    assert named(run, "checkpoint")[-1]["step"] >= 20 and (run / "checkpoint.npz").is_file()
