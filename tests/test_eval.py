"""`parsgd eval RUN_DIR_OR_MODEL`: the oracle is the run's own recorded final test loss and accuracy."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def parsgd(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "parsgd", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "pool"
    proc = parsgd("train", "--workers", "2", "--dataset", "synthetic", "--num-samples", "1024", "--epochs", "2",
                  "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_eval_reproduces_the_recorded_test_loss_and_accuracy(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    for target in (run_dir, run_dir / "model.npz"):
        proc = parsgd("eval", target, "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["test_acc"] == summary["final_test_acc"]
        assert result["test_loss"] == pytest.approx(summary["final_test_loss"], rel=1e-12)
        conf = np.array(result["confusion"])
        assert conf.shape == (10, 10) and conf.sum() == result["rows"] == 10_000
        assert np.trace(conf) / conf.sum() == pytest.approx(result["test_acc"], abs=1e-12)
    text = parsgd("eval", run_dir).stdout
    assert f"test acc {summary['final_test_acc']:.4f}" in text and "confusion matrix" in text
    assert len(text.splitlines()) == 2 + 1 + 2 + 1 + 10  # header, loss, recorded, blank + title, columns, rows


def test_eval_of_a_model_on_another_dataset_is_not_compared(run_dir, tmp_path):
    # A bare model.npz (no config.json beside it) is scored on --dataset: there is no recorded figure to compare.
    alone = tmp_path / "model.npz"
    alone.write_bytes((run_dir / "model.npz").read_bytes())
    proc = parsgd("eval", alone, "--dataset", "synthetic", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["recorded"] is None


@pytest.mark.parametrize("shapes, what", [
    ({"W1": (100, 16), "b1": (16,), "W2": (16, 10), "b2": (10,)}, "takes 100 inputs"),
    ({"W1": (784, 16), "b1": (16,), "W2": (16, 5), "b2": (5,)}, "has 5 outputs"),
])
def test_eval_refuses_a_model_whose_shapes_do_not_match_the_data(tmp_path, shapes, what):
    model = tmp_path / "model.npz"
    np.savez(model, **{k: np.zeros(s, np.float32) for k, s in shapes.items()})
    proc = parsgd("eval", model, "--dataset", "synthetic")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1 and what in proc.stderr
    assert "; " in proc.stderr  # what is wrong; the fix


def test_eval_refuses_what_is_not_a_model(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "broken.npz", W1=np.zeros((784, 16)), b1=np.zeros(3))
    for target in (tmp_path / "missing", tmp_path, tmp_path / "junk.npz", tmp_path / "broken.npz"):
        proc = parsgd("eval", target)
        assert proc.returncode == 1 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
        assert "Traceback" not in proc.stderr
