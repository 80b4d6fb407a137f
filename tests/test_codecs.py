"""--compress without processes: each codec against its definition (hypothesis), the wire bytes, the
error-feedback identity, the pieces, and bad --compress values (exit 2, one line).

    python -m pytest tests/test_codecs.py -q
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from parsgd.config import ConfigError, RunConfig
from parsgd.model.codecs import QSGD_BUCKET, Codec, parse_codec
from parsgd.model.compressor import Compressor, Residual, pieces, push_ratio
from parsgd.model.keyranges import key_ranges
from parsgd.ps import protocol as proto
from parsgd.ps.protocol.packed import pack, unpack
from procs import cli_run, one_line_error

SIZES = (784, 256, 128, 10)
FINITE = st.floats(-1e3, 1e3, allow_nan=False, width=32)
VECTORS = arrays(np.float32, st.integers(1, 1300), elements=FINITE)  # qsgd: up to 3 buckets


def roundtrip(codec: Codec, v: np.ndarray, shape=None, seed: int = 7):
    shape = shape or (v.size,)
    enc = codec.encode(v, shape, np.random.default_rng(seed))
    assert [(a.dtype, a.size) for a in enc] == [(dt, n) for dt, n in codec.fields(shape, v.dtype)]
    back = unpack("GRAD", pack([enc]), [codec.fields(shape, v.dtype)])[0]  # through the wire bytes
    return enc, codec.decode(back, shape, v.dtype, np.random.default_rng(seed))


@settings(max_examples=40, deadline=None)
@given(VECTORS)
def test_fp16_is_a_float16_rounding(v):
    _, d = roundtrip(Codec("fp16"), v)
    assert d.dtype == v.dtype and np.array_equal(d, v.astype(np.float16).astype(np.float32))


@settings(max_examples=40, deadline=None)
@given(VECTORS)
def test_sign_is_the_mean_magnitude_times_the_sign(v):
    _, d = roundtrip(Codec("sign"), v)
    scale = np.float32(np.abs(v).astype(np.float64).sum() / v.size)
    assert np.array_equal(d, np.where(v >= 0, scale, -scale))


@settings(max_examples=40, deadline=None)
@given(VECTORS, st.integers(1, 300), st.integers(0, 2**32))
def test_qsgd_rounds_stochastically_onto_its_levels(v, s, seed):
    codec = Codec("qsgd", s)
    (norm, q), d = roundtrip(codec, v, seed=seed)
    buckets = [v[i:i + QSGD_BUCKET].astype(np.float64) for i in range(0, v.size, QSGD_BUCKET)]
    assert np.array_equal(norm, np.array([np.linalg.norm(b) for b in buckets], np.float32))
    each = np.repeat([np.linalg.norm(b) or 1.0 for b in buckets], QSGD_BUCKET)[:v.size]
    r = np.abs(v.astype(np.float64)) / each * s
    levels = np.abs(q.astype(np.int64))
    assert np.all((levels == np.floor(r)) | (levels == np.minimum(np.floor(r) + 1, s)))  # floor or the next level
    assert np.all((q == 0) | (np.sign(q) == np.sign(v)))
    assert np.array_equal(d, (np.repeat(norm.astype(np.float64), QSGD_BUCKET)[:v.size] * q / s).astype(np.float32))


def test_qsgd_is_unbiased():
    v = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    codec = Codec("qsgd", 2)
    mean = np.mean([codec.decode(codec.encode(v, (50,), np.random.default_rng(i)), (50,), np.float32, None)
                    for i in range(4000)], axis=0)
    assert np.abs(mean - v).max() < 0.1 * np.linalg.norm(v) / 2  # E[decode] = v, within sampling error


@settings(max_examples=40, deadline=None)
@given(VECTORS, st.floats(0.001, 1.0))
def test_topk_keeps_the_largest_magnitudes(v, f):
    codec = Codec("topk", f)
    (idx, vals), d = roundtrip(codec, v)
    k = min(v.size, max(1, math.ceil(f * v.size)))
    assert idx.size == k and np.all(np.diff(idx.astype(np.int64)) > 0)
    assert np.array_equal(vals, v[idx]) and np.array_equal(d[idx], v[idx])
    rest = np.setdiff1d(np.arange(v.size), idx)
    assert np.all(d[rest] == 0)
    if rest.size:
        assert np.abs(v[idx]).min() >= np.abs(v[rest]).max()


@settings(max_examples=40, deadline=None)
@given(VECTORS, st.floats(0.001, 1.0), st.integers(0, 2**32))
def test_randk_sends_values_at_seeded_indices_only(v, f, seed):
    codec = Codec("randk", f)
    (vals,), d = roundtrip(codec, v, seed=seed)
    k = min(v.size, max(1, math.ceil(f * v.size)))
    idx = np.sort(np.random.default_rng(seed).choice(v.size, k, replace=False))  # what the server draws too
    assert vals.size == k and np.array_equal(d[idx], v[idx])
    assert np.all(np.delete(d, idx) == 0)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32))
def test_powersgd_is_one_power_iteration(m, n, r, seed):
    codec = Codec("powersgd", r)
    v = np.random.default_rng(seed).standard_normal(m * n)
    (p, q), d = roundtrip(codec, v, (m, n), seed)
    rank = min(r, m, n)
    p, q, mat = p.reshape(m, rank), q.reshape(n, rank), v.reshape(m, n)
    assert np.allclose(p.T @ p, np.eye(rank), atol=1e-8)         # P orthonormal
    assert np.allclose(q, mat.T @ p, atol=1e-8)                 # Q = M^T P
    assert np.allclose(d.reshape(m, n), p @ p.T @ mat, atol=1e-8)  # P Q^T: M projected on P's columns
    if rank == min(m, n):  # full rank: the projection is M itself
        assert np.allclose(d, v, atol=1e-8)


def test_powersgd_sends_biases_and_cut_matrices_raw():
    codec = Codec("powersgd", 2)
    v = np.arange(7, dtype=np.float32)
    (raw,), d = roundtrip(codec, v)
    assert np.array_equal(raw, v) and np.array_equal(d, v)


def test_wire_payload_must_be_the_codecs_exact_bytes():
    codec = Codec("topk", 0.5)
    fields = [codec.fields((10,), np.float32)]
    good = pack([codec.encode(np.ones(10, np.float32), (10,), None)])
    assert good.dtype == np.uint8 and good.size == codec.nbytes((10,), np.float32) == 5 * 4 + 5 * 4
    for bad in (good[:-1], np.zeros(10, np.float32)):
        with pytest.raises(proto.ProtocolError):
            unpack("GRAD", bad, fields)
    msg = proto.Grad(1, 2, 3, 0, 0, 8, 8, 1.0, 4, 0.1, good, True, [], 5)
    back = proto.decode(msg.to_frames())
    assert back == msg and back.ef_seq == 5 and back.grad.dtype == np.uint8
    with pytest.raises(proto.ProtocolError):  # a TASK's parameters are never bytes
        proto.Task(1, 2, 3, 0, 0, 0, 8, 8, 0.0, good).to_frames()


@pytest.mark.parametrize("spec", ["fp16", "sign", "qsgd:4", "topk:0.01", "randk:0.05", "powersgd:2"])
def test_error_feedback_sends_everything_eventually(spec):
    """sum of what was sent + the residual == the running sum of the raw gradients (float64)."""
    kr = key_ranges(SIZES, "float64", 2)
    c, res = Compressor(spec, SIZES, "float64", kr, 42), Residual(kr.n, "float64")
    rng = np.random.default_rng(1)
    raw_sum, sent_sum = np.zeros(kr.n), np.zeros(kr.n)
    for step in range(6):
        g = rng.standard_normal(kr.n) * 0.01
        raw_sum += g
        sent = g.copy()
        e, seq = res.next()
        assert seq == step
        parts = c.compress(sent, step, 0, e)
        res.settle()
        for s in range(kr.servers):  # what each server decodes is what the worker counted as sent
            decoded = c.decode(unpack("PUSH", pack(parts[s]), [c.codec.fields(p.shape, np.float64)
                                                                 for p in c.pieces[s]]), step, 0, s)
            assert np.array_equal(decoded, kr.gather(sent, s))
        sent_sum += sent
    np.testing.assert_allclose(sent_sum + res.e, raw_sum, rtol=0, atol=1e-15 * 6 * kr.n)
    assert np.abs(res.e).max() > 0 or spec == "fp16"


def test_a_non_finite_residual_is_dropped():
    res = Residual(4, "float32")
    e, _ = res.next()
    e[1] = np.nan
    res.settle()
    assert np.all(res.e == 0) and res.next()[1] == 0


@pytest.mark.parametrize("servers,shard_by", [(1, "elements"), (3, "elements"), (2, "layer")])
def test_pieces_tile_every_servers_part(servers, shard_by):
    kr = key_ranges(SIZES, "float32", servers, shard_by)
    covered = np.zeros(kr.n, int)
    for s, mine in enumerate(pieces(SIZES, kr)):
        assert sum(p.hi - p.lo for p in mine) == kr.size(s)
        for p in mine:
            covered[p.lo:p.hi] += 1
            assert math.prod(p.shape) == p.hi - p.lo
    assert np.all(covered == 1)


def test_push_ratio_is_the_encoded_share():
    assert push_ratio({"compress": "none"}) == 1.0
    assert push_ratio({"compress": "fp16", "hidden": [256, 128]}) == 0.5
    assert 0.02 < push_ratio({"compress": "topk:0.01", "hidden": [256, 128]}) < 0.021  # index + value


@pytest.mark.parametrize("spec,words", [("zip", ["unknown codec"]), ("topk:0", ["(0, 1]"]), ("randk:1.5", ["(0, 1]"]),
                                        ("qsgd:0", ["levels"]), ("powersgd:11", ["rank", "128x10"]),
                                        ("topk:x", ["fraction"]), ("sign:2", ["no parameter"])])
def test_bad_compress_values_exit_2_naming_the_option(spec, words):
    with pytest.raises(ConfigError):
        RunConfig(compress=spec)
    for cmd in (["launch", "--workers", "2"], ["experiment", "--modes", "ps", "--workers", "2"]):
        one_line_error(cli_run([*cmd, "--compress", spec, "--dataset", "synthetic", "--out", "/nonexistent/x"]),
                       2, "--compress", *words)


def test_parse_codec_keeps_the_parameter():
    assert parse_codec("topk:0.01", SIZES) == Codec("topk", 0.01) and Codec("topk", 0.01).spec == "topk:0.01"
    assert parse_codec("powersgd:10", SIZES).param == 10


def test_estimate_counts_a_grad_at_its_encoded_size():
    import dataclasses

    from parsgd.analysis.costmodel import Model
    m = Model(alpha_s=0, cpu_s_per_byte=0, message_bytes=4e6, row_s=0, batch=256, cores=2, server_const_s=0,
              server_per_worker_s=0, worker_copy_s=0, seq_step_s=1, steps_per_epoch=1, run_workers=4,
              run_link="100mbit", overlap=1.0)
    raw, pulls_only = m.parts(4, 100e6)["link"], dataclasses.replace(m, push_ratio=0.0).parts(4, 100e6)["link"]
    assert pulls_only == pytest.approx(raw / 2, rel=0.02)  # f = 1: P TASKs of m out, P GRADs of g in


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["fp16", "sign", "qsgd:4", "qsgd:300", "topk:0.01", "randk:0.01", "powersgd:2"]),
       st.integers(0, 2**32), st.integers(0, 3))
def test_any_bytes_of_the_right_length_decode_or_raise_protocol_error(spec, seed, servers_minus_1):
    """What a server does with a hostile payload: a vector of its part's size, or ProtocolError."""
    from parsgd.ps.compression import WireCodec

    cfg = RunConfig(compress=spec, servers=servers_minus_1 + 1, hidden=(32, 16))
    codec = WireCodec(cfg, key_ranges(cfg.sizes, cfg.dtype, cfg.servers))
    s = seed % cfg.servers
    need = sum(dt.itemsize * n for piece in codec.fields[s] for dt, n in piece)
    junk = np.random.default_rng(seed).integers(0, 256, need + (seed % 3 == 0) * (seed % 5 - 2), dtype=np.uint8)
    try:
        out = codec.decoded("PUSH", junk, 3, 1, s)
    except proto.ProtocolError:
        return
    assert out.shape == (codec.compressor.kr.size(s),) and out.dtype == np.float32
