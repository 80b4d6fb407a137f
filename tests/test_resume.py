"""`--resume` with real processes: which options may differ from the checkpoint, extending a run with
--epochs, `launch --resume` with another --workers, a finished run, and the hint printed after SIGINT.

    python -m pytest -q tests/test_resume.py

Resume rules (README, Faults, "Fault options"): --epochs may be raised; --data-dir may point elsewhere;
every other training option, and --out, must equal the checkpoint's or be omitted (exit 2, each named
with the checkpoint's value). `launch --resume` starts as many workers as the checkpoint has shards.
"""
import os
import shlex
import shutil
import signal
import subprocess

import numpy as np
import pytest

from parsgd.ps.checkpoint import load_checkpoint
from procs import PY, error_lines, load_params, parsgd

pytestmark = pytest.mark.slow  # real server and worker processes
ARGS = ["--dataset", "synthetic", "--num-samples", "1024", "--batch-size", "128", "--epochs", "2",
        "--dtype", "float64"]  # 8 steps per epoch, 16 in all
SLOW = "delay=1:0.05"  # every GRAD 50 ms late: about 0.4 s per epoch, time to send a signal mid-run


def with_epochs(n: int) -> list[str]:
    args = list(ARGS)
    args[args.index("--epochs") + 1] = str(n)
    return args


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch, 2-worker launch run (its checkpoint is at the last step)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    result = parsgd("launch", "--workers", "2", *ARGS, "--out", run)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert load_checkpoint(run)["step"] == 16
    return run


