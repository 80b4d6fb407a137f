"""Reading run directories: config.json, metrics.jsonl, summary.json and (PS runs) comm.jsonl.

    python -c "from parsgd.analysis.rundirs import load_run; r = load_run('runs/ps-p2'); print(r.label, len(r.comm))"

The writers are parsgd/training/rundir.py and parsgd/ps/commlog.py; this module only reads, and
turns every problem with a folder into a one-line RunDirError that names the file and the fix.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from parsgd.errors import UserError

CONFIG, METRICS, SUMMARY, COMM = "config.json", "metrics.jsonl", "summary.json", "comm.jsonl"
UPDATES = "updates.jsonl"  # parameter-server runs: one line per applied update, with its `staleness`
METRIC_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s")
METRIC_OPTIONAL = ("compute_s", "comm_s", "bytes_sent", "bytes_recv")  # 0 when absent
COMM_FIELDS = ("role", "rank", "step", "span", "t", "dur")
ROLES = ("server", "worker")
NOT_A_RUN = "pass a folder written by parsgd train/launch/experiment"


class RunDirError(UserError):
    """A run directory is missing, incomplete or corrupt; the message names the path and the fix."""


@dataclass(frozen=True)
class CommSpans:
    """The spans of a comm.jsonl, in columns: eight 1-D arrays of the same length k, one entry per span.

    Built by load_comm, sorted by start time; the file's "t" and "dur" fields become `t_s` and `dur_s`.
    """
    role: np.ndarray   # str, "server" | "worker"
    rank: np.ndarray   # int64
    step: np.ndarray   # int64, -1 outside a step
    span: np.ndarray   # str, one of parsgd.ps.protocol.SPANS (other names are kept as they are)
    t_s: np.ndarray    # float64, start in seconds since the run start (server clock)
    dur_s: np.ndarray  # float64, seconds
    bytes: np.ndarray  # int64
    server: np.ndarray = None  # int64: the parameter server a span belongs to or talked to, -1 for none

    def __len__(self) -> int:
        """Number of spans k."""
        return len(self.t_s)

    def tracks(self) -> list[tuple[str, int]]:
        """The (role, rank) pairs present: the server first, then the workers by rank."""
        pairs = {(str(r), int(k)) for r, k in zip(self.role, self.rank)}
        return sorted(pairs, key=lambda p: (ROLES.index(p[0]) if p[0] in ROLES else 9, p[1]))

    def seconds_by_span(self, role: str, keep: np.ndarray | None = None) -> dict[str, float]:
        """{span name: total seconds} for one role, summed over its ranks and steps ({} if absent), only
        the spans where the bool array `keep` (shape (k,)) is True when given; a null (NaN) duration is
        left out."""
        mask = (self.role == role) & (True if keep is None else keep)
        spans, dur_s = self.span[mask], self.dur_s[mask]
        return {str(s): float(np.nansum(dur_s[spans == s])) for s in np.unique(spans)}


@dataclass
class Run:
    """One loaded run directory (built by load_run).

    `comm` reads comm.jsonl on first use: a CommSpans, or None when the run has none (not a PS
    run); that read raises RunDirError if the file is corrupt.
    """
    path: Path
    meta: dict              # the whole config.json
    config: dict            # meta["config"], the RunConfig as a dict
    mode: str
    transport: str | None
    metrics: list[dict]
    summary: dict           # summary.json, or derived from metrics.jsonl for an unfinished run
    finished: bool = True   # False when summary.json is missing
    _comm: CommSpans | None = field(default=None, repr=False)
    _staleness: np.ndarray | None = field(default=None, repr=False)

    @property
    def workers(self) -> int:
        """Worker count P (1 for a sequential run)."""
        return int(self.summary.get("workers") or self.config.get("workers") or 1)

    @property
    def dataset(self) -> str:
        """Name of the dataset trained on, "?" if no file records it."""
        return str(self.summary.get("dataset") or self.meta.get("dataset") or self.config.get("dataset", "?"))

    @property
    def consistency(self) -> str | None:
        """The parameter server's consistency model (bsp, ssp, async); None for sequential and Pool runs."""
        return str(self.config.get("consistency") or "bsp") if self.mode == "ps" else None

    @property
    def setup(self) -> dict:
        """config.json's `setup`: the inputs besides the RunConfig that shaped the run (faults, link,
        colocate, ...; training/rundir.run_setup); {} for a run of an older parsgd."""
        setup = self.meta.get("setup")
        return setup if isinstance(setup, dict) else {}

    @property
    def setup_words(self) -> list[str]:
        """The run-shaping inputs a label must show beyond mode, P, transport and consistency, e.g.
        ['colocate', 'faults slow=worker1:3', '1 BLAS thread']: setup_words(self.setup)."""
        return setup_words(self.setup)

    @property
    def label(self) -> str:
        """Short name of the configuration: 'sequential', 'pool P=2', 'ps P=4 shm', 'ps P=3 shm async',
        'ps P=4 tcp S=2' (two servers), 'ps P=3 shm, faults slow=worker1:3' (every setup word after a comma)."""
        if self.mode == "sequential":
            label = "sequential"
        else:
            label = f"{self.mode} P={self.workers}" + (f" {self.transport}" if self.transport else "")
            label += f" {self.consistency}" if self.consistency not in (None, "bsp") else ""
            servers = int(self.config.get("servers") or 1)
            if servers > 1:
                label += f" S={servers}" + (" by layer" if self.config.get("shard_by") == "layer" else "")
            label += overlap_word(str(self.config.get("overlap") or "none"), self.config.get("bucket_bytes"))
            label += compress_word(self.config.get("compress"), self.config.get("error_feedback", True))
        return ", ".join([label, *self.setup_words])

    @property
    def key_ranges(self):
        """The run's model/keyranges.KeyRanges: which server held which parameters (one server: all)."""
        from parsgd.model.keyranges import key_ranges

        c = self.config
        return key_ranges((784, *c.get("hidden", ()), 10), str(c.get("dtype") or "float32"), int(c.get("servers") or 1),
                          str(c.get("shard_by") or "elements"))

    @property
    def staleness(self) -> np.ndarray | None:
        """The `staleness` of every applied update (updates.jsonl), int64, read once; None without the
        file (sequential and Pool runs, older PS runs). Raises RunDirError if it is corrupt."""
        if self._staleness is None and (self.path / UPDATES).is_file():
            rows = read_jsonl(self.path / UPDATES, ("staleness",))
            self._staleness = np.array([r["staleness"] for r in rows], dtype=np.int64)
        return self._staleness

    @property
    def has_comm(self) -> bool:
        """True when the folder holds a comm.jsonl (parameter-server runs)."""
        return (self.path / COMM).is_file()

    @property
    def comm(self) -> CommSpans | None:
        """comm.jsonl in columns, read once; None without one. Raises RunDirError if it is corrupt."""
        if self._comm is None and self.has_comm:
            self._comm = load_comm(self.path)
        return self._comm

    def column(self, name: str) -> np.ndarray:
        """One metrics.jsonl field over the epochs: float64 array of shape (epochs,), 0.0 where the key is
        absent, NaN where its value is null (e.g. test_acc of an empty test split): plots show a gap."""
        return np.array([m.get(name, 0.0) for m in self.metrics], dtype=np.float64)


