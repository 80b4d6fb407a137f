"""What a Python call prints while it runs: one updating line in a notebook or a terminal, not a flood.

    python -c "from parsgd.api.progress import printing; \
exec('with printing(\"line\"):\n for i in range(3): print(\"epoch\", i)')"

The jobs print their lines (`epoch 3/10 ...`, `done: ...`) through click.echo to sys.stdout; inside
`printing(mode)` sys.stdout is a ProgressLine that shows them as

    "line"   one line rewritten in place: an IPython display handle updated in a notebook (Jupyter
             keeps ONE output), a carriage return elsewhere; the run's `done: ...` line (an experiment's
             `report: ...` line) stays, else the last line.
    "lines"  every line as the CLI prints it.
    "none"   nothing (errors are raised all the same; stderr's notes are left alone).
    "auto"   "line" in a notebook or on a terminal, else "lines" (a log file keeps every line).
"""
from __future__ import annotations

import contextlib
import io
import re
import sys

from parsgd.errors import UsageError

MODES = ("auto", "line", "lines", "none")
# training/divergence.py's done_line (maybe relayed by launch as `[server] done: ...`), experiment's `report: ...`
DONE = re.compile(r"(\[[^\]]+\] )?(done|report): ")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (an IPython shell with a kernel), without importing IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return getattr(shell, "kernel", None) is not None


class ProgressLine(io.TextIOBase):
    """A text stream that shows each complete line written to it as `mode` says (module docstring)."""

    def __init__(self, mode: str, target):
        super().__init__()
        self.mode, self.target, self.partial, self.handle, self.width = mode, target, "", None, 0
        self.notebook = mode == "line" and in_notebook()
        self.last = None  # the line shown last
        self.done = None  # the last `done: ...` line (also as `[server] done: ...`): shown last

    @property
    def encoding(self) -> str:
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            line = line.rstrip("\r")
            if DONE.match(line):
                self.done = line
            self.show(line)
        return len(text)

    def show(self, line: str) -> None:
        """Show one complete line (without its newline)."""
        if self.mode == "none" or (self.mode == "line" and not line.strip()):
            return
        self.last = line
        if self.mode == "lines":
            self.target.write(line + "\n")
        elif self.notebook:
            from IPython.display import Pretty, display

            if self.handle is None:
                self.handle = display(Pretty(line), display_id=True)
            else:
                self.handle.update(Pretty(line))
        else:
            self.target.write("\r" + line.ljust(self.width))
            self.width = len(line)
        self.target.flush()

    def close(self) -> None:
        """Show a last line without newline, and end the rewritten line with one."""
        if self.partial:
            self.write("\n")
        if self.mode == "line" and self.done is not None and self.done != self.last:
            self.show(self.done)
        if self.mode == "line" and not self.notebook and self.width:
            self.target.write("\n")
            self.target.flush()
        super().close()


@contextlib.contextmanager
def printing(mode: str = "auto"):
    """Inside: sys.stdout is a ProgressLine of `mode` over the current sys.stdout (restored on exit).
    Raises UsageError for a mode not in MODES."""
    if mode not in MODES:
        raise UsageError(f"progress={mode!r}: use one of {', '.join(MODES)}")
    target = sys.stdout
    if mode == "auto":
        mode = "line" if in_notebook() or target.isatty() else "lines"
    stream = ProgressLine(mode, target)
    with contextlib.redirect_stdout(stream):
        try:
            yield stream
        finally:
            stream.close()
