"""The overlap pipeline model (analysis/overlapmodel.py) against steps worked out by hand, its buckets
against the workers' push plan, its advice at the two extremes, and `estimate --overlap` on a real run.

    python3 -m pytest -q tests/test_overlapmodel.py
"""
from __future__ import annotations

import json
import subprocess

import pytest

from parsgd.analysis.overlapmodel import Pipeline, advise, buckets_of, layer_bytes, step_time
from parsgd.ps.overlap import push_plan
from procs import PY


def pipe(**kw):
    """Two layers: layer 0 of 4 bytes and 3 s of backward, layer 1 of 1 byte and 2 s; 1 byte/s, no header."""
    base = dict(forward_s=(0.0, 0.0), backward_s=(3.0, 2.0), layer_bytes=(4, 1), workers=1, rate=1.0, header_bytes=0)
    return Pipeline(**{**base, **kw})


def test_one_worker_by_hand():
    # none: params 5 B in at 5; backward 5..10; gradient 5 B out: 15
    # layer: layer 0's params in at 4, layer 1's at 5; layer 1's gradient at 7 (out by 8), layer 0's at 10: 14
    assert step_time(pipe(), "none")["step_s"] == 15.0
    assert step_time(pipe(), "layer")["step_s"] == 14.0
    # 1 s of latency each message: none 6 + 5 + 1 + 5 = 17; layer: forward at 6, layer 0's gradient ready at
    # the server at 11 + 1 and through by 16
    assert step_time(pipe(alpha_s=1.0), "none")["step_s"] == 17.0
    assert step_time(pipe(alpha_s=1.0), "layer")["step_s"] == 16.0
    # 3 s per message held on the link: none 3 + 5 (in at 8) + 5 (backward) + 5 + 3 = 21; layer pays it 4 times:
    # in at 7 and 11, gradients ready at 13 and 16, the server through at 17 and 24
    assert step_time(pipe(message_s=3.0), "none")["step_s"] == 21.0
    assert step_time(pipe(message_s=3.0), "layer")["step_s"] == 24.0


def test_two_workers_share_the_server_link_by_hand():
    # layer: worker 0's parts in at 4, 5, worker 1's at 9, 10; gradients ready at 7 (1 B), 10 (4 B), 12, 15;
    # the server's link takes them at 8, 14, 15, 19; none: ready at 10 and 15, through at 15 and 20
    two = pipe(workers=2, server_s=0.5)
    assert step_time(two, "layer")["step_s"] == 19.5
    assert step_time(two, "none")["step_s"] == 20.5
    one_layer = Pipeline((0.0,), (1.0,), (2,), 2, 1.0, server_s=0.5, header_bytes=0)
    assert step_time(one_layer, "none")["step_s"] == 7.5   # ready at 3 and 5, through at 5 and 7


def test_sealing_and_opening_each_message_by_hand():
    # 0.5 s/byte at each end: the 2-byte parameters sealed by 1, on the link by 3, opened by 4; backward
    # to 5; the gradient sealed by 6, through by 8, opened by 9
    one = Pipeline((0.0,), (1.0,), (2,), 1, 1.0, cpu_s_per_byte=0.5, header_bytes=0)
    assert step_time(one, "none")["step_s"] == 9.0
    # two layers (4 B, 1 B): parts sealed by 2 and 2.5, on the link by 6 and 7, open by 8 and 7.5, so the
    # forward starts at 8; layer 1's gradient (backward 8..10) sealed by 10.5, through by 11.5, open by 12;
    # layer 0's (to 13) sealed by 15, through by 19, open by 21; none: all 5 B: 2.5 + 5 + 2.5 + 5 + 2.5 + 5
    # + 2.5 = 25
    assert step_time(pipe(cpu_s_per_byte=0.5), "layer")["step_s"] == 21.0
    assert step_time(pipe(cpu_s_per_byte=0.5), "none")["step_s"] == 25.0


def test_buckets_are_the_workers_push_plan():
    for sizes in [(784, 256, 128, 10), (784, 32, 16, 10), (784, 64, 10)]:
        for mode, b in [("layer", 1), ("bucket", 4096), ("bucket", 65536), ("bucket", 10**9)]:
            lb = layer_bytes(sizes, "float32")
            plan = push_plan(sizes, mode, b, 4)
            assert [(lo, nbytes) for lo, _, nbytes in buckets_of(lb, mode, b)] == \
                   [(i, (hi - lo) * 4) for i, lo, hi in plan]
    assert buckets_of((4, 1), "none", 1) == [(0, 1, 5)]


def test_advice_at_the_extremes():
    slow_backward = pipe(backward_s=(30.0, 20.0))   # long backward: the last layer's message hides under it
    assert advise(slow_backward, buckets=(1, 100))["best"] in ("layer", "bucket 1")
    latency_held = pipe(message_s=50.0)              # every message costs far more than any backward
    assert advise(latency_held, buckets=(1, 100))["best"] in ("none", "bucket 100")


@pytest.mark.slow
def test_estimate_overlap_on_a_real_run(tmp_path):
    out = tmp_path / "run"
    subprocess.run(PY + ["launch", "--workers", "2", "--dataset", "synthetic", "--num-samples", "2000", "--epochs",
                         "1", "--hidden", "32,16", "--batch-size", "100", "--overlap", "layer", "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    got = subprocess.run(PY + ["estimate", str(out), "--overlap", "--workers", "2,4", "--link", "100mbit",
                               "--alpha", "0.005", "--json"], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    est = json.loads(got.stdout)
    assert est["predicted"] is None and est["alpha_s"] == 0.005   # loopback: no link of its own to predict
    assert [(a["workers"], a["link"]) for a in est["advice"]] == [(2, "100mbit"), (4, "100mbit")]
    for a in est["advice"]:   # the recurrence's floor: compute, then at least the last bucket on the link
        assert all(c["step_s"] > c["compute_s"] for c in a["choices"].values())
    bad = subprocess.run(PY + ["estimate", str(out), "--overlap", "--alpha", "-1"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --alpha -1.0 is out of range")
    none = subprocess.run(PY + ["estimate", str(out), "--overlap"], capture_output=True, text=True)
    assert none.returncode != 0 and "give the rates to predict" in none.stderr and "Traceback" not in none.stderr
