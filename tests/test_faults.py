"""Process faults with real processes and real signals, each run compared with the fault-free run.

    python -m pytest tests/test_faults.py -q -s     # -s prints the measured detection times
    PARSGD_FAULT_TRANSPORTS=all python -m pytest tests/test_faults.py -q -s   # every test on shm, tcp and ipc

Every batch is cut into --workers shards whatever the live membership, and the server sums the
shards in shard order, so a run that survives faults must end with the SAME BYTES as the
fault-free run with the same --workers: the tests assert exact equality (stronger than the issue's
float64 max abs diff < 1e-8), and that no message of a faulted run was malformed (no `protocol_error`,
e.g. from a half-sent frame of a killed worker).

Transports: the faults where a frame may be cut or lost in flight (SIGKILLs, the zombie, the server
killed and resumed, dropped and duplicated GRADs) run over shm, tcp and ipc; the rest over shm only
(docs/faults.md lists which). Timing: heartbeats are 0.2 s; a test that measures how fast a death is
noticed uses liveness 3 (0.6 s) and asserts only on its victim's session, every other test uses
liveness CALM (2 s), so a stall of a loaded machine is never a false death there. Waits are on
events and outputs, never on a fixed delay.
"""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from attack import dealer, hello, recv_message, wait_event
from parsgd.config import RunConfig
from parsgd.data import load_dataset
from parsgd.ps import protocol as proto
from parsgd.ps.checkpoint import load_checkpoint
from parsgd.ps.faults import FaultPlan
from parsgd.ps.router import CLOSE_LINGER_MS
from parsgd.ps.loop import STOP_ACK_S
from procs import (BIG_TRAINING, PY, TRANSPORTS, Procs, descendants, ends_cleanly, events, load_params, no_traceback, none_left,
                   shell_status)

pytestmark = pytest.mark.slow  # real server and worker processes, faults waited out

# 2000 rows at batch 100: 20 steps per epoch, 60 in all; shards of 34/33/33 rows for 3 workers
ARGS = ["--dataset", "synthetic", "--num-samples", "2000", "--epochs", "3", "--hidden", "32,16",
        "--batch-size", "100", "--dtype", "float64", "--seed", "7"]
HB, LIVENESS = 0.2, 3
T_DEAD = HB * LIVENESS
CALM = 10  # liveness where detection time is not what is tested: 2 s of silence before a death
KNOBS = ["--heartbeat", str(HB), "--liveness", str(LIVENESS), "--step-timeout", "2"]
CALM_KNOBS = ["--heartbeat", str(HB), "--liveness", str(CALM), "--step-timeout", "2"]
SLOW = "delay=1:0.05"  # every GRAD leaves 50 ms late: at least 3 s of training, time to act mid-run
DEADLINE = 2 * T_DEAD  # detection within HB x L; the bound is twice that to allow for the poll phase
FAKE_PID = 10**9       # a hand-made peer's pid: never a real process
README = Path(__file__).resolve().parent.parent / "README.md"


def on(*transports):
    """Run a test over these transports; PARSGD_FAULT_TRANSPORTS=all runs it over every one (to measure)."""
    chosen = TRANSPORTS if os.environ.get("PARSGD_FAULT_TRANSPORTS") == "all" else transports
    return pytest.mark.parametrize("transport", chosen)


def exit_table() -> dict[tuple[str, str], int]:
    """README's "Exit status on signals" table: {(command cell, signal name): status as a shell reports it}."""
    lines = README.read_text().splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("| command | SIGINT | SIGTERM | SIGKILL")), None)
    if header is None:
        return {}
    signals = [c.strip() for c in lines[header].strip().strip("|").split("|")][1:4]
    table = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for sig, cell in zip(signals, cells[1:4]):
            table[(cells[0], sig)] = int(re.match(r"`(\d+)`", cell).group(1))
    return table


EXIT = exit_table()


def launch(out, workers, *extra, transport="shm", timeout=90):
    result = subprocess.run(PY + ["launch", "--workers", str(workers), "--transport", transport, *ARGS, *KNOBS,
                                  "--out", str(out), *extra], capture_output=True, text=True, timeout=timeout)
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


def rank_of(run, session) -> int:
    return next(e["rank"] for e in named(run, "hello") if e["session"] == session)


def no_protocol_error(run) -> None:
    """Nothing a worker sent was malformed: a frame cut by a kill or a fault never reaches the decoder."""
    bad = named(run, "protocol_error")
    assert not bad, bad[:5]


