"""Writing a run directory: config.json, metrics.jsonl, model.npz, summary.json (comm.jsonl: ps/commlog).

Readers live in runs.py; the formats are documented in README.md.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import socket
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from parsgd import __version__
from parsgd.config import RunConfig
from parsgd.model.mlp import named_arrays
from parsgd.errors import UserError


class OutputDirError(UserError):
    """The --out path cannot hold a run directory."""


def default_out(mode: str, workers: int) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{mode}-p{workers}-{stamp}"


def prepare_dir(path) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--out {path} is a file, not a directory: pass a new or existing folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create run directory {path}: {exc.strerror}; pass another --out") from None
    return path


def versions() -> dict:
    import zmq  # local: sequential runs need no zmq at import time
    return {"parsgd": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}


def machine_info() -> dict:
    from threadpoolctl import threadpool_info
    blas = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for d in threadpool_info() if d.get("user_api") == "blas"]
    return {"cores": os.cpu_count(), "platform": platform.platform(), "blas": blas}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive with fixed zip timestamps, so the same arrays give byte-identical files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


# What a run writes besides config.json and metrics.jsonl (events.jsonl is appended to, and a
# resume would pick up an old checkpoint.npz): a new run in the same folder removes them first.
STALE_FILES = ("summary.json", "comm.jsonl", "model.npz", "events.jsonl", "checkpoint.npz", "server.address")


class RunDir:
    """One training run's output folder."""

    def __init__(self, path, cfg: RunConfig, mode: str, transport: str | None = None,
                 dataset: str | None = None, append: bool = False):
        self.path = prepare_dir(path)
        self.cfg, self.mode, self.transport = cfg, mode, transport
        if not append:  # a new run in a used folder: nothing of the old run may pass for this one's
            (self.path / "metrics.jsonl").write_text("")
            for stale in STALE_FILES:
                (self.path / stale).unlink(missing_ok=True)
        self.write_json("config.json", {
            "config": cfg.to_dict(), "mode": mode, "transport": transport, "dataset": dataset,
            "versions": versions(), "host": socket.gethostname(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine_info()})

    def write_json(self, name: str, obj) -> None:
        atomic_write_bytes(self.path / name, (json.dumps(obj, indent=2) + "\n").encode())

    def log_epoch(self, metrics: dict) -> None:
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")

    def rewrite_metrics(self, metrics: list[dict]) -> None:
        """metrics.jsonl exactly as `metrics` (a resumed run drops epochs after its checkpoint)."""
        atomic_write_bytes(self.path / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics).encode())

    def write_model(self, params: np.ndarray, sizes) -> Path:
        path = self.path / "model.npz"
        atomic_write_bytes(path, npz_bytes(named_arrays(params, sizes)))
        return path


def read_metrics(path) -> list[dict]:
    """metrics.jsonl of a run (used when resuming)."""
    with open(Path(path) / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
