"""Calling a `parsgd` click command from Python keywords: the one source of the options and their defaults.

    python -c "from parsgd.api.invoke import call; from parsgd.cli.training import train; \
call(train, {'dataset': 'synthetic', 'num_samples': 1024, 'epochs': 1})"

A keyword is an option's name as the CLI spells it with underscores (`num_samples` for --num-samples,
`transport` for --transport, `keys` for --keys) or the name its callback receives (`keys_dir`). The
keywords become the argument list the shell would pass (`--num-samples=1024`; True / False for a flag,
a list for an option that takes several values or may be repeated), which the command's own parser
reads: the same checks, defaults, environment variables and error messages as `parsgd CMD ...`, then
the command's own function, which calls the same job in parsgd/jobs/. A click usage error becomes an
OptionError (a UsageError, exit 2), with the message the CLI would print after `error: `
(parsgd/cli/calls.py: click's exceptions stay inside the CLI layer).
"""
from __future__ import annotations

import inspect

import click

from parsgd.cli.calls import OptionError, parse, run


def _default(p: click.Parameter):
    """The parameter's default as a keyword shows it: None for none (click's UNSET sentinel) or a callable."""
    d = p.default
    return None if callable(d) or type(d).__name__ == "Sentinel" or repr(d).endswith("UNSET") else d


def keyword_names(command: click.Command) -> dict[str, click.Parameter]:
    """{keyword: parameter}: each parameter under its name and under each long flag with underscores."""
    names = {}
    for p in command.params:
        names[p.name] = p
        for opt in [*p.opts, *getattr(p, "secondary_opts", [])]:
            if opt.startswith("--"):
                word = opt[2:].replace("-", "_")
                if not word.startswith("no_") or not getattr(p, "secondary_opts", None):
                    names.setdefault(word, p)
    return names


def _items(value) -> list:
    return list(value) if isinstance(value, (list, tuple, set, frozenset, range)) else [value]


def to_argv(command: click.Command, options: dict, prog: str) -> list[str]:
    """The argument list `parsgd COMMAND` would get for `options` (see the module docstring).

    Raises OptionError for a keyword the command does not take or given twice under two names."""
    names = keyword_names(command)
    argv, positional, seen = [], [], {}
    for key, value in options.items():
        p = names.get(key)
        if p is None:
            known = ", ".join(sorted(k for k, q in names.items() if q.name == k))
            raise OptionError(f"{prog}() got an unknown keyword {key!r}; it takes {known}")
        if p.name in seen:
            raise OptionError(f"{prog}() got {seen[p.name]!r} and {key!r}, one option twice; give one of them")
        seen[p.name] = key
        if value is None:
            continue  # the command's default, as when the flag is left out
        if isinstance(p, click.Argument):
            positional += [str(v) for v in _items(value)]
            continue
        flag = next((o for o in p.opts if o.startswith("--")), p.opts[0])
        if getattr(p, "is_flag", False) and not getattr(p, "count", False):
            if p.secondary_opts:
                argv.append(flag if value else p.secondary_opts[0])
            elif value:
                argv.append(flag)
            continue
        if p.multiple:
            argv += [f"{flag}={v}" for v in _items(value)]
        elif isinstance(value, (list, tuple)):
            argv.append(f"{flag}={','.join(map(str, value))}")  # --hidden 256,128
        else:
            argv.append(f"{flag}={value}")
    return argv + (["--", *positional] if positional else [])


def make_context(command: click.Command, options: dict, prog: str) -> click.Context:
    """The parsed click Context of `command` for `options`; raises OptionError as the CLI would fail."""
    return parse(command, to_argv(command, options, prog))


def run_context(command: click.Command, ctx: click.Context):
    """Run the parsed command (parsgd.cli.calls.run); returns what its function returns."""
    return run(command, ctx)


def call(command: click.Command, options: dict, prog: str | None = None):
    """make_context then run_context: `parsgd COMMAND` with `options`; returns its function's value."""
    prog = prog or f"parsgd.{command.name}"
    return run_context(command, make_context(command, options, prog))


def signature(command: click.Command, extra: dict | None = None) -> inspect.Signature:
    """A keyword-only Signature of the command's options with the CLI's defaults (for help() and tab
    completion in notebooks), plus `extra` {name: default}."""
    params = []
    for p in command.params:
        default = _default(p)
        if isinstance(p, click.Argument):
            default = inspect.Parameter.empty if p.required else None
        word = next((o[2:].replace("-", "_") for o in p.opts if o.startswith("--")), p.name)
        params.append(inspect.Parameter(word if word.isidentifier() else p.name,
                                        inspect.Parameter.KEYWORD_ONLY, default=default))
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in (extra or {}).items()]
    params.sort(key=lambda q: q.default is not inspect.Parameter.empty)
    return inspect.Signature(params)


def options_doc(command: click.Command) -> str:
    """One line per option: its keyword, the CLI default and the help text (click's)."""
    lines = []
    for p in command.params:
        if getattr(p, "hidden", False):
            continue
        word = next((o[2:].replace("-", "_") for o in p.opts if o.startswith("--")), p.name)
        shown = getattr(p, "show_default", None)
        default = shown if isinstance(shown, str) else _default(p)
        help_text = " ".join((getattr(p, "help", None) or "").split())
        lines.append(f"    {word}={default!r}: {help_text}")
    return "\n".join(lines)
