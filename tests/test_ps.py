"""The parameter server with real processes on free loopback ports, against the sequential oracle."""
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from parsgd.data import write_idx
from parsgd.model.mlp import n_params
from procs import PY, Procs, ends_cleanly, load_params, no_traceback, sequential_params

# 2030 rows at batch 100: 20 full batches and a final partial one of 30; 100 rows split unevenly for P = 3
ARGS = ["--dataset", "synthetic", "--num-samples", "2030", "--epochs", "1", "--hidden", "32,16",
        "--batch-size", "100", "--dtype", "float64", "--seed", "11"]
N_PARAMS = n_params((784, 32, 16, 10))


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    return sequential_params(tmp_path_factory.mktemp("oracle"), *ARGS)


def launch(out, workers, transport, *extra, timeout=180):
    return subprocess.run(PY + ["launch", "--workers", str(workers), "--transport", transport, *ARGS,
                                "--out", str(out), *extra], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("workers,transport", [(1, "ipc"), (2, "tcp"), (2, "shm"), (3, "shm"), (4, "tcp")])
def test_parameter_server_equals_sequential(tmp_path, oracle, workers, transport):
    result = launch(tmp_path / "run", workers, transport)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert np.max(np.abs(load_params(tmp_path / "run") - oracle)) < 1e-8
    assert "where time went" in result.stdout and "[worker 0]" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["mode"] == "ps" and summary["transport"] == transport and summary["workers"] == workers


def test_by_hand_with_workers_started_before_the_server(tmp_path, oracle):
    with Procs(tmp_path) as p:
        port = __import__("procs").free_port()
        address = f"tcp://127.0.0.1:{port}"
        with socket.create_server(("127.0.0.1", port)) as listener:  # stands in for the server first
            listener.settimeout(30)
            workers = [p.worker(address) for _ in range(2)]
            reached = {listener.accept()[0].close() or n for n in range(2)}  # both are trying to connect
        assert reached == {0, 1}
        server, _ = p.server(tmp_path / "run", 2, *ARGS, port=port)
        ends_cleanly(server, *workers)
    assert np.max(np.abs(load_params(tmp_path / "run") - oracle)) < 1e-8


def _idx_dataset(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mnist = folder / "mnist"
    mnist.mkdir(parents=True)
    write_idx(mnist / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (300, 28, 28), dtype=np.uint8))
    write_idx(mnist / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 300, dtype=np.uint8))
    write_idx(mnist / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 28, 28), dtype=np.uint8))
    write_idx(mnist / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 50, dtype=np.uint8))


def test_worker_with_different_data_is_turned_away_and_the_run_goes_on(tmp_path):
    _idx_dataset(tmp_path / "right", 1)
    _idx_dataset(tmp_path / "wrong", 2)
    with Procs(tmp_path) as p:
        server, address = p.server(tmp_path / "run", 1, "--dataset", "mnist", "--data-dir", str(tmp_path / "right"),
                                   "--epochs", "2", "--batch-size", "50", "--hidden", "16")
        server.wait_for("waiting for 1 worker ")
        bad = p.worker(address, "--data-dir", str(tmp_path / "wrong"))
        assert bad.wait(60) == 1
        assert "different data" in bad.output() and "error: " in bad.output()
        good = p.worker(address)
        assert server.wait() == 0, server.output()
        assert good.wait(30) == 0
        assert "turned away worker" in server.output()
        no_traceback(server, bad, good)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_comm_log_has_every_field_step_and_role_and_true_byte_counts(tmp_path):
    result = launch(tmp_path / "run", 2, "tcp")
    assert result.returncode == 0, result.stdout[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "comm.jsonl").read_text().splitlines()]
    assert all(set(r) == {"role", "rank", "step", "span", "t", "dur", "bytes", "server"} for r in rows)
    steps = 21  # 20 full batches and one partial
    payload = N_PARAMS * 8
    for role, spans in (("server", {"serialize", "send", "wait", "recv", "deserialize", "aggregate", "update"}),
                        ("worker", {"wait", "recv", "deserialize", "compute", "serialize", "send"})):
        mine = [r for r in rows if r["role"] == role]
        for step in range(steps):
            # a worker's idle time before its first task is start-up, logged as step -1
            expected = spans - {"wait"} if role == "worker" and step == 0 else spans
            assert expected <= {r["span"] for r in mine if r["step"] == step}, (role, step)
        if role == "worker":
            assert {r["step"] for r in mine if r["span"] == "wait"} >= {-1, 1}
        for r in mine:
            if r["span"] in ("send", "recv"):  # a header of a few dozen bytes plus the whole vector
                assert 0 < r["bytes"] - payload < 300, r
            assert r["dur"] >= 0
    assert {r["rank"] for r in rows if r["role"] == "worker"} == {0, 1}
    # Worker clocks are aligned on the server's: no TASK is received before the server sent it, no GRAD
    # arrives before a worker sent it (0.2 ms slack; the registration midpoint alone was ~1 ms off).
    def starts(role, span, step):
        return sorted(r["t"] for r in rows if r["role"] == role and r["span"] == span and r["step"] == step)
    for step in range(steps):
        tasks_out, tasks_in = starts("server", "send", step), starts("worker", "recv", step)
        grads_out, grads_in = starts("worker", "send", step), starts("server", "recv", step)
        assert min(tasks_in) >= min(tasks_out) - 2e-4, (step, tasks_out, tasks_in)
        assert len(grads_in) == len(grads_out) == 2, step
        assert all(i >= o - 2e-4 for o, i in zip(grads_out, grads_in)), (step, grads_out, grads_in)
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    sends = sum(r["bytes"] for r in rows if r["role"] == "server" and r["span"] == "send")
    assert metrics["bytes_sent"] == sends and metrics["comm_s"] > 0


