import numpy as np
import pytest

from honer.errors import InputError, IRError
from honer.ir import Graph, interpret, verify


def small_graph() -> Graph:
    g = Graph("tiny")
    x = g.add_input("x", (2, 4), "float32")
    w = g.add_const(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, "w")
    b = g.add_const(np.ones(3, np.float32), "b")
    y = g.op("linear", x, w, b, scope="block.0.fc")
    z = g.op("gelu", y, scope="block.0.act")
    g.set_outputs([g.op("softmax", z, axis=-1, scope="head")])
    return g


GOLDEN = """graph tiny(%x: f32[2,4]) {
  const %w: f32[3,4]
  const %b: f32[3]
  %linear: f32[2,3] = linear(%x, %w, %b)  # block.0.fc
  %gelu: f32[2,3] = gelu(%linear)  # block.0.act
  %softmax: f32[2,3] = softmax(%gelu)  # head
  return %softmax
}"""


def test_dump_is_the_golden_text():
    assert small_graph().dump() == GOLDEN


def test_verify_accepts_a_sound_graph_and_copy_is_independent():
    g = small_graph()
    verify(g)
    c = g.copy()
    c.nodes[-1].attrs["axis"] = 0
    assert g.nodes[-1].attrs["axis"] == -1
    verify(c)


def test_shape_inference_rejects_mismatches():
    g = Graph()
    x = g.add_input("x", (2, 4), "float32")
    w = g.add_const(np.zeros((3, 5), np.float32))
    with pytest.raises(IRError, match="does not match weight"):
        g.op("linear", x, w)
    with pytest.raises(IRError, match="different dtypes"):
        g.op("add", x, g.add_const(np.zeros(4, np.int64)))
    with pytest.raises(IRError, match="unknown attribute"):
        g.op("softmax", x, dim=1)
    with pytest.raises(IRError, match="cannot reshape"):
        g.op("reshape", x, shape=(3, 3))


def test_verify_catches_broken_invariants():
    g = small_graph()
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]
    with pytest.raises(IRError, match="before it is defined"):
        verify(g)
    g = small_graph()
    g.nodes[1].outputs[0].type = g.nodes[0].outputs[0].type.__class__((9,), "float32")
    with pytest.raises(IRError, match="output types"):
        verify(g)


def test_interpret_matches_numpy_and_captures_intermediates(rng):
    g = small_graph()
    x = rng.standard_normal((2, 4)).astype(np.float32)
    (out,), captured = interpret(g, [x], capture=["linear"])
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    np.testing.assert_allclose(captured["linear"], x @ w.T + 1, rtol=1e-6)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)
    with pytest.raises(IRError, match="no value"):
        interpret(g, [x], capture=["nope"])


def test_interpret_refuses_wrong_inputs():
    g = small_graph()
    with pytest.raises(InputError, match="expected f32"):
        interpret(g, [np.zeros((2, 4), np.float64)])
    with pytest.raises(InputError, match="expected 1 input"):
        interpret(g, [])


def test_remove_dead_drops_unreachable_nodes_and_constants():
    g = small_graph()
    unused = g.add_const(np.ones(7, np.float32), "unused")
    g.op("exp", unused)
    assert g.remove_dead() == 2
    verify(g)
    assert all(c.name != "unused" for c in g.constants)
