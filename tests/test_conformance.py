"""Conformance: a worker written from docs/protocol.md alone trains with a real `parsgd server`.

    python -m pytest tests/test_conformance.py -q

tests/conformance_worker.py imports no parsgd module (checked below). It trains over tcp with P = 1
and 2, with uneven shards and a partial last batch, and must equal `parsgd train` in float64 to
< 1e-12. Breaking one protocol rule at a time must get the documented ERROR (or the documented
silence) while the server keeps serving; breaking the numerical contract (wrong gradient scaling)
is invisible to the server and caught only by the comparison with `parsgd train`.
"""
from __future__ import annotations

import ast
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import conformance_worker as cw
from parsgd import __version__
from parsgd.data import Dataset, epoch_order, load_dataset, write_idx
from parsgd.model.mlp import Workspace, init_params, loss_and_grad
from procs import Procs, events, load_params, no_traceback, sequential_params

# 250 of 300 rows (--num-samples picks them), batch 65: 3 full batches and one of 55 per epoch;
# with P = 2 the shards are 33 + 32 and 28 + 27 rows.
ARGS = ["--dataset", "mnist", "--num-samples", "250", "--epochs", "2", "--batch-size", "65",
        "--hidden", "24,12", "--dtype", "float64", "--seed", "7"]
STEPS = 8
EXACT = 1e-12


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """An MNIST-format set of 300 training and 40 test rows, as IDX files."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(5)
    (root / "mnist").mkdir()
    for stem, n, shape in (("train-images-idx3-ubyte", 300, (28, 28)), ("train-labels-idx1-ubyte", 300, ()),
                           ("t10k-images-idx3-ubyte", 40, (28, 28)), ("t10k-labels-idx1-ubyte", 40, ())):
        high = 256 if shape else 10
        write_idx(root / "mnist" / f"{stem}.gz", rng.integers(0, high, (n, *shape), dtype=np.uint8))
    return root


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, data_dir) -> np.ndarray:
    return sequential_params(tmp_path_factory.mktemp("oracle"), *ARGS, "--data-dir", str(data_dir))


def config(data_dir, **changes) -> dict:
    return {"dataset": "mnist", "data_dir": str(data_dir), "num_samples": 250, "seed": 7, "dtype": "float64",
            "hidden": [24, 12], **changes}


# -- the worker is written against the specification only -------------------------------------------
def test_the_conformance_worker_imports_no_parsgd_module():
    tree = ast.parse(Path(cw.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - set(sys.stdlib_module_names) == {"numpy", "zmq", "msgpack"}


# -- the numerical contract, piece by piece, against parsgd's own functions ------------------------------
@pytest.mark.parametrize("seed", [0, 7, 42, 2**32 + 5, 2**64 - 1])
def test_spec_epoch_order_is_parsgds(seed):
    for epoch in (0, 1, 9):
        for n in (1, 2, 250, 2030):
            assert np.array_equal(cw.epoch_order(n, seed, epoch), epoch_order(n, seed, epoch))


@pytest.mark.parametrize("n,k", [(300, 250), (300, 1), (300, 300), (60_000, 1_200), (60_000, 1_201), (60_000, 60_000)])
def test_spec_subsample_is_numpys_choice(n, k):
    """Both branches of §12.4: Floyd's algorithm, and the tail shuffle above 10,000 rows and k > n // 50."""
    for seed in (7, 2**40 + 3):
        reference = np.sort(np.random.default_rng([seed, 0xDA7A, 1]).choice(n, k, replace=False))
        assert np.array_equal(cw.subsample(n, k, seed), reference)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_spec_data_and_fingerprint_are_parsgds(data_dir, dtype):
    mine = cw.load_data(config(data_dir, dtype=dtype))
    theirs = load_dataset("mnist", str(data_dir), 250, 7, dtype)
    assert mine["name"] == theirs.name
    for key in ("x_train", "y_train", "x_test", "y_test"):
        a, b = mine[key], getattr(theirs, key)
        assert a.dtype == b.dtype and np.array_equal(a, b), key
    assert cw.fingerprint(mine) == theirs.fingerprint()


def test_spec_gradient_is_parsgds():
    sizes = (784, 24, 12, 10)
    rng = np.random.default_rng(1)
    params, x, y = init_params(sizes, 3, "float64"), rng.random((33, 784)), rng.integers(0, 10, 33)
    grad = np.empty_like(params)
    loss, correct = loss_and_grad(params, sizes, x, y, grad, Workspace(sizes, "float64"), scale=1 / 65)
    mine, my_loss, my_correct = cw.loss_and_grad(params, sizes, x, y, 1 / 65)
    assert np.max(np.abs(mine - grad)) < 1e-15 and abs(my_loss - loss) < 1e-9 and my_correct == correct