def overlap_word(overlap: str, bucket_bytes) -> str:
    """' overlap layer', ' overlap bucket 65536 B' (--overlap, ps/overlap.py), '' for none: a label's part."""
    if overlap == "none":
        return ""
    return f" overlap {overlap}" + (f" {int(bucket_bytes or 0)} B" if overlap == "bucket" else "")


def compress_word(compress, error_feedback) -> str:
    """' topk:0.01', ' sign no-EF' or '' (--compress none) for a run label."""
    if not compress or compress == "none":
        return ""
    return f" {compress}" + ("" if error_feedback else " no-EF")


def setup_words(setup: dict) -> list[str]:
    """The words of a run label for config.json's `setup` (analysis and the experiment's plan share them):
    'colocate', 'faults SCHEDULE' (or the faults each worker reported: 'faults w1 slow=3'), 'N BLAS
    thread(s)'; transport and link are in the label already."""
    words = ["colocate"] if setup.get("colocate") else []
    faults = setup.get("faults") or "; ".join(f"w{rank} {spec}" for rank, spec in
                                              sorted((setup.get("worker_faults") or {}).items(),
                                                     key=lambda item: int(item[0])) if spec)
    if faults:
        words.append(f"faults {faults}")
    threads = setup.get("blas_threads")
    if threads:
        words.append(f"{threads} BLAS thread{'s' if threads > 1 else ''}")
    return words


