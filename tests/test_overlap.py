"""--overlap layer | bucket: the per-layer backward changes no number, the push plan is DDP's bucket rule,
PART is checked like every message, and real runs (one server and two) train the `none` model bit for
bit, also when a worker dies with some of its parts sent.

    python3 -m pytest -q tests/test_overlap.py
"""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from parsgd.config import ConfigError, RunConfig
from parsgd.model.keyranges import key_ranges
from parsgd.model.mlp import Workspace, backward_layers, init_params, layer_bounds, loss_and_grad, n_params
from parsgd.ps import protocol as proto
from parsgd.analysis.overlapreport import hidden_vs_none, overlap_figures
from parsgd.analysis.rundirs import load_run
from parsgd.ps.overlap import PartAssembler, pieces, pull_plan, push_plan
from procs import PY, events, load_params, sequential_params
from tracecheck import comm_overlaps

SIZES = (784, 256, 128, 10)   # layers of 200,960 / 32,896 / 1,290 elements
ARGS = ["--dataset", "synthetic", "--num-samples", "2000", "--epochs", "1", "--hidden", "32,16",
        "--batch-size", "100", "--dtype", "float64", "--seed", "7"]
KNOBS = ["--heartbeat", "0.2", "--liveness", "5", "--step-timeout", "1"]


def test_backward_layers_yields_each_layer_final_last_first_and_changes_no_number():
    rng = np.random.default_rng(3)
    sizes = (784, 32, 16, 10)
    params = init_params(sizes, 5, "float32")
    x, y = rng.standard_normal((40, 784)).astype(np.float32), rng.integers(0, 10, 40)
    whole = np.empty(n_params(sizes), np.float32)
    expect = loss_and_grad(params, sizes, x, y, whole, Workspace(sizes, "float32"), scale=1 / 100)
    grad, seen = np.full(n_params(sizes), np.nan, np.float32), []
    steps = backward_layers(params, sizes, x, y, grad, Workspace(sizes, "float32"), 1 / 100,
                            before_layer=lambda i: seen.append(("forward", i)))
    while True:
        try:
            i = next(steps)
        except StopIteration as done:
            result = done.value
            break
        lo, hi = layer_bounds(sizes)[i]
        assert np.array_equal(grad[lo:hi], whole[lo:hi]), f"layer {i} is not final when it is yielded"
        seen.append(("backward", i))
    assert seen == [("forward", 0), ("forward", 1), ("forward", 2), ("backward", 2), ("backward", 1), ("backward", 0)]
    assert result == expect and np.array_equal(grad, whole)


def test_push_plan_layer_and_bucket_by_hand():
    b = layer_bounds(SIZES)
    assert b == [(0, 200960), (200960, 233856), (233856, 235146)]
    assert push_plan(SIZES, "none", 1, 4) == []
    assert push_plan(SIZES, "layer", 1, 4) == [(2, 233856, 235146), (1, 200960, 233856), (0, 0, 200960)]
    # 64 KiB: the last layer (5,160 B) is too small alone, with layer 2 (131,584 B more) the bucket is full
    assert push_plan(SIZES, "bucket", 65536, 4) == [(1, 200960, 235146), (0, 0, 200960)]
    assert push_plan(SIZES, "bucket", 4, 4) == push_plan(SIZES, "layer", 1, 4)      # every layer fills one
    assert push_plan(SIZES, "bucket", 10**9, 4) == [(0, 0, 235146)]                   # one bucket: all at the end
    assert pull_plan(SIZES, "bucket", 65536, 4) == [(0, 200960), (200960, 235146)]   # first layer first


def test_pieces_cut_a_range_at_the_servers_key_ranges():
    kr = key_ranges(SIZES, "float32", 2, "elements")   # [0, 117584) and [117584, 235146)
    assert kr.ranges == (((0, 117584),), ((117584, 235146),))
    assert pieces(kr, 100000, 120000) == [(0, 100000, 117584, 100000), (1, 0, 2416, 117584)]
    assert pieces(kr, 200960, 235146) == [(1, 83376, 117562, 200960)]
    kr = key_ranges(SIZES, "float32", 2, "layer")   # server 0: layer 1; server 1: layers 2 and 3
    assert pieces(kr, 233856, 235146) == [(1, 32896, 34186, 233856)]


