"""parsgd/signals.py: SIGINT and SIGTERM that arrive during a block which swallows what a handler raises
(as numpy.random's import does) are delivered after it. Real processes, real signals."""
import signal
import subprocess
import sys
import textwrap

import pytest

# A signal sent to the process by a thread started before the block (the kernel may hand it to that thread,
# as to one of OpenBLAS's; pthread_sigmask in the main thread does not hold it back: this child with the
# previous code's mask prints "lost"), during code that catches whatever the handler raises, as numpy.random's
# Cython init does in abc.register.
CHILD = textwrap.dedent("""
    import os, signal, sys, threading, time
    from parsgd.signals import deferred

    def swallowing(seconds):
        end = time.monotonic() + seconds
        while True:
            try:
                while time.monotonic() < end:
                    time.sleep(0.001)
                return
            except BaseException:
                pass

    def kill_soon():
        time.sleep(0.05)  # the main thread is in swallowing() by then
        os.kill(os.getpid(), signal.{sig})

    threading.Thread(target=kill_soon).start()  # started before the block, as OpenBLAS's threads are
    try:
        if sys.argv[1] == "deferred":
            with deferred():
                swallowing(0.3)
        else:
            swallowing(0.3)
        print("lost", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
""")


def run_child(sig: str, how: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD.format(sig=sig), how], capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("attempt", range(3))
def test_a_sigint_during_a_swallowing_block_is_raised_after_it(attempt):
    assert run_child("SIGINT", "plain").stdout == "lost\n"  # the oracle: without deferred() it is lost
    done = run_child("SIGINT", "deferred")
    assert (done.returncode, done.stdout, done.stderr) == (0, "interrupted\n", "")


def test_a_sigterm_during_a_swallowing_block_kills_after_it_as_python_s_default():
    done = run_child("SIGTERM", "deferred")
    assert done.returncode == -signal.SIGTERM and done.stdout == "", (done.returncode, done.stdout, done.stderr)


def test_handlers_are_back_after_the_block_and_a_quiet_block_raises_nothing():
    code = textwrap.dedent("""
        import signal
        from parsgd.signals import deferred
        before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        with deferred():
            x = sum(range(1000))
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr
