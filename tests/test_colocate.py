"""`--colocate`: worker 0 computes in a thread of the server's process, over inproc://.

    python3 -m pytest -q tests/test_colocate.py

The oracle is the same run without it (bit for bit: the same shards, summed in the same order) and
the sequential trainer; the run must still survive the loss of a worker process, replay exactly in
asynchronous mode, stop on Ctrl-C without leaving a process, and refuse what it cannot do.
"""
import json
import signal
import subprocess
import time

import numpy as np
import pytest

from procs import PY, cli_run, load_params, one_line_error, sequential_params

pytestmark = pytest.mark.xdist_group("machine-wide")  # machine-wide: tests/conftest.py

ARGS = ["--dataset", "synthetic", "--num-samples", "2030", "--epochs", "1", "--hidden", "32,16",
        "--batch-size", "100", "--dtype", "float64", "--seed", "11"]


def launch(out, workers, *extra, timeout=180):
    result = subprocess.run(PY + ["launch", "--workers", str(workers), *ARGS, "--out", str(out), *extra],
                            capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def ranks_in_comm(run_dir) -> set:
    with open(run_dir / "comm.jsonl") as f:
        return {r["rank"] for r in map(json.loads, f) if r["role"] == "worker"}


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_colocated_run_equals_separate_processes_bit_for_bit(tmp_path, transport):
    separate = launch(tmp_path / "separate", 2, "--transport", transport)
    colocated = launch(tmp_path / "colocated", 2, "--transport", transport, "--colocate")
    assert separate.returncode == 0 and colocated.returncode == 0, colocated.stdout[-3000:]
    assert np.array_equal(load_params(tmp_path / "separate"), load_params(tmp_path / "colocated"))
    out = colocated.stdout
    assert "[worker 1]" in out and "[worker 0]" not in out, "only worker 1 is a process of its own"
    assert "colocated worker 0: data loaded" in out
    assert ranks_in_comm(tmp_path / "colocated") == {0, 1}, "the colocated worker's spans reach comm.jsonl"


def test_one_colocated_worker_equals_sequential(tmp_path):
    result = launch(tmp_path / "run", 1, "--colocate")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "[worker" not in result.stdout, "no worker process at all"
    oracle = sequential_params(tmp_path, *ARGS)
    assert np.max(np.abs(load_params(tmp_path / "run") - oracle)) < 1e-8


@pytest.mark.slow
def test_losing_the_worker_process_leaves_the_colocated_one_to_finish(tmp_path):
    result = launch(tmp_path / "run", 2, "--colocate", "--faults", "kill=worker1@step5")
    assert result.returncode == 0, result.stdout[-3000:]
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "dead" and e["rank"] == 1 for e in events)
    assert np.array_equal(load_params(tmp_path / "run"), load_params(_separate(tmp_path)))


def _separate(tmp_path):
    assert launch(tmp_path / "separate", 2).returncode == 0
    return tmp_path / "separate"


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_asynchronous_colocated_run_replays_to_the_bit(tmp_path, transport):
    """tcp: worker 0's parameters come over inproc, which hands over the very buffer the server sent;
    an async server that reused one send buffer rewrote it under the computing worker (4 of 6 runs
    failed to replay), so each TASK gets a buffer of its own."""
    result = launch(tmp_path / "run", 2, "--colocate", "--consistency", "async", "--lr", "0.02",
                    "--transport", transport)
    assert result.returncode == 0, result.stdout[-3000:]
    replay = subprocess.run(PY + ["replay", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0 and replay.stdout.rstrip().endswith("max |difference| from "
                                                                      f"{tmp_path / 'run' / 'model.npz'} 0"), replay.stdout


def test_ctrl_c_stops_the_server_and_its_worker_thread(tmp_path):
    args = [a if a != "1" else "40" for a in ARGS]  # 40 epochs: still running at SIGINT
    proc = subprocess.Popen(PY + ["launch", "--workers", "2", "--colocate", *args, "--out", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "epoch   1/" in line:
            proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    assert proc.wait(timeout=30) == 130, "".join(lines)
    assert time.monotonic() - t0 < 15 and "Traceback" not in "".join(lines)
    assert f"parsgd launch --resume {tmp_path / 'run'} --colocate`" in "".join(lines), "the hint keeps --colocate"


def test_launch_knows_when_every_worker_has_joined(tmp_path):
    """Before every rank joined, losing all worker processes stops a colocated run; after, worker 0 goes on."""
    from parsgd.jobs.launch import _all_joined

    events = tmp_path / "events.jsonl"
    assert not _all_joined(tmp_path, 2)  # no file yet
    events.write_text(json.dumps({"event": "listening"}) + "\n" + json.dumps({"event": "join", "rank": 0}) + "\n")
    assert not _all_joined(tmp_path, 2)
    events.write_text(events.read_text() + '{"event": "join", "rank": 1')  # a line still being written
    assert not _all_joined(tmp_path, 2)
    events.write_text(events.read_text() + "}\n")
    assert _all_joined(tmp_path, 2)


@pytest.mark.parametrize("extra,words", [
    (["--faults", "kill=worker0@step3"], ["worker0", "colocated"]),
    (["--link", "100mbit"], ["--colocate", "--link"]),
])
def test_what_a_colocated_worker_cannot_do_is_refused(extra, words):
    result = cli_run(["launch", "--workers", "2", "--colocate", *ARGS, *extra])
    one_line_error(result, 2, *words, before_loading=True)


def test_colocate_with_keys_is_refused(tmp_path):
    result = cli_run(["server", "--colocate", "--keys", str(tmp_path), "--bind", "tcp://127.0.0.1:*", *ARGS])
    one_line_error(result, 2, "--colocate", "--keys", before_loading=True)
