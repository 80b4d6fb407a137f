"""parsgd: data-parallel mini-batch SGD as explicit message passing."""

__version__ = "0.1.0"

_API = ("train", "launch", "experiment", "estimate", "evaluate", "report_html", "load_run", "load_experiment",
        "Run", "Experiment", "OptionError", "UserError")


def __getattr__(name):
    """parsgd.train, parsgd.load_run, ...: the Python API (parsgd/api/), imported on first use so that
    `import parsgd` stays light for the worker processes."""
    if name in _API:  # importlib: the root package names no layer (modules of every layer read __version__)
        from importlib import import_module

        return getattr(import_module("parsgd.api"), name)
    raise AttributeError(f"module 'parsgd' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
