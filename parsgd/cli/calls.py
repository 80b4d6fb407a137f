"""Running one `parsgd` command from an argument list inside this process, for the Python API (parsgd/api/).

    python -c "from parsgd.cli.calls import parse, run; from parsgd.cli.training import train; \
run(train, parse(train, ['--dataset=synthetic', '--num-samples=512', '--epochs=1']))"

The command's own parser and function, under the `parsgd` group as on the command line; click's
exceptions stay in this layer: a usage error becomes OptionError (exit 2 unless click says
otherwise) with the message `parsgd` would print after `error: `, Ctrl-C becomes Interrupted.
"""
from __future__ import annotations

import click

from parsgd.errors import Interrupted, UsageError, UserError


class OptionError(UsageError):
    """A keyword the command does not take, or a value its parser refuses (the CLI's exit 2)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def parse(command: click.Command, argv: list[str]) -> click.Context:
    """The click Context of `parsgd COMMAND ARGV...`, parsed (ctx.params); raises OptionError."""
    from parsgd.cli import cli

    parent = click.Context(cli, info_name="parsgd")
    try:
        return command.make_context(command.name, list(argv), parent=parent)
    except click.ClickException as exc:
        raise OptionError(exc.format_message(), exc.exit_code) from None


def run(command: click.Command, ctx: click.Context):
    """Run the parsed command; returns what its function returns. Raises OptionError (click's usage
    errors), Interrupted (Ctrl-C, exit 130), UserError for a non-zero click Exit; other UserErrors pass."""
    try:
        with ctx:
            return command.invoke(ctx)
    except click.ClickException as exc:
        raise OptionError(exc.format_message(), exc.exit_code) from None
    except (click.exceptions.Abort, KeyboardInterrupt):
        raise Interrupted() from None
    except click.exceptions.Exit as exc:
        if exc.exit_code:
            raise UserError(f"parsgd {command.name} exited with status {exc.exit_code}") from None
        return None