def test_the_specifications_test_vectors_hold():
    """Appendix A of docs/protocol.md, recomputed with the written-out algorithms and with parsgd."""
    spec = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    rng = cw.PCG64([42, 0])
    expected = [" ".join(f"0x{w:016x}" for w in cw.seed_words([42, 0])),
                f"0x{rng.next64():016x} 0x{rng.next64():016x}",
                " ".join(map(str, cw.epoch_order(10, 42, 0))), " ".join(map(str, cw.epoch_order(10, 42, 1))),
                " ".join(map(str, cw.subsample(300, 5, 7))), " ".join(map(str, cw.subsample(60_000, 5, 7)))]
    x = (np.arange(2 * 784).reshape(2, 784) % 256).astype(np.uint8)
    for dtype in ("float64", "float32"):
        data = {"name": "mnist", "x_train": np.divide(x, 255, dtype=dtype), "y_train": np.array([3, 9], "<i8"),
                "x_test": np.zeros((0, 784), dtype), "y_test": np.zeros(0, "<i8")}
        reference = Dataset(data["name"], "", *(data[k] for k in ("x_train", "y_train", "x_test", "y_test")))
        assert cw.fingerprint(data) == reference.fingerprint()
        expected.append(cw.fingerprint(data))
    assert expected[2] == " ".join(map(str, epoch_order(10, 42, 0)))
    for value in expected:
        assert f"`{value}`" in spec, value


# -- against a real server ---------------------------------------------------------------------------------
def start_server(p: Procs, tmp_path: Path, data_dir: Path, workers: int):
    server, address = p.server(tmp_path / "run", workers, *ARGS, "--data-dir", str(data_dir))
    return server, address


