"""PyTorch frontend: `torch.export` -> core ATen -> ir.Graph.

The exported program is decomposed to core ATen, except that `linear` and
`scaled_dot_product_attention` are kept whole: passes reason about them as units (fusion,
quantization, token merging). Parameters and buffers become constants; each node's scope is the
innermost entry of `nn_module_stack`. Every converted node's shape and dtype is checked against
the `val` that torch recorded, so a mapping bug fails here rather than as wrong numbers later.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx

from ..errors import FrontendError, HonerError, UnsupportedOpError
from ..ir import Graph, Value
from .registry import HandlerTable

TORCH_DTYPES = {
    torch.float32: "float32", torch.float16: "float16", torch.float64: "float64",
    torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8",
    torch.uint8: "uint8", torch.bool: "bool",
}
KEEP_WHOLE = ("linear.default", "scaled_dot_product_attention.default")

HANDLERS = HandlerTable()
handles = HANDLERS.handles
Handler = Callable[["_Converter", torch.fx.Node], Any]


# ---- entry points ----------------------------------------------------------------------------


def export(model: torch.nn.Module, example_inputs: Sequence[Any]) -> torch.export.ExportedProgram:
    """torch.export with errors translated: data-dependent control flow, bad inputs."""
    if not isinstance(example_inputs, tuple | list):
        example_inputs = (example_inputs,)
    model = model.eval()
    try:
        with warnings.catch_warnings():  # torch's own deprecation chatter is not the user's
            warnings.simplefilter("ignore", FutureWarning)
            return torch.export.export(model, tuple(example_inputs))
    except Exception as e:  # torch raises many types (UserError, GuardOnDataDependent, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FrontendError(
            f"torch.export could not capture the model ({type(e).__name__}): {first}\n"
            "honer needs a graph with static shapes and no data-dependent Python control flow; "
            "rewrite such branches with torch.where or torch.cond-free tensor ops.") from e


def from_exported_program(ep: torch.export.ExportedProgram, name: str = "main") -> Graph:
    table = torch.export.default_decompositions()
    for op in list(table):
        if any(str(op).endswith(k) and str(op).startswith("aten.") for k in KEEP_WHOLE):
            del table[op]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            ep = ep.run_decompositions(table)
    except Exception as e:
        raise FrontendError(f"decomposing to core ATen failed: {e}") from e
    return _Converter(ep, name).run()


def from_torch(model: torch.nn.Module | torch.export.ExportedProgram,
               example_inputs: Sequence[Any] | None) -> Graph:
    if isinstance(model, torch.export.ExportedProgram):
        return from_exported_program(model)
    if example_inputs is None:
        raise FrontendError("a torch.nn.Module needs example_inputs to be captured")
    return from_exported_program(export(model, example_inputs))


# ---- the converter ---------------------------------------------------------------------------


def _scope(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self___", "")


def _location(node: torch.fx.Node) -> str:
    scope = _scope(node) or "<top>"
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip().startswith("File")]
    return f"{scope}, {lines[-1]}" if lines else scope


def _dtype(t: torch.dtype) -> str:
    if t not in TORCH_DTYPES:
        raise FrontendError(f"dtype {t} is not supported")
    return TORCH_DTYPES[t]


def _meta(x: Any) -> Any:
    return x.meta.get("val") if isinstance(x, torch.fx.Node) else x


class _Converter:
    def __init__(self, ep: torch.export.ExportedProgram, name: str):
        self.ep = ep
        self.g = Graph(name)
        self.env: dict[torch.fx.Node, Any] = {}
        self.scope = ""

    # -- driving --

    def run(self) -> Graph:
        fx = self.ep.graph
        self._check_supported(fx)
        consts = self._lifted_constants()
        user_inputs = [s.arg.name for s in self.ep.graph_signature.input_specs
                       if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
        for node in fx.nodes:
            if node.op == "placeholder":
                self._placeholder(node, consts, user_inputs)
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "output":
                outs = torch.utils._pytree.tree_leaves(node.args[0])
                self.g.set_outputs(self._output_value(o) for o in outs)
        self.g.remove_dead()  # unused buffers (e.g. BatchNorm's num_batches_tracked)
        return self.g

    def _check_supported(self, fx: torch.fx.Graph) -> None:
        problems: list[tuple[str, str]] = []
        for node in fx.nodes:
            if node.op == "call_function" and self._key(node) not in HANDLERS:
                problems.append((self._key(node), _location(node)))
            elif node.op in ("call_module", "call_method"):
                problems.append((f"{node.op}:{node.target}", _location(node)))
        if problems:
            raise UnsupportedOpError("torch", problems)

    @staticmethod
    def _key(node: torch.fx.Node) -> str:
        target = node.target
        if target is operator.getitem:
            return "getitem"
        return str(target).removeprefix("aten.") if str(target).startswith("aten.") else str(target)

    def _lifted_constants(self) -> dict[str, torch.Tensor]:
        sig = self.ep.graph_signature
        state = {**self.ep.state_dict, **self.ep.constants}
        out = {}
        for spec in sig.input_specs:
            if spec.target is not None and spec.target in state:
                out[spec.arg.name] = state[spec.target]
        return out

    def _placeholder(self, node: torch.fx.Node, consts: dict[str, torch.Tensor],
                     user_inputs: list[str]) -> None:
        if node.name in consts:
            t = consts[node.name]
            self.env[node] = self.g.add_const(_to_numpy(t), node.name)
            return
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise FrontendError(f"input {node.name} is not a tensor ({type(val).__name__}); "
                                "pass tensors as example inputs")
        shape = []
        for d in val.shape:
            if not isinstance(d, int):
                raise FrontendError(f"input {node.name} has a dynamic dimension ({d}); honer "
                                    "compiles static shapes: export with concrete sizes")
            shape.append(d)
        self.env[node] = self.g.add_input(node.name, shape, _dtype(val.dtype))

    def _output_value(self, o: Any) -> Value:
        if isinstance(o, torch.fx.Node):
            v = self.env[o]
            if isinstance(v, Value):
                return v
        raise FrontendError(f"model output {o} is not a tensor computed by the graph")

    def _call(self, node: torch.fx.Node) -> None:
        self.scope = _scope(node)
        try:
            result = HANDLERS[self._key(node)](self, node)
        except HonerError as e:
            raise FrontendError(f"converting {node.target} at {_location(node)}: {e}") from e
        self.env[node] = result
        self._check_against_torch(node, result)

    def _check_against_torch(self, node: torch.fx.Node, result: Any) -> None:
        val = node.meta.get("val")
        if isinstance(result, Value) and isinstance(val, torch.Tensor):
            want = (tuple(int(d) for d in val.shape), _dtype(val.dtype))
            if (result.shape, result.dtype) != want:
                raise FrontendError(
                    f"internal: {node.target} at {_location(node)} converted to {result.type}, "
                    f"torch says {want[1]}{list(want[0])}")

    # -- helpers used by handlers --

    def arg(self, node: torch.fx.Node, i: int, name: str | None = None, default: Any = None
            ) -> Any:
        if i < len(node.args):
            return node.args[i]
        if name is not None and name in node.kwargs:
            return node.kwargs[name]
        return default

    def value(self, x: Any, dtype: str | None = None) -> Value:
        """A graph value for an fx node or a Python scalar, cast to `dtype` when given."""
        if isinstance(x, torch.fx.Node):
            v = self.env[x]
            if not isinstance(v, Value):
                raise FrontendError(f"{x.name} is not a tensor value")
            if dtype is not None and v.dtype != dtype:
                v = self.op("cast", v, dtype=dtype)
            return v
        if isinstance(x, bool | int | float):
            return self.g.add_const(np.array(x, dtype=dtype or _scalar_dtype(x)), "scalar")
        raise FrontendError(f"unsupported argument {x!r}")

    def const(self, array: np.ndarray, name: str = "const") -> Value:
        return self.g.add_const(array, name)

    def op(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        return self.g.add_node(op, inputs, attrs, scope=self.scope).output

    def out_type(self, node: torch.fx.Node) -> tuple[tuple[int, ...], str]:
        val = node.meta["val"]
        return tuple(int(d) for d in val.shape), _dtype(val.dtype)

    def promoted(self, *xs: Any) -> str:
        metas = []
        for x in xs:
            m = _meta(x)
            metas.append(torch.empty(tuple(m.shape), dtype=m.dtype, device="meta")
                         if isinstance(m, torch.Tensor) else m)
        return _dtype(torch.result_type(*metas) if len(metas) == 2 else metas[0].dtype)


def _scalar_dtype(x: Any) -> str:
    return "bool" if isinstance(x, bool) else "int64" if isinstance(x, int) else "float32"


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().copy()


# ---- handlers: elementwise -------------------------------------------------------------------

_UNARY = {
    "neg": "neg", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt",
    "reciprocal": "reciprocal", "tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu",
    "silu": "silu", "erf": "erf", "abs": "abs", "sin": "sin", "cos": "cos", "floor": "floor",
    "ceil": "ceil", "round": "round", "sign": "sign", "logical_not": "logical_not",
    "bitwise_not": "logical_not", "hardswish": "hard_swish", "trunc": "trunc",
    "softplus": "softplus",
}
for _aten, _ir in _UNARY.items():
    def _unary(c: _Converter, n: torch.fx.Node, _ir: str = _ir) -> Value:
        shape, dtype = c.out_type(n)
        x = c.value(n.args[0], dtype if _ir != "logical_not" else None)
        if _ir == "logical_not" and x.dtype != "bool":
            x = c.op("not_equal", x, c.value(0, x.dtype))
        beta, threshold = c.arg(n, 1, "beta", 1), c.arg(n, 2, "threshold", 20)
        if _ir == "softplus" and (beta != 1 or threshold != 20):
            raise FrontendError("softplus with beta != 1 or threshold != 20 is not supported")
        return c.op(_ir, x)

    HANDLERS[f"{_aten}.default"] = _unary

_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow",
           "maximum": "maximum", "minimum": "minimum", "remainder": "mod",
           "floor_divide": "floor_divide"}
_COMPARE = {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal",
            "gt": "greater", "ge": "greater_equal", "logical_and": "logical_and",
            "logical_or": "logical_or", "logical_xor": "logical_xor",
            "bitwise_and": "logical_and", "bitwise_or": "logical_or",
            "bitwise_xor": "logical_xor"}


def _binary(ir_op: str) -> Handler:
    def handler(c: _Converter, n: torch.fx.Node) -> Value:
        a, b = n.args[0], n.args[1]
        _, dtype = c.out_type(n)
        x, y = c.value(a, dtype), c.value(b, dtype)
        alpha = n.kwargs.get("alpha", 1)
        if alpha != 1:
            y = c.op("mul", y, c.value(alpha, dtype))
        return c.op(ir_op, x, y)

    return handler


def _compare(ir_op: str) -> Handler:
    def handler(c: _Converter, n: torch.fx.Node) -> Value:
        a, b = n.args[0], n.args[1]
        dtype = "bool" if ir_op.startswith("logical") else c.promoted(a, b)
        if dtype == "bool":
            x, y = _as_bool(c, c.value(a)), _as_bool(c, c.value(b))
        else:
            x, y = c.value(a, dtype), c.value(b, dtype)
        return c.op(ir_op, x, y)

    return handler


def _as_bool(c: _Converter, v: Value) -> Value:
    return v if v.dtype == "bool" else c.op("not_equal", v, c.value(0, v.dtype))


for _aten, _ir in _BINARY.items():
    for _ov in ("Tensor", "Scalar", "default", "Tensor_Scalar", "Tensor_Tensor"):
        HANDLERS[f"{_aten}.{_ov}"] = _binary(_ir)
for _aten, _ir in _COMPARE.items():
    for _ov in ("Tensor", "Scalar", "default"):
        HANDLERS[f"{_aten}.{_ov}"] = _compare(_ir)


@handles("pow.Scalar")
def _pow_scalar(c: _Converter, n: torch.fx.Node) -> Value:
    _, dtype = c.out_type(n)
    return c.op("pow", c.value(n.args[0], dtype), c.value(n.args[1], dtype))


@handles("rsub.Scalar", "rsub.Tensor")
def _rsub(c: _Converter, n: torch.fx.Node) -> Value:
    _, dtype = c.out_type(n)
    x, y = c.value(n.args[0], dtype), c.value(n.args[1], dtype)
    alpha = n.kwargs.get("alpha", 1)
    if alpha != 1:
        x = c.op("mul", x, c.value(alpha, dtype))
    return c.op("sub", y, x)


@handles("div.Tensor_mode", "div.Scalar_mode")
def _div_mode(c: _Converter, n: torch.fx.Node) -> Value:
    _, dtype = c.out_type(n)
    mode = n.kwargs.get("rounding_mode", c.arg(n, 2))
    if mode is None:
        return _binary("div")(c, n)
    x, y = c.value(n.args[0], dtype), c.value(n.args[1], dtype)
    if mode == "floor":
        return c.op("floor_divide", x, y)
    if dtype.startswith("float"):
        return c.op("trunc", c.op("div", x, y))
    q = c.op("div", c.op("cast", x, dtype="float32"), c.op("cast", y, dtype="float32"))
    return c.op("cast", c.op("trunc", q), dtype=dtype)


@handles("gelu.default")
def _gelu(c: _Converter, n: torch.fx.Node) -> Value:
    return c.op("gelu", c.value(n.args[0]), approximate=n.kwargs.get("approximate",
                                                                    c.arg(n, 1) or "none"))


@handles("leaky_relu.default")
def _leaky_relu(c: _Converter, n: torch.fx.Node) -> Value:
    return c.op("leaky_relu", c.value(n.args[0]), alpha=float(c.arg(n, 1, "negative_slope", 0.01)))


@handles("elu.default")
def _elu(c: _Converter, n: torch.fx.Node) -> Value:
    alpha, scale, in_scale = (c.arg(n, i, k, 1.0) for i, k in
                              ((1, "alpha"), (2, "scale"), (3, "input_scale")))
    if (scale, in_scale) == (1.0507009873554805, 1) and abs(alpha - 1.6732632423543772) < 1e-9:
        return c.op("selu", c.value(n.args[0]))
    if scale != 1 or in_scale != 1:
        raise FrontendError("elu with scale/input_scale is not supported")
    return c.op("elu", c.value(n.args[0]), alpha=float(alpha))


@handles("hardsigmoid.default")
def _hardsigmoid(c: _Converter, n: torch.fx.Node) -> Value:
    return c.op("hard_sigmoid", c.value(n.args[0]), alpha=1 / 6, beta=0.5)


@handles("hardtanh.default", "clamp.default", "clamp_min.default", "clamp_max.default")
def _clamp(c: _Converter, n: torch.fx.Node) -> Value:
    key = str(n.target)
    lo, hi = c.arg(n, 1, "min"), c.arg(n, 2, "max")
    if "hardtanh" in key:
        lo, hi = c.arg(n, 1, "min_val", -1.0), c.arg(n, 2, "max_val", 1.0)
    elif "clamp_max" in key:
        lo, hi = None, c.arg(n, 1, "max")
    _, dtype = c.out_type(n)
    return c.op("clip", c.value(n.args[0], dtype), min=None if lo is None else float(lo),
                max=None if hi is None else float(hi))


@handles("clamp.Tensor")
def _clamp_tensor(c: _Converter, n: torch.fx.Node) -> Value:
    _, dtype = c.out_type(n)
    x = c.value(n.args[0], dtype)
    lo, hi = c.arg(n, 1, "min"), c.arg(n, 2, "max")
    if lo is not None:
        x = c.op("maximum", x, c.value(lo, dtype))
    if hi is not None:
        x = c.op("minimum", x, c.value(hi, dtype))
    return x


@handles("where.self", "where.ScalarOther", "where.ScalarSelf", "where.Scalar")
def _where_op(c: _Converter, n: torch.fx.Node) -> Value:
    _, dtype = c.out_type(n)
    return c.op("where", _as_bool(c, c.value(n.args[0])), c.value(n.args[1], dtype),
                c.value(n.args[2], dtype))


@handles("masked_fill.Scalar", "masked_fill.Tensor")
def _masked_fill(c: _Converter, n: torch.fx.Node) -> Value:
    _, dtype = c.out_type(n)
    return c.op("where", _as_bool(c, c.value(n.args[1])), c.value(n.args[2], dtype),
                c.value(n.args[0], dtype))


@handles("_to_copy.default", "to.dtype", "_to_dim_order_copy.default")
def _to_copy(c: _Converter, n: torch.fx.Node) -> Value:
    _, dtype = c.out_type(n)
    x = c.value(n.args[0])
    return x if x.dtype == dtype else c.op("cast", x, dtype=dtype)


@handles("clone.default", "alias.default", "lift_fresh_copy.default", "detach.default",
         "contiguous.default", "dropout.default")
def _identity(c: _Converter, n: torch.fx.Node) -> Value:
    return c.value(n.args[0])


@handles("_assert_tensor_metadata.default", "_assert_scalar.default",
         "sym_constrain_range_for_size.default")
def _ignore(c: _Converter, n: torch.fx.Node) -> None:
    return None


# ---- handlers: factories (shape-only, so they become constants) ------------------------------


def _const_like(c: _Converter, n: torch.fx.Node, fill: Any) -> Value:
    shape, dtype = c.out_type(n)
    return c.const(np.full(shape, fill, dtype=dtype), "full")


@handles("full.default", "full_like.default", "new_full.default")
def _full(c: _Converter, n: torch.fx.Node) -> Value:
    key = str(n.target)
    fill = c.arg(n, 1, "fill_value") if "like" in key or "new" not in key else c.arg(n, 2)
    if "new_full" in key:
        fill = c.arg(n, 2, "fill_value")
    return _const_like(c, n, fill)


@handles("zeros.default", "zeros_like.default", "new_zeros.default", "empty.memory_format",
         "empty_like.default", "new_empty.default")
def _zeros(c: _Converter, n: torch.fx.Node) -> Value:
    return _const_like(c, n, 0)


@handles("ones.default", "ones_like.default", "new_ones.default")
def _ones(c: _Converter, n: torch.fx.Node) -> Value:
    return _const_like(c, n, 1)


@handles("scalar_tensor.default")
def _scalar_tensor(c: _Converter, n: torch.fx.Node) -> Value:
    return _const_like(c, n, n.args[0])


@handles("arange.default", "arange.start", "arange.start_step")
def _arange(c: _Converter, n: torch.fx.Node) -> Value:
    nums = [a for a in n.args if isinstance(a, int | float)]
    start, end, step = (0, nums[0], 1) if len(nums) == 1 else (nums + [1])[:3]
    _, dtype = c.out_type(n)
    return c.const(np.arange(start, end, step).astype(dtype), "arange")


# ---- handlers: reductions and normalizations -------------------------------------------------


def _dims(x: Any) -> tuple[int, ...] | None:
    if x is None:
        return None
    return tuple(x) if isinstance(x, list | tuple) else (x,)


def _reduce(ir_op: str) -> Handler:
    def handler(c: _Converter, n: torch.fx.Node) -> Value:
        _, dtype = c.out_type(n)
        x = c.value(n.args[0], dtype)
        dims = _dims(c.arg(n, 1, "dim"))
        if dims == ():
            dims = None
        return c.op(ir_op, x, axes=dims, keepdims=bool(c.arg(n, 2, "keepdim", False)))

    return handler


for _aten, _ir in (("sum", "reduce_sum"), ("mean", "reduce_mean"), ("amax", "reduce_max"),
                   ("amin", "reduce_min"), ("prod", "reduce_prod")):
    for _ov in ("dim_IntList", "dim", "default", "dim_int"):
        HANDLERS[f"{_aten}.{_ov}"] = _reduce(_ir)


@handles("max.default", "min.default")
def _max_all(c: _Converter, n: torch.fx.Node) -> Value:
    return c.op("reduce_max" if "max" in str(n.target) else "reduce_min", c.value(n.args[0]))


@handles("max.dim", "min.dim")
def _max_dim(c: _Converter, n: torch.fx.Node) -> tuple[Value, Value]:
    x = c.value(n.args[0])
    dim, keep = n.args[1], bool(c.arg(n, 2, "keepdim", False))
    is_max = "max" in str(n.target)
    values = c.op("reduce_max" if is_max else "reduce_min", x, axes=(dim,), keepdims=keep)
    idx = c.op("argmax" if is_max else "argmin", x, axis=dim, keepdims=keep)
    return values, idx


@handles("argmax.default", "argmin.default")
def _argmax(c: _Converter, n: torch.fx.Node) -> Value:
    x = c.value(n.args[0])
    dim = c.arg(n, 1, "dim")
    keep = bool(c.arg(n, 2, "keepdim", False))
    if dim is None:
        x = c.op("reshape", x, shape=(x.type.size,))
        dim = 0
    return c.op("argmax" if "argmax" in str(n.target) else "argmin", x, axis=dim, keepdims=keep)


@handles("any.dim", "any.dims", "any.default", "all.dim", "all.dims", "all.default")
def _any(c: _Converter, n: torch.fx.Node) -> Value:
    x = c.op("cast", _as_bool(c, c.value(n.args[0])), dtype="int32")
    dims = _dims(c.arg(n, 1, "dim"))
    keep = bool(c.arg(n, 2, "keepdim", False))
    fn = "reduce_max" if "any" in str(n.target) else "reduce_min"
    return c.op("cast", c.op(fn, x, axes=dims, keepdims=keep), dtype="bool")


@handles("var.correction", "var.dim")
def _var(c: _Converter, n: torch.fx.Node) -> Value:
    x = c.value(n.args[0])
    dims = _dims(c.arg(n, 1, "dim"))
    correction = n.kwargs.get("correction", 1 if "unbiased" not in n.kwargs else
                              int(n.kwargs["unbiased"]))
    keep = bool(n.kwargs.get("keepdim", False))
    mean = c.op("reduce_mean", x, axes=dims, keepdims=True)
    d = c.op("sub", x, mean)
    count = x.type.size if dims is None else math.prod(x.shape[a] for a in dims)
    sq = c.op("reduce_sum", c.op("mul", d, d), axes=dims, keepdims=keep)
    return c.op("div", sq, c.value(float(max(count - (correction or 0), 0)), x.dtype))


@handles("_softmax.default", "softmax.int", "_safe_softmax.default")
def _softmax(c: _Converter, n: torch.fx.Node) -> Value:
    return c.op("softmax", c.value(n.args[0]), axis=n.args[1])


@handles("_log_softmax.default", "log_softmax.int")
def _log_softmax(c: _Converter, n: torch.fx.Node) -> Value:
    return c.op("log_softmax", c.value(n.args[0]), axis=n.args[1])


@handles("cumsum.default")
def _cumsum(c: _Converter, n: torch.fx.Node) -> Value:
    _, dtype = c.out_type(n)
    return c.op("cumsum", c.value(n.args[0], dtype), axis=n.args[1])


@handles("_native_batch_norm_legit_no_training.default")
def _batch_norm(c: _Converter, n: torch.fx.Node) -> tuple[Value, ...]:
    x, w, b, mean, var = (n.args[i] for i in range(5))
    eps = float(n.args[6])
    xv = c.value(x)
    ch = xv.shape[1]
    wv = c.value(w) if w is not None else c.const(np.ones(ch, xv.dtype), "bn_scale")
    bv = c.value(b) if b is not None else c.const(np.zeros(ch, xv.dtype), "bn_bias")
    out = c.op("batch_norm", xv, wv, bv, c.value(mean), c.value(var), eps=eps)
    return (out,)


@handles("native_layer_norm.default")
def _layer_norm(c: _Converter, n: torch.fx.Node) -> tuple[Value, ...]:
    x, shape, w, b, eps = n.args[:5]
    inputs = [c.value(x)]
    if w is not None or b is not None:
        inputs.append(c.value(w) if w is not None else
                      c.const(np.ones(tuple(shape), inputs[0].dtype), "ln_weight"))
        if b is not None:
            inputs.append(c.value(b))
    return (c.g.add_node("layer_norm", inputs, {"normalized_ndim": len(shape), "eps": float(eps)},
                         scope=c.scope).output,)


@handles("getitem")
def _getitem(c: _Converter, n: torch.fx.Node) -> Any:
    source = c.env[n.args[0]]
    if not isinstance(source, tuple | list):
        raise FrontendError(f"getitem on a non-tuple value {n.args[0].name}")
    if n.args[1] >= len(source) or source[n.args[1]] is None:
        if n.users:
            raise FrontendError(f"output {n.args[1]} of {n.args[0].target} is not supported")
        return None
    return source[n.args[1]]


# ---- handlers: linear algebra, conv, pooling, attention --------------------------------------


@handles("linear.default")
def _linear(c: _Converter, n: torch.fx.Node) -> Value:
    inputs = [c.value(n.args[0]), c.value(n.args[1])]
    if c.arg(n, 2, "bias") is not None:
        inputs.append(c.value(n.args[2]))
    return c.g.add_node("linear", inputs, scope=c.scope).output


@handles("mm.default", "bmm.default", "matmul.default")
def _mm(c: _Converter, n: torch.fx.Node) -> Value:
    return c.op("matmul", c.value(n.args[0]), c.value(n.args[1]))


@handles("addmm.default")
def _addmm(c: _Converter, n: torch.fx.Node) -> Value:
    bias, a, b = (c.value(x) for x in n.args[:3])
    beta, alpha = n.kwargs.get("beta", 1), n.kwargs.get("alpha", 1)
    y = c.op("matmul", a, b)
    if alpha != 1:
        y = c.op("mul", y, c.value(alpha, y.dtype))
    if beta != 1:
        bias = c.op("mul", bias, c.value(beta, y.dtype))
    return c.op("add", y, bias)


def _pads(padding: Sequence[int]) -> tuple[int, ...]:
    """torch's symmetric per-axis padding -> (begin..., end...)."""
    return tuple(padding) * 2