def assert_same_model(run, expected):
    assert np.array_equal(load_params(run), expected), np.max(np.abs(load_params(run) - expected))
    no_protocol_error(run)


def wait_for_event(run, pred, timeout=10.0) -> float:
    """Seconds until an event matching pred is in events.jsonl (polled every 10 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if any(pred(e) for e in events(run)):
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"no such event within {timeout} s: {events(run)[-10:]}")


def declared_dead(run, session, label: str) -> dict:
    """The server declares `session` dead within DEADLINE (the time is printed with -s); its dead event."""
    detect = wait_for_event(run, lambda e: e["event"] == "dead" and e["session"] == session)
    dead = next(e for e in named(run, "dead") if e["session"] == session)
    print(f"\n{label}: dead event after {detect:.3f} s ({dead['reason']})")
    assert detect < DEADLINE
    return dead


def worker_steps(run, rank, since: float = -1.0) -> set[int]:
    """Steps computed by worker `rank` (started at `since` or later on the server clock: a rank is
    reused after a death, and comm.jsonl keeps the spans a killed worker shipped before it died)."""
    return {r["step"] for r in comm_rows(run) if r["role"] == "worker" and r["rank"] == rank and r["span"] == "compute"
            and r["t"] >= since}


def comm_rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "comm.jsonl").read_text().splitlines()]


def stopped_by_server(w, timeout=5.0) -> float:
    start = time.monotonic()
    assert w.wait(timeout) == 0, w.output()[-2000:]
    return time.monotonic() - start


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# -- worker death -----------------------------------------------------------------------------------
@on(*TRANSPORTS)
def test_launch_kill_schedule_sigkills_a_worker_mid_epoch(tmp_path, reference, transport):
    run = tmp_path / "run"
    result = launch(run, 3, "--faults", "kill=worker1@step25", transport=transport)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "[launch] worker 1 exited with status -9" in result.stdout
    victim = session_of(run, name="w1")[0]
    dead = [e for e in named(run, "dead") if e["session"] == victim]
    assert len(dead) == 1 and dead[0]["step"] == 25, dead
    rank = dead[0]["rank"]
    # its shard of step 25 went to a live worker, once
    assert len([e for e in named(run, "reassign") if e["step"] == 25 and e["from_rank"] == rank]) == 1
    # detection: from the step's first TASK (the victim dies on receiving it) to the dead event
    t_task = min(r["t"] for r in comm_rows(run) if r["role"] == "server" and r["span"] == "send" and r["step"] == 25)
    detect = dead[0]["t"] - t_task
    print(f"\n[{transport}] launch kill@25: dead {detect:.3f} s after the TASK ({dead[0]['reason']})")
    assert 0 <= detect < DEADLINE
    assert_same_model(run, reference[3])


@on(*TRANSPORTS)
def test_external_sigkill_then_the_worker_started_again_rejoins(tmp_path, reference, transport):
    run = tmp_path / "run"
    with Procs(tmp_path) as p:
        server, address = p.server(run, 3, *ARGS, *KNOBS, transport=transport)
        workers = [p.worker(address, "--faults", SLOW) for _ in range(3)]
        server.wait_for("epoch   1/")
        victim = workers[1]
        session = session_of(run, pid=victim.pid)[0]
        victim.signal(signal.SIGKILL)
        again = p.worker(address, "--faults", SLOW)  # started again at once: it loads its data meanwhile
        declared_dead(run, session, f"[{transport}] external SIGKILL")
        wait_for_event(run, lambda e: e["event"] == "join" and e["pid"] == again.pid, timeout=30)
        ends_cleanly(server, workers[0], workers[2], again, timeout=60, worker_timeout=10)
        assert shell_status(victim.wait(5)) == EXIT[("`worker`", "SIGKILL")]
        no_traceback(victim)
    dead = [e for e in named(run, "dead") if e["session"] == session]
    join = [e for e in named(run, "join") if e["pid"] == again.pid]
    assert len(dead) == 1 and len(join) == 1
    steps = worker_steps(run, join[0]["rank"], since=join[0]["t"])
    assert steps and min(steps) in (join[0]["step"], join[0]["step"] + 1), (join, sorted(steps)[:5])
    assert_same_model(run, reference[3])


def process_state(pid: int) -> str:
    """The one-letter state in /proc/PID/stat: 'T' while stopped by a signal."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@on(*TRANSPORTS)
