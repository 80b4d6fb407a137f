"""The experiment's same-model check, both ways, on real runs: float32 rounding at batch 32 passes it
(although the final models differ), and each seeded bug in the Pool trainer fails it.

    python3 -m pytest -q tests/test_same_model.py

The bugs are monkeypatched into parsgd.training.pool before the Pool forks, so its processes run
them too: a shard's gradient divided by its own row count (a mean where sum / batch belongs), the
last shard of every batch dropped, and every update applied twice.
"""
import json

import numpy as np
import pytest

from parsgd.analysis.results import CHECK_TOL
from parsgd.config import RunConfig
from parsgd.jobs.experiment import ModelMismatch, run_experiment
from parsgd.training import pool
from parsgd.training.loop import CHECK_STEPS, Trainer

SMALL = dict(dataset="synthetic", hidden=(32, 16), seed=42)


def experiment(tmp_path, modes=("sequential", "pool"), transports=(), **options):
    cfg = RunConfig(**{**SMALL, **options})
    out = tmp_path / "results"
    try:
        run_experiment(cfg, (2,), modes, transports, out, quiet=True, echo=lambda _: None)
        error = None
    except ModelMismatch as exc:
        error = exc
    records = json.loads((out / "experiment.json").read_text())["records"]
    return out, {r["run"]: r for r in records}, error


def flat(path):
    with np.load(path) as z:
        return np.concatenate([z[k].ravel().astype(np.float64) for k in sorted(z.files)])


@pytest.mark.slow
def test_float32_rounding_at_batch_32_passes_though_the_final_models_differ(tmp_path):
    out, recs, error = experiment(tmp_path, modes=("sequential", "pool", "ps"), transports=("shm",),
                                  num_samples=4096, epochs=2, batch_size=32, dtype="float32")
    assert error is None
    for label in ("pool P=2", "ps P=2 shm"):
        assert recs[label]["same_model"] is True and recs[label]["check_steps"] == CHECK_STEPS
        assert recs[label]["check_diff"] < CHECK_TOL["float32"] / 10
    seq = flat(out / "sequential" / "model.npz")
    final_gap = np.linalg.norm(flat(out / "pool-p2" / "model.npz") - seq) / np.linalg.norm(seq)
    # How far apart 256 steps of float32 rounding leave them depends on the BLAS kernel (1e-5 to 1e-3
    # measured); that they differ at all is the point: a check on the final model would need a loose bound.
    assert final_gap > 1e-7, "the Pool's shard sums round differently: the final models are not equal"
    text = (out / "experiment_report.txt").read_text()
    assert "all 2 other configurations pass" in text and "amplifies such differences chaotically" in text


def test_float64_passes_at_1e_9(tmp_path):
    _, recs, error = experiment(tmp_path, num_samples=512, epochs=1, batch_size=32, dtype="float64")
    assert error is None and recs["pool P=2"]["same_model"] is True
    assert recs["pool P=2"]["check_diff"] < 1e-12 and recs["pool P=2"]["check_tol"] == CHECK_TOL["float64"]


def _mean_not_sum_over_batch(monkeypatch):
    real = pool.loss_and_grad

    def loss_and_grad(params, sizes, x, y, grad, ws, scale=1.0):
        return real(params, sizes, x, y, grad, ws, scale=1.0 / len(y))  # the shard's mean: P times too big
    monkeypatch.setattr(pool, "loss_and_grad", loss_and_grad)


def _drop_last_shard(monkeypatch):
    real = pool.shard_bounds
    monkeypatch.setattr(pool, "shard_bounds", lambda lo, hi, parts: real(lo, hi, parts)[:-1])


def _update_twice(monkeypatch):
    def update(self):
        Trainer.update(self)
        Trainer.update(self)
    monkeypatch.setattr(pool.PoolTrainer, "update", update)


@pytest.mark.parametrize("bug", [_mean_not_sum_over_batch, _drop_last_shard, _update_twice])
def test_a_seeded_bug_fails_the_check(tmp_path, monkeypatch, bug):
    bug(monkeypatch)
    out, recs, error = experiment(tmp_path, num_samples=512, epochs=1, batch_size=32)
    assert isinstance(error, ModelMismatch) and error.exit_code == 1
    assert "1 of 2 configurations did not train the same model as sequential" in str(error)
    assert "pool P=2 (difference" in str(error)
    assert recs["sequential"]["same_model"] is True
    assert recs["pool P=2"]["same_model"] is False and recs["pool P=2"]["check_diff"] > 0.2
    text = (out / "experiment_report.txt").read_text()
    assert "FAILED: pool P=2: difference" in text and "it does not train the same model as sequential" in text
    assert "FAILED" in next(ln for ln in text.splitlines() if ln.startswith("pool P=2 "))