@handles("convolution.default")
def _convolution(c: _Converter, n: torch.fx.Node) -> Value:
    x, w, b, stride, padding, dilation, transposed, out_pad, groups = n.args[:9]
    inputs = [c.value(x), c.value(w)] + ([c.value(b)] if b is not None else [])
    attrs = {"strides": tuple(stride), "padding": _pads(padding), "dilation": tuple(dilation),
             "groups": groups}
    if transposed:
        attrs["output_padding"] = tuple(out_pad)
    return c.g.add_node("conv_transpose" if transposed else "conv", inputs, attrs,
                        scope=c.scope).output


def _pool_attrs(n: torch.fx.Node, c: _Converter, is_max: bool) -> dict[str, Any]:
    nsp = len(c.value(n.args[0]).shape) - 2

    def spatial(v: Any, default: Any) -> tuple[int, ...]:
        v = list(v) if v else list(default)
        return tuple(v * nsp if len(v) == 1 else v)

    kernel = spatial(c.arg(n, 1, "kernel_size"), ())
    attrs = {"kernel": kernel, "strides": spatial(c.arg(n, 2, "stride"), kernel),
             "padding": _pads(spatial(c.arg(n, 3, "padding"), [0]))}
    if is_max:
        attrs["dilation"] = spatial(c.arg(n, 4, "dilation"), [1])
        attrs["ceil_mode"] = bool(c.arg(n, 5, "ceil_mode", False))
    else:
        attrs["dilation"] = (1,) * nsp
        attrs["ceil_mode"] = bool(c.arg(n, 4, "ceil_mode", False))
        attrs["count_include_pad"] = bool(c.arg(n, 5, "count_include_pad", True))
        if c.arg(n, 6, "divisor_override") is not None:
            raise FrontendError("avg_pool with divisor_override is not supported")
    return attrs