def test_part_assembler_takes_only_a_whole_cover_and_refuses_overlaps():
    asm = PartAssembler(10, "float32", 2)
    key = (7, 3, 1)
    assert asm.add(key, 6, 10, np.arange(6, 10, dtype=np.float32)) is None
    assert "overlaps" in asm.add(key, 5, 7, np.zeros(2, np.float32))
    assert "float64" in asm.add(key, 0, 6, np.zeros(6, np.float64))
    assert asm.take(key) is None, "a GRAD before all its parts"
    asm.add(key, 0, 6, np.arange(6, dtype=np.float32))
    asm.add(key, 6, 10, np.arange(6, 10, dtype=np.float32))
    assert np.array_equal(asm.take(key), np.arange(10, dtype=np.float32))
    asm.add((8, 3, 0), 0, 4, np.zeros(4, np.float32))
    asm.discard(8)
    assert asm.open == {}


def test_part_round_trip_and_bad_sizes():
    part = proto.Part(1, 2, 3, 0, 10, 14, np.arange(4, dtype=np.float32))
    assert proto.decode(part.to_frames()) == part
    with pytest.raises(proto.ProtocolError, match="3 values"):
        proto.Part(1, 2, 3, 0, 10, 14, np.arange(3, dtype=np.float32)).to_frames()
    with pytest.raises(proto.ProtocolError, match="empty"):
        proto.Part(1, 2, 3, 0, 5, 5, np.zeros(0, np.float32)).to_frames()


