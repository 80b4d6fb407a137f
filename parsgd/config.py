"""One frozen RunConfig: built by the CLI, written to config.json, sent to workers as a dict.

    python -c "from parsgd.config import RunConfig; print(RunConfig().to_dict())"
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from parsgd.errors import UsageError

DATASETS = ("auto", "mnist", "fashion-mnist", "synthetic")
DTYPES = ("float32", "float64")
CONSISTENCY = ("bsp", "ssp", "async")
SHARD_BY = ("elements", "layer")   # model/keyranges.py
OVERLAP = ("none", "layer", "bucket")   # ps/overlap.py
BUCKET_BYTES = 65536               # --bucket-bytes default: merges the small last layers, leaves W1 alone
MAX_SERVERS = 64
CODECS = ("none", "fp16", "sign", "qsgd", "topk", "randk", "powersgd")  # model/codecs.py
MAX_LEVELS = 32767  # qsgd levels must fit an int16 with its sign
CODEC_HOW = "none, fp16, sign, qsgd:LEVELS, topk:FRACTION, randk:FRACTION or powersgd:RANK"
N_INPUTS = 784
N_CLASSES = 10
SEED_MAX = 2**64 - 1  # NumPy takes any seed >= 0; the WELCOME message carries it as a msgpack uint64
HEARTBEAT_MIN_S = 1e-6  # the WELCOME message refuses a smaller heartbeat
LIVENESS_MAX = 2**53 - 1  # ... and a larger liveness


class ConfigError(UsageError, ValueError):
    """A training or server option has a value parsgd cannot use; the message names the fix (exit 2)."""


@dataclass(frozen=True)
class RunConfig:
    dataset: str = "auto"
    data_dir: str | None = None
    num_samples: int | None = None
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    hidden: tuple[int, ...] = (256, 128)
    seed: int = 42
    dtype: str = "float32"
    workers: int = 1
    consistency: str = "bsp"        # bsp: shards of one batch per step; ssp / async: whole batches on arrival
    staleness: int = 0              # ssp: how many clocks a worker may run ahead of the slowest live one
    lr_staleness: str = "none"      # inverse: an update's lr is lr / (staleness + 1) (Zhang et al. 2016)
    servers: int = 1                # parameter servers, each holding a key range (model/keyranges.py)
    shard_by: str = "elements"      # how the key ranges are cut: elements (even, aligned) or layer (whole layers)
    overlap: str = "none"           # push each layer / bucket of the gradient while backprop goes on (ps/overlap.py)
    bucket_bytes: int = BUCKET_BYTES  # --overlap bucket: a bucket is sent once it holds at least this many bytes
    compress: str = "none"          # what a worker pushes: none, fp16, sign, qsgd:S, topk:F, randk:F, powersgd:R
    error_feedback: bool = True     # lossy codecs: the worker keeps what encoding lost and adds it next time

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        self.validate()

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer widths from input to output, e.g. (784, 256, 128, 10)."""
        return (N_INPUTS, *self.hidden, N_CLASSES)

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}: use one of {', '.join(DATASETS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}: use float32 or float64")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not self.hidden:
            raise ConfigError("--hidden is empty: give at least one layer width, e.g. --hidden 256,128")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"--hidden widths must be >= 1, got {','.join(map(str, self.hidden))}")
        if not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"--seed must be a whole number from 0 to 2**64-1 ({SEED_MAX}), got {self.seed}")
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"--num-samples must be at least 1, got {self.num_samples}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.consistency not in CONSISTENCY:
            raise ConfigError(f"--consistency must be one of {', '.join(CONSISTENCY)}, got {self.consistency!r}")
        if self.staleness < 0 or (self.staleness and self.consistency != "ssp"):
            raise ConfigError(f"--staleness must be a whole number >= 0, and is for --consistency ssp only; "
                              f"got {self.staleness} with {self.consistency}")
        if self.lr_staleness not in ("none", "inverse"):
            raise ConfigError(f"--lr-staleness must be none or inverse, got {self.lr_staleness!r}")
        if not 1 <= self.servers <= MAX_SERVERS:
            raise ConfigError(f"--servers must be a whole number from 1 to {MAX_SERVERS}, got {self.servers}")
        if self.shard_by not in SHARD_BY:
            raise ConfigError(f"--shard-by must be one of {', '.join(SHARD_BY)}, got {self.shard_by!r}")
        if self.shard_by == "layer" and self.servers > len(self.hidden) + 1:
            raise ConfigError(f"--servers {self.servers} --shard-by layer: the model has {len(self.hidden) + 1} layers, "
                              "so a server would own nothing; use fewer servers or --shard-by elements")
        if self.overlap not in OVERLAP:
            raise ConfigError(f"--overlap must be one of {', '.join(OVERLAP)}, got {self.overlap!r}")
        if self.overlap != "none" and self.consistency != "bsp":
            raise ConfigError(f"--overlap {self.overlap} is for --consistency bsp only (ssp / async apply whole "
                              "batches as they arrive); use --overlap none")
        if not 1 <= self.bucket_bytes <= 2**40:
            raise ConfigError(f"--bucket-bytes must be a whole number of bytes from 1 to 2**40, got {self.bucket_bytes}")
        compress_spec(self.compress, self.sizes)
        if self.overlap != "none" and self.compress != "none":
            raise ConfigError(f"--overlap {self.overlap} with --compress {self.compress}: not supported together "
                              "(a PART carries raw values); use --overlap none or --compress none")
        if self.workers > self.batch_size:
            raise ConfigError(
                f"--workers {self.workers} is more than --batch-size {self.batch_size}: "
                "every worker needs at least one row of each batch")

    def check_data_size(self, n_train: int) -> None:
        """Checks that need the loaded training-set size."""
        if self.batch_size > n_train:
            raise ConfigError(
                f"--batch-size {self.batch_size} is larger than the training set ({n_train} rows): "
                "lower --batch-size or raise --num-samples")

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Builds a config from a dict (config.json, a WELCOME message); unknown keys are refused."""
        return _from_dict(cls, d)


def _from_dict(cls, d: dict):
    """`cls(**d)` for a frozen options dataclass; unknown keys and bad values raise ConfigError."""
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(map(str, unknown))}")
    try:
        return cls(**d)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad {cls.__name__}: {exc}") from None


def compress_spec(text: str, sizes) -> tuple[str, float | int | None]:
    """--compress 'topk:0.01' -> ('topk', 0.01), checked against the model's layer sizes (powersgd's rank).

    Raises ConfigError (exit 2) naming --compress: an unknown codec, a fraction outside (0, 1], levels
    outside 1..32767, a rank below 1 or above the smallest weight matrix's min(fan_in, fan_out).
    """
    name, _, arg = str(text).strip().partition(":")
    if name not in CODECS:
        raise ConfigError(f"--compress {text!r}: unknown codec {name!r}; use {CODEC_HOW}")
    if name in ("none", "fp16", "sign"):
        if arg:
            raise ConfigError(f"--compress {text!r}: {name} takes no parameter; write --compress {name}")
        return name, None
    what = {"qsgd": "LEVELS", "topk": "FRACTION", "randk": "FRACTION", "powersgd": "RANK"}[name]
    try:
        value = float(arg) if what == "FRACTION" else int(arg)
    except ValueError:
        raise ConfigError(f"--compress {text!r}: {name} needs a {what.lower()}, e.g. --compress "
                          f"{name}:{dict(LEVELS=4, FRACTION=0.01, RANK=2)[what]}") from None
    if what == "FRACTION" and not (math.isfinite(value) and 0 < value <= 1):
        raise ConfigError(f"--compress {text!r}: the fraction must be in (0, 1], e.g. {name}:0.01")
    if what == "LEVELS" and not 1 <= value <= MAX_LEVELS:
        raise ConfigError(f"--compress {text!r}: qsgd levels must be a whole number from 1 to {MAX_LEVELS}")
    if what == "RANK":
        shapes = [(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        i, (a, b) = min(enumerate(shapes), key=lambda t: min(t[1]))
        if not 1 <= value <= min(a, b):
            raise ConfigError(f"--compress {text!r}: the rank must be from 1 to {min(a, b)}, the size of the "
                              f"smallest layer (layer {i + 1}, {a}x{b})")
    return name, value


@dataclass(frozen=True)
class ServerOptions:
    """How the parameter server listens and handles faults (times in seconds); validated on creation.

    Built by `parsgd server` / `parsgd launch` and passed to child processes as data (`to_dict`).
    Raises ConfigError naming the option and its range.
    """
    bind: str = "tcp://127.0.0.1:5555"
    wait_timeout_s: float = 300.0      # for the first N workers, and for any worker when none is left
    heartbeat_s: float = 1.0           # interval of pings both ways
    liveness: int = 3                  # a peer silent for liveness x heartbeat_s is dead
    step_timeout_s: float = 10.0       # a shard not returned within this goes to another worker
    checkpoint_every: int = 0          # steps between checkpoints; 0: epoch ends only
    shm: bool = True                   # shared-memory payloads for same-host workers
    keys_dir: str | None = None        # CURVE keys (`parsgd keygen`); required off loopback
    register_timeout_s: float = 60.0   # WELCOME to READY (the worker loads its data meanwhile)
    transport: str = "tcp"             # label recorded in the run: shm, tcp or ipc
    resume_command: str = ""           # printed to continue after a stop; "" = `parsgd server --resume RUN_DIR`
    colocate: bool = False             # worker rank 0 computes in a thread of the server's process
    faults: str = ""                   # launch --faults: the schedule its workers run (recorded, never acted on here)

    def __post_init__(self):
        seconds = "a finite number > 0 seconds"  # NaN passes no comparison, inf would never time out
        for option, value, ok, allowed in (
                ("--wait-timeout", self.wait_timeout_s, self.wait_timeout_s > 0, seconds),
                ("--heartbeat", self.heartbeat_s, self.heartbeat_s >= HEARTBEAT_MIN_S,
                 f"{seconds}, at least {HEARTBEAT_MIN_S:g}"),
                ("--liveness", self.liveness, 1 <= self.liveness <= LIVENESS_MAX,
                 "a whole number >= 1 (at most 2**53-1)"),
                ("--step-timeout", self.step_timeout_s, self.step_timeout_s > 0, seconds),
                ("--checkpoint-every", self.checkpoint_every, self.checkpoint_every >= 0, "a step count >= 0"),
                ("--register-timeout", self.register_timeout_s, self.register_timeout_s > 0, seconds)):
            if not ok or not (isinstance(value, int) or math.isfinite(value)):
                raise ConfigError(f"{option} {value} is out of range: it must be {allowed}")
        if self.colocate and self.keys_dir:
            raise ConfigError("--colocate cannot be used with CURVE keys (--keys, --link): the colocated "
                              "worker is inside the server's process; leave out one of them")

    def continue_hint(self, step: int, run_dir) -> str:
        """The end of a stop message at `step`: `; checkpoint written; continue with `CMD`` (CMD is
        resume_command, else `parsgd server --resume RUN_DIR`), or, at step 0 (the server then writes
        no checkpoint), `; no step was taken, so there is nothing to resume`."""
        if step <= 0:
            return "; no step was taken, so there is nothing to resume"
        return f"; checkpoint written; continue with `{self.resume_command or f'parsgd server --resume {run_dir}'}`"

    def setup(self) -> dict:
        """What of these options shapes the run, for config.json's `setup` (training/rundir.run_setup keys)."""
        link = self.transport.partition("@")[2] or None  # launch --link: the transport is labelled tcp@RATE
        return {"transport": self.transport, "link": link, "colocate": self.colocate, "faults": self.faults,
                "curve": bool(self.keys_dir), "shm": self.shm}

    @property
    def dead_after_s(self) -> float:
        """Silence after which a peer counts as dead: liveness x heartbeat_s."""
        return self.liveness * self.heartbeat_s

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ServerOptions":
        """From `to_dict()` output; unknown keys or bad values raise ConfigError."""
        return _from_dict(cls, d)
