"""Writing a run directory: config.json, metrics.jsonl, model.npz, summary.json (comm.jsonl: ps/commlog.py).

    parsgd train --dataset synthetic --num-samples 2048 --epochs 1 --out runs/demo

Used by the trainers (training/loop.py), the parameter server and the CLI; the reader is
parsgd/analysis/rundirs.py, and README.md documents the formats.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import socket
import zipfile
from pathlib import Path

import click
import numpy as np

from parsgd import __version__
from parsgd.config import RunConfig
from parsgd.errors import UserError
from parsgd.model.mlp import named_arrays
from parsgd.files import WriteError, append_bytes, ensure_dir, json_text, write_file


class OutputDirError(WriteError):
    """The --out path cannot hold a run directory (it is a file, or cannot be created)."""


def default_out(mode: str, workers: int) -> Path:
    """runs/MODE-pWORKERS-YYYYmmdd-HHMMSS (local time, relative to the current folder); not created."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{mode}-p{workers}-{stamp}"


def prepare_dir(path) -> Path:
    """Create the folder `path` (str or Path) and its parents if missing and check that files can be
    created in it, before anything of an earlier run there is touched; returns it as a Path.

    Raises OutputDirError when path is a file, WriteError (`cannot write PATH: REASON; FIX`) when it
    cannot be created or written (read-only, no permission, a path that cannot exist).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--out {path} is a file, not a directory: pass a new or existing folder")
    return ensure_dir(path, probe=True)


def versions() -> dict:
    """{"parsgd", "python", "numpy", "pyzmq", "libzmq"}: version strings. ImportError without pyzmq."""
    import zmq  # local: sequential runs need no zmq at import time
    return {"parsgd": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}


def machine_info() -> dict:
    """{"cores": os.cpu_count(), "platform": str, "blas": [{"internal_api", "version", "num_threads",
    "architecture"} per BLAS library threadpoolctl finds]}."""
    from threadpoolctl import threadpool_info
    blas = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for d in threadpool_info() if d.get("user_api") == "blas"]
    return {"cores": os.cpu_count(), "platform": platform.platform(), "blas": blas}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: readers see the old file or the whole new one, never a part.

    parsgd.files.write_file: a temp file beside it, fsynced, renamed over a regular file (a device
    such as /dev/full is written in place, never replaced). Raises WriteError (`cannot write PATH:
    REASON; FIX`: folder missing or not writable, disk full).
    """
    write_file(path, data)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of an uncompressed .npz holding `arrays` (name -> array, any shape and dtype).

    Zip timestamps are fixed, so the same arrays give byte-identical files. Raises ValueError
    for object arrays (pickling is refused).
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


# What a run writes besides config.json and metrics.jsonl (events.jsonl is appended to, and a
# resume would pick up an old checkpoint.npz): a new run in the same folder removes them first.
STALE_FILES = ("summary.json", "comm.jsonl", "model.npz", "events.jsonl", "checkpoint.npz", "server.address",
               "check.npz", "link.json", "updates.jsonl")
RUN_FILES = ("config.json", "metrics.jsonl", *STALE_FILES)  # what a new run in the folder replaces or removes


class ForeignFiles(UserError):
    """--out names a folder holding files with a run's names that parsgd did not write (exit 1)."""


def earlier_run(path) -> list[str]:
    """The RUN_FILES present in the folder `path` (in that order): what a new run there would replace
    or remove; [] when it holds no earlier run or does not exist."""
    path = Path(path)
    return [name for name in RUN_FILES if (path / name).is_file()]


def written_by_parsgd(path) -> bool:
    """True when the folder `path` holds a config.json that parsgd wrote (a JSON object with `config`,
    `mode` and `versions.parsgd`): then its other run files are parsgd's too."""
    try:
        meta = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(meta, dict) and isinstance(meta.get("config"), dict) and "mode" in meta
            and isinstance(meta.get("versions"), dict) and "parsgd" in meta["versions"])


def check_replace(path, force: bool = False) -> list[str]:
    """The files of an earlier run in the folder `path` that a new run would replace or remove
    (earlier_run). Raises ForeignFiles when they are there but parsgd did not write them (no parsgd
    config.json beside them), unless `force`: a new run never replaces someone else's files unasked."""
    old = earlier_run(path)
    if old and not force and not written_by_parsgd(path):
        raise ForeignFiles(f"{path} holds {', '.join(old)}, which parsgd did not write (no parsgd config.json "
                           "beside them): pass another --out, or --force to replace them")
    return old


