"""The Python API (`import parsgd`) against the CLI: the same options, defaults, errors and run directories.

Oracles: the CLI's own run directory for the same options (the same model to the bit), the click
command's parameters (the keywords and defaults), the CLI's `error: ...` line (the same message), and
the sequential trainer for a BSP launch (the same model as `parsgd train`).
"""
from __future__ import annotations

import inspect
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import parsgd
from parsgd.api import progress as progress_mod, results

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"dataset": "synthetic", "num_samples": 1024, "epochs": 2}


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "parsgd", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def flags(options: dict) -> list[str]:
    return [w for k, v in options.items() for w in (f"--{k.replace('_', '-')}", str(v))]


def test_train_writes_what_the_cli_writes(tmp_path):
    api = parsgd.train(**SMALL, workers=2, out=tmp_path / "api", progress="none")
    proc = cli("train", *flags(SMALL), "--workers", "2", "--out", tmp_path / "cli")
    assert proc.returncode == 0, proc.stderr
    ref = parsgd.load_run(tmp_path / "cli")
    assert api.path == tmp_path / "api" and api.mode == ref.mode == "pool"
    assert api.config == ref.config and api.config["hidden"] == [256, 128]  # the CLI's defaults
    for name, a in api.model.items():
        assert np.array_equal(a, ref.model[name]), name
    assert api.summary["final_test_acc"] == ref.summary["final_test_acc"]
    m = api.metrics
    rows = m.to_dict("records") if hasattr(m, "to_dict") else m
    assert [r["test_acc"] for r in rows] == [json.loads(line)["test_acc"]
                                             for line in (tmp_path / "cli/metrics.jsonl").read_text().splitlines()]
    assert api.comm is None  # not a parameter-server run


def test_default_run_directory_is_the_cli_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = parsgd.train(**SMALL, progress="none")
    assert run.path.parent == Path("runs") and run.path.name.startswith("sequential-p1-")
    assert (tmp_path / run.path / "model.npz").is_file()


def test_keywords_and_defaults_come_from_the_click_commands():
    from parsgd.cli.reports import experiment
    from parsgd.cli.training import launch, train

    for function, command in ((parsgd.train, train), (parsgd.launch, launch), (parsgd.experiment, experiment)):
        sig = inspect.signature(function)
        for p in command.params:
            word = next(o[2:].replace("-", "_") for o in p.opts if o.startswith("--"))
            assert word in sig.parameters, (function.__name__, word)
            default = sig.parameters[word].default
            if not callable(p.default) and "UNSET" not in repr(p.default):
                assert default == p.default, (function.__name__, word)
        assert sig.parameters["progress"].default == "auto"
    assert inspect.signature(parsgd.launch).parameters["workers"].default == 2  # launch's, not train's


@pytest.mark.parametrize("options", [{"epochs": 0}, {"dataset": "nope"}, {"lr": "fast"}, {"hidden": "256,x"}])
def test_errors_are_the_clis_user_errors(options, tmp_path):
    proc = cli("train", *flags({"dataset": "synthetic", **options}), "--out", tmp_path / "c")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    with pytest.raises(parsgd.UserError) as exc:
        parsgd.train(**{"dataset": "synthetic", **options}, out=tmp_path / "a", progress="none")
    assert exc.value.exit_code == 2
    assert f"error: {exc.value}" == proc.stderr.strip()
    assert not (tmp_path / "a").exists()


def test_unknown_keyword_names_the_known_ones():
    with pytest.raises(parsgd.OptionError) as exc:
        parsgd.train(epoch=1)
    assert "'epoch'" in str(exc.value) and "epochs" in str(exc.value) and exc.value.exit_code == 2
    with pytest.raises(parsgd.OptionError):
        parsgd.experiment(transport="shm", transports="tcp")  # one option under two names


def test_lists_of_dicts_without_pandas(tmp_path, monkeypatch):
    run = parsgd.train(**SMALL, out=tmp_path / "r", progress="none")
    monkeypatch.setattr(results, "has_pandas", lambda: False)
    rows = parsgd.load_run(tmp_path / "r").metrics
    assert isinstance(rows, list) and [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["test_acc"] == run.summary["final_test_acc"]


def test_progress_is_one_updating_line():
    out = io.StringIO()
    line = progress_mod.ProgressLine("line", out)
    for i in range(1, 6):
        line.write(f"epoch {i}/5  loss 0.1\n")
    line.write("done: test acc 0.9")
    line.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 6
    assert text.rsplit("\r", 1)[1].strip() == "done: test acc 0.9"
    relayed = io.StringIO()  # launch: the server's done line comes before its summary lines; it is shown last
    line = progress_mod.ProgressLine("line", relayed)
    line.write("[server] done: test acc 0.9 in 1 s\n[server] bound by compute\n")
    line.close()
    assert relayed.getvalue().rsplit("\r", 1)[1].strip() == "[server] done: test acc 0.9 in 1 s"
    quiet = io.StringIO()
    with pytest.raises(parsgd.UserError):
        with progress_mod.printing("loud"):
            pass
    silent = progress_mod.ProgressLine("none", quiet)
    silent.write("epoch 1\n")
    assert quiet.getvalue() == ""


def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(parsgd.UserError) as exc:
        parsgd.load_run(tmp_path)
    assert str(tmp_path) in str(exc.value)


@pytest.mark.slow
def test_launch_bsp_is_the_sequential_model_and_has_spans(tmp_path):
    seq = parsgd.train(**SMALL, out=tmp_path / "seq", progress="none")
    ps = parsgd.launch(**SMALL, workers=2, out=tmp_path / "ps", progress="none")
    assert ps.mode == "ps" and ps.workers == 2
    for name, a in seq.model.items():
        np.testing.assert_allclose(ps.model[name], a, rtol=0, atol=1e-5)
    comm = ps.comm
    spans = comm.to_dict("records") if hasattr(comm, "to_dict") else comm
    assert {"role", "rank", "step", "span", "t_s", "dur_s", "bytes", "server"} <= set(spans[0])
    assert {s["role"] for s in spans} == {"server", "worker"}
    assert parsgd.load_run(tmp_path / "ps").summary == ps.summary


@pytest.mark.slow
def test_experiment_returns_its_folder(tmp_path):
    exp = parsgd.experiment(**SMALL, workers=[2], modes="sequential,ps", transport=["shm"], quiet=True,
                            out=tmp_path / "e", progress="none")
    assert [r.label for r in exp.runs] == ["sequential", "ps P=2 shm"]
    records = exp.records
    assert len(records) == 2 and exp.html == tmp_path / "e" / "report.html"
    assert "Comparison" in exp.report and exp.run("ps-p2-shm").workers == 2
