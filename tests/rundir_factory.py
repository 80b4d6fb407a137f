"""Writes realistic run directories (as parsgd/training/rundir.py and parsgd/ps/commlog.py would)
for the reading-side tests (test_report, test_plots, test_trace).

    cd tests && python3 -c "from rundir_factory import make_experiment; print(make_experiment('/tmp/exp'))"

Numbers are internally consistent (summary == metrics == comm.jsonl) but the tests must not rely
on the exact values: they recompute what they check from the files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from parsgd.training.loop import CHECK_FILE, CHECK_STEPS, WARMUP_STEPS

SIZES = (784, 32, 10)
N_PARAMS = sum(a * b + b for a, b in zip(SIZES[:-1], SIZES[1:]))
PARAM_BYTES = 4 * N_PARAMS


def _config(mode, workers, transport, epochs, batch_size):
    return {"config": {"dataset": "synthetic", "data_dir": None, "num_samples": 2048, "epochs": epochs,
                       "batch_size": batch_size, "lr": 0.1, "momentum": 0.9, "hidden": list(SIZES[1:-1]),
                       "seed": 42, "dtype": "float32", "workers": workers},
            "mode": mode, "transport": transport, "dataset": "synthetic",
            "versions": {"parsgd": "0.1.0", "python": "3.11.2", "numpy": np.__version__, "pyzmq": "26.0.0"},
            "host": "testhost", "started": "2026-01-01T12:00:00+00:00",
            "machine": {"cores": 2, "platform": "Linux-test",
                        "blas": [{"internal_api": "openblas", "version": "0.3.21", "num_threads": 1,
                                  "architecture": "Haswell"}]}}


def _simulate_ps(rng, workers, steps, t0_s):
    """Spans of `steps` synchronous PS steps starting at t0_s; returns (spans, end time in s)."""
    spans, t_s = [], t0_s
    worker_free_s = [t0_s] * workers

    def add(role, rank, step, span, start_s, dur_s, nbytes=0):
        spans.append({"role": role, "rank": rank, "step": step, "span": span,
                      "t": round(start_s, 7), "dur": round(dur_s, 7), "bytes": int(nbytes)})
        return start_s + dur_s

    for step in steps:
        t_s = add("server", 0, step, "serialize", t_s, 2e-5)
        arrive_s = []
        for w in range(workers):
            sent_s = add("server", 0, step, "send", t_s, 1e-4 + 5e-5 * rng.random(), PARAM_BYTES)
            add("worker", w, step, "recv", worker_free_s[w], sent_s - worker_free_s[w], PARAM_BYTES)
            u_s = add("worker", w, step, "deserialize", sent_s, 1e-5)
            u_s = add("worker", w, step, "compute", u_s, 1.5e-3 * (1 + 0.2 * rng.random()))
            u_s = add("worker", w, step, "serialize", u_s, 1e-5)
            worker_free_s[w] = add("worker", w, step, "send", u_s, 1e-4, PARAM_BYTES)
            arrive_s.append(worker_free_s[w])
            t_s = sent_s
        t_s = add("server", 0, step, "wait", t_s, max(arrive_s) - t_s)
        for w in range(workers):
            t_s = add("server", 0, step, "recv", t_s, 2e-5, PARAM_BYTES)
            t_s = add("server", 0, step, "deserialize", t_s, 1e-5)
        t_s = add("server", 0, step, "aggregate", t_s, 3e-5)
        t_s = add("server", 0, step, "update", t_s, 5e-5)
    return spans, t_s


def make_run(root, mode: str = "sequential", workers: int = 1, transport: str | None = None,
             epochs: int = 3, steps_per_epoch: int = 6, batch_size: int = 128, name: str | None = None,
             seed: int = 0, check_error: float = 1e-7) -> Path:
    """Write one run directory under `root` and return its path.

    The folder is `name`, default MODE-pWORKERS[-TRANSPORT]; it holds config.json, metrics.jsonl
    (`epochs` lines, with the timed window: the first WARMUP_STEPS steps left out), summary.json,
    model.npz, check.npz (the update after CHECK_STEPS steps: one fixed vector, off by
    `check_error` relative for a parallel mode) and, for mode "ps", comm.jsonl with the spans of
    epochs * steps_per_epoch steps. `seed` varies the numbers. Raises OSError if root is not writable.
    """
    rng = np.random.default_rng([seed, workers, len(mode)])
    path = Path(root) / (name or f"{mode}-p{workers}" + (f"-{transport}" if transport else ""))
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(_config(mode, workers, transport, epochs, batch_size), indent=2))
    metrics, spans, t_s = [], [], 0.05
    for epoch in range(1, epochs + 1):
        start_s = t_s
        if mode == "ps":
            steps = range((epoch - 1) * steps_per_epoch, epoch * steps_per_epoch)
            new, t_s = _simulate_ps(rng, workers, steps, t_s)
            spans += new
            compute_s = sum(s["dur"] for s in new if s["span"] == "compute") / workers
            comm_s = sum(s["dur"] for s in new if s["role"] == "server" and s["span"] != "update"
                         and s["span"] != "aggregate")
            nbytes = PARAM_BYTES * workers * steps_per_epoch
        else:
            compute_s = steps_per_epoch * 6e-3 / workers
            comm_s = 0.0 if mode == "sequential" else steps_per_epoch * 1.5e-3
            t_s += compute_s + comm_s
            nbytes = 0 if mode == "sequential" else PARAM_BYTES * workers * steps_per_epoch
        done = epoch * steps_per_epoch
        timed_steps = min(steps_per_epoch, max(0, done - WARMUP_STEPS))
        timed_s = (t_s - start_s) * timed_steps / steps_per_epoch
        t_s += 0.01  # evaluation
        loss = 2.3 * np.exp(-0.6 * epoch) + 0.05 * rng.random()
        metrics.append({"epoch": epoch, "train_loss": loss, "train_acc": 1 - loss / 2.6,
                        "test_loss": loss * 1.1, "test_acc": 1 - loss * 1.1 / 2.6,
                        "epoch_time_s": t_s - start_s, "timed_steps": timed_steps, "timed_s": timed_s,
                        "compute_s": compute_s, "comm_s": comm_s,
                        "bytes_sent": nbytes, "bytes_recv": nbytes})
    if mode == "ps":
        for w in range(workers):  # the STOP message arrives outside any step
            spans.append({"role": "worker", "rank": w, "step": -1, "span": "recv", "t": t_s, "dur": 1e-4,
                          "bytes": 40})
    with open(path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in metrics)
    breakdown = {}
    if spans:
        with open(path / "comm.jsonl", "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in spans)
        for s in spans:
            role = breakdown.setdefault(s["role"], {})
            role[s["span"]] = role.get(s["span"], 0.0) + s["dur"]
    comm_total_s = sum(m["comm_s"] for m in metrics)
    busy_s = comm_total_s + sum(m["compute_s"] for m in metrics)
    last = metrics[-1]
    summary = {"mode": mode, "workers": workers, "transport": transport, "dataset": "synthetic",
               "epochs": epochs, "batch_size": batch_size, "steps": epochs * steps_per_epoch,
               "total_time_s": t_s + 0.02, "final_train_loss": last["train_loss"],
               "final_train_acc": last["train_acc"], "final_test_loss": last["test_loss"],
               "final_test_acc": last["test_acc"], "comm_share": comm_total_s / busy_s if busy_s else 0.0,
               "warmup_steps": epochs * steps_per_epoch - sum(m["timed_steps"] for m in metrics),
               "timed_steps": sum(m["timed_steps"] for m in metrics), "timed_s": sum(m["timed_s"] for m in metrics),
               "time_breakdown": breakdown}
    (path / "summary.json").write_text(json.dumps(summary, indent=2))
    arrays = {}
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:]), 1):
        arrays[f"W{i}"] = rng.standard_normal((a, b)).astype(np.float32)
        arrays[f"b{i}"] = np.zeros(b, np.float32)
    np.savez(path / "model.npz", **arrays)
    update = np.random.default_rng(7).standard_normal(N_PARAMS) * 1e-3
    if mode != "sequential":
        update += np.linalg.norm(update) * check_error / np.sqrt(N_PARAMS) * rng.choice([-1.0, 1.0], N_PARAMS)
    np.savez(path / CHECK_FILE, update=update, steps=np.array([CHECK_STEPS]))
    return path


def make_experiment(root) -> dict[str, Path]:
    """Write sequential, pool P=2 and ps P=2 (shm) run directories under `root`.

    Returns {"sequential": path, "pool": path, "ps": path}; raises OSError if root is not writable.
    """
    return {"sequential": make_run(root, "sequential", 1),
            "pool": make_run(root, "pool", 2),
            "ps": make_run(root, "ps", 2, "shm")}