def test_sigstopped_zombie_is_fenced_off_and_registers_again(tmp_path, reference, transport):
    run = tmp_path / "run"
    slow = "delay=1:0.08"  # 60 steps of >= 80 ms: the zombie wakes at about step 30 and has 2.5 s to come back
    # The zombie SIGSTOPs itself before computing step 10 and is SIGCONTed 1.5 s later, so it always
    # wakes up holding a task of a step the server has moved past: its GRAD must be refused.
    # (Stopped from outside at a random moment it may instead be idle and only notice the silence.)
    with Procs(tmp_path) as p:
        server, address = p.server(run, 3, *ARGS, *KNOBS, transport=transport)
        workers = [p.worker(address, "--faults", slow) for _ in range(2)]
        zombie = p.worker(address, "--faults", slow + ",stop@10:1.5")
        workers.append(zombie)
        wait_event(run, lambda e: e["event"] == "join", timeout=60, count=3)
        session = session_of(run, pid=zombie.pid)[0]
        deadline = time.monotonic() + 20
        while process_state(zombie.pid) != "T":
            assert time.monotonic() < deadline and zombie.p.poll() is None, zombie.output()[-2000:]
            time.sleep(0.005)
        declared_dead(run, session, f"[{transport}] SIGSTOP")
        wait_for_event(run, lambda e: e["event"] == "join" and e["pid"] == zombie.pid and e["session"] != session,
                       timeout=30)
        ends_cleanly(server, *workers, timeout=60, worker_timeout=10)
        out = zombie.output()
    # the zombie was told: ERROR STALE, then it registered again
    told = [line for line in out.splitlines() if "the server does not know this session" in line]
    assert len(told) == 1 and told[0].endswith("registering again"), out[-2000:]
    stale = [e for e in named(run, "stale") if e["session"] == session]
    kinds = {(e["type"], e["step"]) for e in stale}
    # its stale GRAD, and maybe the LOGS chunk it ships right after (its old session's spans are refused too)
    assert ("Grad", 10) in kinds and kinds <= {("Grad", 10), ("Logs", None)}, named(run, "stale")
    assert len([e for e in named(run, "dead") if e["session"] == session]) == 1
    assert len(session_of(run, pid=zombie.pid)) >= 2
    assert_same_model(run, reference[3])  # nothing computed on old parameters was applied


@on("shm")
def test_slow_but_alive_worker_loses_its_shard_but_is_not_declared_dead(tmp_path, reference, transport):
    run = tmp_path / "run"
    # liveness 5 x 0.2 s = 1 s; it hangs 2 s: past --step-timeout 1 and twice the silence that would
    # make it dead, yet its heartbeat thread goes on
    result = launch(run, 3, "--liveness", "5", "--step-timeout", "1", "--faults", "hang=worker1@step10:2s",
                    transport=transport)
    assert result.returncode == 0, result.stdout[-3000:]
    slow = session_of(run, name="w1")[0]
    rank = rank_of(run, slow)
    assert [e for e in named(run, "dead") if e["session"] == slow] == []
    assert [(e["step"], e["rank"]) for e in named(run, "step_timeout") if e["rank"] == rank] == [(10, rank)]
    assert any(e["step"] == 10 and e["rank"] == rank for e in named(run, "ignored_grad"))  # its late GRAD
    assert_same_model(run, reference[3])


@on("shm")
def test_a_worker_busy_far_longer_than_its_queue_lasts_is_never_declared_dead(tmp_path, reference, transport):
    """Heartbeats every 0.05 s for a 6 s shard: once 16 unread pings fill the busy worker's receive
    queue (RCVHWM, within 0.8 s), libzmq stops reading its connection, ZMTP pings go unanswered and the
    connection is dropped 3 s later (HEARTBEAT_TIMEOUT). A busy worker must be sent nothing it cannot read now."""
    run = tmp_path / "run"
    result = launch(run, 3, "--heartbeat", "0.05", "--liveness", "20", "--step-timeout", "1",
                    "--faults", "hang=worker1@step10:6s", transport=transport)
    assert result.returncode == 0, result.stdout[-3000:]
    slow = session_of(run, name="w1")[0]
    rank = rank_of(run, slow)
    assert [e for e in named(run, "dead") if e["session"] == slow] == [], named(run, "dead")
    assert [(e["step"], e["rank"]) for e in named(run, "step_timeout") if e["rank"] == rank] == [(10, rank)]
    assert_same_model(run, reference[3])


