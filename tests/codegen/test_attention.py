"""Attention as one CPU kernel (codegen/attention.py): the layouts it reads its operands in
(head-major, token-major, heads packed in a projection's channels), the transposes it folds,
grouped heads, causal and given masks and lengths no tile divides, against the IR
interpreter."""

import numpy as np
import pytest

import honer
from honer.codegen.relax_lower import fold_attention
from honer.ir import Graph, interpret

RNG = np.random.default_rng(0)
F = "float32"


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def check(g: Graph, arrays):
    compiled = honer.compile(g, None, check=False)
    np.testing.assert_allclose(compiled.run(*arrays)[0], interpret(g, arrays)[0],
                               rtol=2e-5, atol=2e-5)
    return compiled.report["build"]["schedule"]


def heads_of(g: Graph, x, start: int, heads: int, dim: int):
    """[batch, tokens, heads, dim] viewed head-major, from channels start.. of x."""
    batch, tokens, channels = x.type.shape
    part = g.op("slice", x, axes=(2,), starts=(start,), ends=(start + heads * dim,),
                steps=(1,))
    view = g.op("reshape", part, shape=(batch, tokens, heads, dim))
    return g.op("transpose", view, perm=(0, 2, 1, 3))


@pytest.mark.parametrize("tokens,heads,kv_heads,causal,dim", [
    (197, 3, 3, False, 8), (197, 3, 3, False, 32), (9, 4, 2, True, 8), (1, 2, 1, False, 8)])
def test_projection_packed_heads(tokens, heads, kv_heads, causal, dim):
    """q, k and v sliced out of one merged projection and viewed per head, as the exact
    passes leave a ViT's or a LLaMA's attention: the kernel reads them in place and writes its
    output token-major, and every slice, view and transpose is folded into it. k^T is copied
    in blocks of whole vectors where they divide the head dimension (32), else a dim at a
    time (8)."""
    batch = 2
    channels = (heads + 2 * kv_heads) * dim
    g = Graph()
    x = g.add_input("x", (batch, tokens, 16), F)
    qkv = g.op("linear", x, g.add_const(rand(channels, 16) * 0.3), g.add_const(rand(channels)))
    q = heads_of(g, qkv, 0, heads, dim)
    k = heads_of(g, qkv, heads * dim, kv_heads, dim)
    v = heads_of(g, qkv, (heads + kv_heads) * dim, kv_heads, dim)
    att = g.op("attention", q, k, v, causal=causal)
    y = g.op("reshape", g.op("transpose", att, perm=(0, 2, 1, 3)),
             shape=(batch, tokens, heads * dim))
    g.set_outputs([y])
    folds, skipped = fold_attention(g)
    assert len(folds) == 1 and len(skipped) == 3 * 3 + 1
    stats = check(g, [rand(batch, tokens, 16)])
    assert stats["attention"] == 1 and stats["fallbacks"] == []


def test_token_major_inputs_and_a_transpose_used_elsewhere():
    """Operands transposed from token-major inputs are read token-major; a transpose with a
    second user stays, and the attention reads its result head-major."""
    g = Graph()
    q, k, v = (g.add_input(n, (1, 37, 2, 16), F) for n in "qkv")
    qt, kt, vt = (g.op("transpose", t, perm=(0, 2, 1, 3)) for t in (q, k, v))
    att = g.op("attention", qt, kt, vt, scale=0.3)
    g.set_outputs([g.op("add", att, g.op("exp", kt))])
    folds, skipped = fold_attention(g)
    (fold,) = folds.values()
    assert [o.layout for o in fold.operands] == ["bshd", "bhsd", "bshd"]
    assert fold.out is None and len(skipped) == 2
    stats = check(g, [rand(1, 37, 2, 16) for _ in range(3)])
    assert stats["attention"] == 1


def test_attention_output_as_graph_output_keeps_its_layout():
    g = Graph()
    q, k, v = (g.add_input(n, (2, 2, 40, 64), F) for n in "qkv")
    g.set_outputs([g.op("attention", q, k, v, causal=True)])
    stats = check(g, [rand(2, 2, 40, 64) for _ in range(3)])
    assert stats["attention"] == 1


@pytest.mark.parametrize("mask_shape,dtype", [((1, 1, 5, 7), "bool"), ((2, 3, 5, 7), "bool"),
                                               ((7,), F), ((2, 1, 1, 7), F)])
def test_mask_inputs_broadcast(mask_shape, dtype):
    """A bool mask (False: masked) or one added to the scores, of any shape that broadcasts to
    [batch, heads, queries, keys], with the keys padded to whole tiles past it."""
    g = Graph()
    q = g.add_input("q", (2, 3, 5, 8), F)
    k, v = (g.add_input(n, (2, 3, 7, 8), F) for n in "kv")
    mask = g.add_input("m", mask_shape, dtype)
    g.set_outputs([g.op("attention", q, k, v, mask)])
    if dtype == "bool":
        given = RNG.random(mask_shape) < 0.7
        given[..., 0] = True  # no row masked whole (its softmax would be 0 / 0)
    else:
        given = rand(*mask_shape)
    stats = check(g, [rand(2, 3, 5, 8), rand(2, 3, 7, 8), rand(2, 3, 7, 8), given])
    assert stats["attention"] == 1
    assert_in_bounds(g)


def assert_in_bounds(g: Graph):
    """Every scheduled kernel's reads and writes stay inside their buffers (TVM's static
    check): the padded keys' lanes must not read past an added mask's end."""
    import tvm
    from tvm import s_tir

    from honer.codegen.build import _fused_module, rule_scheduled_kernels
    from honer.targets import get_target

    target = get_target("host")
    cfg = target.schedule()
    kernels = rule_scheduled_kernels(_fused_module(target.lower(g), target.tvm_target(), cfg),
                                     cfg)
    assert "attention" in kernels
    for func in kernels.values():
        s_tir.analysis.OOBChecker()(tvm.IRModule({"main": func}))  # raises if out of bounds


@pytest.mark.parametrize("batch,tokens", [(1, 197), (2, 128), (1, 8)])
def test_row_max_and_sum_run_as_vectors(batch, tokens):
    """The row maxima and sums take one vector of key partials per step, whatever the batch and
    whether the key steps happen to number as many as the rows (128 keys: 8 of each)."""
    from tvm import s_tir, te, tirx

    from honer.codegen import attention as A

    heads, dim, lanes = 2, 16, 16
    padded = -(-tokens // (2 * lanes)) * 2 * lanes
    q = te.placeholder((batch, heads, tokens, dim), name="q")
    kt = te.placeholder((batch, heads, dim, padded), name="kt")
    v = te.placeholder((batch, heads, tokens, dim), name="v")
    shape = A.AttentionShape(batch, heads, heads, tokens, tokens, dim, dim, 0.25, False,
                             A.Operand(A.HEAD_MAJOR), A.Operand(A.HEAD_MAJOR), False)
    sch = s_tir.Schedule(te.create_prim_func([q, kt, v, A.fused_attention(q, kt, v,
                                                                          shape=shape)]))
    A.schedule_attention(sch, lanes)
    for name in (f"{A.MAX}_rf", f"{A.SUM}_rf"):
        inner = sch.get(sch.get_loops(sch.get_sblock(name))[-1])
        assert inner.kind == tirx.ForKind.VECTORIZED and int(inner.extent) == lanes
