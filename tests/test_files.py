"""Files parsgd writes: read-only folders, full disks, devices, impossible paths, modes, strict JSON.

Real files on real mounts (root ignores file modes): a small tmpfs for ENOSPC, a read-only tmpfs or a
read-only bind mount for EROFS, /dev/full for `-o`. Every failure must be exit 1 with one line
`error: cannot write PATH: REASON; FIX` (or a clear `error:` naming the path) and no traceback; an
earlier run on a read-only mount stays byte for byte; /dev/full is never replaced.
"""
from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from procs import PY, Procs, no_traceback
from rundir_factory import make_run

from parsgd.cli import cli
from parsgd.config import RunConfig

ARGS = ["--dataset", "synthetic", "--num-samples", "512", "--epochs", "1", "--hidden", "32,16",
        "--batch-size", "128"]
ENV = {**os.environ, "PARSGD_NO_DOWNLOAD": "1", "PYTHONUNBUFFERED": "1"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")


def _mount(*argv) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


@contextmanager
def tmpfs(path: Path, *opts: str):
    """A tmpfs on `path` (created) with mount options `opts` (size=64k, ro, ...), unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", ",".join(opts or ("size=1m",)), "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextmanager
def read_only(path: Path):
    """`path` (an existing folder) seen through a read-only bind mount of itself, unmounted on exit."""
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def parsgd(*args, umask: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(PY + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=ENV,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def invoke(*args):
    """The CLI in this process (plot, trace, keygen: nothing to isolate); a result with exit_code, stderr."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_cannot_write(result, path, start: str = "error: cannot write") -> str:
    code = getattr(result, "returncode", getattr(result, "exit_code", None))
    out = result.stdout + result.stderr
    assert code == 1, out[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), result.stderr
    assert str(path) in lines[0], lines[0]
    assert "Traceback" not in out, out[-3000:]
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode), "/dev/full was replaced"
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def strict(text: str):
    def refuse(token):
        raise AssertionError(f"bare {token} in a file parsgd wrote")
    return json.loads(text, parse_constant=refuse)


