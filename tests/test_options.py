"""Option values that parse but mean nothing: each is exit 2 with one line naming the option, the value
and the allowed range, before any data is loaded (or generated) and before anything starts.

    python -m pytest -q tests/test_options.py
"""

import numpy as np
import pytest

from procs import cli_run as run
from procs import one_line_error as _one_line_error
from parsgd.config import RunConfig, ServerOptions
from parsgd.data import write_idx

pytestmark = pytest.mark.xdist_group("machine-wide")  # machine-wide: tests/conftest.py

TINY = ["--dataset", "synthetic", "--num-samples", "256", "--epochs", "1", "--hidden", "8", "--batch-size", "64"]







def one_line_error(result, code, *words, within=2.0):
    return _one_line_error(result, code, *words, before_loading=True, within=within)


TRAINING = [  # (option, value, words of the one line besides the option and the value)
    ("--epochs", "0", ["at least 1"]),
    ("--epochs", "-3", ["at least 1"]),
    ("--batch-size", "0", ["at least 1"]),
    ("--lr", "0", ["finite number > 0"]),
    ("--lr", "-0.1", ["finite number > 0"]),
    ("--lr", "nan", ["finite number > 0"]),
    ("--lr", "inf", ["finite number > 0"]),
    ("--momentum", "1", ["[0, 1)"]),
    ("--momentum", "nan", ["[0, 1)"]),
    ("--momentum", "-inf", ["[0, 1)"]),
    ("--hidden", "0", [">= 1"]),
    ("--hidden", "", ["empty"]),
    ("--seed", "-1", ["0 to 2**64-1"]),
    ("--seed", str(2**64), ["0 to 2**64-1"]),
    ("--num-samples", "0", ["at least 1"]),
]


def with_option(option, value):
    """TINY with `option` set to `value` (replacing its value there, if any)."""
    opts = dict(zip(TINY[::2], TINY[1::2]))
    opts[option] = value
    return [x for pair in opts.items() for x in pair]


@pytest.mark.parametrize("command", ["train", "server", "launch", "experiment"])
@pytest.mark.parametrize("option,value,words", TRAINING)
def test_bad_training_value_is_exit_2_naming_option_value_and_range(tmp_path, command, option, value, words):
    out = tmp_path / "run"
    one_line_error(run([command, *with_option(option, value), "--out", out]), 2, option, value, *words)
    assert not out.exists()


SERVER = [
    ("--wait-timeout", "inf"), ("--wait-timeout", "nan"), ("--heartbeat", "-1"), ("--heartbeat", "inf"),
    ("--heartbeat", "1e-09"), ("--step-timeout", "nan"), ("--step-timeout", "inf"), ("--liveness", "0"),
    ("--liveness", str(2**53)), ("--checkpoint-every", "-1"),
]


@pytest.mark.parametrize("command", ["server", "launch"])
@pytest.mark.parametrize("option,value", SERVER)
def test_bad_server_knob_is_exit_2(tmp_path, command, option, value):
    out = tmp_path / "run"
    one_line_error(run([command, *TINY, option, value, "--out", out]), 2, option, value, "out of range", "must be")
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_bad_register_timeout(tmp_path, value):
    one_line_error(run(["server", *TINY, "--register-timeout", value, "--out", tmp_path / "r"]), 2,
                   "--register-timeout", value, "finite number > 0 seconds")


@pytest.mark.parametrize("command,args,words", [
    ("train", ["--workers", "0"], ["--workers", "at least 1"]),
    ("train", ["--blas-threads", "0"], ["--blas-threads 0", ">= 1"]),
    ("train", ["--blas-threads", "-2"], ["--blas-threads -2", ">= 1"]),
    ("server", ["--workers", "0"], ["--workers", "at least 1"]),
    ("launch", ["--workers", "0"], ["--workers", "at least 1"]),
    ("launch", ["--restart-workers", "-1"], ["--restart-workers -1", ">= 0"]),
    ("launch", ["--faults", "hang@3:nan"], ["--faults", "hang@3:nan", "SECONDS a finite number >= 0"]),
    ("launch", ["--faults", "delay=0.5:inf"], ["delay=0.5:inf", "SECONDS a finite number >= 0"]),
    ("launch", ["--faults", "kill=worker0@step-1"], ["kill@step-1", "STEP is a whole number >= 0"]),
    ("launch", ["--faults", "drop=nan"], ["drop=nan"]),
    ("experiment", ["--workers", "0"], ["--workers", "between 1 and --batch-size"]),
    ("experiment", ["--workers", "2,2"], ["--workers 2,2", "2 twice"]),
    ("experiment", ["--workers", "2", "--workers", "2"], ["--workers 2,2", "2 twice"]),
    ("experiment", ["--modes", "pool,pool", "--workers", "2"], ["--modes pool,pool", "pool twice"]),
    ("experiment", ["--transport", "shm,shm", "--workers", "2"], ["--transport shm,shm", "shm twice"]),
])
def test_bad_counts_and_lists(tmp_path, command, args, words):
    out = tmp_path / "run"
    one_line_error(run([command, *TINY, *args, "--out", out]), 2, *words)
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_bad_connect_timeout(value):
    one_line_error(run(["worker", "--connect-timeout", value]), 2, "--connect-timeout", value,
                   "finite number > 0 seconds")


