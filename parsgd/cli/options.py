"""Options shared by several commands, the list parsers, and the builders of RunConfig / ServerOptions.

A bad value either fails here as a click usage error (a list item that is not a number) or in the
validated config classes (ConfigError, a parsgd.errors.UsageError): both exit 2 with one line.
"""
from __future__ import annotations

import math

import click

from parsgd.config import (BUCKET_BYTES, CONSISTENCY, DATASETS, DTYPES, OVERLAP, SHARD_BY, ConfigError, RunConfig,
                           ServerOptions)


def list_items(value, name: str, how: str) -> list[str]:
    """The items of a list option: '2,4', '2 4', '2, 4' or a repeated flag (a tuple) -> ['2', '4'].

    Commas and any run of spaces separate items. An empty item (`2,,4`, a comma at the start or end,
    a value that is empty or only spaces) is refused: click.BadParameter naming `name` and the value
    as given, and `how` to write it (e.g. "whole numbers like 256,128 or '256 128'").
    """
    if value is None:
        return []
    items = []
    for part in value if isinstance(value, (list, tuple)) else [value]:
        pieces = str(part).split(",")
        for i, piece in enumerate(pieces):
            if not piece.strip():
                where = ("is empty" if len(pieces) == 1 else "starts with a comma" if i == 0
                         else "ends with a comma" if i == len(pieces) - 1 else "has two commas in a row")
                raise click.BadParameter(f"{str(part)!r} {where}: give {how}", param_hint=name)
            items += piece.split()
    return items


def parse_int_list(value, name: str) -> tuple[int, ...]:
    """'2,4', '2 4' or a repeated flag -> (2, 4). Raises click.BadParameter naming `name` for an empty
    item (list_items) or one that is not a whole number."""
    how = f"whole numbers separated by commas or spaces, e.g. {name} 2,4 or {name} '2 4'"
    out = []
    for tok in list_items(value, name, how):
        try:
            out.append(int(tok))
        except ValueError:
            raise click.BadParameter(f"{tok!r} is not a whole number; give {how}", param_hint=name) from None
    return tuple(out)


def check_range(option: str, value, ok: bool, allowed: str) -> None:
    """Raises ConfigError `OPTION VALUE is out of range: it must be ALLOWED` (exit 2) unless `ok` and,
    for a float, `value` is finite (NaN fails no `>` test by itself, so every float goes through here)."""
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{option} {value} is out of range: it must be {allowed}")


def no_repeats(values: tuple, name: str) -> tuple:
    """`values` unchanged; raises ConfigError (exit 2) naming the first value given twice."""
    seen = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"{name} {','.join(map(str, values))} gives {v} twice: give each value once")
        seen.add(v)
    return values


def parse_str_list(value, choices, name: str) -> tuple[str, ...]:
    """'a,b', 'a b' or a repeated flag -> ('a', 'b'). Raises click.BadParameter naming `name` for an
    empty item (list_items) or a word not in `choices`."""
    how = f"at least one of {', '.join(choices)}, separated by commas or spaces, e.g. {name} {','.join(choices[:2])}"
    out = []
    for tok in list_items(value, name, how):
        if tok not in choices:
            raise click.BadParameter(f"{tok!r} is not one of {', '.join(choices)}", param_hint=name)
        out.append(tok)
    return tuple(out)


def list_spec(value: str, name: str, example: str) -> str:
    """`value` unchanged: a comma-separated spec such as --faults kill@40,drop=0.1 whose parser skips
    empty items. Raises click.BadParameter (list_items) for an empty item in a non-empty spec (an
    empty spec is the default: none)."""
    if value and value.strip():
        list_items(value, name, f"items separated by commas, e.g. {name} {example}")
    return value


class Option(click.Option):
    """A click.Option whose described default (`show_default="all rows"`) reads `[default: all rows]`
    like every other default (click would write `[default: (all rows)]`)."""

    def get_help_extra(self, ctx):
        extra = super().get_help_extra(ctx)
        if isinstance(self.show_default, str):
            extra["default"] = self.show_default
        return extra


def _apply(f, opts):
    for opt in reversed(opts):
        f = opt(f)
    return f