def assert_strict_json(folder: Path) -> int:
    """Every .json and .jsonl under `folder` parses as strict JSON; returns how many files."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".json", ".jsonl"))
    for p in files:
        text = p.read_text()
        if p.suffix == ".json":
            strict(text)
        else:
            assert text == "" or text.endswith("\n"), p
            [strict(line) for line in text.splitlines()]
    return len(files)


def save_checkpoint_of_step_0(run: Path) -> None:
    from parsgd.ps.checkpoint import save_checkpoint
    cfg = RunConfig(dataset="synthetic", num_samples=512, epochs=1, hidden=(32, 16), batch_size=128)
    n = sum(a * b + b for a, b in zip(cfg.sizes[:-1], cfg.sizes[1:]))
    save_checkpoint(run, SimpleNamespace(step=0, steps_per_epoch=4, metrics=[], cfg=cfg,
                                         partial={"loss_sum": 0.0, "correct": 0, "seen": 0, "time_s": 0.0},
                                         params=np.zeros(n, np.float32), velocity=np.zeros(n, np.float32)))


# -- train -------------------------------------------------------------------------------------------
def test_train_on_a_full_disk(tmp_path):
    with tmpfs(tmp_path / "mnt", "size=64k") as mnt:
        line = assert_cannot_write(parsgd("train", *ARGS, "--out", mnt / "run"), mnt / "run" / "model.npz")
        assert "No space left on device" in line and "free disk space" in line
        assert not [p for p in (mnt / "run").iterdir() if p.name.startswith(".")], "a temp file was left"
        assert strict((mnt / "run" / "config.json").read_text())["mode"] == "sequential"


def test_train_over_an_earlier_run_on_a_read_only_mount_touches_nothing(tmp_path):
    run = tmp_path / "run"
    assert parsgd("train", *ARGS, "--out", run).returncode == 0
    before = snapshot(run)
    assert {"config.json", "metrics.jsonl", "model.npz", "summary.json"} <= before.keys()
    with read_only(run):
        line = assert_cannot_write(parsgd("train", *ARGS, "--out", run), run)
        assert "Read-only file system" in line
        assert snapshot(run) == before


@pytest.mark.parametrize("out, words", [("/dev/full", "is a file"), ("/dev/null/run", "Not a directory")])
def test_train_out_a_device_or_a_path_that_cannot_exist(out, words):
    result = parsgd("train", *ARGS, "--out", out)
    line = assert_cannot_write(result, out, start="error: ")
    assert words in line


# -- plot, trace, keygen (in this process) -----------------------------------------------------------
def test_plot_and_trace_outputs_that_cannot_be_written(tmp_path):
    ps = make_run(tmp_path / "runs", "ps", 2, "shm", epochs=2, steps_per_epoch=3)
    assert "No space left on device" in assert_cannot_write(invoke("trace", ps, "-o", "/dev/full"), "/dev/full")
    assert_cannot_write(invoke("plot", ps, "-o", "/dev/full"), "/dev/full")
    with tmpfs(tmp_path / "ro", "ro") as ro:
        assert_cannot_write(invoke("trace", ps, "-o", ro / "t.json"), ro / "t.json")
        assert_cannot_write(invoke("plot", ps, "-o", ro / "plots"), ro / "plots")
    with tmpfs(tmp_path / "full", "size=16k") as full:
        assert_cannot_write(invoke("plot", ps, "-o", full), full / "loss.png")
        assert not list(full.iterdir()), "a temp file was left"
    assert_cannot_write(invoke("trace", ps, "-o", "/dev/null/t.json"), "/dev/null")


def test_keygen_into_a_folder_that_cannot_be_written(tmp_path):
    with tmpfs(tmp_path / "ro", "ro") as ro:
        assert "Read-only" in assert_cannot_write(invoke("keygen", ro / "keys"), ro / "keys")
    with tmpfs(tmp_path / "full", "size=12k") as full:
        assert_cannot_write(invoke("keygen", full / "keys"), full / "keys")
    assert_cannot_write(invoke("keygen", "/dev/full"), "/dev/full", start="error: ")


# -- resume on a read-only run directory -------------------------------------------------------------
@pytest.mark.parametrize("command", ["server", "launch"])
def test_resume_of_a_read_only_run_directory(tmp_path, command):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint_of_step_0(run)
    before = snapshot(run)
    with read_only(run):
        extra = ["--bind", "tcp://127.0.0.1:*"] if command == "server" else ["--workers", "1"]
        assert "Read-only" in assert_cannot_write(parsgd(command, "--resume", run, *extra), run)
    assert snapshot(run) == before


# -- modes -------------------------------------------------------------------------------------------
def test_files_honour_the_umask_and_secrets_stay_private(tmp_path):
    run = tmp_path / "run"
    assert parsgd("train", *ARGS, "--out", run, umask=0o027).returncode == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.iterdir()}
    assert modes == dict.fromkeys(("config.json", "metrics.jsonl", "model.npz", "summary.json", "check.npz"), 0o640), modes
    assert stat.S_IMODE(run.stat().st_mode) == 0o750
    keys = tmp_path / "keys"
    assert parsgd("keygen", keys, umask=0).returncode == 0
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for p in keys.rglob("*.key*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o600 if p.name.endswith("_secret") else 0o666), p


# -- strict JSON, null read back as absent -----------------------------------------------------------
def test_non_finite_values_are_written_as_null_and_read_as_gaps(tmp_path):
    from parsgd.analysis.plots import plot_runs
    from parsgd.analysis.report import write_report
    from parsgd.analysis.rundirs import load_run
    from parsgd.analysis.trace import write_trace
    from parsgd.ps.commlog import CommLog, CommStream
    from parsgd.ps.events import EventLog
    from parsgd.training.rundir import RunDir

    cfg = RunConfig(dataset="synthetic", num_samples=512, epochs=2, hidden=(8,), batch_size=128)
    rd = RunDir(tmp_path / "run", cfg, "ps", transport="tcp", dataset="synthetic")
    nan, inf = float("nan"), float("inf")
    for epoch in (1, 2):
        rd.log_epoch({"epoch": epoch, "train_loss": nan if epoch == 2 else 2.0, "train_acc": 0.5, "test_loss": inf,
                      "test_acc": None, "epoch_time_s": 0.1, "compute_s": 0.05, "comm_s": nan,
                      "bytes_sent": 10, "bytes_recv": 10})
    rd.write_json("summary.json", {"mode": "ps", "workers": 1, "transport": "tcp", "epochs": 2, "steps": 8,
                                   "total_time_s": 0.2, "final_train_loss": nan, "final_train_acc": 0.5,
                                   "final_test_loss": -inf, "final_test_acc": None, "comm_share": nan})
    log = CommLog()
    log.add("send", 0, 0.0, 100, end=nan)
    log.add("update", 0, 0.001, end=0.002)
    comm = CommStream(rd.path / "comm.jsonl")
    comm.server(log)
    comm.worker(0, np.array([[0, 0, 0.0, nan, 5.0, -1]]))
    comm.close()
    events = EventLog(rd.path / "events.jsonl", lambda: nan)
    events("odd", value=inf, values=[1.0, nan])
    events.close()
    save_checkpoint_of_step_0(rd.path)
    write_trace(rd.path, rd.path / "trace.json")
    assert assert_strict_json(rd.path) == 6
    metrics = [strict(line) for line in (rd.path / "metrics.jsonl").read_text().splitlines()]
    assert metrics[1]["train_loss"] is None and metrics[0]["test_loss"] is None and metrics[0]["test_acc"] is None
    assert strict((rd.path / "events.jsonl").read_text())["values"] == [1.0, None]

    run = load_run(rd.path)
    assert np.isnan(run.column("test_acc")).all() and run.column("train_loss")[0] == 2.0
    pngs = plot_runs([rd.path], tmp_path / "plots")
    assert len(pngs) == 5 and all(p.stat().st_size > 1000 for p in pngs)
    report = write_report(tmp_path / "report", [run], run).read_text()
    assert "Missing values" in report and "no test acc: the test split is empty" in report
    assert " nan" not in report.lower() and "inf " not in report.lower(), report


def test_a_checkpoint_with_a_nan_running_sum_is_strict_and_resumes_with_nan(tmp_path):
    from parsgd.ps.checkpoint import load_checkpoint, restore, save_checkpoint
    cfg = RunConfig(dataset="synthetic", num_samples=512, epochs=1, hidden=(4,), batch_size=128)
    n = sum(a * b + b for a, b in zip(cfg.sizes[:-1], cfg.sizes[1:]))
    trainer = SimpleNamespace(step=1, steps_per_epoch=4, metrics=[{"epoch": 1, "test_acc": float("nan")}],
                              partial={"loss_sum": float("nan"), "correct": 0, "seen": 1, "time_s": 0.1}, cfg=cfg,
                              params=np.ones(n, np.float32), velocity=np.zeros(n, np.float32))
    save_checkpoint(tmp_path, trainer)
    with np.load(tmp_path / "checkpoint.npz") as z:
        state = strict(bytes(z["state"]).decode())
    assert state["partial"]["loss_sum"] is None and state["metrics"][0]["test_acc"] is None
    fresh = SimpleNamespace(params=np.zeros(n, np.float32), velocity=np.ones(n, np.float32))
    restore(fresh, load_checkpoint(tmp_path))
    assert math.isnan(fresh.partial["loss_sum"]) and fresh.step == 1 and (fresh.params == 1).all()


# -- the parameter server: a failed checkpoint still stops the workers -------------------------------
@pytest.mark.slow
def test_server_on_a_full_disk_stops_its_worker_at_once(tmp_path):
    with tmpfs(tmp_path / "mnt", "size=64k") as mnt, Procs(tmp_path) as procs:
        server, address = procs.server(mnt / "run", 1, *ARGS, "--no-shm")
        worker = procs.worker(address)
        assert server.wait(60) == 1, server.output()[-3000:]
        stopped = time.monotonic()
        assert worker.wait(10) == 0, worker.output()[-3000:]
        assert time.monotonic() - stopped < 1.0
        errors = [ln for ln in server.output().splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: cannot write {mnt / 'run' / 'checkpoint.npz'}")
        no_traceback(server, worker)


@pytest.mark.slow
def test_launch_on_a_full_disk(tmp_path):
    with tmpfs(tmp_path / "mnt", "size=64k") as mnt:
        t0 = time.monotonic()
        result = parsgd("launch", "--workers", "2", "--transport", "tcp", *ARGS, "--out", mnt / "run")
        line = assert_cannot_write(result, mnt / "run" / "checkpoint.npz")
        assert "No space left on device" in line
        assert time.monotonic() - t0 < 20, "the workers waited for the launcher to kill them"
        assert "exited with status" not in result.stdout, result.stdout[-3000:]


@pytest.mark.slow
def test_a_parameter_server_run_is_strict_json_and_honours_the_umask(tmp_path):
    run = tmp_path / "run"
    result = parsgd("launch", "--workers", "2", "--transport", "tcp", *ARGS, "--out", run, umask=0o027)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert parsgd("trace", run, umask=0o027).returncode == 0
    names = {"config.json", "metrics.jsonl", "summary.json", "comm.jsonl", "events.jsonl", "updates.jsonl", "trace.json"}
    assert assert_strict_json(run) == len(names)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.iterdir()}
    assert modes == dict.fromkeys(names | {"model.npz", "checkpoint.npz", "server.address", "check.npz"}, 0o640), modes


def test_comm_lines_are_what_json_dumps_writes():
    """comm.jsonl's fast formatter writes exactly json.dumps's text for finite spans (both row kinds):
    start and end rounded to 0.1 us, dur their difference (so t + dur is the rounded end)."""
    from parsgd.ps.commlog import _lines
    from parsgd.ps.protocol import SPANS

    rng = np.random.default_rng(5)
    rows = np.column_stack([rng.integers(0, len(SPANS), 300), rng.integers(0, 10**7, 300), rng.random(300) * 1e4,
                            rng.random(300) * 10.0 ** rng.integers(-9, 1, 300), rng.integers(0, 2**40, 300),
                            rng.integers(-1, 4, 300)])
    for role, rank, given in (("worker", 7, rows), ("server", 0, [tuple(r) for r in rows.tolist()])):
        want = "".join(json.dumps({"role": role, "rank": rank, "step": int(s), "span": SPANS[int(c)],
                                   "t": round(float(t), 7), "dur": round(round(t + d, 7) - round(t, 7), 7),
                                   "bytes": int(b),
                                   "server": rank if role == "server" else (int(v) if v >= 0 else None)}) + "\n"
                       for c, s, t, d, b, v in rows)
        assert _lines(role, rank, given).decode() == want
