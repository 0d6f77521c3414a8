"""The CPU schedule rules on the shapes that exercise their special paths, against the IR
interpreter: padded rows (no vector width divides them) with fused epilogues, convs stored in
panels and vectorized over output channels, grouped convs, row reductions, scans left serial."""

import numpy as np
import pytest

import honer
from honer.ir import Graph, interpret
from honer.targets import get_target

RNG = np.random.default_rng(0)


def check(g: Graph, arrays, tol=1e-4):
    compiled = honer.compile(g, None, check=False)
    want = interpret(g, arrays)
    got = compiled.run(*arrays)
    for w, o in zip(want, got):
        np.testing.assert_allclose(o, w, rtol=tol, atol=tol)
    return compiled.report["build"]["schedule"]


def const(*shape):
    return RNG.standard_normal(shape).astype(np.float32) * 0.2


@pytest.mark.parametrize("rows,cols", [(197, 50), (7, 37), (64, 50257 // 64)])
def test_padded_linear_with_bias_activation_and_residual(rows, cols):
    g = Graph()
    x = g.add_input("x", (rows, 24), "float32")
    r = g.add_input("r", (rows, cols), "float32")
    y = g.op("linear", x, g.add_const(const(cols, 24)), g.add_const(const(cols)),
             activation="gelu")
    g.set_outputs([g.op("add", y, r)])
    stats = check(g, [const(rows, 24), const(rows, cols)])
    assert stats["contractions"] == 1 and stats["fallbacks"] == []


@pytest.mark.parametrize("size,channels,groups", [(4, 16, 1), (7, 24, 1), (9, 16, 4),
                                                  (16, 32, 1)])
def test_convs_with_epilogues(size, channels, groups):
    g = Graph()
    x = g.add_input("x", (1, channels, size, size), "float32")
    w = g.add_const(const(32, channels // groups, 3, 3))
    y = g.op("conv", x, w, g.add_const(const(32)), strides=(1, 1), padding=(1, 1, 1, 1),
             dilation=(1, 1), groups=groups, activation="relu")
    g.set_outputs([y])
    stats = check(g, [const(1, channels, size, size)])
    assert stats["contractions"] == 1 and stats["fallbacks"] == []


@pytest.mark.parametrize("strides,padding,dilation", [((2, 2), (3, 3, 3, 3), (1, 1)),
                                                      ((1, 2), (1, 0, 2, 1), (2, 1))])
def test_panel_stored_convs_strided_dilated_and_unevenly_padded(strides, padding, dilation):
    g = Graph()
    x = g.add_input("x", (2, 3, 23, 19), "float32")
    w = g.add_const(const(48, 3, 7, 3))
    y = g.op("conv", x, w, strides=strides, padding=padding, dilation=dilation)
    g.set_outputs([g.op("add", y, g.add_const(const(1, 48, 1, 1)))])
    stats = check(g, [const(2, 3, 23, 19)])
    assert stats["contractions"] == 1 and stats["fallbacks"] == []


def test_linear_epilogue_runs_on_the_register_tile():
    """bias, GELU (five blocks spelled out) and the residual add all inlined into the tile's
    write-back: nothing is left to run as an elementwise pass of its own."""
    g = Graph()
    x = g.add_input("x", (64, 32), "float32")
    r = g.add_input("r", (64, 64), "float32")
    y = g.op("linear", x, g.add_const(const(64, 32)), g.add_const(const(64)),
             activation="gelu")
    g.set_outputs([g.op("add", y, r)])
    stats = check(g, [const(64, 32), const(64, 64)])
    assert stats["contractions"] == 1 and stats["elementwise"] == 0


def test_reshape_read_twice_is_inlined_not_copied():
    """GELU reads its input twice; the reshape in front of it (rows [1, 16] to [16]: no row
    loop in common) is inlined into both reads instead of running as a copy pass."""
    from tvm import s_tir

    from honer.codegen.build import _fused_module, _kernels
    from honer.codegen.cpu_schedule import _inline_elementwise_chains
    from honer.targets import get_target

    g = Graph()
    x = g.add_input("x", (1, 16, 32), "float32")
    y = g.op("reshape", g.op("mul", x, g.add_const(const(32))), shape=[16, 32])
    g.set_outputs([g.op("gelu", y, approximate="none")])
    target = get_target("host")
    [kernel] = _kernels(_fused_module(target.lower(g), target.tvm_target(),
                                      target.schedule())).values()
    sch = s_tir.Schedule(kernel)
    _inline_elementwise_chains(sch)
    assert len(sch.get_child_blocks(sch.get_sblock("root"))) == 1
    check(g, [const(1, 16, 32)])


@pytest.mark.parametrize("batch,activation", [(1, "none"), (3, "relu")])
def test_patchify_conv_as_a_matmul_over_patches(batch, activation):
    """A conv whose windows tile the input (a ViT's patch embedding) runs as the panel matmul
    over the flattened patches, bias and activation on its tile."""
    g = Graph()
    x = g.add_input("x", (batch, 3, 32, 48), "float32")
    y = g.op("conv", x, g.add_const(const(64, 3, 8, 8)), g.add_const(const(64)),
             strides=(8, 8), padding=(0, 0, 0, 0), dilation=(1, 1), activation=activation)
    g.set_outputs([y])
    stats = check(g, [const(batch, 3, 32, 48)])
    assert stats["contractions"] == 1 and stats["fallbacks"] == []
    kernels = {gv.name_hint for gv in get_target("host").lower(g).mod.functions}
    assert "panel_matmul" in kernels and "panel_conv2d" not in kernels


@pytest.mark.parametrize("op,attrs", [("softmax", {"axis": -1}), ("layer_norm", {})])
def test_row_reductions_with_odd_row_lengths(op, attrs):
    g = Graph()
    x = g.add_input("x", (3, 197, 197), "float32")
    args = [x] if op == "softmax" else [x, g.add_const(const(197)), g.add_const(const(197))]
    g.set_outputs([g.op(op, *args, **attrs)])
    stats = check(g, [const(3, 197, 197) * 20])
    assert stats["fallbacks"] == [] and stats["reductions"] >= 1
    # the variance's (x - mean)^2 reads two buffers but is no product of two operands along
    # the reduction: tiled as one, it was vectorized across rows
    assert stats["contractions"] == 0


@pytest.mark.parametrize("op", ["softmax", "layer_norm"])
def test_row_reductions_of_whole_vectors_keep_one_partial_per_lane(op):
    """Rows of whole vectors (208 = 26 x 8): each row's max and sums are reduced as one
    partial per vector lane (a vectorized loop of vector steps, then 8 to 1) instead of a
    chain of scalar steps each waiting for the last; the numbers stay the interpreter's."""
    import re

    import tvm

    from honer.codegen.build import _fused_module, _kernels
    from honer.codegen.cpu_schedule import schedule_module
    from honer.targets import get_target

    g = Graph()
    x = g.add_input("x", (3, 64, 208), "float32")
    args = [x] if op == "softmax" else [x, g.add_const(const(208)), g.add_const(const(208))]
    g.set_outputs([g.op(op, *args, **({"axis": -1} if op == "softmax" else {}))])
    stats = check(g, [const(3, 64, 208) * 20], tol=1e-5)
    assert stats["fallbacks"] == [] and stats["reductions"] >= 1
    target = get_target("host")
    cfg = target.schedule()
    [kernel] = _kernels(_fused_module(target.lower(g), target.tvm_target(), cfg)).values()
    script = schedule_module(tvm.IRModule({"main": kernel}), cfg)["main"].script()
    partials = [line for line in script.splitlines() if 'sblock("' in line and '_rf"' in line]
    vectors = re.findall(rf"T\.vectorized\((?:T\.int64\()?{cfg.lanes}\)", script)
    assert partials and len(vectors) >= len(partials), script


def test_batched_attention_scores_with_odd_sequence_length():
    g = Graph()
    q = g.add_input("q", (1, 3, 197, 64), "float32")
    k = g.add_input("k", (1, 3, 197, 64), "float32")
    v = g.add_input("v", (1, 3, 197, 64), "float32")
    g.set_outputs([g.op("attention", q, k, v)])
    stats = check(g, [const(1, 3, 197, 64) for _ in range(3)])
    assert stats["fallbacks"] == []


@pytest.mark.parametrize("op,attrs", [
    ("max_pool", {"kernel": (3, 3), "strides": (2, 2), "padding": (1, 1, 1, 1),
                  "dilation": (1, 1)}),
    ("avg_pool", {"kernel": (2, 3), "strides": (1, 2), "padding": (0, 1, 0, 1),
                  "dilation": (1, 1)})])
def test_pooling_windows_run_in_rows(op, attrs):
    """Pooling reads a window around each output: output rows in parallel, each a plain loop
    (it ran as one parallel loop of single outputs, 4x slower on ResNet-18's stem pool)."""
    g = Graph()
    x = g.add_input("x", (2, 8, 40, 37), "float32")
    g.set_outputs([g.op(op, x, **attrs)])
    compiled = honer.compile(g, None, check=False)
    arrays = [const(2, 8, 40, 37)]
    np.testing.assert_allclose(compiled.run(*arrays)[0], interpret(g, arrays)[0], rtol=1e-5,
                               atol=1e-6)
    stats = compiled.report["build"]["schedule"]
    assert stats["reductions"] >= 1 and stats["fallbacks"] == []


def test_cumsum_stays_correct():
    g = Graph()
    x = g.add_input("x", (2, 64), "int64")
    g.set_outputs([g.op("cumsum", x, axis=1)])
    arrays = [RNG.integers(0, 5, (2, 64)).astype(np.int64)]
    compiled = honer.compile(g, None, check=False)
    np.testing.assert_array_equal(compiled(*arrays), np.cumsum(arrays[0], axis=1))


def test_sequence_first_projection_tiles_over_tokens_not_the_unit_batch():
    """[tokens, 1, features] @ W, as torch's MultiheadAttention computes its projections: the
    register tile must run over the 197 tokens (it once ran over the batch axis of 1)."""
    import tvm

    from honer.codegen.build import fused_kernels
    from honer.codegen.cpu_schedule import CPUScheduleConfig, schedule_module
    from honer.codegen.relax_lower import lower

    g = Graph()
    x = g.add_input("x", (197, 1, 48), "float32")
    g.set_outputs([g.op("linear", x, g.add_const(const(96, 48)), g.add_const(const(96)))])
    stats = check(g, [const(197, 1, 48)])
    assert stats["contractions"] == 1 and stats["fallbacks"] == []
    (kernel,) = fused_kernels(lower(g), {"kind": "llvm"}).values()
    cfg = CPUScheduleConfig(lanes=8, rows=4)
    script = schedule_module(tvm.IRModule({"main": kernel}), cfg)["main"].script()
    assert "T.unroll(T.int64(4))" in script  # four token rows per tile


@pytest.mark.parametrize("rows", [1, 5])
def test_tied_embedding_and_head_share_one_panel_stored_table(rows):
    """A table both gathered by rows (token embedding) and used as a linear weight (the tied
    LM head) is stored once, in panels of output columns, and both ops read it there."""
    g = Graph()
    ids = g.add_input("ids", (rows,), "int64")
    table = g.add_const(const(64, 24), "table")
    emb = g.add_node("gather", [table, ids], {"axis": 0}, "embed")
    head = g.add_node("linear", [emb.output, table], {"activation": "none"}, "head")
    g.set_outputs([head.output])
    compiled = honer.compile(g, None, check=False)
    [stored] = compiled.manifest["weights"]
    assert stored["layout"] == f"panels{2 * compiled.report['build']['schedule']['lanes']}"
    tokens = RNG.integers(0, 64, rows).astype(np.int64)
    np.testing.assert_allclose(compiled(tokens), interpret(g, [tokens])[0], rtol=1e-5,
                               atol=1e-5)
