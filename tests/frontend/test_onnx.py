"""The pytorch-operator and pytorch-converted suites shipped in the onnx wheel, through honer."""

import glob
import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import honer
from honer.api import max_scaled_error
from honer.errors import FrontendError, UnsupportedOpError
from honer.frontend import capture

SUITES = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
CASES = sorted(glob.glob(os.path.join(SUITES, "pytorch-operator", "*")) +
               glob.glob(os.path.join(SUITES, "pytorch-converted", "*")))


def load_case(case):
    def tensors(kind):
        files = sorted(glob.glob(os.path.join(case, "test_data_set_0", f"{kind}_*.pb")))
        return [numpy_helper.to_array(onnx.load_tensor(f)) for f in files]

    return tensors("input"), tensors("output")


def test_the_suites_are_there():
    assert len(CASES) == 117


@pytest.mark.parametrize("case", CASES, ids=[os.path.basename(c) for c in CASES])
def test_suite_case_matches_stored_outputs(case):
    inputs, outputs = load_case(case)
    compiled = honer.compile(os.path.join(case, "model.onnx"), inputs, check=False)
    got = compiled.run(*inputs)
    assert max_scaled_error(got, outputs) <= 1e-4


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_every_unsupported_op_is_listed():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Hardmax", ["x"], ["a"], name="/enc/layer.0/Hardmax"),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Foo", ["b"], ["y"], domain="com.example", name="/head/Foo")]
    with pytest.raises(UnsupportedOpError) as info:
        capture(_model(nodes, [x], [y]))
    message = str(info.value)
    assert "Hardmax" in message and "com.example::Foo" in message
    assert "enc.layer.0" in message


def test_symbolic_dims_need_example_inputs():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y])
    with pytest.raises(FrontendError, match="example_inputs"):
        capture(model)
    g = capture(model, [np.zeros((5, 3), np.float32)])
    assert g.inputs[0].shape == (5, 3)


def test_dangling_names_and_garbage_files_are_clear_errors(tmp_path):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    with pytest.raises(FrontendError, match="not defined"):
        capture(_model([helper.make_node("Add", ["x", "nowhere"], ["y"])], [x], [y]))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf\xff\xff")
    with pytest.raises(FrontendError, match="not a readable ONNX model"):
        capture(bad)


def test_scope_comes_from_node_names():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    g = capture(_model([helper.make_node("Relu", ["x"], ["y"], name="/encoder/layer.3/act/Relu")],
                       [x], [y]))
    assert g.nodes[0].scope == "encoder.layer.3.act"
