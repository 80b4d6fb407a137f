"""`parsgd train` through click's CliRunner: good runs, and one clear line for every bad value."""
import json

import pytest
from click.testing import CliRunner

from parsgd.cli import cli
from parsgd.ps.faults import parse_launch_faults
from parsgd.data import write_idx
from parsgd.training.rundir import RUN_FILES

BASE = ["--dataset", "synthetic", "--num-samples", "512", "--epochs", "1"]
SMALL = [*BASE, "--hidden", "16"]


def run(args, **kw):
    return CliRunner().invoke(cli, args, catch_exceptions=False, **kw)


def assert_one_line_error(result, *words, code=None):
    assert result.exit_code != 0 and (code is None or result.exit_code == code), result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.output
    for w in words:
        assert w in err, err


def test_train_writes_a_run_directory_and_one_line_per_epoch(tmp_path):
    out = tmp_path / "run"
    result = run(["train", *SMALL, "--epochs", "2", "--batch_size", "64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [l for l in result.stdout.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and "test acc" in lines[0]
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "model.npz", "summary.json"}
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["batch_size"] == 64 and cfg["hidden"] == [16] and cfg["dataset"] == "synthetic"


@pytest.mark.parametrize("hidden,expected", [(["--hidden", "32,16"], [32, 16]),
                                             (["--hidden", "32 16"], [32, 16]),
                                             (["--hidden", "32", "--hidden", "16"], [32, 16])])
def test_list_options_take_commas_spaces_or_repeats(tmp_path, hidden, expected):
    result = run(["train", *BASE, *hidden, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "config.json").read_text())["config"]["hidden"] == expected


@pytest.mark.parametrize("args,words", [
    (["--batch-size", "0"], ["--batch-size", "at least 1"]),
    (["--batch-size", "100000"], ["larger than the training set"]),
    (["--lr", "0"], ["--lr"]),
    (["--lr", "-1"], ["--lr"]),
    (["--momentum", "1"], ["--momentum"]),
    (["--momentum", "-0.1"], ["--momentum"]),
    (["--hidden", ""], ["--hidden"]),
    (["--hidden", "16,0"], ["--hidden"]),
    (["--hidden", "a,b"], ["--hidden"]),
    (["--workers", "0"], ["--workers"]),
    (["--workers", "300", "--batch-size", "256"], ["--workers", "--batch-size"]),
    (["--dataset", "cifar"], ["cifar"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--num-samples", "0"], ["--num-samples"]),
])
def test_bad_values_get_one_line_and_exit_2(args, words):
    hidden = [] if "--hidden" in args else ["--hidden", "16"]
    assert_one_line_error(run(["train", *BASE, *hidden, *args]), *words, code=2)


def test_out_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert_one_line_error(run(["train", *SMALL, "--out", str(f)]), str(f), code=1)


def test_missing_and_corrupt_data_files(tmp_path):
    result = run(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nothing"), "--epochs", "1"],
                 env={"PARSGD_NO_DOWNLOAD": "1"})
    assert_one_line_error(result, code=1)
    mnist = tmp_path / "d" / "mnist"
    mnist.mkdir(parents=True)
    import numpy as np
    write_idx(mnist / "train-images-idx3-ubyte.gz", np.zeros((10, 28, 28), np.uint8))
    write_idx(mnist / "train-labels-idx1-ubyte.gz", np.zeros(10, np.uint8))
    write_idx(mnist / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8))
    (mnist / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    result = run(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "d"), "--batch-size", "5"],
                 env={"PARSGD_NO_DOWNLOAD": "1"})
    assert_one_line_error(result, "t10k-labels", code=1)


def test_launch_fault_schedule_is_split_per_worker():
    assert parse_launch_faults("kill=worker1@step40,stop=worker0@step6:5s,drop=0.1", 2) == {
        0: "stop@step6:5s,drop=0.1", 1: "kill@step40,drop=0.1"}
    assert_one_line_error(run(["launch", *SMALL, "--workers", "2", "--faults", "kill=worker7@step1"]),
                          "worker7", code=2)
    # FaultSpecError is a usage error: exit 2 like every other bad flag value (it was 1 before errors.UserError)
    assert_one_line_error(run(["launch", *SMALL, "--workers", "2", "--faults", "explode@3"]), "explode", code=2)


# -- commands that replace files say so (keygen refuses without --force) ------------------------------
def test_keygen_refuses_to_replace_keys_unless_forced(tmp_path):
    keys = tmp_path / "keys"
    assert run(["keygen", str(keys)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in keys.rglob("*.key*")}
    names = "server.key, server.key_secret, worker.key, worker.key_secret, authorized/worker.key"
    assert_one_line_error(run(["keygen", str(keys)]), str(keys), names, "--force", code=1)
    assert {p.name: p.read_bytes() for p in keys.rglob("*.key*")} == before, "a refused keygen changed a key"
    result = run(["keygen", str(keys), "--force"])
    assert result.exit_code == 0, result.output
    assert f"replaced the earlier keys in {keys}: {names}" in result.stdout
    assert (keys / "server.key_secret").read_bytes() != before["server.key_secret"]


def test_train_into_an_earlier_run_names_what_it_replaces(tmp_path):
    out = tmp_path / "run"
    first = run(["train", *SMALL, "--out", str(out)])
    assert first.exit_code == 0 and "replacing" not in first.output, first.output
    (out / "comm.jsonl").write_text("{}\n")   # as a parameter-server run there would have left
    (out / "checkpoint.npz").write_bytes(b"x")
    earlier = [name for name in RUN_FILES if (out / name).exists()]
    assert {"config.json", "metrics.jsonl", "comm.jsonl", "checkpoint.npz", "model.npz"} <= set(earlier)
    second = run(["train", *SMALL, "--out", str(out)])
    assert second.exit_code == 0, second.output
    lines = [line for line in second.stdout.splitlines() if "replacing" in line]
    assert lines == [f"replacing the earlier run in {out}: {', '.join(earlier)}"], second.stdout
    assert not (out / "comm.jsonl").exists() and not (out / "checkpoint.npz").exists()


def test_launch_into_an_earlier_run_says_it_once(tmp_path):
    out = tmp_path / "ps"
    assert run(["train", *SMALL, "--out", str(out)]).exit_code == 0
    earlier = [name for name in RUN_FILES if (out / name).exists()]
    assert "model.npz" in earlier
    result = run(["launch", *SMALL, "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "replacing" in line]
    assert lines == [f"[launch] replacing the earlier run in {out}: {', '.join(earlier)}"], result.stdout


# -- help --------------------------------------------------------------------------------------------
def flat(text: str) -> str:
    """`text` with every run of whitespace made one space (help text is wrapped to the terminal)."""
    return " ".join(text.split())


def test_root_help_has_whole_summaries_environment_and_completion():
    result = run(["--help"])
    assert result.exit_code == 0
    text = flat(result.output)
    assert "..." not in result.output.split("Commands:")[1], "a summary was cut"
    for name, command in cli.commands.items():
        summary = flat(command.short_help or command.help.split("\n\n")[0])  # its own short_help, else all of it
        assert f"{name} {summary}" in text, name
    for var in ("PARSGD_NO_DOWNLOAD=1", "PARSGD_DATA_DIR=DIR", "PARSGD_FAULTS=SPEC"):
        assert var in text
    assert 'eval "$(_PARSGD_COMPLETE=bash_source parsgd)"' in text


def test_completion_works_with_the_installed_click(monkeypatch):
    import subprocess
    import sys
    env = {"_PARSGD_COMPLETE": "bash_source", "PATH": "/usr/bin:/bin"}
    script = subprocess.run([sys.executable, "-m", "parsgd"], env=env, capture_output=True, text=True)
    assert script.returncode == 0 and "_parsgd_completion" in script.stdout, script.stderr
    env = {"_PARSGD_COMPLETE": "bash_complete", "COMP_WORDS": "parsgd train --num", "COMP_CWORD": "2"}
    words = subprocess.run([sys.executable, "-m", "parsgd"], env=env, capture_output=True, text=True).stdout
    assert "plain,--num-samples" in words.splitlines(), words


@pytest.mark.parametrize("command", ["train", "server", "worker", "launch", "experiment", "plot", "trace", "keygen"])
def test_every_default_is_written_one_way(command):
    text = flat(run([command, "--help"]).output)
    assert "(default" not in text and "[default " not in text and "[default: (" not in text, text
    if command in ("train", "server", "launch", "experiment"):
        assert "--num-samples INTEGER Use this many training rows (deterministic subsample from the seed). " \
               "[default: all rows]" in text.replace("--num-samples, --num_samples", "--num-samples")
        assert "[env var: PARSGD_DATA_DIR; default: $XDG_CACHE_HOME/parsgd, else ~/.cache/parsgd]" in text
    if command == "keygen":
        assert "--force" in text
