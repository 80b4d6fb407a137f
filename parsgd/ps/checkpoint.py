"""Server checkpoints: params, velocity, step and metrics so far, written atomically.

    parsgd server --resume RUN_DIR      # continue a run from RUN_DIR/checkpoint.npz
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from parsgd.errors import UserError
from parsgd.files import json_text, write_file
from parsgd.training.rundir import npz_bytes

NAME = "checkpoint.npz"


class CheckpointError(UserError):
    """No usable checkpoint; the message names the file and the fix."""


def save_checkpoint(run_dir: Path, trainer) -> Path:
    """Write RUN_DIR/checkpoint.npz atomically (state as strict JSON: NaN as null); WriteError on failure."""
    state = {"step": trainer.step, "epoch": trainer.step // trainer.steps_per_epoch, "metrics": trainer.metrics,
             "partial": trainer.partial, "config": trainer.cfg.to_dict(), "initial_loss": getattr(trainer, "initial_loss", None)}
    blob = np.frombuffer(json_text(state).encode(), dtype=np.uint8)
    path = Path(run_dir) / NAME
    write_file(path, npz_bytes({"params": trainer.params, "velocity": trainer.velocity, "state": blob}))
    return path


def load_checkpoint(run_dir) -> dict:
    """{'params', 'velocity', 'step', 'epoch', 'metrics', 'partial', 'config', 'initial_loss'} from
    RUN_DIR/checkpoint.npz ('initial_loss' absent from a checkpoint of an older parsgd)."""
    path = Path(run_dir) / NAME
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: --resume needs the run directory of a parameter-server "
                              "run that wrote a checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = json.loads(bytes(z["state"]).decode())
            out["params"], out["velocity"] = z["params"].copy(), z["velocity"].copy()
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, io.UnsupportedOperation) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc}): start the run again without --resume") from None
    return out


def restore(trainer, state: dict) -> None:
    """Put a checkpoint's state into a freshly built trainer of the same config."""
    if state["params"].shape != trainer.params.shape or state["params"].dtype != trainer.params.dtype:
        raise CheckpointError("the checkpoint does not match the model of this run's config.json")
    trainer.params[...] = state["params"]
    trainer.velocity[...] = state["velocity"]
    trainer.step = int(state["step"])
    trainer.metrics = list(state["metrics"])
    trainer.initial_loss = state.get("initial_loss")  # an older checkpoint has none: the run is judged on accuracy
    # a NaN running sum was written as null
    trainer.partial = {k: float("nan") if v is None else v for k, v in state["partial"].items()}
