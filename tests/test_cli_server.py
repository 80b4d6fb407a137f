"""`server` and `launch` options as data: ServerOptions checks every knob once, launch hands its server
child the RunConfig and ServerOptions as a ServerSpec file (`server --spec FILE`), not as flags.

    python -m pytest -q tests/test_cli_server.py
"""
import json
import os
import subprocess

import pytest

from parsgd.config import ConfigError, RunConfig, ServerOptions
from parsgd.jobs import launch as launch_job
from parsgd.jobs.launch import LaunchError, launch
from parsgd.jobs.serve import ServerSpec, SpecError
from parsgd.ps.faults import FaultSpecError, parse_launch_faults
from procs import cli_run as run, one_line_error, PY

TINY = ["--dataset", "synthetic", "--num-samples", "256", "--epochs", "1", "--hidden", "8", "--batch-size", "64"]
ODD = RunConfig(dataset="synthetic", num_samples=256, epochs=1, batch_size=64, lr=0.1234567890123,
                momentum=0.8765432109876, hidden=(7, 5), seed=1234567, dtype="float64", workers=2,
                data_dir="/tmp/a dir, with --flags=in it")






BAD_KNOBS = [
    (["--heartbeat", "0"], ["--heartbeat", "> 0 seconds"]),
    (["--heartbeat", "nan"], ["--heartbeat", "> 0 seconds"]),
    (["--liveness", "0"], ["--liveness", "a whole number >= 1"]),
    (["--step-timeout", "-1"], ["--step-timeout", "> 0 seconds"]),
    (["--checkpoint-every", "-1"], ["--checkpoint-every", "a step count >= 0"]),
    (["--wait-timeout", "0"], ["--wait-timeout", "> 0 seconds"]),
]


@pytest.mark.parametrize("command", ["server", "launch"])
@pytest.mark.parametrize("args,words", BAD_KNOBS)
def test_bad_server_knob_is_one_line_naming_option_and_range_exit_2(tmp_path, command, args, words):
    out = tmp_path / "run"
    err = one_line_error(run([command, *TINY, "--workers", "2", *args, "--out", out]), 2, *words, "out of range")
    assert err.count("--") == 1, "names the one option"
    assert not out.exists(), "nothing starts before the knobs are checked"


def test_register_timeout_is_checked_by_server_options_too(tmp_path):
    one_line_error(run(["server", *TINY, "--register-timeout", "0", "--out", tmp_path / "r"]), 2,
                   "--register-timeout", "> 0 seconds")


def test_spec_round_trips_config_and_options_exactly(tmp_path):
    opts = ServerOptions(bind="ipc:///tmp/x.sock", wait_timeout_s=1.25, heartbeat_s=0.1234567890123, liveness=7,
                         step_timeout_s=3.5, checkpoint_every=11, shm=False, register_timeout_s=9.75, transport="ipc")
    spec = ServerSpec(ODD, opts, out=str(tmp_path / "run"))
    back = ServerSpec.read(spec.write(tmp_path / "spec.json"))
    assert back == spec and back.config.lr == 0.1234567890123 and back.config.hidden == (7, 5)
    resume = ServerSpec(None, opts, out="r", resume="r")
    assert ServerSpec.from_dict(json.loads(json.dumps(resume.to_dict()))) == resume


@pytest.mark.parametrize("text,error,words", [
    (None, SpecError, "cannot read"),
    ("{not json", SpecError, "not valid JSON"),
    ('{"config": null, "server": {}}', ConfigError, "needs a config"),
    ('{"server": {}, "extra": 1}', ConfigError, "extra"),
    ('{"config": null, "resume": "r", "server": {"heartbeat_s": 0}}', ConfigError, "--heartbeat"),
])
def test_bad_spec_files_raise_user_errors(tmp_path, text, error, words):
    path = tmp_path / "spec.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(error, match=words):
        ServerSpec.read(path)


def test_server_spec_takes_nothing_else_and_missing_file_is_one_line(tmp_path):
    one_line_error(run(["server", "--spec", tmp_path / "spec.json", "--epochs", "3"]), 2, "--spec", "--epochs")
    one_line_error(run(["server", "--spec", tmp_path / "spec.json"]), 1, "cannot read server spec")


class FakeChild:
    """Stands in for launch.Child: records the argv (and the spec it names), then is already gone."""

    started = []

    def __init__(self, label, argv, echo):
        self.label, self.argv = label, argv
        spec = argv[argv.index("--spec") + 1] if "--spec" in argv else None
        FakeChild.started.append((label, argv, ServerSpec.read(spec) if spec else None))
        self.proc = type("Proc", (), {"returncode": 3, "wait": lambda self, timeout=None: 3})()
        self.reader = type("Reader", (), {"join": lambda self, timeout=None: None})()

    def alive(self):
        return False

    def signal(self, sig):
        pass