SETUP_DEFAULTS = {"transport": None, "link": None, "colocate": False, "faults": "", "worker_faults": {},
                  "curve": False, "shm": False, "blas_threads": None}


def run_setup(**inputs) -> dict:
    """config.json's `setup`: every input besides the RunConfig that shapes a run (README Run
    directories): SETUP_DEFAULTS with `inputs` (keys of SETUP_DEFAULTS; others raise KeyError)."""
    unknown = set(inputs) - set(SETUP_DEFAULTS)
    if unknown:
        raise KeyError(f"unknown setup keys: {sorted(unknown)}")
    return {**SETUP_DEFAULTS, **inputs}


def replacing_line(path, names) -> str:
    """The console line a command prints before a new run replaces the files `names` of an earlier one."""
    return f"replacing the earlier run in {path}: {', '.join(names)}"


class RunDir:
    """One training run's output folder, writing config.json as soon as it is made.

    `path`: the folder (created if missing); `mode`: "sequential" | "pool" | "ps"; `transport`:
    the PS transport label, None otherwise; `dataset`: the dataset actually loaded; `setup`: the
    other inputs that shape the run (run_setup: faults, link, colocate, ...), written to config.json.
    Without `append` (a resume sets it) metrics.jsonl is emptied and STALE_FILES are removed, only once
    the folder is known to be writable, after `echo` was given the replacing_line naming the files of
    the earlier run (None: say nothing); files parsgd did not write are refused unless `force`
    (check_replace). Every file is strict JSON (NaN and Infinity are written as null). Raises
    ForeignFiles, OutputDirError / WriteError when the folder or a file cannot be written.
    """

    def __init__(self, path, cfg: RunConfig, mode: str, transport: str | None = None,
                 dataset: str | None = None, append: bool = False, echo=click.echo, setup: dict | None = None,
                 force: bool = False):
        self.path = prepare_dir(path)
        self.cfg, self.mode, self.transport = cfg, mode, transport
        self.setup = run_setup(**{"transport": transport, **(setup or {})})
        old = [] if append else check_replace(self.path, force)
        if old and echo is not None:
            echo(replacing_line(self.path, old))
        if not append:  # a new run in a used folder: nothing of the old run may pass for this one's
            write_file(self.path / "metrics.jsonl", b"")
            for stale in STALE_FILES:
                try:
                    (self.path / stale).unlink(missing_ok=True)
                except OSError as exc:
                    raise WriteError(f"cannot write {self.path / stale}: cannot remove it ({exc.strerror}); "
                                     "remove it by hand or pass another --out") from None
        self.meta = {"config": cfg.to_dict(), "mode": mode, "transport": transport, "dataset": dataset,
                     "setup": self.setup, "versions": versions(), "host": socket.gethostname(),
                     "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "machine": machine_info()}
        self.write_json("config.json", self.meta)

    def record_setup(self, **changes) -> None:
        """Update config.json's `setup` (e.g. the faults a worker reported when it joined), atomically."""
        self.setup.update(changes)
        self.write_json("config.json", self.meta)

    def write_json(self, name: str, obj) -> None:
        """Write `obj` as indented strict JSON to the file `name` in the folder, atomically; WriteError."""
        write_file(self.path / name, (json_text(obj, indent=2) + "\n").encode())

    def log_epoch(self, metrics: dict) -> None:
        """Append one epoch's metrics (times in seconds, keys *_s; NaN written as null) as a line of
        metrics.jsonl; WriteError (the file is left without a partial line)."""
        append_bytes(self.path / "metrics.jsonl", (json_text(metrics) + "\n").encode())

    def rewrite_metrics(self, metrics: list[dict]) -> None:
        """Replace metrics.jsonl, atomically, by one line per dict of `metrics`; WriteError on failure.

        A resumed run drops the epochs logged after its checkpoint this way.
        """
        write_file(self.path / "metrics.jsonl", "".join(json_text(m) + "\n" for m in metrics).encode())

    def write_model(self, params: np.ndarray, sizes) -> Path:
        """Write model.npz: W1, b1, W2, ... from the 1-D parameter vector `params`; returns its path.

        `sizes`: layer widths from input to output; Wi has shape (sizes[i-1], sizes[i]) and bi
        shape (sizes[i],). Raises WriteError if the file cannot be written.
        """
        path = self.path / "model.npz"
        write_file(path, npz_bytes(named_arrays(params, sizes)))
        return path