# -- membership ---------------------------------------------------------------------------------------
@on("shm")
def test_worker_joining_mid_run_takes_shards_from_the_next_step(tmp_path, reference, transport):
    run = tmp_path / "run"
    with Procs(tmp_path) as p:
        server, address = p.server(run, 2, *ARGS, *CALM_KNOBS, transport=transport)
        workers = [p.worker(address, "--faults", SLOW) for _ in range(2)]
        wait_event(run, lambda e: e["event"] == "join", timeout=60, count=2)  # training has begun
        third = p.worker(address, env={"PARSGD_FAULTS": SLOW})  # the env var stands for --faults
        ends_cleanly(server, *workers, third, timeout=60, worker_timeout=10)
        assert f"fault injection: {SLOW}" in third.output()
    join = [e for e in named(run, "join") if e["pid"] == third.pid]
    assert len(join) == 1 and 1 <= join[0]["step"] < 60, join
    first, steps = join[0]["step"], worker_steps(run, join[0]["rank"])
    # 2 shards rotate over 3 workers: the newcomer's first turn comes within 3 steps, then 2 steps in 3
    assert steps and first < min(steps) <= first + 3, (join, sorted(steps)[:5])
    assert len(steps) >= 2 * (60 - first - 3) // 3, sorted(steps)
    assert_same_model(run, reference[2])


@on("shm")
def test_launch_restarts_a_crashed_worker(tmp_path, reference, transport):
    run = tmp_path / "run"
    result = launch(run, 3, "--liveness", "5", "--restart-workers", "1",
                    "--faults", f"crash=worker1@step8,{SLOW}", transport=transport)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "[launch] worker 1 exited with status 1" in result.stdout
    assert "[launch] restarting worker 1 (1/1)" in result.stdout
    assert result.stdout.count("exited with status") == 1, result.stdout[-3000:]  # the restart works on
    w1 = [e for e in named(run, "hello") if e["name"] == "w1"]
    assert len(w1) == 2 and w1[0]["pid"] != w1[1]["pid"]
    assert w1[1]["session"] in {e["session"] for e in named(run, "join")}
    assert_same_model(run, reference[3])


@on("tcp")
def test_a_restarted_worker_reusing_its_routing_id_replaces_its_old_session(tmp_path, reference, transport):
    """ROUTER_HANDOVER: a second connection with the same routing id (a worker restarted with a fixed
    identity) takes the id over; its HELLO ends the old session ("registered again") and gets a WELCOME."""
    run = tmp_path / "run"
    ctx = zmq.Context()
    try:
        with Procs(tmp_path) as p:
            # liveness 50 x 0.2 s: the hand-made worker never heartbeats, yet stays a member for 10 s
            server, address = p.server(run, 2, *ARGS, "--heartbeat", str(HB), "--liveness", "50",
                                       "--step-timeout", "30", transport=transport)
            first = dealer(ctx, address, identity=b"restarted-worker")
            first.send_multipart(hello(0xA1, pid=FAKE_PID))
            welcome = recv_message(first, 30)
            assert isinstance(welcome, proto.Welcome) and welcome.session == 0xA1, welcome
            cfg = RunConfig.from_dict(welcome.config)
            data = load_dataset(cfg.dataset, cfg.data_dir, cfg.num_samples, cfg.seed, cfg.dtype)
            first.send_multipart(proto.Ready(welcome.incarnation, 0xA1, data.fingerprint(), len(data.y_train),
                                             len(data.y_test), False, data.name, data.x_train.dtype.name).to_frames())
            real = p.worker(address)
            task, deadline = None, time.monotonic() + 60
            while not isinstance(task, proto.Task):  # training starts once the real worker joins
                assert time.monotonic() < deadline, "the hand-made worker never got a TASK"
                task = recv_message(first, 1.0)
            # the old session holds a shard it will never answer; the "restarted" worker says HELLO
            second = dealer(ctx, address, identity=b"restarted-worker")
            second.send_multipart(hello(0xB2, pid=FAKE_PID))
            reply, deadline = None, time.monotonic() + 10
            while not isinstance(reply, proto.Welcome):
                assert time.monotonic() < deadline, f"no WELCOME for the new session: {reply}"
                reply = recv_message(second, 1.0)
            assert reply.session == 0xB2 and reply.incarnation == welcome.incarnation
            first.close(linger=0)
            second.close(linger=0)
            ends_cleanly(server, real, timeout=60)
    finally:
        ctx.destroy(linger=0)
    old = [e for e in named(run, "dead") if e["session"] == 0xA1]
    assert len(old) == 1 and old[0]["reason"] == "registered again", named(run, "dead")
    assert [(e["step"], e["shard"]) for e in named(run, "reassign") if e["from_rank"] == old[0]["rank"]] == \
        [(task.step, task.shard)]
    assert [e["pid"] for e in named(run, "hello") if e["session"] == 0xB2] == [FAKE_PID]
    assert_same_model(run, reference[2])  # the real worker computed the old session's shard too