def test_launch_gives_its_server_the_config_as_data_not_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(launch_job, "Child", FakeChild)
    FakeChild.started = []
    opts = ServerOptions(heartbeat_s=0.25, liveness=5, step_timeout_s=2.5, checkpoint_every=3, wait_timeout_s=7.5)
    with pytest.raises(LaunchError, match="status 3 before listening"):
        launch(ODD, opts, "tcp", tmp_path / "run")
    [(label, argv, spec)] = FakeChild.started
    assert label == "server" and argv[-3:-1] == ["server", "--spec"] and len(argv) == 6, argv
    assert spec.config == ODD and spec.out == str(tmp_path / "run") and spec.resume is None
    assert spec.server == ServerOptions(bind="tcp://127.0.0.1:*", heartbeat_s=0.25, liveness=5, step_timeout_s=2.5,
                                        checkpoint_every=3, wait_timeout_s=7.5, shm=False, transport="tcp",
                                        resume_command=f"parsgd launch --resume {tmp_path / 'run'} --transport tcp")


def test_launch_resume_sends_no_config(tmp_path, monkeypatch):
    """The server takes the config from the checkpoint, and the options given with --resume to check;
    the launcher starts as many workers as the checkpoint has shards, noting a different --workers."""
    import types

    import numpy as np

    from parsgd.ps.checkpoint import save_checkpoint

    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run", types.SimpleNamespace(
        step=3, steps_per_epoch=4, metrics=[], partial={}, cfg=ODD, params=np.zeros(3), velocity=np.zeros(3)))
    monkeypatch.setattr(launch_job, "Child", FakeChild)
    FakeChild.started = []
    lines = []
    with pytest.raises(LaunchError):
        launch(None, ServerOptions(), "shm", tmp_path / "ignored", resume=tmp_path / "run", echo=lines.append,
               given={"workers": 5, "epochs": 4})
    [(_, _, spec)] = FakeChild.started
    assert spec.config is None and spec.resume == spec.out == str(tmp_path / "run") and spec.server.shm
    assert spec.given == {"epochs": 4}
    assert spec.server.resume_command == f"parsgd launch --resume {tmp_path / 'run'}"
    assert lines == ["[launch] --workers 5 ignored: the checkpoint's run cuts every batch into 2 shards, "
                     "so 2 workers start"]
    assert not (tmp_path / "ignored").exists()


def test_launch_run_records_exactly_the_config_given(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(PY + ["launch", "--workers", "2", "--dataset", "synthetic", "--num-samples", "256",
                                  "--epochs", "1", "--batch-size", "64", "--lr", "0.1234567890123", "--momentum",
                                  "0.8765432109876", "--hidden", "7,5", "--seed", "1234567", "--dtype", "float64",
                                  "--transport", "tcp", "--out", str(out)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PARSGD_DATA_DIR": ODD.data_dir})
    assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr, result.stdout[-3000:]
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["config"] == ODD.to_dict() and recorded["transport"] == "tcp" and recorded["mode"] == "ps"
    assert RunConfig.from_dict(recorded["config"]) == ODD


def test_server_spec_options_reach_the_server(tmp_path):
    """A spec's wait_timeout_s (not a flag) is what the server waits for its missing worker."""
    spec = ServerSpec(RunConfig(dataset="synthetic", num_samples=256, epochs=1, batch_size=64, hidden=(8,)),
                      ServerOptions(bind="tcp://127.0.0.1:*", wait_timeout_s=0.4, transport="tcp"),
                      out=str(tmp_path / "run")).write(tmp_path / "spec.json")
    result = subprocess.run(PY + ["server", "--spec", str(spec)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: only 0 of 1 worker registered within 0.4 s" in result.stderr, result.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["transport"] == "tcp"


def test_launch_fault_schedule_errors_are_fault_spec_errors():
    assert parse_launch_faults("", 3) == {}
    assert parse_launch_faults("drop=0.1,seed=3", 2) == {0: "drop=0.1,seed=3", 1: "drop=0.1,seed=3"}
    for spec, words in (("kill=workerX@step1", "workerN"), ("kill=worker2@step1", "workers 0..1"),
                        ("explode@3", "explode"), ("drop=2", "drop=2")):
        with pytest.raises(FaultSpecError, match=words):
            parse_launch_faults(spec, 2)