def _read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: invalid JSON: {exc}; {what}") from None
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read: {exc.strerror}") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"{path}: expected a JSON object; {what}")
    return obj


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    """The objects of the JSONL file `path`, one per non-blank line, in file order.

    Raises RunDirError when the file cannot be read, or naming the first bad line (1-based):
    invalid JSON, not an object, or missing one of the `required` keys.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read: {exc.strerror}") from None
    lines = text.splitlines()
    try:  # one parse of the whole file is ~5x faster than one per line
        rows = json.loads("[" + ",".join(ln for ln in lines if ln.strip()) + "]")
        need = set(required)
        ok = all(type(r) is dict and need <= r.keys() for r in rows)
    except json.JSONDecodeError:
        ok = False
    if ok:
        return rows
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{path} line {lineno}: invalid JSON: {exc.msg} (column {exc.colno}); "
                              "the file is corrupt or was cut off: re-run, or delete that line") from None
        if not isinstance(row, dict):
            raise RunDirError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise RunDirError(f"{path} line {lineno}: missing field(s) {', '.join(missing)}: "
                              "written by another parsgd version? re-run with this one")
        rows.append(row)
    return rows


def _total(metrics: list[dict], key: str) -> float:
    """Sum of a metrics field over the epochs, null (None), non-finite and absent values left out."""
    return sum(v for m in metrics if isinstance(v := m.get(key), (int, float)) and math.isfinite(v))


def _derived_summary(meta: dict, metrics: list[dict]) -> dict:
    """What summary.json would say, for a run that stopped before writing it."""
    last, cfg = metrics[-1], meta.get("config", {})
    comm_s = _total(metrics, "comm_s")
    busy_s = comm_s + _total(metrics, "compute_s")
    return {"mode": meta.get("mode"), "workers": cfg.get("workers", 1), "transport": meta.get("transport"),
            "dataset": meta.get("dataset") or cfg.get("dataset"), "epochs": len(metrics),
            "batch_size": cfg.get("batch_size"), "steps": None,
            "total_time_s": _total(metrics, "epoch_time_s"),
            "final_train_loss": last["train_loss"], "final_train_acc": last["train_acc"],
            "final_test_loss": last["test_loss"], "final_test_acc": last["test_acc"],
            "comm_share": comm_s / busy_s if busy_s > 0 else 0.0, "time_breakdown": {},
            **({"timed_steps": int(_total(metrics, "timed_steps")), "timed_s": _total(metrics, "timed_s")}
               if all("timed_steps" in m for m in metrics) else {})}


def load_run(path) -> Run:
    """Load the run directory `path` (str or Path; each RUN_DIR of `parsgd plot` / `parsgd trace`).

    Needs config.json and metrics.jsonl with at least one epoch; summary.json is optional
    (derived from metrics for an unfinished run); comm.jsonl is read lazily via `run.comm`.
    Returns a Run. Raises RunDirError when the folder is missing, not a run directory, or holds
    a file that is unreadable, corrupt or lacks a field.
    """
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"run directory {path} does not exist: {NOT_A_RUN}")
    if not path.is_dir():
        raise RunDirError(f"{path} is a file, not a run directory: {NOT_A_RUN}")
    for name in (METRICS, CONFIG):
        if not (path / name).is_file():
            raise RunDirError(f"{path} is not a parsgd run directory (no {name}): {NOT_A_RUN}")
    meta = _read_json(path / CONFIG, "re-run to rewrite it")
    for key in ("config", "mode"):
        if key not in meta:
            raise RunDirError(f"{path / CONFIG}: missing field {key!r}: written by another parsgd version? re-run")
    if not isinstance(meta["config"], dict):
        raise RunDirError(f"{path / CONFIG}: field 'config' is not an object: re-run to rewrite it")
    metrics = read_jsonl(path / METRICS, METRIC_FIELDS)
    if not metrics:
        raise RunDirError(f"{path / METRICS} is empty: the run has not finished an epoch yet; "
                          "wait for it or pass a finished run")
    for m in metrics:
        for key in METRIC_OPTIONAL:
            m.setdefault(key, 0)
    finished = (path / SUMMARY).is_file()
    summary = _read_json(path / SUMMARY, "re-run to rewrite it") if finished else _derived_summary(meta, metrics)
    if "total_time_s" not in summary:
        raise RunDirError(f"{path / SUMMARY}: missing field 'total_time_s': written by another parsgd version? re-run")
    mode = str(summary.get("mode") or meta["mode"])
    transport = meta.get("transport", summary.get("transport"))
    return Run(path=path, meta=meta, config=meta["config"], mode=mode, transport=transport,
               metrics=metrics, summary=summary, finished=finished)


def load_comm(path) -> CommSpans:
    """comm.jsonl in columns, from a run directory or the file itself (`path`: str or Path).

    Returns a CommSpans. Raises RunDirError when `path` does not exist, is not a run directory,
    has no comm.jsonl (not a PS run), or the file is unreadable or has a bad line, field or role.
    """
    path = Path(path)
    if path.is_file():
        file = path
    else:
        if not path.is_dir():
            raise RunDirError(f"run directory {path} does not exist: {NOT_A_RUN}")
        file = path / COMM
        if not file.is_file():
            if not (path / METRICS).is_file():
                raise RunDirError(f"{path} is not a parsgd run directory (no {METRICS}): {NOT_A_RUN}")
            raise RunDirError(f"{path} has no communication log ({COMM}): only parameter-server runs "
                              "(parsgd launch/server/experiment) write one; pass such a run")
    rows = read_jsonl(file, COMM_FIELDS)
    try:
        spans = CommSpans(role=np.array([r["role"] for r in rows], dtype=str),
                          rank=np.array([r["rank"] for r in rows], dtype=np.int64),
                          step=np.array([r["step"] for r in rows], dtype=np.int64),
                          span=np.array([r["span"] for r in rows], dtype=str),
                          t_s=np.array([r["t"] for r in rows], dtype=np.float64),
                          dur_s=np.array([r["dur"] for r in rows], dtype=np.float64),
                          bytes=np.array([r.get("bytes", 0) for r in rows], dtype=np.int64),
                          server=np.array([-1 if r.get("server") is None else r["server"] for r in rows], dtype=np.int64))
    except (TypeError, ValueError) as exc:
        raise RunDirError(f"{file}: a field has the wrong type ({exc}): re-run to rewrite it") from None
    bad = ~np.isin(spans.role, ROLES)
    if bad.any():
        lineno = _line_of(file, int(np.argmax(bad)))
        raise RunDirError(f"{file} line {lineno}: role {spans.role[bad][0]!r} is not server or worker")
    # The server writes spans as they arrive (worker chunks every second): sorted by start here.
    order = np.argsort(spans.t_s, kind="stable")
    return CommSpans(**{name: getattr(spans, name)[order] for name in spans.__dataclass_fields__})


def _line_of(file: Path, index: int) -> int:
    """1-based line number of the index-th non-blank line."""
    seen = -1
    with open(file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            seen += bool(line.strip())
            if seen == index:
                return lineno
    return index + 1
