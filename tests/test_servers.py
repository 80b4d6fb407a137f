"""S parameter servers (`--servers S`), real processes: BSP gives the model of one server bit for bit and
`parsgd train`'s in float64; ssp / async replay to the bit with the staleness bound on every update and
range; a range server lost stops the run in one line naming it and its range, and `--resume` restarts
the whole set; bad input is one line.

    python3 -m pytest -q tests/test_servers.py
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from parsgd.model.keyranges import key_ranges
from procs import PY, Procs, descendants, load_params, sequential_params
from tracecheck import comm_overlaps

pytestmark = pytest.mark.slow
ARGS = ["--dataset", "synthetic", "--num-samples", "2030", "--epochs", "1", "--hidden", "32,16", "--batch-size", "100",
        "--seed", "11"]


def launch(out, *extra, timeout=180):
    result = subprocess.run(PY + ["launch", *extra, "--out", str(out)], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr, \
        result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def one_server(tmp_path_factory):
    out = tmp_path_factory.mktemp("s1") / "run"
    launch(out, "--workers", "3", *ARGS)
    return load_params(out)


@pytest.mark.parametrize("servers,transport,shard_by", [(2, "shm", "elements"), (3, "tcp", "elements"),
                                                       (2, "ipc", "layer"), (3, "shm", "layer")])
def test_bsp_with_s_servers_is_the_one_server_model_bit_for_bit(tmp_path, one_server, servers, transport, shard_by):
    out = tmp_path / "run"
    result = launch(out, "--workers", "3", "--servers", str(servers), "--transport", transport, "--shard-by",
                    shard_by, *ARGS)
    assert np.array_equal(load_params(out), one_server)
    kr = key_ranges((784, 32, 16, 10), "float32", servers, shard_by)
    for s in range(1, servers):
        assert f"server {s} (ranges {kr.describe(s)}) joined" in result.stdout
    comm = [json.loads(ln) for ln in (out / "comm.jsonl").read_text().splitlines()]
    assert {r["rank"] for r in comm if r["role"] == "server"} == set(range(servers)), "every server's spans"
    assert comm_overlaps(out / "comm.jsonl") == []


def test_bsp_float64_equals_train(tmp_path):
    out = tmp_path / "run"
    launch(out, "--workers", "2", "--servers", "2", *ARGS, "--dtype", "float64")
    oracle = sequential_params(tmp_path / "seq", *ARGS, "--dtype", "float64")
    assert np.max(np.abs(load_params(out) - oracle)) < 1e-8


@pytest.mark.parametrize("consistency", ["async", "ssp"])
def test_ssp_and_async_with_two_servers_replay_to_the_bit_and_keep_the_bound(tmp_path, consistency):
    out = tmp_path / "run"
    extra = ["--staleness", "1"] if consistency == "ssp" else []
    launch(out, "--workers", "3", "--servers", "2", "--consistency", consistency, *extra, "--momentum", "0.5",
           "--dataset", "synthetic", "--num-samples", "2048", "--epochs", "2", "--hidden", "32,16", "--batch-size", "64")
    replay = subprocess.run(PY + ["replay", str(out)], capture_output=True, text=True, timeout=180)
    assert replay.returncode == 0 and "max |difference| from" in replay.stdout, replay.stdout + replay.stderr
    updates = [json.loads(ln) for ln in (out / "updates.jsonl").read_text().splitlines()]
    assert len(updates) == 64 and all(len(u["versions"]) == 2 for u in updates)
    assert all(u["staleness"] == max(u["staleness_by_server"]) for u in updates)
    if consistency == "ssp":  # README: at most (P - 1)(2S + 1) on every range, here 2 x 3
        assert max(max(u["staleness_by_server"]) for u in updates) <= 6


def test_by_hand_as_a_user_types_it(tmp_path):
    out = tmp_path / "run"
    with Procs(tmp_path) as procs:
        server, address = procs.server(out, 2, "--servers", "2", *ARGS, transport="tcp")
        ranged = procs.start("server", ["server", "--servers", "2", "--rank", "1", "--connect", address, "--no-shm"])
        workers = [procs.worker(address) for _ in range(2)]
        assert server.wait() == 0, server.output()[-3000:]
        assert ranged.wait() == 0 and "server 1: stopped by server 0 (training finished)" in ranged.output()
        assert all(w.wait() == 0 for w in workers)


LOSS_ARGS = ["--servers", "2", "--dataset", "synthetic", "--num-samples", "4096", "--batch-size", "16", "--epochs",
             "3", "--hidden", "32,16", "--checkpoint-every", "40", "--heartbeat", "0.2", "--liveness", "5", "--dtype",
             "float64"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The float64 S = 2 model of LOSS_ARGS with 2 workers, run without a fault."""
    whole = tmp_path_factory.mktemp("whole") / "run"
    launch(whole, "--workers", "2", *LOSS_ARGS)
    return load_params(whole)


