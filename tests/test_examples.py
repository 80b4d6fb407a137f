"""examples/*.ipynb, executed with nbclient at small sizes (PARSGD_EXAMPLE_SIZE=small) so they cannot rot.

Each notebook must run to the end without an error (their own asserts are oracles: BSP equals
sequential, eval equals the recorded accuracy, the experiment wrote report.html), and no cell may flood
its output: a training call shows one updating line (an IPython display handle), not a line per epoch.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CELL_TIMEOUT_S = 240
MAX_STDOUT_LINES = 12  # per cell: a table or a few printed figures, never the per-epoch log


def stdout_lines(cell) -> int:
    return sum(len(o.get("text", "").splitlines()) for o in cell.get("outputs", [])
               if o.get("output_type") == "stream" and o.get("name") == "stdout")


# the emulated-links notebook builds network namespaces: tests/conftest.py's machine-wide group
NOTEBOOKS = [pytest.param(p.name, marks=[pytest.mark.xdist_group("machine-wide")] if p.name.startswith("03_") else [])
             for p in sorted(EXAMPLES.glob("*.ipynb"))]


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PARSGD_EXAMPLE_SIZE", "small")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.get("output_type") != "error" for c in code for o in c.get("outputs", []))
    flooded = [(c.source.splitlines()[0], stdout_lines(c)) for c in code if stdout_lines(c) > MAX_STDOUT_LINES]
    assert flooded == []
    calls = [c for c in code if re.search(r"parsgd\.(train|launch|experiment)\(", c.source)]
    assert calls
    for c in calls:  # one updating line per run: ONE display output, updated in place
        runs = len(re.findall(r"parsgd\.(?:train|launch|experiment)\(", c.source))
        shown = [o["data"]["text/plain"] for o in c.outputs if o.get("output_type") == "display_data"
                 and "text/plain" in o["data"] and "<parsgd" not in o["data"]["text/plain"]]
        assert len(shown) == runs, (c.source, shown)
        kept = "report: " if "parsgd.experiment(" in c.source else "done: "
        assert all(kept in text for text in shown), shown  # the run's done line (the experiment's report line) stays
    assert (tmp_path / "example-runs").is_dir()


def test_every_notebook_is_clean_and_sized():
    import nbformat

    names = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))
    assert len(names) == 3
    for name in names:
        nb = nbformat.read(EXAMPLES / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.get("outputs") for c in code), f"{name}: committed with outputs"
        assert "PARSGD_EXAMPLE_SIZE" in code[0].source
