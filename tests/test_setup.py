"""Every run-shaping input is recorded (config.json `setup`, summary.json, experiment.json) and shown
wherever the run is labelled; a run never replaces files parsgd did not write; warnings that explain
timings (more workers than cores); progress lines inside an epoch.

    python3 -m pytest -q tests/test_setup.py
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from parsgd.analysis.rundirs import load_run
from parsgd.training.progress import Progress, oversubscribed, usable_cores
from procs import Procs, free_port

PY = [sys.executable, "-m", "parsgd"]
TINY = ["--dataset", "synthetic", "--num-samples", "512", "--epochs", "1", "--hidden", "16", "--batch-size", "32"]


def parsgd(*args, timeout=120):
    return subprocess.run(PY + list(args), capture_output=True, text=True, timeout=timeout)


def setup_of(run):
    return json.loads((run / "config.json").read_text())["setup"]


@pytest.mark.slow
def test_launch_faults_are_in_config_summary_and_the_label(tmp_path):
    run = tmp_path / "run"
    p = parsgd("launch", "--workers", "2", "--faults", "slow=worker1:2", *TINY, "--out", str(run))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    assert setup_of(run)["faults"] == "slow=worker1:2"
    assert json.loads((run / "summary.json").read_text())["setup"]["faults"] == "slow=worker1:2"
    assert load_run(run).label == "ps P=2 shm, faults slow=worker1:2"


@pytest.mark.slow
def test_a_workers_own_faults_reach_config_json_through_ready(tmp_path):
    """`parsgd worker --faults` by hand: the server learns it from READY.faults (protocol 3)."""
    run = tmp_path / "run"
    with Procs(tmp_path) as procs:
        server, addr = procs.server(run, 2, *TINY, transport="tcp")
        procs.worker(addr)
        procs.worker(addr, "--faults", "slow=2")
        assert server.wait() == 0, server.output()[-2000:]
    setup = setup_of(run)
    assert list(setup["worker_faults"].values()) == ["slow=2"], setup
    rank = next(iter(setup["worker_faults"]))
    assert load_run(run).label == f"ps P=2 tcp, faults w{rank} slow=2"
    joins = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert sorted(e["faults"] for e in joins if e["event"] == "join") == ["", "slow=2"]


def test_train_records_its_blas_threads(tmp_path):
    run = tmp_path / "run"
    p = parsgd("train", *TINY, "--blas-threads", "1", "--out", str(run))
    assert p.returncode == 0, p.stderr
    assert setup_of(run)["blas_threads"] == 1 and load_run(run).label == "sequential, 1 BLAS thread"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "launch", "server"])
def test_a_run_never_replaces_files_parsgd_did_not_write(tmp_path, command):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.npz").write_bytes(b"someone else's model")
    (run / "metrics.jsonl").write_text("my notes\n")
    extra = ["--bind", f"tcp://127.0.0.1:{free_port()}"] if command == "server" else []
    p = parsgd(command, *TINY, *extra, "--out", str(run))
    err = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(err) == 1, p.stdout + p.stderr
    assert err[0].startswith(f"error: {run} holds metrics.jsonl, model.npz, which parsgd did not write")
    assert "--force" in err[0] and "Traceback" not in p.stdout + p.stderr
    assert (run / "model.npz").read_bytes() == b"someone else's model"
    assert (run / "metrics.jsonl").read_text() == "my notes\n"
    if command == "server":
        return  # a server with --force waits for workers: the refusal is what is tested
    p = parsgd(command, *TINY, "--force", "--out", str(run))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    assert (run / "model.npz").read_bytes() != b"someone else's model"
    p = parsgd(command, *TINY, "--out", str(run))  # now parsgd's own run: replaced with a line saying so
    assert p.returncode == 0 and "replacing the earlier run in" in p.stdout, p.stdout + p.stderr


def test_more_workers_than_cores_warns_once_saying_what_it_does_to_timings():
    assert oversubscribed(2, 2) is None
    line = oversubscribed(4, 2)
    assert line.startswith("warning: 4 worker processes on 2 cores") and "2.0x slower" in line


def test_train_pool_with_more_workers_than_cores_warns_once(tmp_path):
    p = parsgd("train", "--workers", str(usable_cores() + 1), *TINY, "--out", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("warning: ") == 1 and "worker processes on" in p.stdout


def test_progress_lines_are_rate_limited_and_give_an_eta():
    now = [0.0]
    lines = []
    meter = Progress(100, lines.append, every_s=10.0, clock=lambda: now[0])
    for step in range(1, 101):
        now[0] = step * 0.5          # 2 steps/s: 50 s in all
        meter.step(step, 1, 1)
    assert len(lines) == 4, lines    # at 10, 20, 30, 40 s; none at the last step
    assert lines[0] == "progress: epoch 1/1, step 21/100 (21%), 2 steps/s, about 40 s left"


@pytest.mark.slow
def test_a_slow_launch_prints_its_run_directory_and_progress(tmp_path):
    """Steps of ~0.5 s (each GRAD delayed): a progress line every 10 s, with steps done / total and an ETA."""
    run = tmp_path / "run"
    p = parsgd("launch", "--workers", "1", "--faults", "delay=1:0.5", "--dataset", "synthetic", "--num-samples",
               "800", "--epochs", "1", "--hidden", "8", "--batch-size", "32", "--out", str(run), timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    assert f"[server] run directory {run}" in p.stdout
    progress = [ln for ln in p.stdout.splitlines() if ln.startswith("[server] progress: ")]
    assert 1 <= len(progress) <= 2, p.stdout
    assert "epoch 1/1, step " in progress[0] and "/25 (" in progress[0] and " left" in progress[0]