@pytest.mark.parametrize("command", ["train", "server", "launch", "experiment"])
def test_num_samples_beyond_the_synthetic_set_is_refused_before_generating(tmp_path, command):
    out = tmp_path / "run"
    args = [command, "--dataset", "synthetic", "--num-samples", "999999", "--out", out]
    err = one_line_error(run(args), 2, "--num-samples 999999", "60000", "synthetic", within=1.0)
    assert "at most 60000" in err and not out.exists()


def test_num_samples_beyond_a_folder_set_names_its_size_before_reading_it(tmp_path):
    mnist = tmp_path / "data" / "mnist"
    mnist.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, n in (("train", 300), ("t10k", 50)):
        write_idx(mnist / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(mnist / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    for command in ("train", "launch"):
        err = one_line_error(run([command, "--dataset", "auto", "--data-dir", tmp_path / "data", "--num-samples",
                                  "301", "--batch-size", "64", "--out", tmp_path / "run"]), 2,
                             "--num-samples 301", "300 training rows", str(mnist))
        assert "at most 300" in err
    result = run(["train", "--dataset", "mnist", "--data-dir", tmp_path / "data", "--num-samples", "300",
                  "--batch-size", "64", "--hidden", "8", "--epochs", "1", "--out", tmp_path / "ok"])
    assert result.exit_code == 0, result.output  # all the rows there are is fine


def test_valid_edge_values_keep_their_meaning():
    assert RunConfig(seed=0, lr=1e-300, momentum=0.0).seed == 0
    assert RunConfig(seed=2**64 - 1).seed == 2**64 - 1
    assert ServerOptions(heartbeat_s=1e-6, liveness=2**53 - 1, wait_timeout_s=1e300).wait_timeout_s == 1e300
    assert ServerOptions(checkpoint_every=0).checkpoint_every == 0


# -- list options: an empty item is a typo, never a shorter list ----------------------------------------
LIST_VALUES = [("2,,4", "two commas in a row"), (",2", "starts with a comma"), ("2,", "ends with a comma"),
               ("", "is empty"), ("  ", "is empty")]
LIST_OPTIONS = [  # (command, the option, a good item of it, arguments it needs besides TINY)
    *[(command, "--hidden", "8", []) for command in ("train", "server", "launch", "experiment")],
    ("experiment", "--workers", "2", []),
    ("experiment", "--modes", "sequential", []),
    ("experiment", "--transport", "shm", []),
    ("experiment", "--consistency", "bsp", []),
    ("experiment", "--link", "1gbit", []),
    ("estimate", "--workers", "2", None),
    ("estimate", "--link", "1gbit", None),
]


@pytest.mark.parametrize("command,option,item,extra", LIST_OPTIONS)
@pytest.mark.parametrize("shape,where", LIST_VALUES)
def test_an_empty_item_of_any_list_option_is_refused(tmp_path, command, option, item, extra, shape, where):
    """`--hidden 256,,128` once trained a 2-layer net: every list option now refuses an empty item,
    exit 2, one line naming the option, the value as given and how to write it."""
    value = shape.replace("2", item)
    out = tmp_path / "run"
    args = [command, "no-such-run", option, value] if extra is None else \
        [command, *with_option(option, value), *extra, "--out", out]
    err = one_line_error(run(args), 2, option, repr(value), where, "separated by commas or spaces")
    assert f"e.g. {option} " in err, err
    assert not out.exists()


@pytest.mark.parametrize("command", ["launch", "worker", "experiment"])
@pytest.mark.parametrize("value,where", [("kill@3,,drop=0.1", "two commas in a row"), (",kill@3", "starts with"),
                                         ("kill@3,", "ends with a comma")])
def test_an_empty_item_of_a_fault_schedule_is_refused(tmp_path, command, value, where):
    args = ["worker", "--connect-timeout", "1"] if command == "worker" else [command, *TINY, "--out", tmp_path / "r"]
    one_line_error(run([*args, "--faults", value]), 2, "--faults", repr(value), where, "e.g. --faults ")
    assert not (tmp_path / "r").exists()


def test_spaces_separate_items_however_many(tmp_path):
    """Spaces are separators: '8  4', ' 8 4 ', '8, 4' all mean 8,4 (one run of spaces is not an empty item)."""
    import json
    for i, value in enumerate(["8  4", " 8 4 ", "8, 4", "8 ,4"]):
        out = tmp_path / f"r{i}"
        result = run(["train", *with_option("--hidden", value), "--out", out])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "config.json").read_text())["config"]["hidden"] == [8, 4], value
