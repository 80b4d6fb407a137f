"""An experiment folder (`parsgd experiment --out DIR`): `parsgd plot DIR` draws what the experiment drew;
the commands that take one run directory refuse it in one line naming one of its runs; server_load.png
for S > 1 servers.

    python3 -m pytest -q tests/test_experiment_dir.py

Real runs and real files throughout (no mocks).
"""
import json
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from parsgd.cli import cli
from procs import PY

SMALL = ["--dataset", "synthetic", "--num-samples", "512", "--epochs", "1", "--workers", "2", "--quiet"]


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def experiment(out, *args):
    result = invoke(["experiment", *SMALL, *args, "--out", out])
    assert result.exit_code == 0, result.output
    return result


def files_in(folder):
    """Every file under `folder`, as paths relative to it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def line(stdout, start):
    """The one line of `stdout` that starts with `start` (None if none)."""
    found = [ln for ln in stdout.splitlines() if ln.startswith(start)]
    assert len(found) <= 1, found
    return found[0] if found else None


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """(folder, stdout) of an experiment with sequential, ps P=2 shm and ps P=2 shm async: staleness.png too."""
    out = tmp_path_factory.mktemp("exp") / "results"
    result = experiment(out, "--modes", "sequential,ps", "--transport", "shm", "--consistency", "bsp,async")
    return out, result.stdout


def test_plot_of_an_experiment_folder_draws_what_the_experiment_drew(exp, tmp_path):
    out, stdout = exp
    drawn = line(stdout, "plots:  ").removeprefix("plots:  ").split(", ")
    result = invoke(["plot", out, "-o", tmp_path])
    assert result.exit_code == 0, result.output
    assert [p.rsplit("/", 1)[1] for p in result.stdout.split()] == [p.rsplit("/", 1)[1] for p in drawn]
    for name in (p.rsplit("/", 1)[1] for p in drawn):  # the same figures, to the byte
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    assert not (out / "server_load.png").exists() and "server_load.png" not in stdout, "S=1: no server_load.png"


def test_plot_of_an_experiment_folder_draws_into_it_by_default(exp, tmp_path):
    out = shutil.copytree(exp[0], tmp_path / "copy")
    (out / "loss.png").unlink()
    result = invoke(["plot", out])
    assert result.exit_code == 0, result.output
    assert str(out / "loss.png") in result.stdout.split() and (out / "loss.png").is_file()


def one_line_error(result, code):
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, err
    return err


@pytest.mark.parametrize("command", [["trace"], ["replay"], ["estimate"], ["launch", "--resume"],
                                     ["server", "--resume"]])
def test_a_command_taking_one_run_dir_refuses_an_experiment_folder_naming_a_run(exp, command):
    out, _ = exp
    err = one_line_error(invoke([*command, out]), 2)
    m = re.fullmatch(rf"error: {re.escape(str(out))} is an experiment folder, not a run directory; give one "
                     rf"of its runs, e.g. {re.escape(str(out))}/(\S+)", err)
    assert m, err
    assert (out / m.group(1) / "comm.jsonl").is_file(), "a real parameter-server run of the folder"


def test_plot_refuses_an_experiment_folder_among_runs(exp):
    out, _ = exp
    err = one_line_error(invoke(["plot", out, out / "sequential"]), 2)
    assert f"{out} is an experiment folder: plot it alone" in err


@pytest.mark.slow
def test_server_load_is_drawn_for_a_run_of_two_servers(tmp_path):
    run = tmp_path / "s2"
    subprocess.run(PY + ["launch", "--workers", "2", "--servers", "2", "--dataset", "synthetic", "--num-samples", "512",
                         "--batch-size", "32", "--epochs", "1", "--out", str(run)],
                   check=True, capture_output=True, timeout=120)
    result = invoke(["plot", run, "-o", tmp_path / "png"])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "png" / "server_load.png") in result.stdout.split()
    assert (tmp_path / "png" / "server_load.png").stat().st_size > 10_000
    from parsgd.config import RunConfig
    from parsgd.jobs.experiment import write_outputs  # the experiment's output writer, given that run
    written, _ = write_outputs([run], tmp_path / "exp", RunConfig(), echo=lambda _: None)
    assert tmp_path / "exp" / "server_load.png" in written
    short = tmp_path / "short"  # 2 steps, all warm-up: nothing per timed step to draw, and plot says so
    subprocess.run(PY + ["launch", "--workers", "2", "--servers", "2", "--dataset", "synthetic", "--num-samples", "512",
                         "--epochs", "1", "--out", str(short)], check=True, capture_output=True, timeout=120)
    result = invoke(["plot", short, "-o", tmp_path / "short-png"])
    assert result.exit_code == 0 and "server_load.png" not in result.stdout, result.output
    assert result.stderr.strip() == ("note: no server_load.png: it shows bytes per timed step, and ps P=2 shm S=2 had "
                                     "none (too short: the first steps are warm-up); train longer")
