"""One frozen RunConfig: built by the CLI, written to config.json, sent to workers as a dict.

    python -c "from parsgd.config import RunConfig; print(RunConfig().to_dict())"
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

DATASETS = ("auto", "mnist", "fashion-mnist", "synthetic")
DTYPES = ("float32", "float64")
N_INPUTS = 784
N_CLASSES = 10


class ConfigError(ValueError):
    """A training option has a value we cannot train with; the message names the fix."""


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
    extra: dict = field(default_factory=dict, compare=False, hash=False)

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
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not self.hidden:
            raise ConfigError("--hidden is empty: give at least one layer width, e.g. --hidden 256,128")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"--hidden widths must be >= 1, got {','.join(map(str, self.hidden))}")
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"--num-samples must be at least 1, got {self.num_samples}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
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
        if not isinstance(d, dict):
            raise ConfigError("config must be a mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(map(str, unknown))}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"bad config: {exc}") from None
