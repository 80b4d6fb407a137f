"""Machine facts for the results: cores, CPU, BLAS (as threadpoolctl sees it), versions, load.

    python benchmarks/machine.py

`libraries()` runs in a fresh interpreter with the benchmark's environment, so the BLAS kernel it
reports is the one the measured processes load (OPENBLAS_CORETYPE changes it).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

_PROBE = r"""
import json, sys, platform
import numpy, zmq, threadpoolctl, msgpack
info = threadpoolctl.threadpool_info()
out = {"python": platform.python_version(), "numpy": numpy.__version__, "pyzmq": zmq.__version__,
       "libzmq": zmq.zmq_version(), "msgpack": ".".join(map(str, msgpack.version)),
       "threadpoolctl": threadpoolctl.__version__,
       "blas": [{k: d.get(k) for k in ("internal_api", "version", "architecture", "threading_layer",
                                        "num_threads", "prefix")} for d in info]}
try:
    import torch
    out["torch"] = torch.__version__
except Exception:
    out["torch"] = None
print(json.dumps(out))
"""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def git_commit(repo: str) -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "parsgd"], cwd=repo, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return head + (" (parsgd/ has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def libraries(env: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    if r.returncode:
        return {"error": r.stderr.strip()[-500:]}
    return json.loads(r.stdout)


def info(env: dict, repo: str) -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "parsgd_commit": git_commit(repo),
        "env_removed_for_runs": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                                 if k in os.environ},
        **libraries(env),
    }


if __name__ == "__main__":
    print(json.dumps(info(dict(os.environ), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     indent=1))
