"""Winograd convolution (codegen/winograd.py): the transforms' algebra in numpy, which convs
take it, and compiled convs against the IR interpreter's direct conv, with the shapes that
exercise the tile grid (odd sizes, uneven and no padding, padded tile counts) and the fused
epilogue (bias, activation, residual add)."""

import numpy as np
import pytest

import honer
from honer.codegen import winograd
from honer.ir import Graph, interpret

RNG = np.random.default_rng(0)
CONV = {"strides": (1, 1), "dilation": (1, 1), "groups": 1}


def const(*shape):
    return RNG.standard_normal(shape).astype(np.float32) * 0.2


@pytest.mark.parametrize("m", [2, 4])
def test_transforms_compute_the_tile_of_a_3x3_correlation(m):
    algo = winograd.ALGORITHMS[m]
    window = RNG.standard_normal((m + 2, m + 2))
    kernel = RNG.standard_normal((3, 3))
    u = algo.kernel @ kernel @ algo.kernel.T
    v = algo.input_t @ window @ algo.input_t.T
    tile = algo.output_t @ (u * v) @ algo.output_t.T
    direct = np.array([[np.sum(window[i:i + 3, j:j + 3] * kernel) for j in range(m)]
                       for i in range(m)])
    np.testing.assert_allclose(tile, direct, rtol=1e-12, atol=1e-12)
    stored = winograd.transform_kernel(kernel[None, None].astype(np.float32), m)
    np.testing.assert_allclose(stored[:, 0, 0].reshape(m + 2, m + 2), u, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kernel,attrs,out,m", [
    ((64, 64, 3, 3), CONV, (1, 64, 56, 56), 4),
    ((256, 256, 3, 3), CONV, (1, 256, 14, 14), 2),  # 16 tiles of 4 x 4: too few for F(4x4)
    ((512, 512, 3, 3), CONV, (1, 512, 7, 7), 0),
    ((512, 512, 3, 3), CONV, (8, 512, 7, 7), 4),
    ((64, 64, 3, 3), {**CONV, "strides": (2, 2)}, (1, 64, 28, 28), 0),
    ((64, 64, 3, 3), {**CONV, "dilation": (2, 2)}, (1, 64, 56, 56), 0),
    ((64, 16, 3, 3), {**CONV, "groups": 4}, (1, 64, 56, 56), 0),
    ((64, 64, 1, 1), CONV, (1, 64, 56, 56), 0),
])
def test_which_convs_take_which_algorithm(kernel, attrs, out, m):
    assert winograd.choose(kernel, attrs, out, "float32") == m


@pytest.mark.parametrize("dtype,out", [("float16", (1, 64, 56, 56)), ("int32", (1, 64, 56, 56)),
                                       ("float32", (64, 64, 1, 1)), ("float32", (32, 64, 2, 8))])
def test_integer_half_and_narrow_convs_stay_direct(dtype, out):
    assert winograd.choose((64, 64, 3, 3), CONV, out, dtype) == 0


@pytest.mark.parametrize("out,m", [
    ((1, 64, 56, 56), 4), ((8, 64, 56, 56), 4), ((1, 8, 14, 13), 4), ((2, 8, 14, 13), 2),
    ((1, 128, 28, 28), 4), ((1, 256, 14, 14), 2), ((8, 512, 7, 7), 4), ((3, 40, 9, 9), 2),
])
def test_tile_blocks_cover_the_output_in_whole_vectors_and_even_tasks(out, m):
    n, o, oh, ow = out
    grid = winograd.fused_grid(out, o, m, 16)
    assert grid.rows * m >= oh and grid.slots * m >= ow
    assert grid.block_tiles % 16 == 0
    assert grid.rows % grid.block_rows == 0 and n % grid.images == 0
    assert grid.images == 1 or grid.block_rows == grid.rows  # a block is rows or images
    blocks = n // grid.images * grid.rows // grid.block_rows
    assert (blocks * grid.groups) % winograd.TASK_MULTIPLE == 0 or o % 16
    if winograd.weight_heavy(out, m):  # each task reads only its group's share of U
        assert grid.groups == winograd.TASK_MULTIPLE


