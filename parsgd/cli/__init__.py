"""The `parsgd` command: a thin click layer that parses options, builds a RunConfig and calls the library.

    parsgd --help

The group and the error handler live here; the commands in `training` (train, server, worker,
launch, keygen) and `reports` (experiment, plot, trace); shared options in `options`.
"""
from __future__ import annotations

import os
import sys

import click

from parsgd.cli import reports, training
from parsgd.errors import Interrupted, UserError


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

    def invoke(self, ctx):
        """Ctrl-C in a command is Interrupted (exit 130), before click turns it into Abort after a blank line."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None


@click.group(cls=ParsgdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="parsgd")
def cli():
    """Data-parallel mini-batch SGD as explicit message passing."""


for _command in (*training.COMMANDS, *reports.COMMANDS):
    cli.add_command(_command)


def main():
    """The console entry point (`parsgd`, `python -m parsgd`): exits with the command's status."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli(prog_name="parsgd")