@handles("max_pool2d_with_indices.default", "max_pool2d.default",
         "max_pool3d_with_indices.default", "max_pool1d.default")
def _max_pool(c: _Converter, n: torch.fx.Node) -> Any:
    y = c.op("max_pool", c.value(n.args[0]), **_pool_attrs(n, c, True))
    return (y, None) if "indices" in str(n.target) else y


@handles("avg_pool2d.default", "avg_pool1d.default", "avg_pool3d.default")
def _avg_pool(c: _Converter, n: torch.fx.Node) -> Value:
    return c.op("avg_pool", c.value(n.args[0]), **_pool_attrs(n, c, False))


@handles("_adaptive_avg_pool2d.default", "adaptive_avg_pool2d.default")
def _adaptive_avg_pool(c: _Converter, n: torch.fx.Node) -> Value:
    x = c.value(n.args[0])
    oh, ow = n.args[1]
    h, w = x.shape[2:]
    if (oh, ow) == (1, 1):
        return c.op("reduce_mean", x, axes=(2, 3), keepdims=True)
    if h % oh or w % ow:
        raise FrontendError(f"adaptive_avg_pool2d from {h}x{w} to {oh}x{ow} needs uneven "
                            "windows, which is not supported")
    return c.op("avg_pool", x, kernel=(h // oh, w // ow), strides=(h // oh, w // ow),
                padding=(0, 0, 0, 0), dilation=(1, 1))


@handles("scaled_dot_product_attention.default")
def _sdpa(c: _Converter, n: torch.fx.Node) -> Value:
    q, k, v = (c.value(x) for x in n.args[:3])
    mask = c.arg(n, 3, "attn_mask")
    if float(c.arg(n, 4, "dropout_p", 0.0) or 0.0) != 0.0:
        raise FrontendError("attention dropout must be 0 at inference")
    causal = bool(c.arg(n, 5, "is_causal", False))
    scale = c.arg(n, 6, "scale")
    inputs = [q, k, v]
    if n.kwargs.get("enable_gqa") is False and q.shape[1] != k.shape[1]:
        raise FrontendError("query and key head counts differ but enable_gqa is False")
    if mask is not None:
        m = c.value(mask)
        inputs.append(m if m.dtype in ("bool", q.dtype) else c.op("cast", m, dtype=q.dtype))
    if len(q.shape) != 4:
        raise FrontendError(f"attention on rank-{len(q.shape)} tensors is not supported")
    return c.g.add_node("attention", inputs, {"scale": None if scale is None else float(scale),
                                              "causal": causal}, scope=c.scope).output


# ---- handlers: shape and indexing ------------------------------------------------------------


@handles("view.default", "_unsafe_view.default", "reshape.default", "view_copy.default",
         "squeeze.dims", "squeeze.dim", "squeeze.default", "unsqueeze.default",
         "flatten.using_ints", "expand_dims.default")
def _reshape(c: _Converter, n: torch.fx.Node) -> Value:
    shape, _ = c.out_type(n)
    x = c.value(n.args[0])
    return x if x.shape == shape else c.op("reshape", x, shape=shape)


@handles("permute.default", "permute_copy.default")
def _permute(c: _Converter, n: torch.fx.Node) -> Value:
    x = c.value(n.args[0])
    perm = tuple(d % max(len(x.shape), 1) for d in n.args[1])
    return c.op("transpose", x, perm=perm)


@handles("t.default", "transpose.int")
def _transpose(c: _Converter, n: torch.fx.Node) -> Value:
    x = c.value(n.args[0])
    rank = len(x.shape)
    if rank < 2:
        return x
    d0, d1 = (n.args[1], n.args[2]) if len(n.args) > 2 else (0, 1)
    perm = list(range(rank))
    perm[d0 % rank], perm[d1 % rank] = perm[d1 % rank], perm[d0 % rank]
    return c.op("transpose", x, perm=tuple(perm))


@handles("expand.default", "expand_copy.default")
def _expand(c: _Converter, n: torch.fx.Node) -> Value:
    shape, _ = c.out_type(n)
    x = c.value(n.args[0])
    return x if x.shape == shape else c.op("broadcast_to", x, shape=shape)


@handles("repeat.default")
def _repeat(c: _Converter, n: torch.fx.Node) -> Value:
    x = c.value(n.args[0])
    reps = list(n.args[1])
    shape = (1,) * (len(reps) - len(x.shape)) + x.shape
    x = c.op("reshape", x, shape=shape) if shape != x.shape else x
    # tile = broadcast into an interleaved shape, then merge
    inter = tuple(v for r, d in zip(reps, shape) for v in (r, d))
    x = c.op("reshape", x, shape=tuple(v for d in shape for v in (1, d)))
    x = c.op("broadcast_to", x, shape=inter)
    return c.op("reshape", x, shape=tuple(r * d for r, d in zip(reps, shape)))


@handles("cat.default", "concat.default")
def _cat(c: _Converter, n: torch.fx.Node) -> Value:
    _, dtype = c.out_type(n)
    parts = [c.value(x, dtype) for x in n.args[0]]
    parts = [p for p in parts if p.type.size > 0] or parts[:1]
    axis = c.arg(n, 1, "dim", 0)
    return parts[0] if len(parts) == 1 else c.op("concat", *parts, axis=axis)


@handles("slice.Tensor", "slice_copy.Tensor")
def _slice(c: _Converter, n: torch.fx.Node) -> Value:
    x = c.value(n.args[0])
    dim = c.arg(n, 1, "dim", 0)
    start, end, step = c.arg(n, 2, "start"), c.arg(n, 3, "end"), c.arg(n, 4, "step", 1)
    dim_size = x.shape[dim]
    start = 0 if start is None else start
    end = dim_size if end is None else min(end, dim_size)
    if (start, end, step) == (0, dim_size, 1):
        return x
    return c.op("slice", x, axes=(dim,), starts=(start,), ends=(end,), steps=(step,))


@handles("select.int", "select_copy.int")
def _select(c: _Converter, n: torch.fx.Node) -> Value:
    x = c.value(n.args[0])
    dim, index = n.args[1], n.args[2]
    index = index % x.shape[dim]
    y = c.op("slice", x, axes=(dim,), starts=(index,), ends=(index + 1,), steps=(1,))
    shape, _ = c.out_type(n)
    return c.op("reshape", y, shape=shape)


@handles("split_with_sizes.default", "split.Tensor", "split_with_sizes_copy.default",
         "unbind.int", "chunk.default")
def _split(c: _Converter, n: torch.fx.Node) -> tuple[Value, ...]:
    x = c.value(n.args[0])
    outs, start = [], 0
    key = str(n.target)
    dim = c.arg(n, 1 if "unbind" in key else 2, "dim", 0) % len(x.shape)
    for val in n.meta["val"]:
        size = int(val.shape[dim]) if "unbind" not in key else 1
        y = c.op("slice", x, axes=(dim,), starts=(start,), ends=(start + size,), steps=(1,))
        if "unbind" in key:
            y = c.op("reshape", y, shape=tuple(int(d) for d in val.shape))
        outs.append(y)
        start += size
    return tuple(outs)


@handles("embedding.default")
def _embedding(c: _Converter, n: torch.fx.Node) -> Value:
    return c.op("gather", c.value(n.args[0]), c.value(n.args[1]), axis=0)


@handles("index_select.default")
def _index_select(c: _Converter, n: torch.fx.Node) -> Value:
    return c.op("gather", c.value(n.args[0]), c.value(n.args[2]), axis=n.args[1])


@handles("gather.default")
def _gather(c: _Converter, n: torch.fx.Node) -> Value:
    return c.op("gather_elements", c.value(n.args[0]), c.value(n.args[2]), axis=n.args[1])


@handles("index.Tensor")
def _index(c: _Converter, n: torch.fx.Node) -> Value:
    """x[..., i0, i1, ...] with index tensors on consecutive axes: the indexed axes are merged
    into one and the broadcast indices are folded into one flat index for a single gather."""
    x = c.value(n.args[0])
    indices = list(n.args[1])
    used = [i for i, t in enumerate(indices) if t is not None]
    if used != list(range(used[0], used[-1] + 1)):
        raise FrontendError("advanced indexing with index tensors on non-adjacent axes is not "
                            "supported")
    first, count = used[0], len(used)
    idx = [c.value(indices[a]) for a in used]
    if any(i.dtype == "bool" for i in idx):
        raise FrontendError("boolean mask indexing has a data-dependent shape; use torch.where")
    dims = x.shape[first:first + count]
    shape = tuple(np.broadcast_shapes(*(i.shape for i in idx)))
    flat = None
    stride = 1
    for i, dim in reversed(list(zip(idx, dims))):
        i = c.op("cast", i, dtype="int64") if i.dtype != "int64" else i
        if not (i.is_const and (i.data >= 0).all()):
            i = c.op("where", c.op("less", i, c.value(0, "int64")),
                     c.op("add", i, c.value(dim, "int64")), i)
        if i.shape != shape:
            i = c.op("broadcast_to", i, shape=shape)
        if stride != 1:
            i = c.op("mul", i, c.value(stride, "int64"))
        flat = i if flat is None else c.op("add", flat, i)
        stride *= dim
    if count > 1:
        merged = x.shape[:first] + (stride,) + x.shape[first + count:]
        x = c.op("reshape", x, shape=merged)
    return c.op("gather", x, flat, axis=first)


@handles("constant_pad_nd.default")
def _pad(c: _Converter, n: torch.fx.Node) -> Value:
    x = c.value(n.args[0])
    pad = list(n.args[1])  # torch: last dim first, (before, after) pairs
    pads = [0] * (2 * len(x.shape))
    for i in range(len(pad) // 2):
        axis = len(x.shape) - 1 - i
        pads[2 * axis], pads[2 * axis + 1] = pad[2 * i], pad[2 * i + 1]
    return c.op("pad", x, pads=tuple(pads), value=float(c.arg(n, 2, "value", 0.0)))


@handles("tril.default", "triu.default")
def _tril(c: _Converter, n: torch.fx.Node) -> Value:
    x = c.value(n.args[0])
    k = c.arg(n, 1, "diagonal", 0)
    rows, cols = x.shape[-2:]
    fn = np.tril if "tril" in str(n.target) else np.triu
    keep = fn(np.ones((rows, cols), dtype=bool), k)
    return c.op("where", c.const(keep, "tri_mask"), x, c.value(0, x.dtype))


@handles("linalg_vector_norm.default")
def _vector_norm(c: _Converter, n: torch.fx.Node) -> Value:
    _, dtype = c.out_type(n)
    x = c.op("abs", c.value(n.args[0], dtype))
    p = float(c.arg(n, 1, "ord", 2))
    dims = _dims(c.arg(n, 2, "dim"))
    keep = bool(c.arg(n, 3, "keepdim", False))
    if math.isinf(p):
        return c.op("reduce_max" if p > 0 else "reduce_min", x, axes=dims, keepdims=keep)
    if p == 2:
        return c.op("sqrt", c.op("reduce_sum", c.op("mul", x, x), axes=dims, keepdims=keep))
    powered = c.op("pow", x, c.value(p, dtype))
    return c.op("pow", c.op("reduce_sum", powered, axes=dims, keepdims=keep),
                c.value(1.0 / p, dtype))
