"""The MLP against finite differences, and the momentum rule against its formula."""
import numpy as np
import pytest

from parsgd.model import mlp
from parsgd.model.optim import sgd_momentum_

SHAPES = [(784, 10, 10), (784, 16, 10), (784, 12, 7, 10), (784, 8, 6, 5, 10)]


def _problem(sizes, rows=6, seed=0):
    rng = np.random.default_rng(seed)
    params = mlp.init_params(sizes, seed + 1, "float64")
    params += rng.normal(0, 0.05, params.size)  # non-zero biases, so their gradients are exercised
    x = rng.random((rows, sizes[0]))
    y = rng.integers(0, sizes[-1], rows)
    return params, x, y


@pytest.mark.parametrize("sizes", SHAPES)
def test_every_parameter_block_matches_finite_differences(sizes):
    params, x, y = _problem(sizes)
    ws = mlp.Workspace(sizes, "float64")
    grad = np.empty_like(params)
    mlp.loss_and_grad(params, sizes, x, y, grad, ws, scale=1.0)
    rng = np.random.default_rng(1)
    offset, eps = 0, 1e-6
    for shape in mlp.layer_shapes(sizes):  # every W and b block, a sample of entries in each
        size = int(np.prod(shape))
        for i in offset + rng.choice(size, min(size, 12), replace=False):
            bumped = params.copy()
            bumped[i] += eps
            up = mlp.loss_sum_only(bumped, sizes, x, y, ws)
            bumped[i] -= 2 * eps
            down = mlp.loss_sum_only(bumped, sizes, x, y, ws)
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - grad[i]) <= 1e-6 * max(1.0, abs(numeric)), (shape, i)
        offset += size


def test_default_scale_is_the_mean_and_loss_matches_a_direct_formula():
    sizes = (784, 16, 10)
    params, x, y = _problem(sizes, rows=5)
    ws = mlp.Workspace(sizes, "float64")
    g_sum, g_mean = np.empty_like(params), np.empty_like(params)
    loss_sum, correct = mlp.loss_and_grad(params, sizes, x, y, g_sum, ws, scale=1.0)
    mlp.loss_and_grad(params, sizes, x, y, g_mean, ws)
    np.testing.assert_allclose(g_mean, g_sum / 5, rtol=1e-12, atol=1e-15)
    (w1, b1), (w2, b2) = mlp.layer_views(params, sizes)
    logits = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert loss_sum == pytest.approx(-np.log(p[np.arange(5), y]).sum(), rel=1e-12)
    assert correct == int((logits.argmax(1) == y).sum())


def test_log_softmax_is_stable_for_huge_logits():
    sizes = (784, 10)
    params = np.zeros(mlp.n_params(sizes))
    _, b = mlp.layer_views(params, sizes)[0]
    b[:] = [1e4, -1e4, 0, 0, 0, 0, 0, 0, 0, 3e4]
    ws = mlp.Workspace(sizes, "float64")
    grad = np.empty_like(params)
    loss, _ = mlp.loss_and_grad(params, sizes, np.zeros((2, 784)), np.array([9, 0]), grad, ws)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert loss == pytest.approx(2e4)  # row 0 is right (loss 0); row 1 misses by 3e4 - 1e4


def test_views_share_memory_with_the_flat_vector_and_init_is_he():
    sizes = (784, 256, 128, 10)
    flat = mlp.init_params(sizes, 42, "float32")
    assert flat.dtype == np.float32 and flat.size == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    arrays = mlp.named_arrays(flat, sizes)
    assert list(arrays) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert all(np.shares_memory(a, flat) for a in arrays.values())
    assert arrays["W1"].std() == pytest.approx(np.sqrt(2 / 784), rel=0.02)
    assert not arrays["b1"].any()
    np.testing.assert_array_equal(flat, mlp.init_params(sizes, 42, "float32"))
    assert not np.array_equal(flat, mlp.init_params(sizes, 43, "float32"))


def test_float32_gradient_agrees_with_float64():
    sizes = (784, 32, 10)
    params, x, y = _problem(sizes, rows=64)
    g64, g32 = np.empty_like(params), np.empty(params.size, np.float32)
    mlp.loss_and_grad(params, sizes, x, y, g64, mlp.Workspace(sizes, "float64"))
    mlp.loss_and_grad(params.astype(np.float32), sizes, x.astype(np.float32), y, g32,
                      mlp.Workspace(sizes, "float32"))
    assert g32.dtype == np.float32
    np.testing.assert_allclose(g32, g64, atol=1e-5)


def test_evaluate_chunks_agree_with_one_pass():
    sizes = (784, 16, 10)
    params, x, y = _problem(sizes, rows=50)
    ws = mlp.Workspace(sizes, "float64")
    assert mlp.evaluate(params, sizes, x, y, ws, chunk=7) == pytest.approx(mlp.evaluate(params, sizes, x, y, ws))


def test_momentum_rule():
    rng = np.random.default_rng(0)
    w, v, g = rng.normal(size=(3, 100))
    w0, v0 = w.copy(), v.copy()
    sgd_momentum_(w, v, g, lr=0.1, momentum=0.9)
    np.testing.assert_allclose(v, 0.9 * v0 + g)
    np.testing.assert_allclose(w, w0 - 0.1 * (0.9 * v0 + g))
    w2, v2 = w0.copy(), v0.copy()
    sgd_momentum_(w2, v2, g, 0.1, 0.9, scratch=np.empty_like(w2))
    np.testing.assert_array_equal(w2, w)
