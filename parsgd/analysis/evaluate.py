"""Scoring a saved model again: `parsgd eval RUN_DIR_OR_MODEL`, parsgd.load_run(DIR).evaluate().

    parsgd eval runs/sequential-p1-20260101-120000                  # the run's own dataset and seed
    parsgd eval model.npz --dataset fashion-mnist

A run directory's model.npz is scored on the test split of the dataset its config.json names (the same
dataset, seed, num_samples and dtype, so the test loss and accuracy are the run's recorded
final_test_loss / final_test_acc to the last bit: mlp.evaluate, the trainer's own function). A bare
model.npz (no config.json beside it) on --dataset (default auto) with seed 42. The confusion matrix
C (classes x classes, int64) counts C[true, predicted] over the test rows (Fawcett 2006, "An
introduction to ROC analysis", Pattern Recognition Letters 27, section 2).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from parsgd.analysis.rundirs import CONFIG, RunDirError
from parsgd.errors import UsageError

MODEL = "model.npz"
CLASSES = 10  # every parsgd dataset: labels 0..9


class ModelShapeError(UsageError):
    """The model's layer shapes do not fit the data it is to be scored on (exit 2)."""


def find_model(target) -> tuple[Path, dict | None]:
    """(model.npz path, the RunConfig dict of its run or None) for a run directory or a model file.

    Raises RunDirError (exit 1) when the path is missing or holds no model.npz.
    """
    target = Path(target)
    model = target / MODEL if target.is_dir() else target
    if not model.is_file():
        what = f"{target} has no {MODEL}" if target.is_dir() else f"{target} does not exist"
        raise RunDirError(f"{what}; pass a run directory of a finished run (parsgd train/launch) or a {MODEL}")
    config = None
    meta_file = model.parent / CONFIG
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            config = meta["config"] if isinstance(meta, dict) and isinstance(meta.get("config"), dict) else None
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{meta_file} is not readable JSON ({exc}); pass the model file of another run") from None
    return model, config


def read_model(path) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """([W1, b1, W2, b2, ...], sizes) from a model.npz; Wi (sizes[i-1], sizes[i]), bi (sizes[i],).

    Raises RunDirError when the file is not an npz of that layout (a missing or misshapen array).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise RunDirError(f"{path} is not a readable model file ({exc}); pass a model.npz parsgd wrote") from None
    layers = sum(1 for k in arrays if k.startswith("W"))
    ordered, sizes = [], []
    for i in range(1, layers + 1):
        w, b = arrays.get(f"W{i}"), arrays.get(f"b{i}")
        if w is None or b is None or w.ndim != 2 or b.shape != (w.shape[1],) or (sizes and w.shape[0] != sizes[-1]):
            raise RunDirError(f"{path}: W{i} / b{i} are missing or do not chain to the layer before; "
                              "pass a model.npz parsgd wrote")
        if not sizes:
            sizes.append(w.shape[0])
        sizes.append(w.shape[1])
        ordered += [w, b]
    if not ordered:
        raise RunDirError(f"{path} holds no W1, b1, ... arrays; pass a model.npz parsgd wrote")
    return ordered, tuple(int(s) for s in sizes)


def check_shapes(model: Path, sizes: tuple[int, ...], features: int, dataset: str) -> None:
    """Raises ModelShapeError unless the model takes `features` inputs and has CLASSES outputs."""
    if sizes[0] != features:
        raise ModelShapeError(f"{model} takes {sizes[0]} inputs per row but the {dataset} test set has {features} "
                              f"features; pass the --dataset it was trained on, or a model of {features} inputs")
    if sizes[-1] != CLASSES:
        raise ModelShapeError(f"{model} has {sizes[-1]} outputs but the {dataset} test set has {CLASSES} classes; "
                              f"score a model with {CLASSES} outputs")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: int = CLASSES) -> np.ndarray:
    """(classes, classes) int64 counts of C[true, predicted] for two int arrays of shape (n,)."""
    c = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(c, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return c


def evaluate_model(target, dataset: str | None = None, data_dir: str | None = None, echo=None) -> dict:
    """Scores the model of a run directory (or a model.npz) on a test split; returns
    {model, dataset, rows, test_loss (nats per row), test_acc (fraction), confusion (list of lists,
    [true][predicted]), recorded: {final_test_loss, final_test_acc} of the run or None}.

    `dataset` / `data_dir` override the run's own (a bare model: auto and the default folder).
    Raises RunDirError (no model, a corrupt one), DataError (data missing) and ModelShapeError (exit 2).
    """
    from parsgd.data import load_dataset
    from parsgd.model.mlp import Workspace, evaluate, forward

    model, cfg = find_model(target)
    arrays, sizes = read_model(model)
    cfg = cfg or {}
    own = dataset is None or dataset == cfg.get("dataset")
    name = dataset or cfg.get("dataset") or "auto"
    data = load_dataset(name, data_dir or cfg.get("data_dir"), cfg.get("num_samples") if own else None,
                        int(cfg.get("seed", 42)), cfg.get("dtype") or str(arrays[0].dtype), log=echo)
    check_shapes(model, sizes, int(data.x_test.shape[1]), data.name)
    dtype = data.x_test.dtype
    flat = np.concatenate([a.astype(dtype).ravel() for a in arrays])
    ws = Workspace(sizes, dtype)
    loss, acc = evaluate(flat, sizes, data.x_test, data.y_test, ws)
    pred = np.empty(len(data.y_test), dtype=np.int64)
    for lo in range(0, len(pred), 2048):  # the chunk of mlp.evaluate: bounded memory
        pred[lo:lo + 2048] = forward(flat, sizes, data.x_test[lo:lo + 2048], ws)[-1].argmax(axis=1)
    recorded = None
    summary = model.parent / "summary.json"
    if cfg and own and summary.is_file():
        try:
            s = json.loads(summary.read_text(encoding="utf-8"))
            recorded = {"final_test_loss": s.get("final_test_loss"), "final_test_acc": s.get("final_test_acc")}
        except (OSError, ValueError):
            recorded = None
    return {"model": str(model), "dataset": data.name, "rows": int(len(data.y_test)), "test_loss": float(loss),
            "test_acc": float(acc), "confusion": confusion_matrix(data.y_test, pred).tolist(), "recorded": recorded}


def format_evaluation(result: dict) -> str:
    """The text `parsgd eval` prints: loss and accuracy, then the confusion matrix (rows: true class)."""
    lines = [f"model {result['model']} on the {result['dataset']} test set ({result['rows']} rows)",
             f"test loss {result['test_loss']:.4f}  test acc {result['test_acc']:.4f}"]
    rec = result.get("recorded")
    if rec and rec.get("final_test_acc") is not None:
        lines.append(f"recorded at the end of the run: test loss {rec['final_test_loss']:.4f}  "
                     f"test acc {rec['final_test_acc']:.4f}")
    conf = result["confusion"]
    width = max(5, len(str(max(max(r) for r in conf))) + 1)
    lines += ["", "confusion matrix (rows: true class, columns: predicted)",
              "true\\pred" + "".join(f"{j:>{width}}" for j in range(len(conf)))]
    lines += [f"{i:>9}" + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(conf)]
    return "\n".join(lines)