def training_options(f):
    """The training options of train, server, launch and experiment, each also spelled with underscores."""
    return _apply(f, [
        click.option("--dataset", type=click.Choice(DATASETS), default="auto", show_default=True,
                     help="auto: MNIST if found locally, else Fashion-MNIST, else download MNIST (not with "
                          "PARSGD_NO_DOWNLOAD=1), else synthetic."),
        click.option("--data-dir", "--data_dir", "data_dir", cls=Option, envvar="PARSGD_DATA_DIR", show_envvar=True,
                     show_default="$XDG_CACHE_HOME/parsgd, else ~/.cache/parsgd",
                     help="Folder with mnist/ and fashion-mnist/ IDX files, and the download cache."),
        click.option("--num-samples", "--num_samples", "num_samples", type=int, cls=Option, show_default="all rows",
                     help="Use this many training rows (deterministic subsample from the seed)."),
        click.option("--epochs", type=int, default=10, show_default=True, help="Passes over the training set."),
        click.option("--batch-size", "--batch_size", "batch_size", type=int, default=256, show_default=True,
                     help="Rows per mini-batch (one update per batch, whatever the worker count)."),
        click.option("--lr", type=float, default=0.1, show_default=True, help="Learning rate."),
        click.option("--momentum", type=float, default=0.9, show_default=True, help="Momentum in [0, 1)."),
        click.option("--hidden", multiple=True, default=("256,128",), show_default=True,
                     help="Hidden layer widths: 256,128 or '256 128' or a repeated flag."),
        click.option("--seed", type=int, default=42, show_default=True,
                     help="Seed of the initial weights, the data order and synthetic data."),
        click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
                     help="Floating-point type of parameters, data and gradients."),
        click.option("--out", type=click.Path(), cls=Option, show_default="runs/MODE-pP-TIMESTAMP",
                     help="Run directory (an earlier run in it is replaced, and said so)."),
    ])


def build_config(workers: int, dataset, data_dir, num_samples, epochs, batch_size, lr, momentum,
                 hidden, seed, dtype, consistency="bsp", staleness=0, lr_staleness="none", servers=1,
                 shard_by="elements", overlap="none", bucket_bytes=BUCKET_BYTES, compress="none",
                 error_feedback=True, **_) -> RunConfig:
    """RunConfig from the parsed training options.

    Raises ConfigError (exit 2) naming the option when a value is out of range, click.BadParameter
    when --hidden has a word that is not a number.
    """
    return RunConfig(dataset=dataset, data_dir=data_dir, num_samples=num_samples, epochs=epochs,
                     batch_size=batch_size, lr=lr, momentum=momentum, hidden=parse_int_list(hidden, "--hidden"),
                     seed=seed, dtype=dtype, workers=workers, consistency=consistency, staleness=staleness,
                     lr_staleness=lr_staleness, servers=servers, shard_by=shard_by, overlap=overlap,
                     bucket_bytes=bucket_bytes, compress=compress, error_feedback=error_feedback)


# What `server --resume` and `launch --resume` check against the checkpoint (parsgd.jobs.serve.resume_config)
RESUME_CHECKED = ("dataset", "data_dir", "num_samples", "epochs", "batch_size", "lr", "momentum", "hidden", "seed",
                  "dtype", "workers", "out", "consistency", "staleness", "lr_staleness", "servers", "shard_by",
                  "compress", "error_feedback")


def given_options(ctx: click.Context, names=RESUME_CHECKED) -> dict:
    """{name: value} of the options among `names` the user gave on the command line or through the
    environment (not click's defaults), --hidden parsed to a tuple of ints."""
    from click.core import ParameterSource

    given = {}
    for name in names:
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            value = ctx.params[name]
            given[name] = parse_int_list(value, "--hidden") if name == "hidden" else value
    return given


def consistency_options(f):
    """How the parameter server applies gradients (`server` and `launch`; part of the RunConfig)."""
    return _apply(f, [
        click.option("--consistency", type=click.Choice(CONSISTENCY), default="bsp", show_default=True,
                     help="bsp: each batch cut into --workers shards, one synchronous update per batch; "
                          "ssp / async: whole batches to idle workers, each applied when it arrives."),
        click.option("--staleness", type=int, default=0, show_default=True,
                     help="ssp: how many batches a worker may run ahead of the slowest live worker."),
        click.option("--lr-staleness", "--lr_staleness", "lr_staleness", type=click.Choice(("none", "inverse")),
                     default="none", show_default=True,
                     help="inverse: an update's learning rate is lr / (staleness + 1) (Zhang et al. 2016)."),
    ])