def run_workers(workers: list[cw.Worker], timeout: float = 60.0) -> list:
    """Run each worker in a thread until STOP; returns their results (tasks answered, or the exception)."""
    results: list = [None] * len(workers)

    def go(i):
        try:
            results[i] = workers[i].run()
        except Exception as exc:  # noqa: BLE001 - reported by the caller's assert
            results[i] = exc

    threads = [threading.Thread(target=go, args=(i,), daemon=True) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a conformance worker did not stop"
    return results


def finished(server, tmp_path: Path, workers: int) -> np.ndarray:
    """The server exited 0 after a whole run that every worker left cleanly; returns its model."""
    assert server.wait(60) == 0, server.output()[-3000:]
    no_traceback(server)
    run = tmp_path / "run"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    left = [e for e in events(run) if e["event"] == "left"]
    assert len(left) == workers, events(run)                  # each sent its empty LOGS (§5.4)
    return load_params(run)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_conformance_worker_equals_sequential(tmp_path, data_dir, oracle, workers):
    with Procs(tmp_path) as p:
        server, address = start_server(p, tmp_path, data_dir, workers)
        pool = [cw.Worker(address, __version__, name=f"c{i}") for i in range(workers)]
        results = run_workers(pool)
        assert all(isinstance(r, int) for r in results), results
        assert sum(results) == STEPS * workers                   # one shard per worker per step, none empty
        params = finished(server, tmp_path, workers)
    assert np.max(np.abs(params - oracle)) < EXACT
    rows = [json.loads(line) for line in (tmp_path / "run" / "comm.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r["role"] == "worker"]         # their LOGS reached comm.jsonl (§4.8)
    assert {r["rank"] for r in mine} == set(range(workers)) and {"recv", "compute", "send"} <= {r["span"] for r in mine}


@pytest.mark.slow
def test_wrong_versions_are_refused_and_the_server_keeps_serving(tmp_path, data_dir, oracle):
    with Procs(tmp_path) as p:
        server, address = start_server(p, tmp_path, data_dir, 1)
        worker = cw.Worker(address, __version__, timeout_s=20)
        with pytest.raises(cw.Refused) as refused:
            worker.register(hello_break="package_version")
        assert refused.value.code == "VERSION"
        assert __version__ in refused.value.message and "0.0.0+conformance" in refused.value.message
        with pytest.raises(cw.Refused) as refused:
            worker.register(hello_break="v1")
        assert refused.value.code == "VERSION" and "protocol 1" in refused.value.message
        with pytest.raises(TimeoutError):                       # §8: no ERROR to a peer that is not a worker
            cw.Worker(address, __version__, timeout_s=1.5).register(hello_break="missing_session")
        assert run_workers([worker]) == [STEPS]
        params = finished(server, tmp_path, 1)
    assert np.max(np.abs(params - oracle)) < EXACT
    refusals = [e for e in events(tmp_path / "run") if e["event"] == "refused"]
    assert [e["reason"] for e in refusals] == ["version", "version"]


@pytest.mark.slow
def test_data_mismatches_are_refused_naming_what_differs_without_the_fingerprint(tmp_path, data_dir, oracle):
    with Procs(tmp_path) as p:
        server, address = start_server(p, tmp_path, data_dir, 1)
        worker = cw.Worker(address, __version__, timeout_s=20)
        for ready_break, named in (("fingerprint", "other bytes"), ("n_train", "training rows 251 (server: 250)"),
                                   ("dataset", "dataset 'fashion-mnist' (server: 'mnist')"),
                                   ("data_dtype", "dtype 'float32' (server: 'float64')")):
            with pytest.raises(cw.Refused) as refused:
                worker.register(ready_break=ready_break)
            assert refused.value.code == "DATA_MISMATCH", ready_break
            assert named in refused.value.message, refused.value.message
            assert worker.fingerprint not in refused.value.message      # §12.5: nothing to copy
        assert run_workers([worker]) == [STEPS]
        params = finished(server, tmp_path, 1)
        assert worker.fingerprint not in server.output()
    assert np.max(np.abs(params - oracle)) < EXACT


@pytest.mark.slow
def test_malformed_messages_get_bad_message_or_stale_and_the_run_goes_on(tmp_path, data_dir, oracle):
    breaks = dict(enumerate(cw.GRAD_BREAKS))
    with Procs(tmp_path) as p:
        server, address = start_server(p, tmp_path, data_dir, 1)
        worker = cw.Worker(address, __version__, grad_breaks=breaks)
        assert run_workers([worker]) == [STEPS]
        params = finished(server, tmp_path, 1)
    assert [(step, code) for step, code, _ in worker.errors] == [
        (0, "BAD_MESSAGE"), (1, "BAD_MESSAGE"), (2, "BAD_MESSAGE"), (3, "BAD_MESSAGE"), (4, "STALE"),
        (5, "BAD_MESSAGE"), (6, "BAD_MESSAGE"), (7, "-")], worker.errors   # a stale HEARTBEAT: silence
    messages = [m for _, _, m in worker.errors]
    assert "compute_s" in messages[0] and "payload" in messages[1] and "does not match the model" in messages[2]
    assert "not a shard it was given" in messages[6]
    assert np.max(np.abs(params - oracle)) < EXACT
    assert not [e for e in events(tmp_path / "run") if e["event"] == "dead"]


@pytest.mark.slow
def test_wrong_gradient_scaling_is_invisible_to_the_server_but_not_to_the_comparison(tmp_path, data_dir, oracle):
    """Each worker divides by its shard's rows instead of TASK.batch (§11.3): every message is valid,
    the server trains to the end, and only the comparison with `parsgd train` shows the model is wrong."""
    with Procs(tmp_path) as p:
        server, address = start_server(p, tmp_path, data_dir, 2)
        results = run_workers([cw.Worker(address, __version__, name=f"c{i}", scale="shard") for i in range(2)])
        assert results == [STEPS, STEPS]
        params = finished(server, tmp_path, 2)
        assert "error" not in server.output().lower()
    assert np.max(np.abs(params - oracle)) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("transport,shard_by", [("tcp", "elements"), ("shm", "layer")])
def test_conformance_workers_with_two_servers_equal_sequential(tmp_path, data_dir, oracle, transport, shard_by):
    """§15: written from the text alone, P = 2 workers pull every part, push every part, wait for the ACKs
    and send GRAD without payload, against server 0 and a real range server: the same model."""
    with Procs(tmp_path) as p:
        server, address = p.server(tmp_path / "run", 2, *ARGS, "--data-dir", str(data_dir), "--servers", "2",
                                   "--shard-by", shard_by, transport=transport)
        ranged = p.start("server", ["server", "--servers", "2", "--rank", "1", "--connect", address]
                         + ([] if transport == "shm" else ["--no-shm"]))
        pool = [cw.Worker(address, __version__, name=f"c{i}") for i in range(2)]
        results = run_workers(pool)
        assert all(isinstance(r, int) for r in results), results
        assert sum(results) == STEPS * 2
        params = finished(server, tmp_path, 2)
        assert ranged.wait() == 0, ranged.output()[-2000:]
    assert np.max(np.abs(params - oracle)) < EXACT