def wait_for_checkpoint(out: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (out / "checkpoint.npz").is_file():
        assert time.monotonic() < deadline, "no checkpoint within the timeout"
        time.sleep(0.05)


def test_a_lost_range_server_stops_the_run_naming_it_and_resume_restarts_the_set(tmp_path, uninterrupted):
    out = tmp_path / "run"
    args = ["--workers", "2", *LOSS_ARGS]
    proc = subprocess.Popen(PY + ["launch", *args, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_checkpoint(out)
        ranged = [pid for pid in descendants(proc.pid) if "--rank" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(ranged) == 1, "launch's range server is running"
        killed = time.monotonic()
        os.kill(ranged[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - killed < 10, "noticed within the timeouts"
    assert proc.returncode == 1 and "Traceback" not in stdout + stderr, stdout[-2000:] + stderr
    [line] = [ln for ln in stderr.splitlines() if ln.strip()]
    kr = key_ranges((784, 32, 16, 10), "float64", 2)
    assert line.startswith(f"error: server 1 (ranges {kr.describe(1)}) was lost (") and "launch --resume" in line
    assert f"stopped by the server (server stopped: server 1 (ranges {kr.describe(1)}) was lost" in stdout
    resumed = launch(out, "--resume", str(out), timeout=240)
    assert "resuming" in resumed.stdout
    assert np.array_equal(load_params(out), uninterrupted), "the resumed set ends with the uninterrupted model"


def test_server_0_killed_by_hand_then_resumed_every_peer_registers_again(tmp_path, uninterrupted):
    """SIGKILL of server 0 (the coordinator) mid-run: the range server and the workers keep trying, and a
    `parsgd server --resume` on the same address hands the range server the checkpoint's state; the run
    ends with the uninterrupted model, byte for byte."""
    out = tmp_path / "run"
    with Procs(tmp_path) as procs:
        server, address = procs.server(out, 2, *LOSS_ARGS, transport="tcp")
        ranged = procs.start("server", ["server", "--servers", "2", "--rank", "1", "--connect", address, "--no-shm",
                                        "--connect-timeout", "60"])
        workers = [procs.worker(address, "--connect-timeout", "60") for _ in range(2)]
        wait_for_checkpoint(out)
        server.kill()
        resumed = procs.start("server", ["server", "--resume", str(out), "--bind", address, "--no-shm",
                                         "--wait-timeout", "60"])
        assert resumed.wait(180) == 0, resumed.output()[-3000:]
        assert "resuming" in resumed.output()
        assert ranged.wait() == 0 and "server 0 (the coordinator) silent" in ranged.output()
        assert all(w.wait() == 0 for w in workers)
        assert all("registering again" in w.output() for w in workers)
    assert np.array_equal(load_params(out), uninterrupted)


@pytest.mark.parametrize("argv,message", [
    (["server", "--servers", "2", "--rank", "1", "--connect", "tcp://127.0.0.1:1", "--epochs", "3"],
     "error: --rank 1 takes its config from server 0 (--connect): drop --epochs"),
    (["server", "--servers", "2", "--rank", "1"], "error: a range server needs --rank 1..S-1 and --connect"),
    (["server", "--servers", "2", "--rank", "1", "--connect", "tcp://127.0.0.1:1", "--bind", "tcp://*:5556"],
     "error: --bind tcp://*:5556: workers are told this address"),
    (["launch", "--servers", "4", "--shard-by", "layer", *ARGS], "error: --servers 4 --shard-by layer: the model has 3"),
    (["launch", "--servers", "2", "--colocate", *ARGS], "error: --colocate cannot be used with --servers above 1"),
    (["launch", "--servers", "0", *ARGS], "error: --servers must be a whole number from 1 to 64, got 0"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message):
    result = subprocess.run(PY + argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def two_servers_tcp(tmp_path_factory):
    """The fault-free reference of the fault tests: 3 workers, 2 servers, every part through sockets."""
    out = tmp_path_factory.mktemp("ref") / "run"
    launch(out, "--workers", "3", "--servers", "2", "--transport", "tcp", *FAULT_ARGS)
    return load_params(out)


FAULT_ARGS = [*ARGS[:5], "2", *ARGS[6:], "--heartbeat", "0.2", "--liveness", "5"]  # 2 epochs


@pytest.mark.parametrize("fault,extra,expected", [
    ("kill=worker1@step5", [], ["dead"]), ("stop=worker2@step7:3s", [], ["dead"]), ("slow=worker1:3", [], []),
    ("kill=worker1@step5", ["--restart-workers", "1"], ["dead", "join"])])
def test_worker_faults_with_two_servers_leave_the_model_unchanged(tmp_path, two_servers_tcp, fault, extra, expected):
    """A lost worker's shards go to others on every server; a zombie's parts are never applied (APPLY names
    the owner); a straggler only slows the steps; a worker started again joins (ATTACHes to the range
    server with its new session) and computes shards."""
    out = tmp_path / "run"
    launch(out, "--workers", "3", "--servers", "2", "--transport", "tcp", *FAULT_ARGS, "--faults", fault, *extra)
    assert np.array_equal(load_params(out), two_servers_tcp)
    events = [json.loads(ln) for ln in (out / "events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert all(e in names for e in expected) and (expected or "dead" not in names), names
    if "join" in expected:
        join = [e for e in events if e["event"] == "join"]
        assert len(join) == 4 and join[-1]["step"] > 0, join  # 3 at the start, then the one started again
        comm = [json.loads(ln) for ln in (out / "comm.jsonl").read_text().splitlines()]
        rejoined = {(r["rank"], r["step"]) for r in comm if r["role"] == "worker" and r["span"] == "compute"}
        assert any(rank == join[-1]["rank"] and step > join[-1]["step"] for rank, step in rejoined), join


def test_layer_sharding_is_visibly_unbalanced_in_the_report_and_the_plot(tmp_path):
    from parsgd.analysis.report import write_report
    from parsgd.analysis.rundirs import load_run
    from parsgd.analysis.server_plots import plot_server_load, server_load_series

    out = tmp_path / "run"
    launch(out, "--workers", "2", "--servers", "2", "--shard-by", "layer", "--transport", "tcp", *ARGS)
    run = load_run(out)
    [series] = server_load_series([run])
    kr = key_ranges((784, 32, 16, 10), "float32", 2, "layer")
    assert series["imbalance_params"] == pytest.approx(kr.imbalance()) and kr.imbalance() > 1.9
    assert series["imbalance_bytes"] > 1.8, series   # through sockets the bytes follow the parameters
    assert series["in_kb"][0] > 20 * series["in_kb"][1]
    assert plot_server_load([run], tmp_path / "load.png").stat().st_size > 10_000
    text = write_report(tmp_path / "report", [run], run).read_text()
    assert f"load imbalance (max / mean): {kr.imbalance():.2f} in parameters" in text
    assert f"ps P=2 tcp S=2 by layer" in text
