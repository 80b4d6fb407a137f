"""An experiment folder (`parsgd experiment --out DIR`): a rerun into it leaves nothing of the previous
experiment to pass for its own; `parsgd plot DIR` draws what the experiment drew; the commands that take
one run directory refuse it in one line naming one of its runs; server_load.png for S > 1 servers.

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


def test_experiment_json_lists_every_file_the_experiment_wrote(exp):
    out, stdout = exp
    files = json.loads((out / "experiment.json").read_text())["experiment"]["files"]
    assert sorted(files) == files_in(out)
    assert {"staleness.png", "ps-p2-shm-async/updates.jsonl", "sequential/model.npz"} <= set(files)
    assert line(stdout, "removed from") is None, "a new folder: nothing to remove"


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


def test_a_rerun_removes_what_the_previous_experiment_wrote_and_this_one_did_not(exp, tmp_path):
    out = shutil.copytree(exp[0], tmp_path / "results")
    assert invoke(["trace", out / "ps-p2-shm"]).exit_code == 0  # trace.json: not the experiment's
    (out / "notes.txt").write_text("mine")
    result = experiment(out, "--modes", "sequential")
    assert line(result.stdout, "removed from") == (
        f"removed from the previous experiment in {out}: step_timeline.png, staleness.png, "
        "ps-p2-shm/ (its run files: the folder stays), ps-p2-shm-async/")
    assert line(result.stdout, "kept in") == (
        f"kept in {out} (the previous experiment did not write them): ps-p2-shm/trace.json")
    files = json.loads((out / "experiment.json").read_text())["experiment"]["files"]
    assert files_in(out) == sorted([*files, "notes.txt", "ps-p2-shm/trace.json"])
    assert not any(f.startswith("ps-") for f in files)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_rerun_into_the_folder_of_an_older_parsgd_removes_its_runs_too(exp, tmp_path):
    out = shutil.copytree(exp[0], tmp_path / "results")
    doc = json.loads((out / "experiment.json").read_text())
    del doc["experiment"]["files"]  # what parsgd wrote before it recorded them
    (out / "experiment.json").write_text(json.dumps(doc))
    result = experiment(out, "--modes", "sequential")
    assert line(result.stdout, "removed from") == (
        f"removed from the previous experiment in {out}: step_timeline.png, staleness.png, ps-p2-shm/, ps-p2-shm-async/")
    assert files_in(out) == sorted(json.loads((out / "experiment.json").read_text())["experiment"]["files"])


def test_outputs_no_experiment_recorded_are_refused_unless_force(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "loss.png").write_text("someone's")
    err = one_line_error(invoke(["experiment", *SMALL, "--modes", "sequential", "--out", out]), 1)
    assert err == (f"error: {out} holds loss.png, which no parsgd experiment recorded writing there "
                   "(experiment.json 'files'): pass another --out, or --force to replace them")
    assert files_in(out) == ["loss.png"], "nothing ran"
    experiment(out, "--modes", "sequential", "--force")
    assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")


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
    from parsgd.jobs.outputs import write_outputs  # the experiment's output writer, given that run
    written, _ = write_outputs([run], tmp_path / "exp", RunConfig(), echo=lambda _: None)
    assert tmp_path / "exp" / "server_load.png" in written
    short = tmp_path / "short"  # 2 steps, all warm-up: nothing per timed step to draw, and plot says so
    subprocess.run(PY + ["launch", "--workers", "2", "--servers", "2", "--dataset", "synthetic", "--num-samples", "512",
                         "--epochs", "1", "--out", str(short)], check=True, capture_output=True, timeout=120)
    result = invoke(["plot", short, "-o", tmp_path / "short-png"])
    assert result.exit_code == 0 and "server_load.png" not in result.stdout, result.output
    assert result.stderr.strip() == ("note: no server_load.png: it shows bytes per timed step, and ps P=2 shm S=2 had "
                                     "none (too short: the first steps are warm-up); train longer")


def test_a_hostile_file_list_names_nothing_outside_the_runs(tmp_path):
    from parsgd.jobs.outputs import previous_outputs

    out, elsewhere = tmp_path / "results", tmp_path / "elsewhere"
    for folder in (out / "ps-p2-shm", elsewhere, out / ".hidden"):
        folder.mkdir(parents=True)
    for f in (out / "ps-p2-shm" / "config.json", out / "loss.png", elsewhere / "config.json", tmp_path / "mine.txt",
              out / ".hidden" / "config.json", out / "notes.txt"):
        f.write_text("x")
    (out / "link").symlink_to(elsewhere)
    listed = ["ps-p2-shm/config.json", "loss.png", "../mine.txt", str(tmp_path / "mine.txt"), "link/config.json",
              ".hidden/config.json", "ps-p2-shm/../../mine.txt", "notes.txt", "ps-p2-shm/config.json/x", 3]
    (out / "experiment.json").write_text(json.dumps({"experiment": {"files": listed}, "records": []}))
    assert previous_outputs(out) == ["experiment.json", "ps-p2-shm/config.json", "loss.png"]


def test_a_rerun_where_every_configuration_fails_leaves_no_report_of_the_previous_one(exp, tmp_path, monkeypatch):
    out = shutil.copytree(exp[0], tmp_path / "results")
    monkeypatch.setenv("PARSGD_FAULTS", "crash@1")  # every PS worker exits with status 1 at step 1
    result = invoke(["experiment", *SMALL, "--modes", "ps", "--transport", "shm", "--out", out])
    assert one_line_error(result, 1).startswith("error: 1 of 1 configurations failed: ps P=2 shm")
    removed = line(result.stdout, "removed from").split(": ", 1)[1].split(", ")
    assert {"experiment_report.txt", "loss.png", "staleness.png", "sequential/", "ps-p2-shm-async/"} <= set(removed)
    doc = json.loads((out / "experiment.json").read_text())
    assert doc["records"] == [] and doc["experiment"]["baseline"] is None
    assert sorted(doc["experiment"]["files"]) == files_in(out), "the failed run's files are this experiment's"
    assert "ps-p2-shm/config.json" in doc["experiment"]["files"]