# -- the server -----------------------------------------------------------------------------------------
@on(*TRANSPORTS)
def test_server_sigkilled_then_resumed_keeps_the_same_workers(tmp_path, reference, transport):
    run = tmp_path / "run"
    knobs = [*KNOBS, "--liveness", "5", "--checkpoint-every", "7"]  # a worker notices the silence after 1 s
    with Procs(tmp_path) as p:
        address = p.address(transport)
        first, _ = p.server(run, 3, *ARGS, *knobs, address=address, transport=transport)
        workers = [p.worker(address, "--faults", SLOW) for _ in range(3)]
        # killed once a checkpoint after step 35 is on disk: steps 10-35 took over the 1 s between flushes
        wait_event(run, lambda e: e["event"] == "checkpoint" and e["step"] >= 35, timeout=60)
        first.kill()
        assert shell_status(first.p.returncode) == EXIT[("`server`", "SIGKILL")]
        ckpt = named(run, "checkpoint")[-1]["step"]
        assert 35 <= ckpt < 60
        # SIGKILL: spans of the last second (one flush or LOGS interval) may be lost, not the rest
        assert_interrupted_run_kept_its_timeline(run, tmp_path, server_steps=10, worker_steps=3)
        second, _ = p.server(run, 3, "--resume", str(run), *knobs, address=address, transport=transport)
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


