"""`parsgd train` through click's CliRunner: good runs, and one clear line for every bad value."""
import json

import pytest
from click.testing import CliRunner

from parsgd.cli import cli
from parsgd.ps.faults import parse_launch_faults
from parsgd.data import write_idx

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
