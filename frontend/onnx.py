"""ONNX frontend: ModelProto -> ir.Graph.

Shapes must be static: taken from the graph's inputs, or from example inputs where the model
declares symbolic dimensions. Nodes whose inputs are all constants (shape arithmetic, Constant,
weight transposes) are evaluated at import with the IR's numpy references, so shape-like inputs
(Reshape's shape, Slice's starts, ...) are plain constants by the time a handler reads them.
A node's scope comes from its name (`/encoder/layer.0/attention/MatMul` ->
`encoder.layer.0.attention`), the form exporters write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import FrontendError, HonerError, IRError, UnsupportedOpError
from ..ir import Graph, Value
from ..ir.ops import get_schema
from .registry import HandlerTable

ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}
FOLD_LIMIT = 1 << 26  # elements: bigger constant subgraphs stay in the graph

HANDLERS = HandlerTable()
handles = HANDLERS.handles
Handler = Callable[["_Converter", onnx.NodeProto], Any]


def from_onnx_file(path: Path, example_inputs: Sequence[Any] | None = None) -> Graph:
    if not Path(path).is_file():
        raise FrontendError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # DecodeError, truncated files, external data missing
        raise FrontendError(f"{path}: not a readable ONNX model ({type(e).__name__}: "
                            f"{str(e)[:200]})") from None
    # the model is ours: free each weight's bytes once converted (peak ~2x weights, not 3x)
    return _Converter(model, example_inputs, Path(path).stem, release_weights=True).run()


def from_onnx(model: onnx.ModelProto, example_inputs: Sequence[Any] | None = None,
              name: str = "main") -> Graph:
    if not isinstance(model, onnx.ModelProto):
        raise FrontendError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    return _Converter(model, example_inputs, name).run()


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _scope(node: onnx.NodeProto) -> str:
    parts = [p for p in node.name.split("/") if p]
    return ".".join(parts[:-1]) if len(parts) > 1 else ""


def _where(node: onnx.NodeProto) -> str:
    return f"node '{node.name or '<unnamed>'}'" + (f" in {_scope(node)}" if _scope(node) else "")


class _Converter:
    def __init__(self, model: onnx.ModelProto, example_inputs: Sequence[Any] | None, name: str,
                 release_weights: bool = False):
        self.model = model
        self.release_weights = release_weights
        self.examples = list(example_inputs) if example_inputs is not None else None
        self.g = Graph(name)
        self.env: dict[str, Value] = {}
        self.scope = ""
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          1)

    def run(self) -> Graph:
        graph = self.model.graph
        self._check_supported(graph)
        for init in graph.initializer:
            self.env[init.name] = self.const(_tensor_to_numpy(init), init.name)
            if self.release_weights:
                init.ClearField("raw_data")
        self._add_inputs(graph)
        for node in graph.node:
            self._convert(node)
        outs = []
        for o in graph.output:
            if o.name not in self.env:
                raise FrontendError(f"graph output '{o.name}' is not produced by any node")
            outs.append(self.env[o.name])
        self.g.set_outputs(outs)
        self.g.remove_dead()
        return self.g

    def _check_supported(self, graph: onnx.GraphProto) -> None:
        _check_text(graph)
        problems = []
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                problems.append((f"{node.domain}::{node.op_type}", _where(node)))
            elif node.op_type not in HANDLERS:
                problems.append((node.op_type, _where(node)))
        if problems:
            raise UnsupportedOpError("onnx", problems)

    def _add_inputs(self, graph: onnx.GraphProto) -> None:
        real = [i for i in graph.input if i.name not in self.env]
        if self.examples is not None and len(self.examples) != len(real):
            raise FrontendError(f"the model has {len(real)} input(s) "
                                f"({[i.name for i in real]}), got {len(self.examples)} examples")
        for k, inp in enumerate(real):
            tt = inp.type.tensor_type
            if tt.elem_type not in ONNX_DTYPES:
                raise FrontendError(f"input '{inp.name}' has unsupported element type "
                                    f"{tt.elem_type}")
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if self.examples is not None:
                ex = np.asarray(self.examples[k].detach().numpy() if hasattr(
                    self.examples[k], "detach") else self.examples[k])
                if len(ex.shape) != len(dims) or any(
                        d is not None and d != e for d, e in zip(dims, ex.shape)):
                    raise FrontendError(f"example input {k} has shape {list(ex.shape)}, the "
                                        f"model declares {dims}")
                dims = list(ex.shape)
            if any(d is None or d < 0 for d in dims):
                raise FrontendError(f"input '{inp.name}' has symbolic shape {dims}; pass "
                                    "example_inputs to fix the sizes")
            self.env[inp.name] = self.g.add_input(inp.name, dims, ONNX_DTYPES[tt.elem_type])

    def _convert(self, node: onnx.NodeProto) -> None:
        self.scope = _scope(node)
        _check_against_schema(node, self.opset)
        try:
            result = HANDLERS[node.op_type](self, node)
        except (HonerError, IRError) as e:
            raise FrontendError(f"{node.op_type} at {_where(node)}: {e}") from None
        except (ValueError, IndexError, KeyError, TypeError, AttributeError, OverflowError) as e:
            raise FrontendError(f"{node.op_type} at {_where(node)} is malformed: "
                                f"{type(e).__name__}: {e}") from None
        results = result if isinstance(result, tuple | list) else (result,)
        names = [o for o in node.output if o]
        if len(results) < len(names):
            raise FrontendError(f"{node.op_type} at {_where(node)}: {len(names)} outputs "
                                "requested, only the first one(s) are supported")
        for name, value in zip(names, results):
            if name in self.env and value is not self.env[name]:
                raise FrontendError(f"value '{name}' is produced twice (at {_where(node)})")
            self.env[name] = value

    # -- helpers --

    def input(self, node: onnx.NodeProto, i: int) -> Value | None:
        if i >= len(node.input) or not node.input[i]:
            return None
        name = node.input[i]
        if name not in self.env:
            raise FrontendError(f"input '{name}' of {_where(node)} is not defined before use "
                                "(dangling name or graph not topologically sorted)")
        return self.env[name]

    def inputs(self, node: onnx.NodeProto) -> list[Value]:
        return [v for i in range(len(node.input)) if (v := self.input(node, i)) is not None]

    def const_input(self, node: onnx.NodeProto, i: int) -> np.ndarray | None:
        v = self.input(node, i)
        if v is None:
            return None
        if not v.is_const:
            raise FrontendError(f"input {i} of {_where(node)} must be a constant (it is "
                                "computed at run time, which needs dynamic shapes)")
        return v.data

    def const(self, array: np.ndarray, name: str = "const") -> Value:
        return self.g.add_const(np.asarray(array), name)

    def scalar(self, x: float | int | bool, dtype: str) -> Value:
        return self.const(np.array(x, dtype=dtype), "scalar")

    def op(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        """Adds a node, or evaluates it right away when every input is a constant."""
        if inputs and all(v.is_const for v in inputs):
            schema = get_schema(op)
            attrs = schema.normalize_attrs(attrs)
            out_type = schema.infer([v.type for v in inputs], attrs)[0]
            if out_type.size <= FOLD_LIMIT:
                data = schema.reference(attrs, *(v.data for v in inputs))
                return self.const(np.asarray(data).astype(out_type.dtype), op)
        return self.g.add_node(op, inputs, attrs, scope=self.scope).output


def _check_text(graph: onnx.GraphProto) -> None:
    """Protobuf hands back invalid UTF-8 in string fields as bytes: a corrupted file."""
    for node in graph.node:
        for text in (node.op_type, node.domain, node.name, *node.input, *node.output):
            if not isinstance(text, str):
                raise FrontendError(f"the model is corrupted: node field {text!r} is not valid "
                                    "UTF-8")
    for v in (*graph.input, *graph.output, *graph.initializer):
        if not isinstance(v.name, str):
            raise FrontendError(f"the model is corrupted: value name {v.name!r} is not valid "
                                "UTF-8")


def _check_against_schema(node: onnx.NodeProto, opset: int) -> None:
    """Input counts, required inputs and attribute kinds as the ONNX spec of this opset says,
    so handlers only ever see well-formed nodes."""
    where = f"{node.op_type} at {_where(node)}"
    try:
        schema = onnx.defs.get_schema(node.op_type, max(opset, 1), node.domain or "")
    except onnx.defs.SchemaError:
        raise FrontendError(f"{where}: {node.op_type} does not exist in opset {opset}") from None
    n_in = len(node.input)
    if not schema.min_input <= n_in <= schema.max_input:
        raise FrontendError(f"{where}: {n_in} inputs, the spec allows {schema.min_input}.."
                            f"{schema.max_input}")
    single = onnx.defs.OpSchema.FormalParameterOption.Single
    for i, (name, formal) in enumerate(zip(node.input, schema.inputs)):
        if not name and formal.option == single:
            raise FrontendError(f"{where}: required input {i} ({formal.name}) is missing")
    given = {a.name: a for a in node.attribute}
    for attr_name, spec in schema.attributes.items():
        if spec.required and attr_name not in given:
            raise FrontendError(f"{where}: required attribute '{attr_name}' is missing")
    for attr_name, a in given.items():
        spec = schema.attributes.get(attr_name)
        if spec is not None and int(a.type) != int(spec.type):
            raise FrontendError(f"{where}: attribute '{attr_name}' should be "
                                f"{spec.type.name}, the model has "
                                f"{onnx.AttributeProto.AttributeType.Name(a.type)}")


def _tensor_to_numpy(t: onnx.TensorProto) -> np.ndarray:
    if t.data_type not in ONNX_DTYPES:
        raise FrontendError(f"tensor '{t.name}' has unsupported element type {t.data_type}")
    try:
        array = numpy_helper.to_array(t)
    except Exception as e:
        raise FrontendError(f"tensor '{t.name}' cannot be read: {e}") from None
    return array


def _norm(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise FrontendError(f"axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


# ---- elementwise -----------------------------------------------------------------------------

_UNARY = {"Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal",
          "Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu", "Erf": "erf", "Abs": "abs",
          "Sin": "sin", "Cos": "cos", "Floor": "floor", "Ceil": "ceil", "Round": "round",
          "Sign": "sign", "Not": "logical_not", "Softplus": "softplus", "Softsign": "softsign",
          "HardSwish": "hard_swish"}
for _onnx, _ir in _UNARY.items():
    HANDLERS[_onnx] = lambda c, n, _ir=_ir: c.op(_ir, c.input(n, 0))

_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow",
           "Equal": "equal", "Less": "less", "Greater": "greater", "LessOrEqual": "less_equal",
           "GreaterOrEqual": "greater_equal", "And": "logical_and", "Or": "logical_or",
           "Xor": "logical_xor"}


def _legacy_broadcast(c: _Converter, n: onnx.NodeProto, a: Value, b: Value) -> Value:
    """Opset < 7 `broadcast=1, axis=k`: b's shape lines up with a's starting at axis k."""
    attrs = _attrs(n)
    if attrs.get("broadcast") and "axis" in attrs and b.shape != a.shape:
        axis = _norm(attrs["axis"], len(a.shape))
        trailing = len(a.shape) - axis - len(b.shape)
        if trailing > 0:
            return c.op("reshape", b, shape=b.shape + (1,) * trailing)
    return b


def _binary(ir_op: str) -> Handler:
    def handler(c: _Converter, n: onnx.NodeProto) -> Value:
        a, b = c.input(n, 0), c.input(n, 1)
        b = _legacy_broadcast(c, n, a, b)
        if ir_op == "pow" and b.dtype != a.dtype:
            b = c.op("cast", b, dtype=a.dtype)
        if ir_op == "div" and not a.dtype.startswith("float"):
            return c.op("cast", c.op("trunc", c.op("div", c.op("cast", a, dtype="float32"),
                                                   c.op("cast", b, dtype="float32"))),
                        dtype=a.dtype)
        return c.op(ir_op, a, b)

    return handler


for _onnx, _ir in _BINARY.items():
    HANDLERS[_onnx] = _binary(_ir)


@handles("Mod")
def _mod(c: _Converter, n: onnx.NodeProto) -> Value:
    if _attrs(n).get("fmod", 0):
        raise FrontendError("Mod with fmod=1 is not supported")
    return c.op("mod", c.input(n, 0), c.input(n, 1))


def _variadic(ir_op: str) -> Handler:
    def handler(c: _Converter, n: onnx.NodeProto) -> Value:
        xs = c.inputs(n)
        out = xs[0]
        for x in xs[1:]:
            out = c.op(ir_op, out, x)
        if ir_op == "add" and n.op_type == "Mean":
            out = c.op("div", out, c.scalar(len(xs), out.dtype))
        return out

    return handler


HANDLERS["Max"] = _variadic("maximum")
HANDLERS["Min"] = _variadic("minimum")
HANDLERS["Sum"] = _variadic("add")
HANDLERS["Mean"] = _variadic("add")


@handles("Identity", "Dropout")
def _identity(c: _Converter, n: onnx.NodeProto) -> Value:
    return c.input(n, 0)


@handles("LeakyRelu")
def _leaky(c: _Converter, n: onnx.NodeProto) -> Value:
    return c.op("leaky_relu", c.input(n, 0), alpha=float(_attrs(n).get("alpha", 0.01)))


@handles("Elu")
def _elu(c: _Converter, n: onnx.NodeProto) -> Value:
    return c.op("elu", c.input(n, 0), alpha=float(_attrs(n).get("alpha", 1.0)))


@handles("Selu")
def _selu(c: _Converter, n: onnx.NodeProto) -> Value:
    a = _attrs(n)
    if abs(a.get("alpha", 1.67326) - 1.67326) > 1e-4 or abs(a.get("gamma", 1.0507) - 1.0507) > 1e-4:
        x = c.input(n, 0)
        elu = c.op("elu", x, alpha=float(a.get("alpha", 1.67326319217681884765625)))
        return c.op("mul", elu, c.scalar(a.get("gamma", 1.05070102214813232421875), x.dtype))
    return c.op("selu", c.input(n, 0))


@handles("HardSigmoid")
def _hard_sigmoid(c: _Converter, n: onnx.NodeProto) -> Value:
    a = _attrs(n)
    return c.op("hard_sigmoid", c.input(n, 0), alpha=float(a.get("alpha", 0.2)),
                beta=float(a.get("beta", 0.5)))


@handles("Gelu")
def _gelu(c: _Converter, n: onnx.NodeProto) -> Value:
    return c.op("gelu", c.input(n, 0), approximate=_attrs(n).get("approximate", "none"))


@handles("PRelu")
def _prelu(c: _Converter, n: onnx.NodeProto) -> Value:
    x, slope = c.input(n, 0), c.input(n, 1)
    if len(slope.shape) == 1 and slope.shape[0] == x.shape[1] and len(x.shape) > 2 \
            and slope.shape[0] != x.shape[-1]:
        slope = c.op("reshape", slope, shape=(slope.shape[0],) + (1,) * (len(x.shape) - 2))
    zero = c.scalar(0, x.dtype)
    return c.op("where", c.op("less", x, zero), c.op("mul", x, slope), x)


@handles("Clip")
def _clip(c: _Converter, n: onnx.NodeProto) -> Value:
    a = _attrs(n)
    lo, hi = a.get("min"), a.get("max")
    if c.opset >= 11:
        lo_v, hi_v = c.const_input(n, 1), c.const_input(n, 2)
        lo = None if lo_v is None else float(lo_v)
        hi = None if hi_v is None else float(hi_v)
    return c.op("clip", c.input(n, 0), min=lo, max=hi)


@handles("Where")
def _where_op(c: _Converter, n: onnx.NodeProto) -> Value:
    return c.op("where", c.input(n, 0), c.input(n, 1), c.input(n, 2))


@handles("Cast")
def _cast(c: _Converter, n: onnx.NodeProto) -> Value:
    to = _attrs(n)["to"]
    if to not in ONNX_DTYPES:
        raise FrontendError(f"Cast to element type {to} is not supported")
    dtype = ONNX_DTYPES[to]
    x = c.input(n, 0)
    return x if x.dtype == dtype else c.op("cast", x, dtype=dtype)


# ---- linear algebra, conv, pooling, normalization --------------------------------------------


@handles("MatMul")
def _matmul(c: _Converter, n: onnx.NodeProto) -> Value:
    a, b = c.input(n, 0), c.input(n, 1)
    squeeze_a, squeeze_b = len(a.shape) == 1, len(b.shape) == 1
    if squeeze_a:
        a = c.op("reshape", a, shape=(1,) + a.shape)
    if squeeze_b:
        b = c.op("reshape", b, shape=b.shape + (1,))
    y = c.op("matmul", a, b)
    if squeeze_a or squeeze_b:
        shape = y.shape[:-2] + (() if squeeze_a else (y.shape[-2],)) + \
            (() if squeeze_b else (y.shape[-1],))
        y = c.op("reshape", y, shape=shape)
    return y


@handles("Gemm")
def _gemm(c: _Converter, n: onnx.NodeProto) -> Value:
    a_attrs = _attrs(n)
    a, b, bias = c.input(n, 0), c.input(n, 1), c.input(n, 2)
    if a_attrs.get("transA", 0):
        a = c.op("transpose", a, perm=(1, 0))
    alpha, beta = float(a_attrs.get("alpha", 1.0)), float(a_attrs.get("beta", 1.0))
    if a_attrs.get("transB", 0) and b.is_const and alpha == 1.0:  # the common nn.Linear form
        inputs = [a, b] + ([bias] if bias is not None and beta == 1.0 and bias.shape ==
                           (b.shape[0],) else [])
        y = c.g.add_node("linear", inputs, scope=c.scope).output
        if bias is not None and len(inputs) == 2:
            y = c.op("add", y, c.op("mul", bias, c.scalar(beta, y.dtype)))
        return y
    if a_attrs.get("transB", 0):
        b = c.op("transpose", b, perm=(1, 0))
    y = c.op("matmul", a, b)
    if alpha != 1.0:
        y = c.op("mul", y, c.scalar(alpha, y.dtype))
    if bias is not None:
        y = c.op("add", y, bias if beta == 1.0 else c.op("mul", bias, c.scalar(beta, y.dtype)))
    return y


def _auto_pad(n: onnx.NodeProto, x: Value, kernel: Sequence[int], strides: Sequence[int],
              dilation: Sequence[int]) -> tuple[int, ...]:
    a = _attrs(n)
    nsp = len(kernel)
    mode = a.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode in ("NOTSET", ""):
        return tuple(a.get("pads", [0] * (2 * nsp)))
    if mode == "VALID":
        return (0,) * (2 * nsp)
    begins, ends = [], []
    for i in range(nsp):
        size = x.shape[2 + i]
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + dilation[i] * (kernel[i] - 1) + 1 - size)
        small = total // 2
        begins.append(small if mode == "SAME_UPPER" else total - small)
        ends.append(total - small if mode == "SAME_UPPER" else small)
    return tuple(begins + ends)


def _window_attrs(c: _Converter, n: onnx.NodeProto, kernel: Sequence[int]) -> dict[str, Any]:
    a = _attrs(n)
    nsp = len(kernel)
    strides = tuple(a.get("strides", [1] * nsp))
    dilation = tuple(a.get("dilations", [1] * nsp))
    return {"strides": strides, "dilation": dilation,
            "padding": _auto_pad(n, c.input(n, 0), kernel, strides, dilation)}


@handles("Conv")
def _conv(c: _Converter, n: onnx.NodeProto) -> Value:
    x, w = c.input(n, 0), c.input(n, 1)
    attrs = _window_attrs(c, n, w.shape[2:])
    attrs["groups"] = int(_attrs(n).get("group", 1))
    inputs = [x, w] + ([c.input(n, 2)] if c.input(n, 2) is not None else [])
    return c.g.add_node("conv", inputs, attrs, scope=c.scope).output


@handles("ConvTranspose")
def _conv_transpose(c: _Converter, n: onnx.NodeProto) -> Value:
    a = _attrs(n)
    x, w = c.input(n, 0), c.input(n, 1)
    nsp = len(w.shape) - 2
    if "output_shape" in a:
        raise FrontendError("ConvTranspose with output_shape is not supported; give pads")
    attrs = {"strides": tuple(a.get("strides", [1] * nsp)),
             "dilation": tuple(a.get("dilations", [1] * nsp)),
             "padding": tuple(a.get("pads", [0] * (2 * nsp))),
             "output_padding": tuple(a.get("output_padding", [0] * nsp)),
             "groups": int(a.get("group", 1))}
    inputs = [x, w] + ([c.input(n, 2)] if c.input(n, 2) is not None else [])
    return c.g.add_node("conv_transpose", inputs, attrs, scope=c.scope).output


@handles("MaxPool", "AveragePool")
def _pool(c: _Converter, n: onnx.NodeProto) -> Value:
    a = _attrs(n)
    kernel = tuple(a["kernel_shape"])
    attrs = _window_attrs(c, n, kernel)
    attrs.update(kernel=kernel, ceil_mode=bool(a.get("ceil_mode", 0)))
    if n.op_type == "MaxPool":
        if len([o for o in n.output if o]) > 1:
            raise FrontendError("MaxPool indices output is not supported")
        if a.get("storage_order", 0):
            raise FrontendError("MaxPool storage_order=1 is not supported")
        return c.op("max_pool", c.input(n, 0), **attrs)
    if attrs["dilation"] != (1,) * len(kernel):
        raise FrontendError("AveragePool with dilations is not supported")
    return c.op("avg_pool", c.input(n, 0), **attrs,
                count_include_pad=bool(a.get("count_include_pad", 0)))


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(c: _Converter, n: onnx.NodeProto) -> Value:
    x = c.input(n, 0)
    op = "reduce_mean" if n.op_type == "GlobalAveragePool" else "reduce_max"
    return c.op(op, x, axes=tuple(range(2, len(x.shape))), keepdims=True)


@handles("BatchNormalization")
def _batch_norm(c: _Converter, n: onnx.NodeProto) -> Value:
    a = _attrs(n)
    if a.get("training_mode", 0):
        raise FrontendError("BatchNormalization in training mode is not supported")
    return c.g.add_node("batch_norm", [c.input(n, i) for i in range(5)],
                        {"eps": float(a.get("epsilon", 1e-5))}, scope=c.scope).output


@handles("InstanceNormalization")
def _instance_norm(c: _Converter, n: onnx.NodeProto) -> Value:
    x, scale, bias = c.input(n, 0), c.input(n, 1), c.input(n, 2)
    eps = float(_attrs(n).get("epsilon", 1e-5))
    axes = tuple(range(2, len(x.shape)))
    mean = c.op("reduce_mean", x, axes=axes, keepdims=True)
    d = c.op("sub", x, mean)
    var = c.op("reduce_mean", c.op("mul", d, d), axes=axes, keepdims=True)
    y = c.op("mul", d, c.op("rsqrt", c.op("add", var, c.scalar(eps, x.dtype))))
    shape = (1, x.shape[1]) + (1,) * len(axes)
    return c.op("add", c.op("mul", y, c.op("reshape", scale, shape=shape)),
                c.op("reshape", bias, shape=shape))


@handles("LayerNormalization")
def _layer_norm(c: _Converter, n: onnx.NodeProto) -> Value:
    a = _attrs(n)
    x = c.input(n, 0)
    axis = _norm(a.get("axis", -1), len(x.shape))
    inputs = [v for v in (x, c.input(n, 1), c.input(n, 2)) if v is not None]
    return c.g.add_node("layer_norm", inputs, {"normalized_ndim": len(x.shape) - axis,
                                               "eps": float(a.get("epsilon", 1e-5))},
                        scope=c.scope).output


@handles("Softmax", "LogSoftmax")
def _softmax(c: _Converter, n: onnx.NodeProto) -> Value:
    x = c.input(n, 0)
    op = "softmax" if n.op_type == "Softmax" else "log_softmax"
    default = -1 if c.opset >= 13 else 1
    axis = _norm(_attrs(n).get("axis", default), len(x.shape))
    if c.opset >= 13 or axis == len(x.shape) - 1:
        return c.op(op, x, axis=axis)
    # before opset 13 the input is flattened to 2-D at `axis`
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    flat = c.op("reshape", x, shape=(rows, x.type.size // max(rows, 1)))
    return c.op("reshape", c.op(op, flat, axis=1), shape=x.shape)


# ---- reductions ------------------------------------------------------------------------------

_REDUCE = {"ReduceSum": "reduce_sum", "ReduceMean": "reduce_mean", "ReduceMax": "reduce_max",
           "ReduceMin": "reduce_min", "ReduceProd": "reduce_prod"}


def _reduce(ir_op: str) -> Handler:
    def handler(c: _Converter, n: onnx.NodeProto) -> Value:
        a = _attrs(n)
        x = c.input(n, 0)
        axes = a.get("axes")
        axes_input_opset = 13 if ir_op == "reduce_sum" else 18
        if c.opset >= axes_input_opset and len(n.input) > 1:
            v = c.const_input(n, 1)
            axes = None if v is None else v.tolist()
        if axes is not None and len(axes) == 0:
            axes = None
        if axes is None and a.get("noop_with_empty_axes", 0):
            return x
        return c.op(ir_op, x, axes=None if axes is None else tuple(axes),
                    keepdims=bool(a.get("keepdims", 1)))

    return handler


for _onnx, _ir in _REDUCE.items():
    HANDLERS[_onnx] = _reduce(_ir)


@handles("ArgMax", "ArgMin")
def _argmax(c: _Converter, n: onnx.NodeProto) -> Value:
    a = _attrs(n)
    if a.get("select_last_index", 0):
        raise FrontendError(f"{n.op_type} with select_last_index=1 is not supported")
    return c.op("argmax" if n.op_type == "ArgMax" else "argmin", c.input(n, 0),
                axis=a.get("axis", 0), keepdims=bool(a.get("keepdims", 1)))


@handles("CumSum")
def _cumsum(c: _Converter, n: onnx.NodeProto) -> Value:
    a = _attrs(n)
    if a.get("exclusive", 0) or a.get("reverse", 0):
        raise FrontendError("CumSum exclusive/reverse is not supported")
    return c.op("cumsum", c.input(n, 0), axis=int(c.const_input(n, 1)))


# ---- shape ops -------------------------------------------------------------------------------


@handles("Constant")
def _constant(c: _Converter, n: onnx.NodeProto) -> Value:
    a = _attrs(n)
    if "value" in a:
        return c.const(_tensor_to_numpy(a["value"]), n.output[0])
    for key, dtype in (("value_float", "float32"), ("value_int", "int64")):
        if key in a:
            return c.const(np.array(a[key], dtype=dtype), n.output[0])
    for key, dtype in (("value_floats", "float32"), ("value_ints", "int64")):
        if key in a:
            return c.const(np.array(list(a[key]), dtype=dtype), n.output[0])
    raise FrontendError(f"Constant {n.name} has no supported value attribute")


@handles("Shape")
def _shape(c: _Converter, n: onnx.NodeProto) -> Value:
    a = _attrs(n)
    shape = c.input(n, 0).shape
    return c.const(np.array(shape[a.get("start", 0):a.get("end", len(shape))], np.int64),
                   "shape")


@handles("Size")
def _size(c: _Converter, n: onnx.NodeProto) -> Value:
    return c.const(np.array(c.input(n, 0).type.size, np.int64), "size")


@handles("ConstantOfShape")
def _constant_of_shape(c: _Converter, n: onnx.NodeProto) -> Value:
    shape = c.const_input(n, 0).astype(np.int64).tolist()
    value = _attrs(n).get("value")
    fill = _tensor_to_numpy(value).reshape(-1)[0] if value is not None else np.float32(0)
    return c.const(np.full(shape, fill, dtype=np.asarray(fill).dtype), "filled")


@handles("Range")
def _range(c: _Converter, n: onnx.NodeProto) -> Value:
    start, limit, delta = (c.const_input(n, i) for i in range(3))
    return c.const(np.arange(start, limit, delta).astype(np.asarray(start).dtype), "range")


@handles("Reshape")
def _reshape(c: _Converter, n: onnx.NodeProto) -> Value:
    x = c.input(n, 0)
    shape = list(_attrs(n)["shape"]) if c.opset < 5 else c.const_input(n, 1).tolist()
    allow_zero = _attrs(n).get("allowzero", 0)
    shape = [x.shape[i] if d == 0 and not allow_zero else d for i, d in enumerate(shape)]
    if shape.count(-1) > 1:
        raise FrontendError(f"Reshape to {shape} has more than one -1")
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
        if known == 0 or x.type.size % known:
            raise FrontendError(f"cannot reshape {x.shape} to {shape}")
        shape[shape.index(-1)] = x.type.size // known
    return c.op("reshape", x, shape=tuple(shape))


@handles("Flatten")
def _flatten(c: _Converter, n: onnx.NodeProto) -> Value:
    x = c.input(n, 0)
    axis = _norm(_attrs(n).get("axis", 1), len(x.shape) + 1)
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return c.op("reshape", x, shape=(rows, x.type.size // max(rows, 1) if rows else 0))


@handles("Transpose")
def _transpose(c: _Converter, n: onnx.NodeProto) -> Value:
    x = c.input(n, 0)
    perm = _attrs(n).get("perm", list(range(len(x.shape)))[::-1])
    return c.op("transpose", x, perm=tuple(perm))


def _axes_arg(c: _Converter, n: onnx.NodeProto, first_opset: int) -> list[int] | None:
    if c.opset >= first_opset:
        v = c.const_input(n, 1)
        return None if v is None else v.tolist()
    return _attrs(n).get("axes")


@handles("Squeeze")
def _squeeze(c: _Converter, n: onnx.NodeProto) -> Value:
    x = c.input(n, 0)
    axes = _axes_arg(c, n, 13)
    axes = [i for i, d in enumerate(x.shape) if d == 1] if axes is None else \
        [_norm(a, len(x.shape)) for a in axes]
    if any(x.shape[a] != 1 for a in axes):
        raise FrontendError(f"Squeeze of axes {axes} with sizes other than 1 in {x.shape}")
    return c.op("reshape", x, shape=tuple(d for i, d in enumerate(x.shape) if i not in axes))


@handles("Unsqueeze")
def _unsqueeze(c: _Converter, n: onnx.NodeProto) -> Value:
    x = c.input(n, 0)
    axes = _axes_arg(c, n, 13)
    rank = len(x.shape) + len(axes)
    axes = sorted(_norm(a, rank) for a in axes)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return c.op("reshape", x, shape=tuple(shape))


@handles("Concat")
def _concat(c: _Converter, n: onnx.NodeProto) -> Value:
    xs = [x for x in c.inputs(n) if x.type.size > 0] or c.inputs(n)[:1]
    return xs[0] if len(xs) == 1 else c.op("concat", *xs, axis=_attrs(n).get("axis", 0))


@handles("Split")
def _split(c: _Converter, n: onnx.NodeProto) -> list[Value]:
    x = c.input(n, 0)
    a = _attrs(n)
    axis = _norm(a.get("axis", 0), len(x.shape))
    sizes = c.const_input(n, 1) if c.opset >= 13 and len(n.input) > 1 else a.get("split")
    count = len(n.output)
    if sizes is None:
        dim = x.shape[axis]
        step = -(-dim // count)
        sizes = [min(step, dim - i * step) for i in range(count)]
    sizes = [int(s) for s in sizes]
    if sum(sizes) != x.shape[axis]:
        raise FrontendError(f"Split sizes {sizes} do not add up to {x.shape[axis]}")
    outs, start = [], 0
    for s in sizes:
        outs.append(c.op("slice", x, axes=(axis,), starts=(start,), ends=(start + s,),
                         steps=(1,)))
        start += s
    return outs


@handles("Slice")
def _slice(c: _Converter, n: onnx.NodeProto) -> Value:
    x = c.input(n, 0)
    if c.opset < 10:
        a = _attrs(n)
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = c.const_input(n, 1).tolist(), c.const_input(n, 2).tolist()
        axes_v, steps_v = c.const_input(n, 3), c.const_input(n, 4)
        axes = list(range(len(starts))) if axes_v is None else axes_v.tolist()
        steps = [1] * len(starts) if steps_v is None else steps_v.tolist()
    axes = [_norm(a, len(x.shape)) for a in axes]
    big = 1 << 62  # ONNX uses INT64_MAX/MIN for "to the end"; Python slices clamp the same way
    clamp = [max(min(v, big), -big) for v in ends]
    return c.op("slice", x, axes=tuple(axes), starts=tuple(int(s) for s in starts),
                ends=tuple(int(e) for e in clamp), steps=tuple(int(s) for s in steps))


@handles("Gather")
def _gather(c: _Converter, n: onnx.NodeProto) -> Value:
    return c.op("gather", c.input(n, 0), c.input(n, 1), axis=_attrs(n).get("axis", 0))


@handles("GatherElements")
def _gather_elements(c: _Converter, n: onnx.NodeProto) -> Value:
    return c.op("gather_elements", c.input(n, 0), c.input(n, 1),
                axis=_attrs(n).get("axis", 0))


@handles("Expand")
def _expand(c: _Converter, n: onnx.NodeProto) -> Value:
    x = c.input(n, 0)
    shape = c.const_input(n, 1).tolist()
    try:
        out = tuple(np.broadcast_shapes(x.shape, tuple(shape)))
    except ValueError:
        raise FrontendError(f"Expand: {x.shape} does not broadcast with {shape}") from None
    return x if out == x.shape else c.op("broadcast_to", x, shape=out)


@handles("Tile")
def _tile(c: _Converter, n: onnx.NodeProto) -> Value:
    x = c.input(n, 0)
    reps = c.const_input(n, 1).astype(np.int64).tolist()
    if len(reps) != len(x.shape) or any(r < 0 for r in reps):
        raise FrontendError(f"Tile repeats {reps} do not match rank {len(x.shape)}")
    inter = tuple(v for r, d in zip(reps, x.shape) for v in (r, d))
    y = c.op("reshape", x, shape=tuple(v for d in x.shape for v in (1, d)))
    y = c.op("broadcast_to", y, shape=inter)
    return c.op("reshape", y, shape=tuple(r * d for r, d in zip(reps, x.shape)))


@handles("Pad")
def _pad(c: _Converter, n: onnx.NodeProto) -> Value:
    a = _attrs(n)
    x = c.input(n, 0)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if c.opset < 11:
        pads, value = list(a.get("pads", a.get("paddings", []))), float(a.get("value", 0.0))
    else:
        pads = c.const_input(n, 1).tolist()
        v = c.const_input(n, 2)
        value = 0.0 if v is None else float(np.asarray(v).reshape(-1)[0])
        if len(n.input) > 3 and n.input[3]:
            raise FrontendError("Pad with an axes input is not supported")
    rank = len(x.shape)
    if len(pads) != 2 * rank:
        raise FrontendError(f"Pad needs {2 * rank} values, got {len(pads)}")
    ours = tuple(v for i in range(rank) for v in (int(pads[i]), int(pads[rank + i])))
    ir_mode = {"constant": "constant", "reflect": "reflect", "edge": "edge"}.get(mode)
    if ir_mode is None:
        raise FrontendError(f"Pad mode {mode!r} is not supported")
    return c.op("pad", x, pads=ours, mode=ir_mode, value=value)
