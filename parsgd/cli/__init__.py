"""The `parsgd` command: a thin click layer that parses options, builds a RunConfig and calls the library.

    parsgd --help

The group and the error handler live here; the commands in `training` (train, server, worker,
launch, keygen) and `reports` (experiment, plot, trace); shared options in `options`.
"""
from __future__ import annotations

import os
import sys

import click

from parsgd.cli import cluster, hosts, replay, reports, training
from parsgd.errors import Interrupted, UserError


ENVIRONMENT = [
    ("PARSGD_DATA_DIR=DIR", "Where datasets are found and downloads cached, as --data-dir.  "
                            "[default: $XDG_CACHE_HOME/parsgd, else ~/.cache/parsgd]"),
    ("PARSGD_NO_DOWNLOAD=1", "Never download: --dataset mnist fails without local files, "
                             "--dataset auto falls back to synthetic."),
    ("PARSGD_FAULTS=SPEC", "Fault injection of `parsgd worker`, as its --faults (e.g. kill@40)."),
]
COMPLETION = [  # click's completion: the variable is _{PROG_NAME}_COMPLETE
    ("bash", 'eval "$(_PARSGD_COMPLETE=bash_source parsgd)"   (e.g. in ~/.bashrc)'),
    ("zsh", 'eval "$(_PARSGD_COMPLETE=zsh_source parsgd)"   (e.g. in ~/.zshrc)'),
    ("fish", "_PARSGD_COMPLETE=fish_source parsgd | source"),
]


class ParsgdGroup(click.Group):
    """Prints every error as one line, `error: ...`: exit 2 for bad usage, 1 for anything else.

    Click's own errors exit with their code; a parsgd.errors.UserError exits with its `exit_code`
    (1, 2 for a UsageError, 130 for Interrupted); Ctrl-C is `error: interrupted`, exit 130.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)

    def format_commands(self, ctx, formatter):
        """Each command with its whole one-line summary (click would cut it to fit one row with '...')."""
        rows = [(name, cmd.get_short_help_str(limit=1_000)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def format_epilog(self, ctx, formatter):
        """The environment variables parsgd reads and how to turn on shell completion."""
        with formatter.section("Environment"):
            formatter.write_dl(ENVIRONMENT)
        with formatter.section("Shell completion"):
            formatter.write_dl(COMPLETION)

    def invoke(self, ctx):
        """Ctrl-C in a command is Interrupted (exit 130), before click turns it into Abort after a blank line."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None


@click.group(cls=ParsgdGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="parsgd")
def cli():
    """Data-parallel mini-batch SGD as explicit message passing."""


for _command in (*training.COMMANDS, *reports.COMMANDS, *replay.COMMANDS, *cluster.COMMANDS, *hosts.COMMANDS):
    cli.add_command(_command)


def main():
    """The console entry point (`parsgd`, `python -m parsgd`): exits with the command's status."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli(prog_name="parsgd")
