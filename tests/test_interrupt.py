"""Ctrl-C at a random moment: every in-process trainer exits 130 within seconds, one `error:` line, no
traceback, no Pool process left behind (real processes, real SIGINT, many tries).

    python -m pytest -q tests/test_interrupt.py -s      # -s prints each try's delay and exit time

A terminal's Ctrl-C sends SIGINT to the whole foreground process group (the Pool processes too):
`os.killpg`; a `kill -INT PID` reaches the parent alone: `os.kill`. Both are tried.
"""
import os
import random
import signal
import subprocess
import time

import pytest

from procs import PY, no_group_left

pytestmark = pytest.mark.slow  # real processes, waited on
ENV = {**os.environ, "PARSGD_NO_DOWNLOAD": "1", "PYTHONUNBUFFERED": "1"}
POOL = ["train", "--workers", "2", "--batch-size", "16", "--dataset", "synthetic", "--num-samples", "8192",
        "--epochs", "50"]
EXIT_WITHIN_S = 5.0


def interrupt(tmp_path, args, started: str, delay: float, group: bool) -> float:
    """Start `parsgd ARGS` in its own process group, wait until `started` is printed plus `delay` s, send
    SIGINT; asserts exit 130 within EXIT_WITHIN_S, one `error: interrupted` line, and no process left."""
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(PY + list(args) + ["--out", str(tmp_path / "run")], stdout=fo, stderr=fe,
                                stdin=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while started not in out.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, err.read_text()
            time.sleep(0.02)
        assert started in out.read_text(), out.read_text()
        time.sleep(delay)
        assert proc.poll() is None, f"finished before the signal: {out.read_text()[-500:]}"
        sent = time.monotonic()
        (os.killpg if group else os.kill)(proc.pid, signal.SIGINT)
        try:
            status = proc.wait(EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit within {EXIT_WITHIN_S} s of SIGINT ({delay:.2f} s in, "
                                 f"{'killpg' if group else 'kill'}):\n{err.read_text()[-3000:]}") from None
        took = time.monotonic() - sent
        stderr = err.read_text()
        assert status == 130, (status, stderr[-3000:])
        assert "Traceback" not in stderr + out.read_text(), stderr[-3000:]
        assert stderr.splitlines() == ["error: interrupted"], stderr[-3000:]
        no_group_left(proc.pid)
        return took
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ctrl_c_on_the_pool_baseline_always_exits_130_at_once(tmp_path):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for i in range(5):
        delay, group = rng.uniform(0.3, 2.5), i % 2 == 0
        d = tmp_path / f"try{i}"
        d.mkdir()
        took = interrupt(d, POOL, "dataset:", delay, group)
        print(f"\ntry {i} (seed {seed}): SIGINT by {'killpg' if group else 'kill'} {delay:.2f} s in, "
              f"exit 130 after {took:.2f} s")


def test_ctrl_c_on_the_sequential_trainer_exits_130(tmp_path):
    args = [a if a != "2" else "1" for a in POOL]  # --workers 1
    interrupt(tmp_path, args, "dataset:", random.uniform(0.3, 1.5), group=True)


def test_ctrl_c_on_an_experiment_exits_130(tmp_path):
    args = ["experiment", "--workers", "2", "--modes", "sequential,pool", "--quiet", *POOL[3:]]
    args[args.index("--epochs") + 1] = "3"
    interrupt(tmp_path, args, "pool P=2", random.uniform(0.3, 1.0), group=True)


@pytest.mark.parametrize("parent_alive", [True, False])
def test_a_child_whose_parent_died_before_it_asked_to_die_with_it_dies_at_once(parent_alive):
    """PR_SET_PDEATHSIG only covers deaths after it is set: a child forked just before its parent's
    SIGKILL must notice the parent is gone (its parent pid changed) and die instead of staying."""
    import sys
    code = ("import os, sys; from parsgd.training.pool import die_with_parent; "
            "die_with_parent(os.getppid() if sys.argv[1] == 'alive' else os.getppid() + 1); print('still here')")
    result = subprocess.run([sys.executable, "-c", code, "alive" if parent_alive else "gone"],
                            capture_output=True, text=True, timeout=30)
    if parent_alive:
        assert result.returncode == 0 and "still here" in result.stdout
    else:
        assert result.returncode == -signal.SIGKILL and "still here" not in result.stdout


def test_a_pool_process_writing_to_its_dead_parents_pipe_ends_without_a_traceback():
    """The parent's pipes close before PR_SET_PDEATHSIG arrives: a Pool process that hands back a result
    in between (a real pipe whose reader is gone) ends by SIGPIPE, silently, not with a BrokenPipeError
    traceback (seen in 1 of 2 loaded runs of the exit status table: `experiment` + SIGTERM)."""
    import sys
    code = ("import os; from parsgd.training.pool import _pool_init; "
            "_pool_init((4, 3, 2), 'float32', None, os.getppid()); "
            "r, w = os.pipe(); os.close(r); os.write(w, b'result'); print('still here')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == -signal.SIGPIPE, (result.returncode, result.stderr[-2000:])
    assert result.stdout == "" and result.stderr == "", result.stderr[-2000:]


# What the console script does (`from parsgd.__main__ import run; sys.exit(run())`), with a line once the
# interpreter's own startup is over: from there on a Ctrl-C is parsgd's to handle.
STARTING = ("import sys; from parsgd.__main__ import run; print('go', flush=True); sys.argv[0] = 'parsgd'; "
            "sys.exit(run())")


def test_ctrl_c_while_the_cli_is_still_importing_exits_130_without_a_traceback(tmp_path):
    """SIGINT 0-90 ms after the interpreter started parsgd, where click and NumPy are still being imported
    (a KeyboardInterrupt raised in an import printed Python's traceback there: 4 of these 24 tries with the
    import outside the guard, as the previous entry point had it): each exits 130 with `error: interrupted`."""
    for n in range(24):
        proc = subprocess.Popen([PY[0], "-c", STARTING, "train", "--dataset", "synthetic", "--epochs", "50",
                                 "--out", str(tmp_path / "run")], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV, text=True)
        assert proc.stdout.readline() == "go\n"
        time.sleep(0.004 * n)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 130 and "Traceback" not in out, (n, out[-2000:])
        assert out.strip().splitlines()[-1].startswith("error: interrupted"), (n, out[-2000:])