def copy_run(run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def assert_same_model(run, expected_run, tol=1e-12):
    diff = np.max(np.abs(load_params(run) - load_params(expected_run)))
    assert diff < tol, diff


@pytest.mark.parametrize("command", ["server", "launch"])
def test_options_that_differ_from_the_checkpoint_are_refused_each_named(finished, tmp_path, command):
    before = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
    result = parsgd(command, "--resume", finished, "--epochs", "1", "--lr", "0.05", "--hidden", "64",
                    "--batch-size", "128", "--dtype", "float64", "--seed", "7", "--out", tmp_path / "elsewhere")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    [error] = error_lines(result)
    for named in ("--epochs 1 (the checkpoint has 2; --epochs may only be raised)", "--lr 0.05 (the checkpoint has 0.1)",
                  "--hidden 64 (the checkpoint has 256,128)", "--seed 7 (the checkpoint has 42)",
                  f"--out {tmp_path / 'elsewhere'}"):
        assert named in error, error
    assert "--batch-size" not in error and "--dtype" not in error, "options equal to the checkpoint's pass"
    assert not (tmp_path / "elsewhere").exists()
    assert {p.name: p.stat().st_mtime_ns for p in finished.iterdir()} == before, "nothing started"


def test_server_resume_refuses_another_shard_count(finished):
    result = parsgd("server", "--resume", finished, "--workers", "3")
    assert result.returncode == 2 and "--workers 3 (the checkpoint has 2)" in error_lines(result)[0], result.stderr


@pytest.mark.parametrize("command", ["server", "launch"])
def test_resuming_a_finished_run_says_so_and_changes_nothing(finished, command):
    before = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
    result = parsgd(command, "--resume", finished, *ARGS, timeout=30)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{finished} already finished its 2 epochs (step 16): nothing to resume" in result.stdout
    assert "pass a larger --epochs" in result.stdout and result.stderr == ""
    assert {p.name: p.stat().st_mtime_ns for p in finished.iterdir()} == before


def test_raising_epochs_extends_the_run_as_if_it_had_been_asked_for_at_the_start(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    result = parsgd("launch", "--resume", run, "--epochs", "3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming {run} at step 16" in result.stdout and "epoch   3/3" in result.stdout
    reference = tmp_path / "three-epochs"
    assert parsgd("launch", "--workers", "2", *with_epochs(3), "--out", reference).returncode == 0
    assert_same_model(run, reference)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert load_checkpoint(run)["config"]["epochs"] == 3
    assert '"epochs": 3' in (run / "config.json").read_text()


def test_launch_resume_with_another_workers_count_uses_the_checkpoints(finished, tmp_path):
    run = tmp_path / "run"
    crashed = parsgd("launch", "--workers", "2", *ARGS, "--out", run,
                     "--faults", "crash=worker0@step5,crash=worker1@step5")
    assert crashed.returncode == 1 and load_checkpoint(run)["step"] == 5, crashed.stdout[-3000:]
    result = parsgd("launch", "--resume", run, "--workers", "3", "--wait-timeout", "20", timeout=60)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("[launch] --workers 3 ignored: the checkpoint's run cuts every batch into 2 shards, so 2 workers start"
            in result.stdout)
    assert "[worker 2]" not in result.stdout and f"resuming {run} at step 5" in result.stdout
    assert_same_model(run, finished)


def launch_and_interrupt(run, after: str) -> tuple[int, str, str]:
    """`launch` with slow GRADs, SIGINT once `after` is printed; returns (status, stdout, stderr)."""
    proc = subprocess.Popen(PY + ["launch", "--workers", "2", *ARGS, "--faults", SLOW, "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PARSGD_NO_DOWNLOAD": "1"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if after in line:
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()  # a no-op once it exited; its children die with it (PR_SET_PDEATHSIG)
    return proc.returncode, "".join(lines) + out, err


def test_the_hint_after_sigint_on_launch_is_a_launch_command_that_works(finished, tmp_path):
    run = tmp_path / "run"
    status, out, err = launch_and_interrupt(run, "epoch   1/")
    assert status == 130 and "Traceback" not in out + err, out[-3000:] + err
    step = load_checkpoint(run)["step"]
    assert 8 <= step < 16
    [error] = [line for line in err.splitlines() if line.strip()]
    hint = f"parsgd launch --resume {run}"
    assert error == f"error: interrupted by SIGINT; the checkpoint is at step {step}; continue with `{hint}`", err
    command = shlex.split(error.split("`")[1])
    assert command[0] == "parsgd"
    result = parsgd(*command[1:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming {run} at step {step}" in result.stdout
    assert_same_model(run, finished)


def test_no_hint_when_interrupted_before_the_first_checkpoint(tmp_path):
    run = tmp_path / "run"
    status, out, err = launch_and_interrupt(run, "server listening on")
    assert status == 130 and "Traceback" not in out + err, out[-3000:] + err
    assert [line for line in err.splitlines() if line.strip()] == [
        "error: interrupted by SIGINT before the first checkpoint: nothing to resume"], err
    assert not (run / "checkpoint.npz").exists()


def test_the_hint_after_sigint_on_a_server_names_the_address_it_really_bound(finished, tmp_path):
    """`server --bind tcp://127.0.0.1:*`: the hint must give the port it got, or its workers cannot find it again."""
    from procs import Procs

    run = tmp_path / "run"
    with Procs(tmp_path) as p:
        server = p.start("server", ["server", "--bind", "tcp://127.0.0.1:*", "--workers", "2", *ARGS, "--out", str(run)],
                         env={"PARSGD_NO_DOWNLOAD": "1"})
        server.wait_for("server listening on")
        address = (run / "server.address").read_text().strip()
        workers = [p.worker(address, "--faults", SLOW) for _ in range(2)]
        server.wait_for("epoch   1/")
        server.signal(signal.SIGINT)
        assert server.wait(15) == 1
        step = load_checkpoint(run)["step"]
        [error] = [line for line in server.output().splitlines() if line.startswith("error: ")]
        hint = f"parsgd server --resume {run} --bind {address}"
        assert error == f"error: interrupted by SIGINT at step {step}; checkpoint written; continue with `{hint}`"
        assert all(w.wait(15) == 0 for w in workers)  # stopped by the server
        again = p.start("server", shlex.split(hint)[1:], env={"PARSGD_NO_DOWNLOAD": "1"})
        again.wait_for("server listening on")
        workers = [p.worker(address) for _ in range(2)]
        assert again.wait(60) == 0, again.output()[-3000:]
    assert_same_model(run, finished)
