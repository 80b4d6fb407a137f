"""Key ranges of S servers (model/keyranges.py): a partition of the flat vector, aligned, gather/scatter exact.

    python3 -m pytest -q tests/test_keyranges.py
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from parsgd.config import ConfigError
from parsgd.model.mlp import n_params
from parsgd.model.keyranges import ALIGN_BYTES, key_ranges, layer_spans

sizes_st = st.lists(st.integers(1, 40), min_size=1, max_size=4).map(lambda h: (784, *h, 10))


def covered(kr):
    return sorted(r for rs in kr.ranges for r in rs)


@settings(max_examples=60, deadline=None)
@given(sizes=sizes_st, servers=st.integers(1, 6), dtype=st.sampled_from(["float32", "float64"]),
       shard_by=st.sampled_from(["elements", "layer"]))
def test_the_ranges_partition_the_vector_and_gather_scatter_round_trip(sizes, servers, dtype, shard_by):
    n = n_params(sizes)
    try:
        kr = key_ranges(sizes, dtype, servers, shard_by)
    except ConfigError:
        assert servers > len(layer_spans(sizes)) if shard_by == "layer" else servers * 16 > n
        return
    ranges = covered(kr)
    assert ranges[0][0] == 0 and ranges[-1][1] == n and kr.n == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])), "no gap, no overlap"
    assert all(kr.size(s) > 0 for s in range(servers))
    flat = np.arange(n, dtype=dtype)
    rebuilt = np.full(n, -1, dtype)
    for s in range(servers):
        part = kr.gather(flat, s)
        assert part.shape == (kr.size(s),)
        kr.scatter(part, s, rebuilt)
    assert np.array_equal(rebuilt, flat)
    if shard_by == "elements":
        step = ALIGN_BYTES // np.dtype(dtype).itemsize
        assert all(lo % step == 0 for rs in kr.ranges for lo, _ in rs)
        assert max(kr.sizes()) - min(kr.sizes()) <= step * servers


def test_layer_ranges_of_the_default_model_are_whole_layers_and_unbalanced():
    kr = key_ranges((784, 256, 128, 10), "float32", 2, "layer")
    assert kr.ranges == (((0, 200960),), ((200960, 235146),))
    assert kr.imbalance() == pytest.approx(200960 / (235146 / 2))
    assert key_ranges((784, 256, 128, 10), "float32", 2).imbalance() < 1.001


def test_too_many_servers_are_refused_naming_the_option():
    with pytest.raises(ConfigError, match="--servers 4 --shard-by layer: the model has 3 layers"):
        key_ranges((784, 256, 128, 10), "float32", 4, "layer")
    with pytest.raises(ConfigError, match="--shard-by must be one of elements, layer"):
        key_ranges((784, 10), "float32", 2, "rows")