def test_large_weights_take_all_tiles_in_one_block():
    """ResNet's 512-channel convs at batch 8: each half of U is 19 MB and would be read from
    memory once per block."""
    grid = winograd.fused_grid((8, 512, 7, 7), 512, 4, 16)
    assert grid.images == 8 and grid.block_rows == grid.rows and grid.groups == 2
    small = winograd.fused_grid((1, 128, 28, 28), 128, 4, 16)  # 1.2 MB per half: cached
    assert small.block_tiles == 16 and small.groups == 2


@pytest.mark.parametrize("batch,channels,size,padding,out", [
    (1, 24, (13, 10), (1, 0, 2, 1), 48),  # F(2x2): odd output, uneven padding
    (2, 32, (9, 9), (0, 0, 0, 0), 48),  # F(2x2): no padding, whole images per block
    (1, 40, (30, 28), (1, 1, 1, 1), 48),  # F(4x4)
    (2, 16, (19, 17), (2, 1, 0, 1), 48),  # F(4x4): odd sizes, batch, uneven padding
    (4, 384, (6, 6), (1, 1, 1, 1), 384),  # weight-heavy, 4.7 MB per half of U: one block
    (1, 1, (28, 28), (1, 1, 1, 1), 32),  # one input channel (an MNIST CNN's first conv)
])
def test_compiled_winograd_convs_match_the_direct_conv(batch, channels, size, padding, out):
    g = Graph()
    x = g.add_input("x", (batch, channels, *size), "float32")
    r_shape = (batch, out, size[0] + padding[0] + padding[2] - 2,
               size[1] + padding[1] + padding[3] - 2)
    r = g.add_input("r", r_shape, "float32")
    y = g.op("conv", x, g.add_const(const(out, channels, 3, 3)), g.add_const(const(out)),
             padding=padding, activation="relu", **CONV)
    g.set_outputs([g.op("add", y, r)])
    arrays = [const(batch, channels, *size), const(*r_shape)]
    compiled = honer.compile(g, None, check=False)
    want, = interpret(g, arrays)
    got, = compiled.run(*arrays)
    # F(4x4)'s transforms scale values by up to 8: up to 1e-5 of the output scale
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max(), rtol=0)
    stats = compiled.report["build"]["schedule"]
    assert stats["winograd"] == 1 and stats["fallbacks"] == []


@pytest.mark.parametrize("join", ["add", "concat"])
def test_two_convs_joined_keep_their_schedules(join):
    """The sum of two convs fuses into the second's kernel as its epilogue; a concat cannot
    move into a conv's output loop and stays a kernel of its own."""
    g = Graph()
    x = g.add_input("x", (1, 16, 24, 24), "float32")
    convs = [g.op("conv", x, g.add_const(const(16, 16, 3, 3)), padding=(1, 1, 1, 1), **CONV)
             for _ in range(2)]
    y = g.op("add", *convs) if join == "add" else g.op("concat", *convs, axis=1)
    g.set_outputs([y])
    arrays = [const(1, 16, 24, 24)]
    compiled = honer.compile(g, None, check=False)
    want, = interpret(g, arrays)
    got, = compiled.run(*arrays)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max(), rtol=0)
    assert compiled.report["build"]["schedule"]["fallbacks"] == []


def test_winograd_convs_are_not_handed_to_the_tuner():
    """MetaSchedule's generic rules cannot keep a task's intermediates to itself (one round on
    a 64-channel conv ran past ten minutes); the conv's other kernels stay tunable."""
    from honer.codegen.build import fused_kernels
    from honer.codegen.cpu_schedule import is_tunable
    from honer.targets import get_target

    g = Graph()
    x = g.add_input("x", (1, 16, 24, 24), "float32")
    y = g.op("conv", x, g.add_const(const(16, 16, 3, 3)), padding=(1, 1, 1, 1), **CONV)
    g.set_outputs([g.op("conv", y, g.add_const(const(8, 16, 1, 1)), padding=(0, 0, 0, 0),
                        **CONV)])
    target = get_target("host")
    kernels = fused_kernels(target.lower(g), target.tvm_target(), target.schedule())
    tunable = {name: is_tunable(f) for name, f in kernels.items()}
    assert [t for name, t in tunable.items() if "winograd" in name] == [False]
    assert any(tunable.values())
