"""Every op lowered through Relax and built for the host, against the IR interpreter."""

import numpy as np
import pytest

from honer.api import compile as honer_compile
from honer.codegen.relax_lower import supported_ops
from honer.errors import CodegenError
from honer.ir import Graph, all_ops, interpret
from honer.ir.ops import compress_24

RNG = np.random.default_rng(0)
F = "float32"


def rand(*shape, dtype=F, low=-2.0, high=2.0):
    if dtype == "bool":
        return RNG.random(shape) > 0.5
    if dtype.startswith("int"):
        return RNG.integers(0, 4, shape).astype(dtype)
    return RNG.uniform(low, high, shape).astype(dtype)


# op -> (inputs, attrs); positive inputs where the op needs them
SPARSE_VALUES, SPARSE_INDEX = compress_24(rand(5, 64))
SIZES = np.array([[1, 1, 2, 1, 1, 1, 1, 3, 1], [1, 1, 1, 1, 1, 0, 0, 0, 0]], np.float32)
CASES = {
    "tome_plan": ([rand(2, 3, 9, 4), SIZES], {"r": 3, "protect": 1}),
    "prune_plan": ([rand(2, 3, 9, 4), rand(2, 3, 9, 4), SIZES], {"r": 3, "protect": 1}),
    "quant_linear": ([rand(2, 3, 64), RNG.integers(0, 256, (5, 32)).astype(np.uint8),
                      rand(5, 2, low=0.01, high=0.1), RNG.integers(0, 16, (5, 2)).astype(np.uint8),
                      rand(5)], {"bits": 4}),
    "sparse_linear": ([rand(2, 3, 64), SPARSE_VALUES, SPARSE_INDEX,
                       rand(5, 1, low=0.5, high=1.5), rand(5)], {"activation": "relu"}),
    "int8_linear": ([rand(2, 3, 64), RNG.integers(-127, 128, (16, 64)).astype(np.int8),
                     rand(16, low=0.001, high=0.01), rand(16)],
                    {"x_scale": 0.01, "x_zero": 100, "activation": "relu"}),
    "int8_conv": ([rand(1, 3, 8, 8), RNG.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8),
                   rand(8, low=0.001, high=0.01), rand(8)],
                  {"x_scale": 0.01, "x_zero": 100, "strides": [1, 1], "padding": [1, 1, 1, 1],
                   "dilation": [1, 1]}),
    "log": ([rand(3, 4, low=0.1)], {}), "sqrt": ([rand(3, 4, low=0.1)], {}),
    "rsqrt": ([rand(3, 4, low=0.1)], {}), "reciprocal": ([rand(3, 4, low=0.5)], {}),
    "pow": ([rand(3, 4, low=0.1), rand(3, 4)], {}),
    "div": ([rand(3, 4), rand(3, 4, low=0.5)], {}),
    "floor_divide": ([rand(3, 4), rand(3, 4, low=0.5)], {}),
    "mod": ([rand(3, 4), rand(3, 4, low=0.5)], {}),
    "round": ([rand(3, 4) + 0.01], {}),
    "logical_not": ([rand(3, 4, dtype="bool")], {}),
    "where": ([rand(3, 4, dtype="bool"), rand(3, 4), rand(1, 4)], {}),
    "cast": ([rand(3, 4)], {"dtype": "int32"}),
    "clip": ([rand(3, 4)], {"min": -0.5, "max": 1.0}),
    "leaky_relu": ([rand(3, 4)], {"alpha": 0.2}),
    "gelu": ([rand(3, 4)], {"approximate": "tanh"}),
    "argmax": ([rand(3, 4)], {"axis": 1}), "argmin": ([rand(3, 4)], {"axis": 0, "keepdims": True}),
    "softmax": ([rand(3, 4)], {"axis": 0}), "log_softmax": ([rand(3, 4)], {"axis": -1}),
    "cumsum": ([rand(3, 4)], {"axis": 1}),
    "reshape": ([rand(3, 4)], {"shape": (2, 6)}),
    "transpose": ([rand(2, 3, 4)], {"perm": (2, 0, 1)}),
    "broadcast_to": ([rand(3, 1)], {"shape": (2, 3, 4)}),
    "concat": ([rand(2, 3), rand(2, 5)], {"axis": 1}),
    "slice": ([rand(6, 7)], {"axes": (0, 1), "starts": (5, 1), "ends": (-7, 6), "steps": (-2, 2)}),
    "gather": ([rand(5, 4), np.array([[4, -1], [0, 2]], np.int64)], {"axis": 0}),
    "gather_elements": ([rand(3, 4), np.array([[0, 1, 2, 0]] * 3, np.int64)], {"axis": 0}),
    "pad": ([rand(2, 3, 4)], {"pads": (0, 0, 1, -1, 2, 2), "mode": "constant", "value": 1.5}),
    "matmul": ([rand(2, 3, 4), rand(4, 5)], {}),
    "linear": ([rand(2, 3, 4), rand(6, 4), rand(6)], {}),
    "conv": ([rand(1, 4, 7, 7), rand(6, 2, 3, 3), rand(6)],
             {"strides": (2, 1), "padding": (1, 0, 1, 2), "dilation": (1, 2), "groups": 2}),
    "conv_transpose": ([rand(1, 4, 5, 5), rand(4, 3, 3, 3)],
                       {"strides": (2, 2), "padding": (1, 1, 1, 1), "dilation": (1, 1),
                        "output_padding": (1, 1), "groups": 1}),
    "max_pool": ([rand(1, 2, 9, 9)], {"kernel": (3, 3), "strides": (2, 2),
                                      "padding": (1, 1, 1, 1), "dilation": (1, 1)}),
    "avg_pool": ([rand(1, 2, 8, 8)], {"kernel": (2, 2), "strides": (2, 2),
                                      "padding": (0, 0, 0, 0), "dilation": (1, 1)}),
    "batch_norm": ([rand(2, 3, 4, 4), rand(3), rand(3), rand(3), rand(3, low=0.5)], {}),
    "layer_norm": ([rand(2, 3, 4), rand(3, 4), rand(3, 4)], {"normalized_ndim": 2}),
    "rms_norm": ([rand(2, 3, 4), rand(4)], {}),
    "attention": ([rand(1, 4, 5, 8), rand(1, 2, 6, 8), rand(1, 2, 6, 8), rand(1, 1, 5, 6)],
                  {"causal": True}),
    # rows padded to the int8 tile (5 -> 6), keys to whole blocks (6 -> 16), an additive mask
    "int8_attention": ([rand(1, 2, 5, 8), rand(1, 2, 6, 8), rand(1, 2, 6, 8), rand(1, 1, 5, 6)],
                       {"q_scale": 2 / 255, "q_zero": 128, "k_scale": 1 / 63,
                        "v_scale": 1 / 63}),
}
BINARY_COMPARE = ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")
LOGICAL = ("logical_and", "logical_or", "logical_xor")
REDUCE = ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod")


