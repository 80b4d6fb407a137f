"""Sequential and Pool trainers: learning, determinism, and Pool == sequential as an oracle."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from parsgd.config import RunConfig
from parsgd.data import make_synthetic
from parsgd.training.rundir import RunDir
from parsgd.training.loop import Trainer, shard_bounds
from parsgd.training.pool import PoolTrainer
from procs import PY


def quiet(_):
    pass


@pytest.fixture(scope="module")
def data64():
    return make_synthetic(2048, 500, seed=3, dtype="float64")


def test_shard_bounds_cover_the_batch_contiguously():
    for lo, hi, parts in [(0, 256, 2), (100, 201, 3), (7, 10, 3), (0, 5, 4)]:
        b = shard_bounds(lo, hi, parts)
        assert b[0][0] == lo and b[-1][1] == hi and len(b) == parts
        assert all(x[1] == y[0] for x, y in zip(b, b[1:]))
        sizes = [e - s for s, e in b]
        assert max(sizes) - min(sizes) <= 1


def test_loss_decreases_and_accuracy_beats_chance_on_synthetic():
    data = make_synthetic(4096, 1000, seed=0)
    cfg = RunConfig(dataset="synthetic", epochs=3, hidden=(64,), seed=0)
    trainer = Trainer(cfg, data, echo=quiet)
    trainer.run()
    losses = [m["train_loss"] for m in trainer.metrics]
    assert losses[0] > losses[1] > losses[2]
    assert trainer.metrics[-1]["test_acc"] > 0.6


def test_same_seed_gives_byte_identical_model_files(tmp_path):
    data = make_synthetic(1024, 200, seed=1)
    cfg = RunConfig(dataset="synthetic", epochs=1, hidden=(32, 16), seed=5)
    blobs = []
    for name in ("a", "b"):
        rd = RunDir(tmp_path / name, cfg, "sequential", dataset="synthetic")
        Trainer(cfg, data, echo=quiet).run(rd)
        blobs.append((tmp_path / name / "model.npz").read_bytes())
    assert blobs[0] == blobs[1]
    other = RunDir(tmp_path / "c", cfg.replace(seed=6), "sequential")
    Trainer(cfg.replace(seed=6), data, echo=quiet).run(other)
    assert (tmp_path / "c" / "model.npz").read_bytes() != blobs[0]
    with np.load(tmp_path / "a" / "model.npz") as z:
        assert sorted(z.files) == ["W1", "W2", "W3", "b1", "b2", "b3"]
        assert z["W1"].shape == (784, 32) and z["b3"].shape == (10,)


def test_a_new_run_in_a_used_folder_removes_the_old_runs_files(tmp_path):
    from parsgd.training.rundir import STALE_FILES
    cfg = RunConfig(dataset="synthetic", epochs=1, hidden=(8,))
    for name in (*STALE_FILES, "metrics.jsonl", "loss.png"):
        (tmp_path / name).write_text("old run\n")
    RunDir(tmp_path, cfg, "ps", append=True)  # a resume keeps everything
    assert all((tmp_path / name).read_text() == "old run\n" for name in STALE_FILES)
    RunDir(tmp_path, cfg, "ps")
    assert not any((tmp_path / name).exists() for name in STALE_FILES)
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert (tmp_path / "loss.png").exists()  # not a file the run writes: the user's own


def test_run_directory_files_have_the_documented_fields(tmp_path):
    data = make_synthetic(512, 100, seed=1)
    cfg = RunConfig(dataset="synthetic", epochs=2, hidden=(16,), batch_size=100)
    Trainer(cfg, data, echo=quiet).run(RunDir(tmp_path, cfg, "sequential", dataset="synthetic"))
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert set(m) >= {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s",
                          "compute_s", "comm_s", "bytes_sent", "bytes_recv"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mode"] == "sequential" and summary["steps"] == 2 * 6  # 512 rows / 100 -> 6 batches
    assert summary["final_test_acc"] == metrics[-1]["test_acc"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["hidden"] == [16] and config["machine"]["cores"] >= 1


@pytest.mark.parametrize("workers", [2, 3])
def test_pool_baseline_equals_sequential_in_float64(data64, workers):
    # 2048 rows at batch 100: 20 full batches and a final partial one of 48; 100 / 3 does not split evenly
    cfg = RunConfig(dataset="synthetic", epochs=1, batch_size=100, hidden=(32, 16), dtype="float64", seed=9)
    seq = Trainer(cfg, data64, echo=quiet)
    seq.run()
    pool = PoolTrainer(cfg.replace(workers=workers), data64, echo=quiet)
    try:
        pool.run()
    finally:
        pool.close()
    assert np.max(np.abs(pool.params - seq.params)) < 1e-8
    assert pool.metrics[0]["train_loss"] == pytest.approx(seq.metrics[0]["train_loss"], rel=1e-9)
    assert pool.metrics[0]["bytes_sent"] > 0


def _empty_test_split(folder: Path) -> None:
    from parsgd.data import write_idx
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (64, 28, 28), dtype=np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 64, dtype=np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(0, np.uint8))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_empty_test_split_is_reported_as_absent_not_as_zero(tmp_path, workers):
    _empty_test_split(tmp_path / "data" / "mnist")
    out = tmp_path / "run"
    result = subprocess.run(PY + ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--epochs", "2",
                                  "--batch-size", "16", "--workers", workers, "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "test acc n/a" in result.stdout and "Traceback" not in result.stderr
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(m["test_loss"], m["test_acc"]) for m in metrics] == [(None, None)] * 2
    assert all(m["train_acc"] is not None for m in metrics)
    assert json.loads((out / "summary.json").read_text())["final_test_acc"] is None
    from parsgd.analysis.plots import plot_runs  # a reader of such a run draws it, it does not crash
    assert plot_runs([out], tmp_path / "png")


def test_divergence_stops_every_in_process_mode_with_the_last_finite_model(tmp_path):
    """`train --lr 1e8`: exit 1, one error line, and model.npz holds finite parameters (sequential and Pool)."""
    for workers in ("1", "2"):
        out = tmp_path / f"run{workers}"
        result = subprocess.run(PY + ["train", "--dataset", "synthetic", "--num-samples", "1024", "--epochs", "2",
                                      "--lr", "1e8", "--workers", workers, "--out", str(out)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, result.stdout + result.stderr
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("error: the loss or gradient of step"), result.stderr
        assert "try a lower --lr" in errors[0] and str(out / "model.npz") in errors[0]
        with np.load(out / "model.npz") as z:
            assert all(np.isfinite(z[k]).all() for k in z.files)
        assert "done" not in result.stdout


@pytest.mark.parametrize("rows,batch", [(1025, 256), (3, 2)])
def test_pool_with_a_last_batch_smaller_than_its_workers_equals_sequential(rows, batch):
    """The last batch has 1 row for 2 workers: the empty shard is skipped (never sent), the model is the same."""
    assert shard_bounds(1024, 1025, 2) == [(1024, 1025), (1025, 1025)]
    data = make_synthetic(rows, 50, seed=4, dtype="float64")
    cfg = RunConfig(dataset="synthetic", epochs=2, batch_size=batch, hidden=(16,), dtype="float64", seed=4)
    seq = Trainer(cfg, data, echo=quiet)
    seq.run()
    pool = PoolTrainer(cfg.replace(workers=2), data, echo=quiet)
    try:
        pool.run()
    finally:
        pool.close()
    assert np.max(np.abs(pool.params - seq.params)) < 1e-8
    steps = -(-rows // batch)
    assert pool.metrics[-1]["bytes_sent"] == pool.params.nbytes * (2 * steps - 1)  # one shard of one step is empty