def test_overlap_is_bsp_only_and_bad_values_are_one_line():
    with pytest.raises(ConfigError, match="bsp only"):
        RunConfig(overlap="layer", consistency="async")
    with pytest.raises(ConfigError, match="--bucket-bytes"):
        RunConfig(overlap="bucket", bucket_bytes=0)
    result = subprocess.run(PY + ["launch", "--workers", "2", "--consistency", "ssp", "--overlap", "bucket"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: --overlap bucket is for --consistency bsp only")


@pytest.mark.parametrize("command, words", [
    ("launch", ["--workers", "2"]),
    ("experiment", ["--modes", "ps", "--workers", "2", "--overlap", "layer,bucket", "--compress", "topk:0.1,sign"]),
])
def test_overlap_with_compression_is_refused_in_one_line(command, words, tmp_path):
    """A PART carries raw values: --overlap layer|bucket with a codec is exit 2 before anything runs (an
    experiment runs its overlap modes with --compress none only, so it needs none in one of the lists)."""
    with pytest.raises(ConfigError, match="not supported together"):
        RunConfig(overlap="layer", compress="fp16")
    extra = ["--overlap", "layer", "--compress", "fp16"] if command == "launch" else []
    result = subprocess.run(PY + [command, *words, *extra, "--dataset", "synthetic", "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "not supported together" in result.stderr and not (tmp_path / "o").exists()


def launch(out, *extra, workers=2):
    result = subprocess.run(PY + ["launch", "--workers", str(workers), *ARGS, *KNOBS, "--out", str(out), *extra],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr, \
        result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def none_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("none")
    launch(tmp / "run", "--overlap", "none", workers=3)
    return tmp / "run"


@pytest.fixture(scope="module")
def none_model(none_run):
    return load_params(none_run)


@pytest.mark.slow
@pytest.mark.parametrize("servers,overlap", [(1, "layer"), (1, "bucket"), (2, "layer")])  # S=2: layer 0 in two pieces
def test_overlap_trains_the_none_model_bit_for_bit(tmp_path, none_run, none_model, servers, overlap):
    out = tmp_path / "run"
    result = launch(out, "--overlap", overlap, "--bucket-bytes", "2048", "--servers", str(servers), workers=3)
    assert "shared memory is not offered" in result.stdout
    assert np.array_equal(load_params(out), none_model)
    comm = [json.loads(ln) for ln in (out / "comm.jsonl").read_text().splitlines()]
    sends = [r for r in comm if r["role"] == "worker" and r["span"] == "send" and r["step"] == 4]
    parts = len(push_plan((784, 32, 16, 10), overlap, 2048, 8))   # 3 layers; buckets of >= 2 KiB: 2
    assert len(sends) >= parts + 1, "a send span per part (per server with S servers), then the GRAD's"
    assert comm_overlaps(out / "comm.jsonl") == [], "the part spans nest in the compute span"
    if servers == 1:  # P3: the parameter parts reach each worker first layer first, inside its compute span
        pulls = [(hi - lo) * 8 for lo, hi in pull_plan((784, 32, 16, 10), overlap, 2048, 8)]
        for rank in {r["rank"] for r in comm if r["role"] == "worker"}:
            recvs = sorted((r["t"], r["bytes"]) for r in comm if r["role"] == "worker" and r["rank"] == rank
                           and r["span"] == "recv" and r["step"] == 4)
            if recvs:  # the TASK (a header), then each part: its payload and a header of < 300 bytes
                assert len(recvs) == 1 + len(pulls) and all(0 < b - p < 300 for (_, b), p in zip(recvs[1:], pulls))
    if servers == 1:  # the report's figures: layers 2 and 1 (5,584 of 206,464 bytes) leave during backprop
        fig, base = overlap_figures(load_run(out)), overlap_figures(load_run(none_run))
        assert base["early"] == 0 and 0.02 < fig["early"] < 0.05 and fig["overlap"] == overlap
        line, = hidden_vs_none([load_run(out)], [[load_run(none_run)]])
        assert line.startswith(f"  against {load_run(none_run).label}: ") and "beyond the compute" in line


@pytest.mark.slow
def test_overlap_equals_train(tmp_path, none_model):
    """none_model is every overlap mode's (above): all of them equal `parsgd train`'s in float64."""
    oracle = sequential_params(tmp_path / "seq", *ARGS)
    assert np.max(np.abs(none_model - oracle)) < 1e-12


@pytest.mark.slow
def test_a_worker_killed_with_some_parts_sent_leaves_the_update_intact(tmp_path, none_model):
    """Worker 0 SIGKILLs itself 0.2 s after the first PART of step 5 left: the server holds that part,
    never the GRAD; the shard goes to another worker and the step's sum uses only that worker's parts."""
    run = tmp_path / "run"
    result = launch(run, "--overlap", "layer", "--faults", "killpart=worker0@step5", "--transport", "tcp",
                    "--step-timeout", "5", workers=3)  # the death (1 s of silence) is seen before the timeout
    assert "fault injection: killpart at step 5" in result.stdout
    dead = [e for e in events(run) if e["event"] == "dead"]
    assert len(dead) == 1 and dead[0]["step"] == 5, dead
    assert [e["step"] for e in events(run) if e["event"] == "reassign"] == [5]
    assert not [e for e in events(run) if e["event"] == "protocol_error"]
    recvs = [r["step"] for r in map(json.loads, (run / "comm.jsonl").read_text().splitlines())
             if r["role"] == "server" and r["span"] == "recv"]
    assert recvs.count(5) > recvs.count(4), "the dead worker's part of step 5 reached the server"
    assert np.array_equal(load_params(run), none_model)


def test_experiment_plans_each_overlap_mode_for_bsp_only():
    from parsgd.jobs.experiment import plan
    configs = plan([2], ("ps",), ("tcp",), consistencies=("bsp", "async"), overlaps=("none", "layer", "bucket"),
                   bucket_bytes=4096)
    assert [(c.consistency, c.overlap) for c in configs] == [("bsp", "none"), ("bsp", "layer"), ("bsp", "bucket"),
                                                            ("async", "none")]
    assert [c.label for c in configs] == ["ps P=2 tcp", "ps P=2 tcp overlap layer", "ps P=2 tcp overlap bucket 4096 B",
                                          "ps P=2 tcp async"]
    assert len({c.dirname for c in configs}) == 4


def test_an_experiment_plans_overlap_modes_with_compress_none_only():
    from parsgd.jobs.experiment import plan
    configs = plan([2], ("ps",), ("tcp",), overlaps=("none", "layer"), compresses=("none", "topk:0.1"))
    assert [(c.overlap, c.compress) for c in configs] == [("none", "none"), ("none", "topk:0.1"), ("layer", "none")]