@on("shm")
def test_resume_from_an_epoch_end_checkpoint_keeps_every_metrics_line(tmp_path, reference, transport):
    """--checkpoint-every 20 = one epoch: the checkpoint at step 20 must hold epoch 1's metrics, so the
    resumed run's metrics.jsonl equals the uninterrupted run's line for line (timings aside)."""
    run = tmp_path / "run"
    with Procs(tmp_path) as p:
        address = p.address(transport)
        first, _ = p.server(run, 3, *ARGS, *KNOBS, "--checkpoint-every", "20", address=address, transport=transport)
        workers = [p.worker(address, "--faults", SLOW) for _ in range(3)]
        wait_for_event(run, lambda e: e["event"] == "checkpoint", timeout=30)
        first.kill()  # the next checkpoint, at step 40, is 20 steps of >= 50 ms away
        assert [e["step"] for e in named(run, "checkpoint")] == [20]
        second, _ = p.server(run, 3, "--resume", str(run), *KNOBS, "--checkpoint-every", "20", address=address,
                             transport=transport)
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
    rows = comm_rows(run)
    for role, done in (("server", server_steps), ("worker", worker_steps)):
        steps = {r["step"] for r in rows if r["role"] == role}
        assert set(range(done)) <= steps, (role, sorted(steps)[-5:], len(rows))
    for argv in (["trace", str(run), "-o", str(tmp_path / "trace.json")], ["plot", str(run), "-o", str(tmp_path / "png")]):
        result = subprocess.run(PY + argv, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert (tmp_path / "png" / "step_timeline.png").is_file()


@on("shm")
def test_launch_resume_after_sigint(tmp_path, reference, transport):
    run = tmp_path / "run"
    proc = subprocess.Popen(PY + ["launch", "--workers", "3", "--transport", transport, *ARGS, *CALM_KNOBS,
                                  "--faults", SLOW, "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "epoch   1/" in line:
                proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == EXIT[("`launch`", "SIGINT")], "".join(lines)
    finally:
        proc.kill()  # a no-op once it exited; its children die with it (PR_SET_PDEATHSIG)
        proc.stdout.close()
    out = "".join(lines)
    assert "Traceback" not in out and f"continue with `parsgd launch --resume {run}`" in out, out[-3000:]
    step = named(run, "checkpoint")[-1]["step"]
    assert 20 <= step < 60
    assert_interrupted_run_kept_its_timeline(run, tmp_path, server_steps=20, worker_steps=20)
    result = launch(run, 3, "--resume", str(run), transport=transport)
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"resuming {run} at step {step}" in result.stdout
    assert_same_model(run, reference[3])


# -- lost, repeated and poisoned messages ---------------------------------------------------------------
@on(*TRANSPORTS)
def test_dropped_and_duplicated_grads_change_nothing(tmp_path, reference, transport):
    run = tmp_path / "run"
    result = launch(run, 3, "--liveness", str(CALM), "--step-timeout", "0.15",
                    "--faults", "drop=0.1,dup=0.1,seed=3", transport=transport)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "fault injection: drop=0.1,dup=0.1,seed=3 (seed 3, stream 'w0')" in result.stdout
    # ~18 of 180 GRADs were lost, each one reassigned; ~16 were sent twice, each second copy ignored
    assert len(named(run, "step_timeout")) >= 5
    assert len([e for e in named(run, "ignored_grad") if e["why"] == "late or duplicate"]) >= 5
    assert named(run, "dead") == []
    assert_same_model(run, reference[3])


@on("shm")
def test_injected_drops_and_duplicates_follow_the_logged_seed(tmp_path, reference, transport):
    """One worker drops and duplicates GRADs. Its printed seed and stream replay its decisions: each
    GRAD it computed (its send spans in comm.jsonl, in order: one per GRAD, sent or not; a step can
    have two compute spans, the rows gathered ahead being one) was dropped (a step_timeout on it),
    duplicated (an ignored_grad) or sent once, exactly as a FaultPlan with that seed and stream decides."""
    run, spec = tmp_path / "run", "drop=0.1,dup=0.2,seed=5"
    with Procs(tmp_path) as p:
        server, address = p.server(run, 3, *ARGS, *CALM_KNOBS, "--step-timeout", "0.5", transport=transport)
        flaky = p.worker(address, "--faults", spec, "--name", "flaky")
        others = [p.worker(address) for _ in range(2)]
        ends_cleanly(server, flaky, *others, timeout=60, worker_timeout=10)
        assert f"fault injection: {spec} (seed 5, stream 'flaky')" in flaky.output()
    rank = next(e["rank"] for e in named(run, "hello") if e["name"] == "flaky")
    computed = [r["step"] for r in sorted(comm_rows(run), key=lambda r: r["t"])
                if r["role"] == "worker" and r["rank"] == rank and r["span"] == "send"]
    replay = FaultPlan.parse(spec, echo=lambda _: None, stream="flaky")
    copies = [len(replay.outgoing(step, rank)) for step in computed]
    dropped = [step for step, n in zip(computed, copies) if n == 0]
    doubled = [step for step, n in zip(computed, copies) if n == 2]
    assert dropped and doubled, copies
    assert [e["step"] for e in named(run, "step_timeout") if e["rank"] == rank] == dropped
    assert [e["step"] for e in named(run, "ignored_grad") if e["rank"] == rank] == doubled
    assert named(run, "dead") == []
    assert_same_model(run, reference[3])


@on("shm")
def test_nan_gradient_once_is_recomputed_elsewhere(tmp_path, reference, transport):
    run = tmp_path / "run"
    result = launch(run, 3, "--liveness", str(CALM), "--faults", "nan=worker1@step12", transport=transport)
    assert result.returncode == 0, result.stdout[-3000:]
    bad = named(run, "non_finite_grad")
    assert [e["step"] for e in bad] == [12]
    assert_same_model(run, reference[3])


@on("shm")
def test_nan_gradient_on_every_attempt_stops_the_run(tmp_path, transport):
    run = tmp_path / "run"
    result = launch(run, 2, "--liveness", str(CALM), "--faults", "nan=worker0@step5,nan=worker1@step5",
                    transport=transport)
    assert result.returncode == 1, result.stdout[-3000:]
    errors = [line for line in result.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1 and "step 5 gave a non-finite gradient (NaN or Inf) twice" in errors[0], errors
    assert len(named(run, "non_finite_grad")) >= 2
    assert named(run, "checkpoint")[-1]["step"] == 5 and (run / "checkpoint.npz").is_file()
    assert "stopped by the server (server stopped: " in result.stdout
    no_protocol_error(run)


# -- nobody left, and shutting down ----------------------------------------------------------------------
@on("shm")
def test_no_worker_left_checkpoints_and_exits_1_after_wait_timeout(tmp_path, transport):
    run = tmp_path / "run"
    with Procs(tmp_path) as p:
        address = p.address(transport)
        workers = [p.worker(address, "--faults", SLOW) for _ in range(3)]  # before the server: they retry
        server, _ = p.server(run, 3, *ARGS, *KNOBS, "--wait-timeout", "2.5", address=address, transport=transport)
        server.wait_for("epoch   1/")
        for w in workers:
            w.signal(signal.SIGKILL)
        start = time.monotonic()
        assert server.wait(15) == 1
        took = time.monotonic() - start
        no_traceback(server)
        out = server.output()
    print(f"\n[{transport}] no worker left: server exited {took:.2f} s after the kills (--wait-timeout 2.5)")
    assert 2.5 <= took < 2.5 + DEADLINE + 2
    assert "no workers left: waiting up to 2.5 s" in out
    error = error_lines(out)
    assert len(error) == 1 and "no workers for 2.5 s" in error[0] and f"--resume {run}" in error[0]
    step = named(run, "checkpoint")[-1]["step"]
    assert len(named(run, "dead")) == 3 and 20 <= step < 60
    state = load_checkpoint(run)  # written atomically: params, velocity, step, epoch, metrics so far
    assert state["step"] == step and state["epoch"] == step // 20 and len(state["metrics"]) == state["epoch"]
    assert np.isfinite(state["params"]).all() and np.abs(state["velocity"]).sum() > 0
    no_protocol_error(run)


@on("shm")
def test_worker_whose_server_vanished_exits_1_after_connect_timeout(tmp_path, transport):
    with Procs(tmp_path) as p:
        server, address = p.server(tmp_path / "run", 1, *ARGS, *KNOBS, transport=transport)
        worker = p.start("worker", ["worker", "--connect", address, "--connect-timeout", "1.5", "--faults", SLOW])
        server.wait_for("epoch   1/")
        server.kill()
        start = time.monotonic()
        assert worker.wait(15) == 1
        took = time.monotonic() - start
        no_traceback(worker)
        out = worker.output()
    print(f"\n[{transport}] server vanished: worker exited {took:.2f} s later "
          f"(silence {T_DEAD:g} s + --connect-timeout 1.5)")
    assert took < T_DEAD + 1.5 + 2.5
    error = error_lines(out)
    assert len(error) == 1 and "no parameter server answered" in error[0] and "within 1.5 s" in error[0]


@on("shm")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_on_a_worker_and_then_on_the_server(tmp_path, sig, transport):
    run = tmp_path / "run"
    with Procs(tmp_path) as p:
        server, address = p.server(run, 3, *ARGS, *CALM_KNOBS, transport=transport)
        workers = [p.worker(address, "--faults", SLOW) for _ in range(3)]
        server.wait_for("epoch   1/")
        session = session_of(run, pid=workers[0].pid)[0]
        start = time.monotonic()
        workers[0].signal(sig)
        assert workers[0].wait(5) == EXIT[("`worker`", sig.name)]
        took_worker = time.monotonic() - start
        # it says it leaves (an empty LOGS chunk): the server moves its shard at once, no death to wait out
        wait_for_event(run, lambda e: e["event"] in ("left", "dead") and e["session"] == session)
        start = time.monotonic()
        server.signal(sig)
        assert server.wait(10) == EXIT[("`server`", sig.name)]
        took_server = time.monotonic() - start
        took_workers = [stopped_by_server(w) + took_server for w in workers[1:]]
        no_traceback(server, *workers)
        outs = [w.output() for w in workers]
        server_out = server.output()
    print(f"\n[{transport}] {sig.name}: worker exited in {took_worker:.2f} s; server in {took_server:.2f} s, "
          f"its workers by {max(took_workers):.2f} s")
    assert took_worker < 2 and took_server < 3 and max(took_workers) < 3
    assert error_lines(outs[0]), outs[0][-2000:]
    error = error_lines(server_out)
    assert len(error) == 1 and f"interrupted by {sig.name}" in error[0] and f"--resume {run}" in error[0]
    assert all("stopped by the server (server stopped: " in out for out in outs[1:])
    assert named(run, "checkpoint")[-1]["step"] >= 20 and (run / "checkpoint.npz").is_file()
    no_protocol_error(run)
    gone = [e for e in events(run) if e.get("session") == session and e["event"] in ("left", "dead", "stale")]
    # A send that fails after its connection closed no longer drops it before its leaving LOGS is read
    # (the race seen in 1 of 6 signalled workers with a loaded core): it is `left`, never `dead`.
    assert [e["event"] for e in gone] == ["left"], gone


@on("shm")
@pytest.mark.parametrize("peer", ["dead", "frozen"])
def test_server_stops_promptly_while_a_dead_or_frozen_worker_is_still_registered(tmp_path, peer, transport):
    """SIGTERM while one worker is SIGKILLed or SIGSTOPped but not yet declared dead (liveness 30 s):
    the server waits at most STOP_ACK_S for its acknowledgement, closes with CLOSE_LINGER_MS, and exits."""
    run = tmp_path / "run"
    bound = STOP_ACK_S + CLOSE_LINGER_MS / 1000 + 0.5
    with Procs(tmp_path) as p:
        server, address = p.server(run, 3, *ARGS, "--heartbeat", "1", "--liveness", "30", "--step-timeout", "60",
                                   transport=transport)
        workers = [p.worker(address, "--faults", SLOW) for _ in range(3)]
        server.wait_for("epoch   1/")
        victim, others = workers[2], workers[:2]
        session = session_of(run, pid=victim.pid)[0]
        victim.signal(signal.SIGKILL if peer == "dead" else signal.SIGSTOP)
        start = time.monotonic()
        server.signal(signal.SIGTERM)
        status = server.wait(10)
        took = time.monotonic() - start
        assert status == EXIT[("`server`", "SIGTERM")], server.output()[-3000:]
        assert all(w.wait(5) == 0 for w in others), [w.output()[-1000:] for w in others]
        no_traceback(server, *workers)
        out = server.output()
    print(f"\n[{transport}] SIGTERM with a {peer} worker registered: server exited in {took:.2f} s "
          f"(bound {bound:.1f} s)")
    assert took < bound
    error = error_lines(out)
    assert len(error) == 1 and "interrupted by SIGTERM" in error[0] and "checkpoint written" in error[0], error
    assert named(run, "checkpoint")[-1]["step"] >= 20 and (run / "checkpoint.npz").is_file()
    # it was still a member when the server stopped: never declared dead for silence
    assert not [e for e in named(run, "dead") if e["session"] == session and e["reason"].startswith("silent")]
    no_protocol_error(run)


# -- the exit status of every command for each signal: README's table ----------------------------------
BIG = BIG_TRAINING  # 25,600 steps: no run ends before its signal


def children_of(proc, n: int, timeout: float = 30.0) -> None:
    """Wait until `proc` has `n` processes below it (its Pool has started)."""
    deadline = time.monotonic() + timeout
    while len(descendants(proc.pid)) < n:
        assert time.monotonic() < deadline and proc.p.poll() is None, proc.output()[-2000:]
        time.sleep(0.02)


def start_training(p: Procs, tmp: Path, command: str):
    """Start the command of a README row and return (the process to signal, its helpers) once it trains."""
    run = str(tmp / "run")
    if command in ("`train`", "`train --workers 2`"):
        proc = p.start("train", ["train", *command.strip("`").split()[1:], *BIG, "--out", run])
        proc.wait_for("dataset:")
        if "--workers" in command:
            children_of(proc, 2)  # the Pool runs
        return proc, []
    if command in ("`server`", "`worker`"):
        server, address = p.server(run, 1, *BIG, "--heartbeat", "0.2")
        worker = p.worker(address)
        server.wait_for("1 live")
        return (server, [worker]) if command == "`server`" else (worker, [server])
    if command == "`launch`":
        proc = p.start("launch", ["launch", "--workers", "2", *BIG, "--out", run])
        proc.wait_for("2 live")
        return proc, []
    if command == "`experiment` (in-process configuration)":
        proc = p.start("experiment", ["experiment", "--workers", "2", "--modes", "pool", "--quiet", *BIG, "--out", run])
        proc.wait_for("[1/1] pool P=2")
        children_of(proc, 2)
        return proc, []
    if command == "`experiment` (parameter-server configuration)":
        proc = p.start("experiment", ["experiment", "--workers", "2", "--modes", "ps", "--transport", "shm",
                                      "--verbose", *BIG, "--out", run])
        proc.wait_for("2 live")
        return proc, []
    raise AssertionError(f"README's exit status table has a row this test cannot run: {command}")


def test_the_exit_status_table_is_in_the_readme():
    assert EXIT, f"no `| command | SIGINT | SIGTERM | SIGKILL |` table in {README}"


@pytest.mark.parametrize("command,sig", sorted(EXIT) or [("(no table)", "SIGINT")])
def test_exit_status_of_every_command_for_each_signal(tmp_path, command, sig):
    """Each cell of README's exit status table, on a command that is training: the status, one `error:`
    line when it exits by itself (1 or 130), no traceback, and no process of it left behind."""
    expected = EXIT.get((command, sig))
    assert expected is not None, "README has no exit status table"
    with Procs(tmp_path) as p:
        proc, helpers = start_training(p, tmp_path, command)
        below = descendants(proc.pid)
        start = time.monotonic()
        os.kill(proc.pid, getattr(signal, sig))
        status = shell_status(proc.wait(10))
        took = time.monotonic() - start
        none_left(below)
        out = proc.output()
    print(f"\n{command} {sig}: exit {status} after {took:.2f} s")
    assert status == expected, (command, sig, out[-2000:])
    assert "Traceback" not in out, out[-3000:]
    if expected in (1, 130):
        assert error_lines(out) and out.strip().splitlines()[-1].startswith("error: "), out[-2000:]
