"""Malformed ONNX models: a short fuzz run, and the cases it once found, each pinned down."""

import numpy as np
import onnx
import pytest
from onnx import helper

from honer.benchmarks import fuzz
from honer.errors import FrontendError, HonerError, IRError
from honer.frontend import capture
from honer.ir import interpret


def test_short_fuzz_run_ends_every_case_in_a_compile_or_a_honer_error():
    import honer.codegen.relax_lower  # noqa: F401 - TVM imported once, before the forks

    summary = fuzz.fuzz(cases=250, seed=11, timeout=60)
    assert summary.findings == [], summary.findings
    assert summary.outcomes["ok"] > 0 and summary.outcomes["error"] > 0


def _model(nodes, inputs, outputs, initializers=(), opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _x(shape=(1, 2, 4, 4), name="x", elem=onnx.TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _y():
    return helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)


def test_missing_required_input_is_named():
    model = _model([helper.make_node("Conv", ["x", ""], ["y"])], [_x()], [_y()])
    with pytest.raises(FrontendError, match=r"required input 1 \(W\) is missing"):
        capture(model)


def test_attribute_of_the_wrong_kind_is_named():
    node = helper.make_node("Constant", [], ["y"])
    node.attribute.append(helper.make_attribute("value", 3))  # an int where a tensor belongs
    with pytest.raises(FrontendError, match="'value' should be TENSOR, the model has INT"):
        capture(_model([node], [], [_y()]))


def test_op_missing_from_the_declared_opset_is_named():
    node = helper.make_node("LayerNormalization", ["x", "x"], ["y"])  # new in opset 17
    model = _model([node], [_x()], [_y()], opset=13)
    with pytest.raises(FrontendError, match="does not exist in opset 13"):
        capture(model)


def test_invalid_utf8_in_a_node_is_a_corrupt_model(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_x()], [_y()])
    data = model.SerializeToString().replace(b"Relu", b"R\xe9lu")
    (tmp_path / "m.onnx").write_bytes(data)
    with pytest.raises(FrontendError, match="not valid UTF-8"):
        capture(tmp_path / "m.onnx")


@pytest.mark.parametrize("dim", [1 << 40, 1 << 62])
def test_enormous_dimensions_are_refused_before_any_allocation(dim):
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_x((dim, 3, 4, 4))], [_y()])
    with pytest.raises(IRError, match="would take"):
        capture(model)


def test_out_of_range_window_attributes_are_refused():
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2],
                            strides=[2**63 - 1, 1])
    with pytest.raises(HonerError, match="strides .* out of range"):
        capture(_model([node], [_x()], [_y()]))


def test_integer_max_pool_pads_with_the_lowest_integer():
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2], pads=[1, 1])
    g = capture(_model([node], [_x((1, 1, 3), elem=onnx.TensorProto.INT8)], [_y()]))
    x = np.array([[[-5, -7, -9]]], np.int8)
    np.testing.assert_array_equal(interpret(g, [x])[0], [[[-5, -5, -7, -9]]])


def test_garbage_bytes_are_not_an_onnx_model(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(FrontendError, match="not a readable ONNX model"):
        capture(tmp_path / "m.onnx")
