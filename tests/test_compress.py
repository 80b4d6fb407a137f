"""--compress with real processes: replay to the bit in bsp / ssp / async and with --servers S, fp16
within float16 rounding of none, sign worse without error feedback, residuals when a worker dies.

    python -m pytest tests/test_compress.py -q
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from parsgd.analysis.compress_plots import compression_series
from parsgd.analysis.rundirs import load_run
from parsgd.model.mlp import init_params
from procs import load_params, parsgd

DATA = ["--dataset", "synthetic", "--num-samples", "2000", "--hidden", "32,16"]
ARGS = [*DATA, "--epochs", "3"]
SIZES = (784, 32, 16, 10)

pytestmark = pytest.mark.slow


def run(out, workers, *extra, transport="tcp", ok=(0,)):
    result = parsgd("launch", "--workers", workers, "--transport", transport, *ARGS, "--out", out, *extra)
    assert result.returncode in ok, result.stdout[-3000:] + result.stderr[-2000:]
    return result


def updates(out):
    return [json.loads(line) for line in (out / "updates.jsonl").read_text().splitlines()]


def replays(out):
    result = parsgd("replay", out)
    assert result.returncode == 0 and "max |difference| from" in result.stdout and result.stdout.rstrip().endswith(" 0"), \
        result.stdout + result.stderr


@pytest.mark.parametrize("codec,extra,transport", [
    ("topk:0.05", [], "tcp"),
    ("qsgd:8", ["--consistency", "async", "--momentum", "0.5", "--lr-staleness", "inverse"], "tcp"),
    ("randk:0.1", ["--consistency", "ssp", "--staleness", "1", "--servers", "2"], "tcp"),
    ("powersgd:2", ["--servers", "2", "--shard-by", "layer"], "shm"),
])
def test_compressed_runs_replay_to_the_bit(tmp_path, codec, extra, transport):
    out = tmp_path / "run"
    run(out, 3, "--compress", codec, *extra, transport=transport, ok=(0, 3))  # diverged (3) is a whole run too
    recs = updates(out)
    assert all("ef" in u for u in recs)  # whose residual each gradient used: replay needs it
    comm = [json.loads(line) for line in (out / "comm.jsonl").read_text().splitlines()]
    if transport == "tcp":  # GRAD bytes on the wire are the encoded ones: well under the raw vector
        raw = init_params(SIZES, 42, "float32").nbytes
        sends = [c for c in comm if c.get("span") == "send" and c.get("role", "worker") != "server" and c.get("bytes")]
        assert sends and max(c["bytes"] for c in sends) < 0.6 * raw, max(c["bytes"] for c in sends)
        (series,) = compression_series([load_run(out)])  # compression.png: pushes encoded, pulls raw
        assert series["push_kb"] < 0.6 * series["raw_push_kb"] and series["ratio"] < 0.8, series
        if "--consistency" not in extra:  # bsp: each step pulls and pushes P whole vectors
            assert series["raw_push_kb"] == pytest.approx(series["pull_kb"], rel=0.05), series
    replays(out)


def test_fp16_trains_within_float16_rounding_of_none(tmp_path):
    init = init_params(SIZES, 42, "float32")
    moved = {}
    for codec in ("none", "fp16"):
        run(tmp_path / codec, 2, "--compress", codec, "--no-error-feedback")
        moved[codec] = load_params(tmp_path / codec) - init
    gap = np.linalg.norm(moved["fp16"] - moved["none"]) / np.linalg.norm(moved["none"])
    steps = len(updates(tmp_path / "fp16"))
    assert 0 < gap < steps * 2.0**-11, gap  # float16 rounds each gradient by <= 2**-11 (relative), once a step
    acc = {c: json.loads((tmp_path / c / "metrics.jsonl").read_text().splitlines()[-1])["test_acc"] for c in moved}
    assert abs(acc["fp16"] - acc["none"]) <= 0.01, acc


def test_sign_without_error_feedback_does_worse(tmp_path):
    loss = {}
    for ef in ("--error-feedback", "--no-error-feedback"):
        run(tmp_path / ef, 2, "--compress", "sign", ef)
        loss[ef] = json.loads((tmp_path / ef / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"]
    assert loss["--no-error-feedback"] > loss["--error-feedback"] + 0.1, loss  # Karimireddy et al. 2019


def test_a_dead_workers_residual_goes_with_it_and_a_new_session_starts_from_zero(tmp_path):
    """worker 1 crashes at step 8 and is restarted: its old session's sequence stops, its shards are
    compressed with the survivors' residuals, the new session starts at ef_seq 0, and replay agrees."""
    out = tmp_path / "run"
    result = run(out, 3, "--compress", "topk:0.05", "--heartbeat", "0.2", "--liveness", "3", "--step-timeout", "2",
                 "--restart-workers", "1", "--faults", "crash=worker1@step8,delay=1:0.05")
    assert "restarting worker 1" in result.stdout
    seqs: dict[int, list[int]] = {}
    for u in updates(out):
        for session, seq in u["ef"]:
            seqs.setdefault(session, []).append(seq)
    assert len(seqs) == 4, seqs  # three first sessions and the restarted one
    for s in seqs.values():  # each session's residual moved through every gradient it sent, in order
        assert s == list(range(len(s))), s
    replays(out)


def test_a_resumed_run_starts_its_residuals_from_zero_and_replays(tmp_path):
    """2 epochs, then `launch --resume --epochs 3`: the new sessions' residuals start at zero at the
    checkpoint (the old ones held error from steps that are redone or gone) and replay follows."""
    out = tmp_path / "run"
    parsgd_args = ["--compress", "topk:0.05", "--transport", "tcp"]
    result = parsgd("launch", "--workers", "2", *parsgd_args, *DATA, "--epochs", "2", "--out", out)
    assert result.returncode == 0, result.stdout[-3000:]
    before = {s for u in updates(out) for s, _ in u["ef"]}
    result = parsgd("launch", "--resume", out, "--epochs", "3")
    assert result.returncode == 0 and "resuming" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]
    recs = updates(out)
    after = [u for u in recs if not {s for s, _ in u["ef"]} <= before]
    assert after and after[0]["update"] == 16 and sorted(q for _, q in after[0]["ef"]) == [0, 0], after[:1]
    replays(out)