def compress_options(f):
    """What a worker pushes (`server`, `launch`; part of the RunConfig; experiment takes a list of codecs)."""
    return _apply(f, [compress_option, error_feedback_option])


compress_option = click.option(
    "--compress", default="none", show_default=True, metavar="CODEC",
    help="Gradient codec of every push: none, fp16, sign, qsgd:LEVELS, topk:FRACTION, randk:FRACTION, "
         "powersgd:RANK (pulls stay raw; README \"Gradient compression\").")
error_feedback_option = click.option(
    "--error-feedback/--no-error-feedback", "error_feedback", default=True, show_default=True,
    help="Lossy codecs: each worker adds what encoding lost to its next gradient (Seide 2014, Karimireddy 2019).")


def ranges_options(f):
    """How many parameter servers hold the model and how it is cut (`server`, `launch`; part of the RunConfig)."""
    return _apply(f, [
        click.option("--servers", type=int, default=1, show_default=True,
                     help="Parameter servers, each holding a key range of the parameters (server 0 also "
                          "coordinates)."),
        click.option("--shard-by", "--shard_by", "shard_by", type=click.Choice(SHARD_BY), default="elements",
                     show_default=True,
                     help="elements: equal 64-byte aligned ranges (as ps-lite); layer: whole layers, greedily "
                          "onto the least-loaded server (as MXNet)."),
        click.option("--overlap", type=click.Choice(OVERLAP), default="none", show_default=True,
                     help="bsp: push each layer's gradient (layer) or each full bucket (bucket) while backprop "
                          "computes the earlier layers; the parameters come back first layer first."),
        click.option("--bucket-bytes", "--bucket_bytes", "bucket_bytes", type=int, default=BUCKET_BYTES,
                     show_default=True, help="--overlap bucket: send a bucket of layers once it holds this many bytes."),
    ])


def server_options(f):
    """Knobs of the server's fault handling, shared by `server` and `launch` (checked by ServerOptions)."""
    return _apply(f, [
        click.option("--wait-timeout", "--wait_timeout", "wait_timeout", type=float, default=300.0, show_default=True,
                     help="Seconds to wait for the workers at the start, and for any worker when none is left."),
        click.option("--heartbeat", type=float, default=1.0, show_default=True,
                     help="Heartbeat interval in seconds (both ways)."),
        click.option("--liveness", type=int, default=3, show_default=True,
                     help="Missed heartbeats before a worker (or the server) counts as dead."),
        click.option("--step-timeout", "--step_timeout", "step_timeout", type=float, default=10.0, show_default=True,
                     help="Seconds a shard may take before it is given to another worker."),
        click.option("--checkpoint-every", "--checkpoint_every", "checkpoint_every", type=int, default=0,
                     show_default=True, help="Checkpoint every N steps (0: at the end of every epoch)."),
        click.option("--colocate", is_flag=True,
                     help="Worker 0 computes in a thread of the server's process (one process fewer; "
                          "no --faults for it, no --keys)."),
    ])


def build_server_options(wait_timeout, heartbeat, liveness, step_timeout, checkpoint_every, colocate,
                         **fields) -> ServerOptions:
    """ServerOptions from the `server_options` knobs plus any other ServerOptions fields (bind, shm, ...).

    Raises ConfigError (exit 2) naming the option and its allowed range.
    """
    return ServerOptions(wait_timeout_s=wait_timeout, heartbeat_s=heartbeat, liveness=liveness,
                         step_timeout_s=step_timeout, checkpoint_every=checkpoint_every, colocate=colocate,
                         **fields)


def force_option(f):
    """`--force`: a new run may replace files in --out that parsgd did not write (train, server, launch)."""
    return click.option("--force", is_flag=True,
                        help="Replace files with a run's names in --out that parsgd did not write "
                             "(without it they are refused).")(f)


def run_dir_value(ctx, param, value):
    """click callback of a RUN_DIR argument or option (trace, replay, estimate, --resume): an experiment
    folder is refused, one line naming one of its runs (ExperimentFolderGiven, exit 2)."""
    if value:
        from parsgd.analysis.experiments import check_not_experiment
        check_not_experiment(value)
    return value