def case(op):
    if op in CASES:
        return CASES[op]
    if op in LOGICAL:
        return [rand(3, 4, dtype="bool"), rand(1, 4, dtype="bool")], {}
    if op in BINARY_COMPARE or op in ("add", "sub", "mul", "maximum", "minimum"):
        return [rand(3, 4), rand(1, 4)], {}
    if op in REDUCE:
        return [rand(3, 4, 5, low=0.5, high=1.5)], {"axes": (0, 2), "keepdims": op == "reduce_sum"}
    return [rand(3, 4)], {}  # unary elementwise


def test_every_ir_op_has_a_lowering():
    assert set(all_ops()) - supported_ops() == set()


@pytest.mark.parametrize("op", all_ops())
def test_op_compiles_and_matches_the_interpreter(op):
    arrays, attrs = case(op)
    g = Graph(op)
    # W8A8 ops take their weights as constants (the kernel folds the zero-point correction)
    inputs = 1 if op in ("int8_linear", "int8_conv") else len(arrays)
    values = [g.add_input(f"x{i}", a.shape, str(a.dtype)) if i < inputs
              else g.add_const(a, f"w{i}") for i, a in enumerate(arrays)]
    arrays = arrays[:inputs]
    g.set_outputs([g.op(op, *values, **attrs)])
    want = interpret(g, arrays)[0]
    got = _compile_graph(g)(*arrays)
    if want.dtype == np.bool_ or want.dtype.kind == "i":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads", [6, 2])
@pytest.mark.parametrize("sq,sk,causal", [(1, 9, True), (5, 5, True), (4, 7, False),
                                          (3, 21, True)])
def test_attention_without_mask_input(heads, sq, sk, causal):
    """Without a mask input, the query heads sharing a k/v head are rows of one product
    (6 heads on 2: a decoding step's one query gives `rep` rows), and on CPUs the keys are
    padded to whole register tiles (none of these lengths is one) with the padding masked;
    values of another width than keys."""
    arrays = [rand(2, heads, sq, 8), rand(2, 2, sk, 8), rand(2, 2, sk, 4)]
    g = Graph()
    values = [g.add_input(f"x{i}", a.shape, F) for i, a in enumerate(arrays)]
    g.set_outputs([g.op("attention", *values, causal=causal)])
    np.testing.assert_allclose(_compile_graph(g)(*arrays), interpret(g, arrays)[0],
                               rtol=1e-5, atol=1e-5)


def _compile_graph(g: Graph):
    return honer_compile(g, None, check=False)  # compile accepts an ir.Graph directly


def test_unknown_op_in_lowering_is_a_codegen_error():
    from honer.codegen.relax_lower import lower

    g = Graph()
    x = g.add_input("x", (2,), F)
    g.set_outputs([g.op("exp", x)])
    g.nodes[0].op = "not_an_op"
    with pytest.raises(CodegenError, match="not_an_op"):
        lower(g)


def test_int8_linear_with_a_runtime_weight_is_a_codegen_error():
    from honer.codegen.relax_lower import lower

    g = Graph()
    x = g.add_input("x", (4, 8), F)
    q = g.add_input("q", (4, 8), "int8")
    scale = g.add_const(np.full(4, 0.01, np.float32), "scale")
    g.set_outputs([g.op("int8_linear", x, q, scale, x_scale=0.1, x_zero=0)])
    with pytest.raises(CodegenError, match="must be constants"):
        lower(g)
