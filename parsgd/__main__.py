"""`python -m parsgd` and the `parsgd` command (setup.py's console script is `run`).

Importing the CLI (click, NumPy) takes tens of milliseconds; a Ctrl-C in there raised KeyboardInterrupt
out of an import with Python's traceback (seen: every SIGINT 20-60 ms after start on a loaded 2-core VM).
`run` imports inside the same guard as the commands, so it ends like a later Ctrl-C: `error:
interrupted`, exit 130. Only a SIGINT in the interpreter's own startup, before this line runs, is Python's.
"""
import sys


def run() -> None:
    """Runs the command line; exits with its status (130 after a Ctrl-C at any point from here on)."""
    try:
        from parsgd.cli import main

        main()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    run()
