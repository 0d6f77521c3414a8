"""The numpy references against PyTorch: they define the IR's semantics."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from honer.ir import Graph, interpret


def run_op(op, arrays, **attrs):
    g = Graph()
    values = [g.add_input(f"x{i}", a.shape, str(a.dtype)) for i, a in enumerate(arrays)]
    g.set_outputs([g.op(op, *values, **attrs)])
    return interpret(g, arrays)[0]


def t(a):
    return torch.from_numpy(a)


@pytest.mark.parametrize("stride,pad,dil,groups", [(1, 1, 1, 1), (2, 0, 1, 2), (1, 2, 2, 4)])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_conv_matches_torch(rng, rank, stride, pad, dil, groups):
    x = rng.standard_normal((2, 8) + (9,) * rank).astype(np.float32)
    w = rng.standard_normal((4, 8 // groups) + (3,) * rank).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    want = fn(t(x), t(w), t(b), stride, pad, dil, groups).numpy()
    got = run_op("conv", [x, w, b], strides=(stride,) * rank, padding=(pad,) * 2 * rank,
                 dilation=(dil,) * rank, groups=groups)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_transpose_matches_torch(rng):
    x = rng.standard_normal((1, 4, 5, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    want = F.conv_transpose2d(t(x), t(w), None, 2, 1, (1, 0), 2, 1).numpy()
    got = run_op("conv_transpose", [x, w], strides=(2, 2), padding=(1, 1, 1, 1),
                 output_padding=(1, 0), dilation=(1, 1), groups=2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ceil", [False, True])
def test_pools_match_torch(rng, ceil):
    x = rng.standard_normal((1, 2, 10, 11)).astype(np.float32)
    want = F.max_pool2d(t(x), 3, 2, 1, 1, ceil_mode=ceil).numpy()
    got = run_op("max_pool", [x], kernel=(3, 3), strides=(2, 2), padding=(1, 1, 1, 1),
                 dilation=(1, 1), ceil_mode=ceil)
    np.testing.assert_allclose(got, want)
    for include in (False, True):
        want = F.avg_pool2d(t(x), 3, 2, 1, ceil_mode=ceil, count_include_pad=include).numpy()
        got = run_op("avg_pool", [x], kernel=(3, 3), strides=(2, 2), padding=(1, 1, 1, 1),
                     dilation=(1, 1), ceil_mode=ceil, count_include_pad=include)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_grouped_heads_and_masks(rng, causal):
    q = rng.standard_normal((2, 6, 5, 8)).astype(np.float32)
    k = rng.standard_normal((2, 2, 7, 8)).astype(np.float32)
    v = rng.standard_normal((2, 2, 7, 4)).astype(np.float32)
    mask = rng.random((2, 1, 5, 7)) > 0.2
    mask[..., 0] = True
    want = F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=t(mask), enable_gqa=True,
                                          is_causal=False).numpy()
    got = run_op("attention", [q, k, v, mask])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    want = F.scaled_dot_product_attention(t(q), t(k[:, :, :5]), t(v[:, :, :5]),
                                          is_causal=causal, enable_gqa=True).numpy()
    got = run_op("attention", [q, k[:, :, :5].copy(), v[:, :, :5].copy()], causal=causal)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_norms_and_activations_match_torch(rng):
    x = rng.standard_normal((3, 4, 6)).astype(np.float32) * 3
    w, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    np.testing.assert_allclose(run_op("layer_norm", [x, w, b], eps=1e-5),
                               F.layer_norm(t(x), (6,), t(w), t(b)).numpy(), atol=1e-5)
    np.testing.assert_allclose(run_op("rms_norm", [x, w], eps=1e-6),
                               F.rms_norm(t(x), (6,), t(w), 1e-6).numpy(), atol=1e-5)
    for op, fn in [("gelu", F.gelu), ("silu", F.silu), ("erf", torch.erf),
                   ("softplus", F.softplus), ("selu", F.selu), ("hard_swish", F.hardswish)]:
        np.testing.assert_allclose(run_op(op, [x]), fn(t(x)).numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=op)


def test_shape_ops_match_numpy(rng):
    x = rng.standard_normal((4, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(
        run_op("slice", [x], axes=(0, 2), starts=(-1, 1), ends=(-5, 100), steps=(-1, 2)),
        x[-1:-5:-1, :, 1:100:2])
    idx = np.array([[0, -1], [2, 3]], dtype=np.int64)
    np.testing.assert_array_equal(run_op("gather", [x, idx], axis=1), np.take(x, idx % 5, 1))
    np.testing.assert_array_equal(
        run_op("pad", [x], pads=(1, 0, 0, 2, -1, 1), value=3.0),
        np.pad(x, ((1, 0), (0, 2), (0, 1)), constant_values=3.0)[:, :, 1:])