@pytest.mark.parametrize("consistency", ["bsp", "async"])
def test_bsp_workers_prefetch_their_next_rows_while_the_server_updates(tmp_path, consistency, oracle):
    """BSP: after its GRAD a worker gathers the rows of its next shard (one below, as ties rotate) while
    the server sums and updates: a second compute span of that step, before the worker received its
    TASK. The model is still the sequential one. Asynchronous batches cannot be foreseen."""
    result = launch(tmp_path / "run", 2, "shm", "--consistency", consistency)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "comm.jsonl").read_text().splitlines()]
    recv, computes = {}, {}
    for r in rows:
        if r["role"] == "worker" and r["span"] in ("recv", "compute"):
            (recv if r["span"] == "recv" else computes).setdefault((r["step"], r["rank"]), []).append(r["t"])
    ahead = [key for key, starts in computes.items() if min(starts) < min(recv[key])]  # both on the worker's clock
    assert sum(len(v) for v in recv.values()) == 21 * (2 if consistency == "bsp" else 1)
    if consistency == "async":
        assert not ahead and all(len(v) == 1 for v in computes.values())
        return
    assert all(len(computes[key]) == 2 for key in ahead) and len(ahead) >= 2 * (21 - 2) - 2, \
        "nearly every shard but each worker's first was gathered before its TASK came"
    gathers = [r for r in rows if r["role"] == "worker" and r["span"] == "compute"
               and (r["step"], r["rank"]) in ahead and r["t"] == min(computes[r["step"], r["rank"]])]
    assert all(r["bytes"] == 0 and r["dur"] < 0.05 for r in gathers), "a gather's own span: no bytes, no wait"
    assert np.max(np.abs(load_params(tmp_path / "run") - oracle)) < 1e-8


def test_shared_memory_keeps_payloads_off_the_socket_and_leaves_no_segment(tmp_path):
    before = set(orphan_segments())
    result = launch(tmp_path / "run", 2, "shm")
    assert result.returncode == 0, result.stdout[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "comm.jsonl").read_text().splitlines()]
    assert max(r["bytes"] for r in rows if r["span"] in ("send", "recv")) < 300
    assert set(orphan_segments()) <= before


def orphan_segments() -> list[str]:
    """parsgd_PID_SESSION segments in /dev/shm whose server (PID) is gone: a leak. A live server's
    segment (another test's launch, running beside this one under xdist) is not one."""
    found = []
    for p in Path("/dev/shm").iterdir():
        parts = p.name.split("_")
        if parts[0] == "parsgd" and len(parts) >= 3 and parts[1].isdigit() and not Path(f"/proc/{parts[1]}").exists():
            found.append(p.name)
    return found


def _descendants(pid: int) -> set[int]:
    children, found = {}, set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def _alive(pids) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.mark.parametrize("interrupt", [False, True])
def test_launch_leaves_no_process_behind(tmp_path, interrupt):
    args = [a if a != "1" else "30" for a in ARGS] if interrupt else ARGS  # 30 epochs: still running at SIGINT
    proc = subprocess.Popen(PY + ["launch", "--workers", "2", *args, "--out", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[int] = set()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        seen |= _descendants(proc.pid)
        if interrupt and "epoch   1/" in line:
            seen |= _descendants(proc.pid)
            proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    assert len(seen) >= 3, "".join(lines)  # the server and two workers were seen
    deadline = time.monotonic() + 5
    while _alive(seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(seen), "".join(lines)
    assert code == (130 if interrupt else 0), "".join(lines)
    assert "Traceback" not in "".join(lines)


DEGENERATE = [("1025", "256", "2"), ("3", "2", "2")]  # last batch of 1 row over 2 shards: one shard is empty


@pytest.mark.parametrize("transport", ["shm", "tcp", "ipc"])
@pytest.mark.parametrize("rows,batch,workers", DEGENERATE)
def test_batches_with_fewer_rows_than_workers_equal_sequential(tmp_path, transport, rows, batch, workers):
    """An empty shard is legal work: the server marks it done without sending it (every transport)."""
    args = ["--dataset", "synthetic", "--num-samples", rows, "--batch-size", batch, "--epochs", "2",
            "--dtype", "float64", "--seed", "3"]
    reference = sequential_params(tmp_path / "seq", *args)
    result = subprocess.run(PY + ["launch", "--workers", workers, "--transport", transport, *args,
                                  "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert np.max(np.abs(load_params(tmp_path / "run") - reference)) < 1e-8
