"""Op schemas: attributes with defaults, shape/dtype inference and a numpy reference per op.

The reference implementations define the semantics of the IR: the interpreter runs them, the
codegen must agree with them, and tests compare both against PyTorch eager and ONNX Runtime.
Binary elementwise ops require equal dtypes (frontends insert explicit casts) and broadcast the
numpy way. Layouts are PyTorch's: NCHW activations, OIHW conv weights, [out, in] linear weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import IRError
from .graph import TensorType

InferFn = Callable[[list[TensorType], dict[str, Any]], list[TensorType]]
RefFn = Callable[..., Any]  # (attrs, *arrays) -> array or tuple of arrays


@dataclass(frozen=True)
class OpSchema:
    name: str
    infer: InferFn
    reference: RefFn
    attrs: dict[str, Any] = field(default_factory=dict)  # name -> default (REQUIRED: none)
    num_inputs: tuple[int, int] = (1, 1)  # min, max
    doc: str = ""

    def normalize_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise IRError(f"op {self.name}: unknown attribute(s) {sorted(unknown)}")
        out = {}
        for key, default in self.attrs.items():
            if key in attrs:
                out[key] = _freeze(attrs[key])
            elif default is REQUIRED:
                raise IRError(f"op {self.name}: missing attribute '{key}'")
            else:
                out[key] = default
        return out

    def check_arity(self, n: int) -> None:
        lo, hi = self.num_inputs
        if not lo <= n <= hi:
            raise IRError(f"op {self.name} takes {lo}..{hi} inputs, got {n}")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
_SCHEMAS: dict[str, OpSchema] = {}


def _freeze(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def get_schema(op: str) -> OpSchema:
    try:
        return _SCHEMAS[op]
    except KeyError:
        raise IRError(f"unknown op '{op}'") from None


def all_ops() -> list[str]:
    return sorted(_SCHEMAS)


def register(name: str, infer: InferFn, reference: RefFn, attrs: dict[str, Any] | None = None,
             num_inputs: tuple[int, int] = (1, 1), doc: str = "") -> None:
    if name in _SCHEMAS:
        raise IRError(f"op {name} registered twice")
    base_infer = infer

    def checked_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
        _SCHEMAS[name].check_arity(len(types))
        return base_infer(types, a)

    _SCHEMAS[name] = OpSchema(name, checked_infer, reference, attrs or {}, num_inputs, doc)


# ---- helpers ---------------------------------------------------------------------------------

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _broadcast(types: Sequence[TensorType], op: str) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*(t.shape for t in types)))
    except ValueError:
        raise IRError(f"{op}: shapes {[t.shape for t in types]} do not broadcast") from None


def _same_dtype(types: Sequence[TensorType], op: str) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise IRError(f"{op}: inputs have different dtypes {sorted(dtypes)}; insert a cast")
    return dtypes.pop()


def _norm_axis(axis: int, rank: int, op: str) -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise IRError(f"{op}: axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 refined by one Newton-free correction: |err| < 1.5e-7, which is
    # below float32 resolution near 1, so no scipy dependency is needed.
    x64 = x.astype(np.float64)
    s = np.sign(x64)
    a = np.abs(x64)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
               + 0.254829592) * t * np.exp(-a * a)
    return (s * y).astype(x.dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype)


# ---- elementwise -----------------------------------------------------------------------------


def _quiet(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return fn(x)


def _same_type_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    return [types[0]]


def _gelu(a: dict[str, Any], x: np.ndarray) -> np.ndarray:
    if a["approximate"] == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
        return (0.5 * x * (1.0 + np.tanh(inner))).astype(x.dtype)
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805

UNARY: dict[str, tuple[Callable[..., np.ndarray], dict[str, Any]]] = {
    "neg": (lambda a, x: -x, {}),
    "exp": (lambda a, x: np.exp(x), {}),
    "log": (lambda a, x: _quiet(np.log, x), {}),  # log(0) = -inf is meant (masks)
    "sqrt": (lambda a, x: np.sqrt(x), {}),
    "rsqrt": (lambda a, x: (1.0 / np.sqrt(x)).astype(x.dtype), {}),
    "reciprocal": (lambda a, x: (1.0 / x).astype(x.dtype), {}),
    "tanh": (lambda a, x: np.tanh(x), {}),
    "sigmoid": (lambda a, x: _sigmoid(x), {}),
    "relu": (lambda a, x: np.maximum(x, 0).astype(x.dtype), {}),
    "silu": (lambda a, x: x * _sigmoid(x), {}),
    "gelu": (_gelu, {"approximate": "none"}),
    "erf": (lambda a, x: _erf(x), {}),
    "abs": (lambda a, x: np.abs(x), {}),
    "sin": (lambda a, x: np.sin(x), {}),
    "cos": (lambda a, x: np.cos(x), {}),
    "floor": (lambda a, x: np.floor(x), {}),
    "trunc": (lambda a, x: np.trunc(x), {}),
    "ceil": (lambda a, x: np.ceil(x), {}),
    "round": (lambda a, x: np.round(x), {}),  # half to even, as torch and ONNX
    "sign": (lambda a, x: np.sign(x), {}),
    "logical_not": (lambda a, x: np.logical_not(x), {}),
    "softplus": (lambda a, x: np.logaddexp(x, 0).astype(x.dtype), {}),
    "softsign": (lambda a, x: (x / (1 + np.abs(x))).astype(x.dtype), {}),
    "leaky_relu": (lambda a, x: np.where(x >= 0, x, x * a["alpha"]).astype(x.dtype),
                   {"alpha": 0.01}),
    "elu": (lambda a, x: np.where(x > 0, x, a["alpha"] * np.expm1(np.minimum(x, 0)))
            .astype(x.dtype), {"alpha": 1.0}),
    "selu": (lambda a, x: (_SELU_SCALE * np.where(
        x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0)))).astype(x.dtype), {}),
    "hard_sigmoid": (lambda a, x: np.clip(a["alpha"] * x + a["beta"], 0, 1).astype(x.dtype),
                     {"alpha": 1 / 6, "beta": 0.5}),
    "hard_swish": (lambda a, x: (x * np.clip(x / 6 + 0.5, 0, 1)).astype(x.dtype), {}),
    "clip": (lambda a, x: np.clip(x, -np.inf if a["min"] is None else a["min"],
                                  np.inf if a["max"] is None else a["max"]).astype(x.dtype),
             {"min": None, "max": None}),
}

for _name, (_fn, _attrs) in UNARY.items():
    register(_name, _same_type_infer, _fn, _attrs, doc="elementwise")

BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "pow": np.power, "maximum": np.maximum, "minimum": np.minimum,
    "floor_divide": np.floor_divide, "mod": np.mod,
}
COMPARE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less,
    "less_equal": np.less_equal, "greater": np.greater, "greater_equal": np.greater_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}


def _binary_infer(result_bool: bool) -> InferFn:
    def infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        dtype = _same_dtype(types, "binary op")
        return [TensorType(_broadcast(types, "binary op"), "bool" if result_bool else dtype)]

    return infer


def _binary_ref(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> RefFn:
    def ref(a: dict[str, Any], x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out = fn(x, y)
        return np.asarray(out).astype(x.dtype, copy=False)

    return ref


def _compare_ref(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> RefFn:
    return lambda a, x, y: np.asarray(fn(x, y))


for _name, _fn in BINARY.items():
    register(_name, _binary_infer(False), _binary_ref(_fn), num_inputs=(2, 2), doc="elementwise")
for _name, _fn in COMPARE.items():
    register(_name, _binary_infer(True), _compare_ref(_fn), num_inputs=(2, 2), doc="elementwise")


def _where_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    if types[0].dtype != "bool":
        raise IRError(f"where: condition must be bool, got {types[0].dtype}")
    dtype = _same_dtype(types[1:], "where")
    return [TensorType(_broadcast(types, "where"), dtype)]


register("where", _where_infer, lambda a, c, x, y: np.where(c, x, y), num_inputs=(3, 3))


def _cast_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    if attrs["dtype"] not in DTYPE_NAMES:
        raise IRError(f"cast: unsupported dtype {attrs['dtype']}")
    return [TensorType(types[0].shape, attrs["dtype"])]


DTYPE_NAMES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8",
               "bool")


def _cast_ref(a: dict[str, Any], x: np.ndarray) -> np.ndarray:
    target = np.dtype(a["dtype"])
    if np.issubdtype(x.dtype, np.floating) and np.issubdtype(target, np.integer):
        x = np.trunc(x)  # C semantics, like torch and ONNX
    with np.errstate(invalid="ignore"):
        return x.astype(target)


register("cast", _cast_infer, _cast_ref, {"dtype": REQUIRED})

# ---- reductions ------------------------------------------------------------------------------


def _reduce_axes(axes: tuple[int, ...] | None, rank: int, op: str) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(rank))
    out = tuple(sorted({_norm_axis(a, rank, op) for a in axes}))
    return out


def _reduce_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    t = types[0]
    axes = _reduce_axes(attrs["axes"], len(t.shape), "reduce")
    if attrs["keepdims"]:
        shape = tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    else:
        shape = tuple(d for i, d in enumerate(t.shape) if i not in axes)
    return [TensorType(shape, t.dtype)]


REDUCE = {"reduce_sum": np.sum, "reduce_mean": np.mean, "reduce_max": np.max,
          "reduce_min": np.min, "reduce_prod": np.prod}


def _reduce_ref(fn: Callable[..., np.ndarray]) -> RefFn:
    def ref(a: dict[str, Any], x: np.ndarray) -> np.ndarray:
        axes = _reduce_axes(a["axes"], x.ndim, "reduce")
        return np.asarray(fn(x, axis=axes, keepdims=a["keepdims"])).astype(x.dtype)

    return ref


for _name, _fn in REDUCE.items():
    register(_name, _reduce_infer, _reduce_ref(_fn), {"axes": None, "keepdims": False})


def _arg_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    t = types[0]
    axis = _norm_axis(attrs["axis"], len(t.shape), "argmax")
    shape = list(t.shape)
    if attrs["keepdims"]:
        shape[axis] = 1
    else:
        del shape[axis]
    return [TensorType(tuple(shape), "int64")]


def _arg_ref(fn: Callable[..., np.ndarray]) -> RefFn:
    def ref(a: dict[str, Any], x: np.ndarray) -> np.ndarray:
        out = fn(x, axis=a["axis"])
        if a["keepdims"]:
            out = np.expand_dims(out, a["axis"])
        return out.astype(np.int64)

    return ref


register("argmax", _arg_infer, _arg_ref(np.argmax), {"axis": REQUIRED, "keepdims": False})
register("argmin", _arg_infer, _arg_ref(np.argmin), {"axis": REQUIRED, "keepdims": False})


def _axis_keep_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    _norm_axis(attrs["axis"], len(types[0].shape), "op")
    return [types[0]]


def _softmax(a: dict[str, Any], x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=a["axis"], keepdims=True)
    e = np.exp(x - m)
    return (e / np.sum(e, axis=a["axis"], keepdims=True)).astype(x.dtype)


def _log_softmax(a: dict[str, Any], x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=a["axis"], keepdims=True)
    s = x - m
    return (s - np.log(np.sum(np.exp(s), axis=a["axis"], keepdims=True))).astype(x.dtype)


register("softmax", _axis_keep_infer, _softmax, {"axis": -1})
register("log_softmax", _axis_keep_infer, _log_softmax, {"axis": -1})
register("cumsum", _axis_keep_infer,
         lambda a, x: np.cumsum(x, axis=a["axis"]).astype(x.dtype), {"axis": REQUIRED})

# ---- shape ops -------------------------------------------------------------------------------


def _reshape_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    shape = tuple(int(d) for d in attrs["shape"])
    if any(d < 0 for d in shape):
        raise IRError(f"reshape: target shape {shape} must be fully static (no -1)")
    if int(np.prod(shape, dtype=np.int64)) != types[0].size:
        raise IRError(f"reshape: cannot reshape {types[0].shape} to {shape}")
    return [TensorType(shape, types[0].dtype)]


register("reshape", _reshape_infer, lambda a, x: x.reshape(a["shape"]), {"shape": REQUIRED})


def _transpose_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    perm = attrs["perm"]
    shape = types[0].shape
    if sorted(perm) != list(range(len(shape))):
        raise IRError(f"transpose: {perm} is not a permutation of rank {len(shape)}")
    return [TensorType(tuple(shape[p] for p in perm), types[0].dtype)]


register("transpose", _transpose_infer,
         lambda a, x: np.ascontiguousarray(np.transpose(x, a["perm"])), {"perm": REQUIRED})


def _broadcast_to_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    shape = tuple(attrs["shape"])
    try:
        if np.broadcast_shapes(types[0].shape, shape) != shape:
            raise ValueError
    except ValueError:
        raise IRError(f"broadcast_to: {types[0].shape} does not broadcast to {shape}") from None
    return [TensorType(shape, types[0].dtype)]


register("broadcast_to", _broadcast_to_infer,
         lambda a, x: np.ascontiguousarray(np.broadcast_to(x, a["shape"])), {"shape": REQUIRED})


def _concat_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    dtype = _same_dtype(types, "concat")
    rank = len(types[0].shape)
    axis = _norm_axis(attrs["axis"], rank, "concat")
    for t in types:
        if len(t.shape) != rank or any(
                d != e for i, (d, e) in enumerate(zip(t.shape, types[0].shape)) if i != axis):
            raise IRError(f"concat: shapes {[t.shape for t in types]} differ off axis {axis}")
    shape = list(types[0].shape)
    shape[axis] = sum(t.shape[axis] for t in types)
    return [TensorType(tuple(shape), dtype)]


register("concat", _concat_infer, lambda a, *xs: np.concatenate(xs, axis=a["axis"]),
         {"axis": REQUIRED}, num_inputs=(1, 1 << 16))


def slice_indices(dim: int, start: int, end: int, step: int) -> range:
    """Python slice semantics with clamping, as torch and ONNX define it."""
    return range(*slice(start, end, step).indices(dim))


def _slice_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    shape = list(types[0].shape)
    for axis, s, e, st in zip(attrs["axes"], attrs["starts"], attrs["ends"], attrs["steps"]):
        axis = _norm_axis(axis, len(shape), "slice")
        if st == 0:
            raise IRError("slice: step must not be 0")
        shape[axis] = len(slice_indices(types[0].shape[axis], s, e, st))
    return [TensorType(tuple(shape), types[0].dtype)]


def _slice_ref(a: dict[str, Any], x: np.ndarray) -> np.ndarray:
    index = [slice(None)] * x.ndim
    for axis, s, e, st in zip(a["axes"], a["starts"], a["ends"], a["steps"]):
        r = slice_indices(x.shape[axis], s, e, st)
        index[axis % x.ndim] = slice(r.start, r.stop if r.stop >= 0 else None, r.step)
    return np.ascontiguousarray(x[tuple(index)])


register("slice", _slice_infer, _slice_ref,
         {"axes": REQUIRED, "starts": REQUIRED, "ends": REQUIRED, "steps": REQUIRED})


def _gather_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    data, idx = types
    if idx.dtype not in ("int64", "int32"):
        raise IRError(f"gather: indices must be int32/int64, got {idx.dtype}")
    axis = _norm_axis(attrs["axis"], len(data.shape), "gather")
    shape = data.shape[:axis] + idx.shape + data.shape[axis + 1:]
    return [TensorType(shape, data.dtype)]


def _gather_ref(a: dict[str, Any], x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    axis = a["axis"] % x.ndim
    return np.take(x, np.where(idx < 0, idx + x.shape[axis], idx), axis=axis)


register("gather", _gather_infer, _gather_ref, {"axis": 0}, num_inputs=(2, 2),
         doc="numpy.take: embedding lookups and index_select")


def _gather_elements_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    data, idx = types
    if len(data.shape) != len(idx.shape):
        raise IRError("gather_elements: data and indices must have the same rank")
    _norm_axis(attrs["axis"], len(data.shape), "gather_elements")
    return [TensorType(idx.shape, data.dtype)]


def _gather_elements_ref(a: dict[str, Any], x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    axis = a["axis"] % x.ndim
    return np.take_along_axis(x, np.where(idx < 0, idx + x.shape[axis], idx), axis=axis)


register("gather_elements", _gather_elements_infer, _gather_elements_ref, {"axis": 0},
         num_inputs=(2, 2), doc="numpy.take_along_axis (torch.gather)")


def _pad_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    pads = attrs["pads"]  # (before_0, after_0, before_1, after_1, ...)
    shape = types[0].shape
    if len(pads) != 2 * len(shape):
        raise IRError(f"pad: expected {2 * len(shape)} pad values, got {len(pads)}")
    if attrs["mode"] not in ("constant", "reflect", "edge"):
        raise IRError(f"pad: unsupported mode {attrs['mode']}")
    out = tuple(d + pads[2 * i] + pads[2 * i + 1] for i, d in enumerate(shape))
    if any(d < 0 for d in out):
        raise IRError(f"pad: negative output shape {out}")
    return [TensorType(out, types[0].dtype)]


def _pad_ref(a: dict[str, Any], x: np.ndarray) -> np.ndarray:
    p = a["pads"]
    widths = [(max(p[2 * i], 0), max(p[2 * i + 1], 0)) for i in range(x.ndim)]
    if a["mode"] == "constant":
        out = np.pad(x, widths, mode="constant", constant_values=a["value"])
    else:
        out = np.pad(x, widths, mode=a["mode"])
    crop = tuple(slice(-min(p[2 * i], 0), out.shape[i] + min(p[2 * i + 1], 0))
                 for i in range(x.ndim))
    return np.ascontiguousarray(out[crop])


register("pad", _pad_infer, _pad_ref, {"pads": REQUIRED, "mode": "constant", "value": 0.0})

# ---- linear algebra --------------------------------------------------------------------------


def _matmul_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    a, b = types
    dtype = _same_dtype(types, "matmul")
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise IRError("matmul: inputs must be at least 2-D (frontends reshape vectors)")
    if a.shape[-1] != b.shape[-2]:
        raise IRError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape}")
    batch = _broadcast([TensorType(a.shape[:-2], dtype), TensorType(b.shape[:-2], dtype)],
                       "matmul")
    return [TensorType(batch + (a.shape[-2], b.shape[-1]), dtype)]


register("matmul", _matmul_infer, lambda a, x, y: np.matmul(x, y), num_inputs=(2, 2))


def _linear_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x, w = types[0], types[1]
    dtype = _same_dtype(types, "linear")
    if len(w.shape) != 2 or x.shape[-1] != w.shape[1]:
        raise IRError(f"linear: input {x.shape} does not match weight [out, in] {w.shape}")
    if len(types) == 3 and types[2].shape != (w.shape[0],):
        raise IRError(f"linear: bias {types[2].shape} does not match {w.shape[0]} outputs")
    return [TensorType(x.shape[:-1] + (w.shape[0],), dtype)]


ACTIVATIONS = ("none", "relu", "gelu", "silu", "sigmoid", "tanh")


def apply_activation(name: str, y: np.ndarray) -> np.ndarray:
    """The fused epilogue of conv and linear (set by the act_fuse pass)."""
    if name == "none":
        return y
    if name not in ACTIVATIONS:
        raise IRError(f"unknown fused activation {name!r}; known: {ACTIVATIONS}")
    fn, attrs = UNARY[name]
    return fn(attrs, y)


def _linear_ref(a: dict[str, Any], x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None):
    y = np.matmul(x, w.T)
    return apply_activation(a["activation"], y if b is None else y + b)


register("linear", _linear_infer, _linear_ref, {"activation": "none"}, num_inputs=(2, 3),
         doc="y = act(x @ w.T + b), w is [out, in]")

# ---- convolution and pooling (1-D, 2-D and 3-D: the spatial rank is the input rank - 2) -----


def _conv_out(size: int, k: int, s: int, p0: int, p1: int, d: int, ceil: bool = False) -> int:
    span = size + p0 + p1 - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p0:  # last window must start inside the input
        out -= 1
    return out


WINDOW_LIMIT = 1 << 31  # strides, kernels, dilations and pads beyond this are corrupt models


def _spatial_attrs(attrs: dict[str, Any], nsp: int, op: str, keys: Sequence[str]) -> None:
    for key in keys:
        want = 2 * nsp if key == "padding" else nsp
        if len(attrs[key]) != want:
            raise IRError(f"{op}: attribute {key} needs {want} values for {nsp}-D, got "
                          f"{attrs[key]}")
        low = 0 if key in ("padding", "output_padding") else 1
        if any(not low <= int(v) < WINDOW_LIMIT for v in attrs[key]):
            raise IRError(f"{op}: attribute {key} = {list(attrs[key])} is out of range "
                          f"({low}..{WINDOW_LIMIT - 1})")


def _conv_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x, w = types[0], types[1]
    dtype = _same_dtype(types, "conv")
    nsp = len(x.shape) - 2
    if nsp not in (1, 2, 3) or len(w.shape) != len(x.shape):
        raise IRError(f"conv: expects N,C,spatial input and O,I,kernel weight of the same rank, "
                      f"got {x.shape}, {w.shape}")
    _spatial_attrs(attrs, nsp, "conv", ("strides", "padding", "dilation"))
    g = attrs["groups"]
    if x.shape[1] != w.shape[1] * g or w.shape[0] % g:
        raise IRError(f"conv: channels {x.shape[1]} do not match weight {w.shape}, groups {g}")
    if len(types) == 3 and types[2].shape != (w.shape[0],):
        raise IRError(f"conv: bias {types[2].shape} does not match {w.shape[0]} outputs")
    p = attrs["padding"]
    out = tuple(_conv_out(x.shape[2 + i], w.shape[2 + i], attrs["strides"][i], p[i], p[nsp + i],
                          attrs["dilation"][i]) for i in range(nsp))
    if any(d <= 0 for d in out):
        raise IRError(f"conv: empty output for input {x.shape} and kernel {w.shape}")
    return [TensorType((x.shape[0], w.shape[0]) + out, dtype)]


def _windows(x: np.ndarray, kernel: Sequence[int], strides: Sequence[int],
             dilation: Sequence[int], out: Sequence[int]) -> np.ndarray:
    """[N, C, *out, *kernel] strided view of an already padded N,C,spatial input."""
    s = x.strides
    nsp = len(kernel)
    return np.lib.stride_tricks.as_strided(
        x, x.shape[:2] + tuple(out) + tuple(kernel),
        s[:2] + tuple(s[2 + i] * strides[i] for i in range(nsp))
        + tuple(s[2 + i] * dilation[i] for i in range(nsp)), writeable=False)


def _pad_spatial(x: np.ndarray, padding: Sequence[int], fill: float = 0.0,
                 extra: Sequence[int] = ()) -> np.ndarray:
    nsp = x.ndim - 2
    extra = tuple(extra) or (0,) * nsp
    widths = [(0, 0), (0, 0)] + [(padding[i], padding[nsp + i] + extra[i]) for i in range(nsp)]
    return np.pad(x, widths, constant_values=fill)


def _conv_ref(a: dict[str, Any], x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None):
    nsp, g = x.ndim - 2, a["groups"]
    out_shape = _conv_infer([TensorType(x.shape, str(x.dtype)), TensorType(w.shape, str(x.dtype))],
                            a)[0].shape[2:]
    win = _windows(_pad_spatial(x, a["padding"]), w.shape[2:], a["strides"], a["dilation"],
                   out_shape)
    n, (o, cg) = x.shape[0], w.shape[:2]
    win = win.reshape((n, g, cg) + tuple(out_shape) + tuple(w.shape[2:]))
    wg = w.reshape((g, o // g, cg) + tuple(w.shape[2:]))
    sp, ks = "hwd"[:nsp], "ijk"[:nsp]
    y = np.einsum(f"ngc{sp}{ks},goc{ks}->ngo{sp}", win, wg, optimize=True)
    y = y.reshape((n, o) + tuple(out_shape))
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nsp)
    return apply_activation(a["activation"], y.astype(x.dtype))


register("conv", _conv_infer, _conv_ref,
         {"strides": REQUIRED, "padding": REQUIRED, "dilation": REQUIRED, "groups": 1,
          "activation": "none"},
         num_inputs=(2, 3),
         doc="N,C,spatial x O,I/groups,kernel; padding is (begin..., end...) per spatial axis")


def _conv_transpose_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x, w = types[0], types[1]
    dtype = _same_dtype(types, "conv_transpose")
    nsp, g = len(x.shape) - 2, attrs["groups"]
    if nsp not in (1, 2, 3) or len(w.shape) != len(x.shape) or x.shape[1] != w.shape[0]:
        raise IRError(f"conv_transpose: input {x.shape} does not match weight {w.shape}")
    _spatial_attrs(attrs, nsp, "conv_transpose",
                   ("strides", "padding", "dilation", "output_padding"))
    p = attrs["padding"]
    out = tuple((x.shape[2 + i] - 1) * attrs["strides"][i] - p[i] - p[nsp + i]
                + attrs["dilation"][i] * (w.shape[2 + i] - 1) + attrs["output_padding"][i] + 1
                for i in range(nsp))
    return [TensorType((x.shape[0], w.shape[1] * g) + out, dtype)]


def _conv_transpose_ref(a: dict[str, Any], x: np.ndarray, w: np.ndarray,
                        b: np.ndarray | None = None):
    nsp, g = x.ndim - 2, a["groups"]
    st, dl, p, op = a["strides"], a["dilation"], a["padding"], a["output_padding"]
    n, cin = x.shape[:2]
    og, ks, ins = w.shape[1], w.shape[2:], x.shape[2:]
    full = tuple((ins[i] - 1) * st[i] + dl[i] * (ks[i] - 1) + 1 + op[i] for i in range(nsp))
    out = np.zeros((n, og * g) + tuple(full[i] + max(p[nsp + i], 0) for i in range(nsp)))
    xg = x.reshape((n, g, cin // g) + ins)
    wg = w.reshape((g, cin // g, og) + ks)
    sp = "hwd"[:nsp]
    for pos in np.ndindex(*ks):
        contrib = np.einsum(f"ngc{sp},gco->ngo{sp}", xg, wg[(slice(None),) * 3 + pos])
        index = (slice(None), slice(None)) + tuple(
            slice(pos[i] * dl[i], pos[i] * dl[i] + (ins[i] - 1) * st[i] + 1, st[i])
            for i in range(nsp))
        out[index] += contrib.reshape((n, og * g) + ins)
    crop = (slice(None), slice(None)) + tuple(slice(p[i], full[i] - p[nsp + i])
                                              for i in range(nsp))
    y = out[crop]
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nsp)
    return y.astype(x.dtype)


register("conv_transpose", _conv_transpose_infer, _conv_transpose_ref,
         {"strides": REQUIRED, "padding": REQUIRED, "dilation": REQUIRED,
          "output_padding": REQUIRED, "groups": 1}, num_inputs=(2, 3),
         doc="weight is [in, out/groups, kernel...] as torch stores it")


def _pool_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x = types[0]
    nsp = len(x.shape) - 2
    if nsp not in (1, 2, 3):
        raise IRError(f"pool: expects an N,C,spatial input, got {x.shape}")
    _spatial_attrs(attrs, nsp, "pool", ("kernel", "strides", "padding", "dilation"))
    p = attrs["padding"]
    out = tuple(_conv_out(x.shape[2 + i], attrs["kernel"][i], attrs["strides"][i], p[i],
                          p[nsp + i], attrs["dilation"][i], attrs["ceil_mode"])
                for i in range(nsp))
    if any(d <= 0 for d in out):
        raise IRError(f"pool: empty output for input {x.shape}")
    return [TensorType(x.shape[:2] + out, x.dtype)]


def _pool_windows(a: dict[str, Any], x: np.ndarray, fill: float) -> np.ndarray:
    nsp = x.ndim - 2
    out = _pool_infer([TensorType(x.shape, str(x.dtype))], a)[0].shape[2:]
    k, st, dl, p = a["kernel"], a["strides"], a["dilation"], a["padding"]
    # extra end padding so ceil_mode windows fit; those cells never count
    extra = [max(0, (out[i] - 1) * st[i] + dl[i] * (k[i] - 1) + 1
                 - (x.shape[2 + i] + p[i] + p[nsp + i])) for i in range(nsp)]
    return _windows(_pad_spatial(x, p, fill, extra), k, st, dl, out)


def _window_axes(x: np.ndarray) -> tuple[int, ...]:
    nsp = x.ndim - 2
    return tuple(range(2 + nsp, 2 + 2 * nsp))


def _max_pool_ref(a: dict[str, Any], x: np.ndarray) -> np.ndarray:
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min  # integer pools too
    return _pool_windows(a, x, lowest).max(axis=_window_axes(x)).astype(x.dtype)


def _avg_pool_ref(a: dict[str, Any], x: np.ndarray) -> np.ndarray:
    axes = _window_axes(x)
    sums = _pool_windows(a, x.astype(np.float64), 0.0).sum(axis=axes)
    ones = np.ones((1, 1) + x.shape[2:])
    if a["count_include_pad"]:  # padded cells count, the ceil-mode overhang does not
        padded = _pad_spatial(ones, a["padding"], 1.0)
        counts = _pool_windows({**a, "padding": (0,) * len(a["padding"])}, padded, 0.0)
    else:
        counts = _pool_windows(a, ones, 0.0)
    return (sums / counts.sum(axis=axes)).astype(x.dtype)


POOL_ATTRS = {"kernel": REQUIRED, "strides": REQUIRED, "padding": REQUIRED,
              "dilation": REQUIRED, "ceil_mode": False}
register("max_pool", _pool_infer, _max_pool_ref, POOL_ATTRS)
register("avg_pool", _pool_infer, _avg_pool_ref, {**POOL_ATTRS, "count_include_pad": True})

# ---- normalization ---------------------------------------------------------------------------


def _batch_norm_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x = types[0]
    if len(x.shape) < 2:
        raise IRError(f"batch_norm: input must have a channel axis, got {x.shape}")
    for t in types[1:]:
        if t.shape != (x.shape[1],):
            raise IRError(f"batch_norm: parameter shape {t.shape} != ({x.shape[1]},)")
    return [TensorType(x.shape, _same_dtype(types, "batch_norm"))]


def _batch_norm_ref(a: dict[str, Any], x, scale, bias, mean, var):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale / np.sqrt(var + a["eps"])
    return (x * inv.reshape(shape) + (bias - mean * inv).reshape(shape)).astype(x.dtype)


register("batch_norm", _batch_norm_infer, _batch_norm_ref, {"eps": 1e-5}, num_inputs=(5, 5),
         doc="inference form: inputs x, scale, bias, running mean, running var")


def _layer_norm_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x = types[0]
    k = attrs["normalized_ndim"]
    if not 1 <= k <= len(x.shape):
        raise IRError(f"layer_norm: cannot normalize {k} trailing axes of {x.shape}")
    for t in types[1:]:
        if t.shape != x.shape[-k:]:
            raise IRError(f"layer_norm: parameter {t.shape} != normalized shape {x.shape[-k:]}")
    return [TensorType(x.shape, _same_dtype(types, "layer_norm"))]


def _layer_norm_ref(a: dict[str, Any], x, w=None, b=None):
    axes = tuple(range(x.ndim - a["normalized_ndim"], x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + a["eps"])
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y.astype(x.dtype)


register("layer_norm", _layer_norm_infer, _layer_norm_ref,
         {"normalized_ndim": 1, "eps": 1e-5}, num_inputs=(1, 3),
         doc="normalizes the trailing normalized_ndim axes; optional weight and bias")


def _rms_norm_ref(a: dict[str, Any], x, w=None):
    axes = tuple(range(x.ndim - a["normalized_ndim"], x.ndim))
    y = x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + a["eps"])
    return (y if w is None else y * w).astype(x.dtype)


register("rms_norm", _layer_norm_infer, _rms_norm_ref,
         {"normalized_ndim": 1, "eps": 1e-6}, num_inputs=(1, 2))

# ---- attention -------------------------------------------------------------------------------


def _attention_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    q, k, v = types[:3]
    dtype = _same_dtype(types[:3], "attention")
    if not (len(q.shape) == len(k.shape) == len(v.shape) == 4):
        raise IRError("attention: q, k, v must be [batch, heads, seq, dim]")
    if k.shape[1] != v.shape[1] or q.shape[1] % k.shape[1]:
        raise IRError(f"attention: {q.shape[1]} query heads vs {k.shape[1]} key/value heads")
    if q.shape[3] != k.shape[3] or k.shape[2] != v.shape[2]:
        raise IRError(f"attention: incompatible q {q.shape}, k {k.shape}, v {v.shape}")
    if len(types) == 4:
        m = types[3]
        if m.dtype not in ("bool", dtype):
            raise IRError(f"attention: mask must be bool or {dtype}, got {m.dtype}")
        _broadcast([m, TensorType(q.shape[:3] + (k.shape[2],), dtype)], "attention mask")
    return [TensorType(q.shape[:3] + (v.shape[3],), dtype)]


def attention_scale(attrs: dict[str, Any], head_dim: int) -> float:
    return attrs["scale"] if attrs["scale"] is not None else 1.0 / math.sqrt(head_dim)


def _attention_ref(a: dict[str, Any], q, k, v, mask=None):
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * np.float32(attention_scale(a, q.shape[-1]))
    s = _masked(a, s, mask)
    e = np.exp(s - _row_max(s))
    p = e / np.sum(e, axis=-1, keepdims=True)
    return np.matmul(p.astype(q.dtype), v).astype(q.dtype)


def _masked(a: dict[str, Any], s: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Scores with the causal and the given mask applied (-inf where masked)."""
    if a["causal"]:
        sq, sk = s.shape[-2:]
        allowed = np.tril(np.ones((sq, sk), dtype=bool), k=sk - sq)
        s = np.where(allowed, s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    return s


def _row_max(s: np.ndarray) -> np.ndarray:
    m = np.max(s, axis=-1, keepdims=True)
    return np.where(np.isfinite(m), m, 0)


register("attention", _attention_infer, _attention_ref, {"scale": None, "causal": False},
         num_inputs=(3, 4),
         doc="softmax(q k^T * scale + mask) v over [B, H, S, D]; grouped k/v heads allowed")


# ---- token reduction plans (token merging, token pruning) ------------------------------------
#
# A plan is a [B, N - r, N] matrix W of zeros and ones: row i lists the input tokens that form
# output token i. Applying it is plain IR (x' = W (x * size) / W size, size' = W size), so the
# same plan moves any per-token tensor. Token sizes encode padding as size 0: a padding token
# is never merged with a real one (merging it into anything is lossless, since its weight is
# 0), and log(size) as an attention bias masks it out exactly as the padding mask did.

# scores of pairs the matching must rank first (padding sources) and never choose (protected)
FREE_MERGE = 2.0  # above any cosine similarity


def merge_limit(tokens: int, protect: int) -> int:
    """The most tokens one bipartite matching can remove: every set-A token not protected."""
    return (tokens + 1) // 2 - (protect + 1) // 2


def _token_plan_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    k, size = types[-2], types[-1]
    op = "prune_plan" if len(types) == 3 else "tome_plan"
    if len(k.shape) != 4:
        raise IRError(f"{op}: keys must be [batch, heads, tokens, dim], got {list(k.shape)}")
    b, _, n, _ = k.shape
    if size.shape != (b, n) or size.dtype != k.dtype:
        raise IRError(f"{op}: sizes must be {k.dtype}[{b},{n}], got {size}")
    r, protect = attrs["r"], attrs["protect"]
    limit = n - protect if op == "prune_plan" else merge_limit(n, protect)
    if not 0 < r <= limit:
        raise IRError(f"{op}: r={r} out of range 1..{limit} for {n} tokens "
                      f"({protect} protected)")
    return [TensorType((b, n - r, n), k.dtype)]


FORBIDDEN = -1.0e4  # a real token into padding: only when no real pair is left
PROTECTED = -3.0e4  # the protected tokens' pairs: never chosen while r is within the limit


def tome_score_tables(na: int, nb: int, protect: int) -> tuple[np.ndarray, ...]:
    """The constants of the matching, [A, B-set] each: the score of a padding source (ranks
    first), of a real token into padding, which pairs touch a protected token, and their score.
    All are distinct along each row, so argmax and argsort have no ties to break."""
    i = np.arange(na, dtype=np.float32)[:, None]
    j = np.arange(nb, dtype=np.float32)[None, :]
    free = FREE_MERGE + i - j / (nb + 1)
    protected = (i * 2 < protect) | (j * 2 + 1 < protect)
    return (free.astype(np.float32), np.broadcast_to(FORBIDDEN - j, (na, nb)).astype(np.float32),
            protected, np.broadcast_to(PROTECTED - j, (na, nb)).astype(np.float32))


def tome_scores(k: np.ndarray, size: np.ndarray, protect: int) -> np.ndarray:
    """Bipartite matching scores [B, A, B-set] (ToMe): cosine of the head-averaged keys of the
    even (A) and odd (B) tokens; padding sources rank first, then real pairs, then real tokens
    into padding, and pairs with a protected token last."""
    metric = k.astype(np.float32).mean(axis=1)
    metric = metric / np.maximum(np.sqrt((metric * metric).sum(-1, keepdims=True)), 1e-12)
    scores = metric[:, 0::2] @ np.swapaxes(metric[:, 1::2], 1, 2)
    free, into_padding, protected, protected_score = tome_score_tables(*scores.shape[1:],
                                                                       protect)
    real_a, real_b = size[:, 0::2] > 0, size[:, 1::2] > 0
    scores = np.where(real_b[:, None, :], scores, into_padding)
    scores = np.where(real_a[:, :, None], scores, free)
    return np.where(protected, protected_score, scores).astype(np.float32)


def _one_hot(idx: np.ndarray, depth: int) -> np.ndarray:
    return (idx[..., None] == np.arange(depth)).astype(np.float32)


def _tome_plan_ref(a: dict[str, Any], k: np.ndarray, size: np.ndarray) -> np.ndarray:
    r, n = a["r"], k.shape[2]
    scores = tome_scores(k, size, a["protect"])
    best, best_dst = scores.max(-1), scores.argmax(-1)
    order = np.argsort(-best, axis=-1, kind="stable")
    src, unmerged = order[:, :r], np.sort(order[:, r:], axis=-1)
    dst = np.take_along_axis(best_dst, src, axis=-1)
    nb = n // 2
    b_rows = _one_hot(np.arange(nb) * 2 + 1, n)[None] + \
        np.swapaxes(_one_hot(dst, nb), 1, 2) @ _one_hot(src * 2, n)
    return np.concatenate([_one_hot(unmerged * 2, n), b_rows], axis=1).astype(k.dtype)


def class_attention(q: np.ndarray, k: np.ndarray, size: np.ndarray, scale: float) -> np.ndarray:
    """How much the first token attends to each token, averaged over heads: [B, N]."""
    rep = q.shape[1] // k.shape[1]
    k = np.repeat(k, rep, axis=1) if rep > 1 else k
    with np.errstate(divide="ignore"):
        s = (q[:, :, :1] @ np.swapaxes(k, -1, -2)) * np.float32(scale) \
            + np.log(size)[:, None, None, :]
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).mean(axis=1)[:, 0]


def prune_scores(q, k, size, protect: int, scale: float) -> np.ndarray:
    """Class attention per token; protected tokens rank first, padding last (distinct)."""
    n = k.shape[2]
    idx = np.arange(n, dtype=np.float32)
    score = np.where(size > 0, class_attention(q, k, size, scale), -1.0 - idx)
    return np.where(idx < protect, FREE_MERGE, score).astype(np.float32)


def _prune_plan_ref(a: dict[str, Any], q, k, size) -> np.ndarray:
    n, r = k.shape[2], a["r"]
    score = prune_scores(q, k, size, a["protect"], attention_scale(a, q.shape[-1]))
    keep = np.sort(np.argsort(-score, axis=-1, kind="stable")[:, :n - r], axis=-1)
    return _one_hot(keep, n).astype(k.dtype)


register("tome_plan", _token_plan_infer, _tome_plan_ref, {"r": REQUIRED, "protect": 0},
         num_inputs=(2, 2),
         doc="ToMe bipartite soft matching of (keys [B,H,N,D], sizes [B,N]): the [B,N-r,N] "
             "merge matrix; the first `protect` tokens are never merged")
register("prune_plan", _token_plan_infer, _prune_plan_ref,
         {"r": REQUIRED, "protect": 1, "scale": None}, num_inputs=(3, 3),
         doc="keeps the N-r tokens the first (class) token attends to most, given (q, k, "
             "sizes): a [B,N-r,N] selection matrix")


# ---- weight-only quantized linear --------------------------------------------------------------
#
# Weights are stored quantized and dequantized inside the kernel: w[n, k] = (q[n, k] -
# zero[n, k // group]) * scale[n, k // group]. int8: q is int8 [out, in], zero int8. int4: two
# values per byte along `in` (the even k in the low nibble), q uint8 [out, ceil(in / 2)] with
# values 0..15, zero uint8.


def unpack_int4(q: np.ndarray, in_features: int) -> np.ndarray:
    """[out, ceil(in/2)] packed bytes -> [out, in] values 0..15 (uint8)."""
    both = np.stack([q & 15, q >> 4], axis=-1).reshape(q.shape[0], -1)
    return both[:, :in_features]


def pack_int4(values: np.ndarray) -> np.ndarray:
    """[out, in] values 0..15 -> [out, ceil(in/2)] bytes, the even k in the low nibble."""
    if values.shape[1] % 2:
        values = np.pad(values, ((0, 0), (0, 1)))
    v = values.astype(np.uint8)
    return (v[:, 0::2] | (v[:, 1::2] << 4)).astype(np.uint8)


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int,
               in_features: int) -> np.ndarray:
    values = unpack_int4(q, in_features) if bits == 4 else q
    group = -(-in_features // scale.shape[1])
    g = np.arange(in_features) // group
    return ((values.astype(np.float32) - zero[:, g].astype(np.float32))
            * scale[:, g]).astype(np.float32)


def _quant_linear_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x, q, scale, zero = types[:4]
    bits, k = attrs["bits"], x.shape[-1]
    want = {8: ("int8", k), 4: ("uint8", (k + 1) // 2)}.get(bits)
    if want is None:
        raise IRError(f"quant_linear: bits={bits}, only 8 and 4 are supported")
    if len(q.shape) != 2 or (q.dtype, q.shape[1]) != want:
        raise IRError(f"quant_linear: {bits}-bit weight for {k} inputs must be "
                      f"{want[0]}[out, {want[1]}], got {q}")
    groups = scale.shape[1] if len(scale.shape) == 2 else 0
    if scale.shape != (q.shape[0], groups) or not groups or k % groups or \
            zero.shape != scale.shape or zero.dtype not in (q.dtype, scale.dtype) or \
            scale.dtype != x.dtype:
        raise IRError(f"quant_linear: scale {scale} and zero {zero} must be [out, groups] "
                      f"with groups dividing {k}, the zero points integers of the weight's "
                      "type or fractional ones of the scale's")
    if len(types) == 5 and types[4].shape != (q.shape[0],):
        raise IRError(f"quant_linear: bias {types[4]} does not match {q.shape[0]} outputs")
    return [TensorType(x.shape[:-1] + (q.shape[0],), x.dtype)]


def _quant_linear_ref(a: dict[str, Any], x, q, scale, zero, b=None):
    w = dequantize(q, scale, zero, a["bits"], x.shape[-1])
    return _linear_ref({"activation": a["activation"]}, x, w, b)


register("quant_linear", _quant_linear_infer, _quant_linear_ref,
         {"bits": REQUIRED, "activation": "none"}, num_inputs=(4, 5),
         doc="linear with an int8 or packed int4 weight, dequantized per group in the kernel: "
             "w = (q - zero) * scale")


# ---- W8A8 static: int8 weights and int8 activations, integer accumulation ----------------------
#
# The input is quantized per tensor with a scale and zero point fixed by calibration, the weight
# per output channel (symmetric): xq = clip(round(x * (1 / x_scale)) + x_zero, 0, 255) (round
# half to even), acc[n] = sum_k (xq[k] - x_zero) * q[n, k] in int32, y = acc * (x_scale *
# w_scale[n]) + b. Kernels compute sum_k xq[k] * q[n, k] - x_zero * sum_k q[n, k], with the
# correction precomputed per channel.


def quantize_activation(x: np.ndarray, x_scale: float, x_zero: int) -> np.ndarray:
    """x -> uint8 as the int8_linear kernels round it (half to even, saturating)."""
    inv = np.float32(1.0) / np.float32(x_scale)
    return np.clip(np.rint(x.astype(np.float32) * inv) + x_zero, 0, 255).astype(np.uint8)


def int8_accumulate(xq: np.ndarray, x_zero: int, q: np.ndarray) -> np.ndarray:
    """sum_k (xq[k] - x_zero) * q[n, k] in exact integer arithmetic, as int32."""
    return ((xq.astype(np.int64) - x_zero) @ q.astype(np.int64).T).astype(np.int32)


def _int8_linear_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x, q, w_scale = types[:3]
    k = x.shape[-1]
    if q.dtype != "int8" or len(q.shape) != 2 or q.shape[1] != k:
        raise IRError(f"int8_linear: weight must be int8[out, {k}], got {q}")
    if w_scale.shape != (q.shape[0],) or w_scale.dtype != "float32" or x.dtype != "float32":
        raise IRError(f"int8_linear: x {x} and w_scale {w_scale} must be float32, w_scale "
                      f"[{q.shape[0]}]")
    if not 0 <= int(attrs["x_zero"]) <= 255 or not float(attrs["x_scale"]) > 0:
        raise IRError(f"int8_linear: x_scale {attrs['x_scale']} must be > 0 and x_zero "
                      f"{attrs['x_zero']} in 0..255")
    if len(types) == 4 and types[3].shape != (q.shape[0],):
        raise IRError(f"int8_linear: bias {types[3]} does not match {q.shape[0]} outputs")
    return [TensorType(x.shape[:-1] + (q.shape[0],), x.dtype)]


def _int8_linear_ref(a: dict[str, Any], x, q, w_scale, b=None):
    acc = int8_accumulate(quantize_activation(x, a["x_scale"], a["x_zero"]), a["x_zero"], q)
    y = acc.astype(np.float32) * (np.float32(a["x_scale"]) * w_scale)
    return apply_activation(a["activation"], y if b is None else y + b)


register("int8_linear", _int8_linear_infer, _int8_linear_ref,
         {"x_scale": REQUIRED, "x_zero": 0, "activation": "none"}, num_inputs=(3, 4),
         doc="W8A8 linear: input quantized to uint8 per tensor (x_scale, x_zero), int8 weight "
             "per output channel (w_scale), int32 accumulation")


def _int8_conv_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x, q, w_scale = types[:3]
    if len(x.shape) != 4 or x.dtype != "float32":
        raise IRError(f"int8_conv: input must be float32 [N, C, H, W], got {x}")
    if q.dtype != "int8" or len(q.shape) != 4 or q.shape[1] != x.shape[1]:
        raise IRError(f"int8_conv: weight must be int8[out, {x.shape[1]}, kh, kw] (ungrouped), "
                      f"got {q}")
    if w_scale.shape != (q.shape[0],) or w_scale.dtype != "float32":
        raise IRError(f"int8_conv: w_scale {w_scale} must be float32[{q.shape[0]}]")
    if not 0 <= int(attrs["x_zero"]) <= 255 or not float(attrs["x_scale"]) > 0:
        raise IRError(f"int8_conv: x_scale {attrs['x_scale']} must be > 0 and x_zero "
                      f"{attrs['x_zero']} in 0..255")
    if len(types) == 4 and types[3].shape != (q.shape[0],):
        raise IRError(f"int8_conv: bias {types[3]} does not match {q.shape[0]} outputs")
    # the float conv's rules for windows, strides, padding and dilation
    return _conv_infer([x, TensorType(q.shape, x.dtype)], {**attrs, "groups": 1})


def int8_conv_accumulate(xq: np.ndarray, x_zero: int, q: np.ndarray, attrs: dict[str, Any]
                         ) -> np.ndarray:
    """sum over (c, i, j) of (xq - x_zero) * q for each output position, as int32 [N, O, oh,
    ow]; padding holds the zero point (real 0.0), so it adds nothing. Summed in float64, which
    is exact: every partial sum is an integer far below 2^53 (|sum| <= 255 * 127 * C * kh * kw),
    and BLAS runs it in a fraction of an integer matmul's time."""
    out_shape = _int8_conv_infer(
        [TensorType(xq.shape, "float32"), TensorType(q.shape, "int8"),
         TensorType(q.shape[:1], "float32")], {**attrs, "x_scale": 1.0, "x_zero": x_zero}
    )[0].shape[2:]
    shifted = _pad_spatial(xq.astype(np.float64) - x_zero, attrs["padding"])
    win = _windows(shifted, q.shape[2:], attrs["strides"], attrs["dilation"], out_shape)
    n, c = xq.shape[:2]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * out_shape[0] * out_shape[1], -1)
    acc = cols @ q.reshape(q.shape[0], -1).astype(np.float64).T  # [N * oh * ow, O]
    acc = acc.astype(np.int64).astype(np.int32)  # wraps like int8_accumulate past int32
    return np.ascontiguousarray(acc.reshape(n, *out_shape, -1).transpose(0, 3, 1, 2))


def _int8_conv_ref(a: dict[str, Any], x, q, w_scale, b=None):
    acc = int8_conv_accumulate(quantize_activation(x, a["x_scale"], a["x_zero"]), a["x_zero"],
                               q, a)
    y = acc.astype(np.float32) * (np.float32(a["x_scale"]) * w_scale)[None, :, None, None]
    return apply_activation(a["activation"], y if b is None else y + b[None, :, None, None])


register("int8_conv", _int8_conv_infer, _int8_conv_ref,
         {"x_scale": REQUIRED, "x_zero": 0, "strides": REQUIRED, "padding": REQUIRED,
          "dilation": REQUIRED, "activation": "none"}, num_inputs=(3, 4),
         doc="W8A8 2-D conv (ungrouped): input quantized to uint8 per tensor (x_scale, x_zero; "
             "padding is the zero point), int8 weight [out, in, kh, kw] per output channel "
             "(w_scale), int32 accumulation, float rescale as int8_linear")


# ---- W8A8 attention ---------------------------------------------------------------------------
#
# Both products of attention in int8 with int32 sums (SmoothQuant's O3): q as uint8 with a zero
# point, k and v as int8 in [-KV_QMAX, KV_QMAX] (per-tensor scales from calibration), and the
# softmax's exponentials exp(s - max) in (0, 1] as uint8 codes with the step 1/255 (the
# largest is always 255). The normalization moves after the second product: out = v_scale *
# sum_j e[j] v[j] / sum_j e[j], over the codes, so the weights still sum to exactly one.

KV_QMAX = 63  # uint8 x int8 pairs within int16 (2 * 255 * 63 < 32767): vpmaddubsw is exact
EXP_CODES = 255.0  # exp(s - max) in (0, 1] -> uint8 codes


def quantize_symmetric(x: np.ndarray, scale: float, qmax: int = KV_QMAX) -> np.ndarray:
    """x -> int8 in [-qmax, qmax] as the int8 attention kernels round it (half to even)."""
    inv = np.float32(1.0) / np.float32(scale)
    return np.clip(np.rint(x.astype(np.float32) * inv), -qmax, qmax).astype(np.int8)


def int8_score_scale(attrs: dict[str, Any], head_dim: int) -> np.float32:
    """The float32 factor from int32 sums of (q - q_zero) * k to attention scores."""
    return np.float32(attention_scale(attrs, head_dim) * attrs["q_scale"] * attrs["k_scale"])


def exp_codes(s: np.ndarray) -> np.ndarray:
    """Masked scores -> uint8 codes of exp(s - row max) (0 where masked)."""
    e = np.exp(s - _row_max(s)) * np.float32(EXP_CODES)
    return np.rint(e).astype(np.uint8)


def _int8_attention_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    if any(t.dtype != "float32" for t in types[:3]):
        raise IRError("int8_attention: q, k and v must be float32")
    if types[1].shape[1] != types[0].shape[1]:
        raise IRError("int8_attention: grouped key/value heads are not supported")
    if not all(float(attrs[s]) > 0 for s in ("q_scale", "k_scale", "v_scale")) \
            or not 0 <= int(attrs["q_zero"]) <= 255:
        raise IRError(f"int8_attention: scales must be > 0 and q_zero in 0..255, got "
                      f"{ {k: attrs[k] for k in ('q_scale', 'q_zero', 'k_scale', 'v_scale')} }")
    return _attention_infer(types, attrs)


def _int8_attention_ref(a: dict[str, Any], q, k, v, mask=None):
    q8 = quantize_activation(q, a["q_scale"], a["q_zero"]).astype(np.float64) - a["q_zero"]
    k8, v8 = (quantize_symmetric(t, a[f"{n}_scale"]).astype(np.float64)
              for t, n in ((k, "k"), (v, "v")))
    # float64 products of integers below 2^53 are exact: the int32 sums of the kernels
    acc = np.matmul(q8, np.swapaxes(k8, -1, -2)).astype(np.float32)
    codes = exp_codes(_masked(a, acc * int8_score_scale(a, q.shape[-1]), mask))
    e = codes.astype(np.float64)
    weight = np.float32(a["v_scale"]) / e.sum(-1, keepdims=True).astype(np.float32)
    return (weight * np.matmul(e, v8).astype(np.float32)).astype(np.float32)


register("int8_attention", _int8_attention_infer, _int8_attention_ref,
         {"scale": None, "causal": False, "q_scale": REQUIRED, "q_zero": 0,
          "k_scale": REQUIRED, "v_scale": REQUIRED}, num_inputs=(3, 4),
         doc="attention with both products in int8 (W8A8): q uint8 per tensor (q_scale, "
             "q_zero), k and v int8 in [-63, 63] per tensor, exp(s - max) as uint8 codes, "
             "int32 sums, normalized after the second product")


# ---- 2:4 structured sparse linear ------------------------------------------------------------
#
# In every group of 4 consecutive input channels of a weight row, 2 are zero (the pattern
# NVIDIA's sparse tensor cores run). Stored compressed: values [out, in/2] (the kept pair of
# each group, in order; float32, or int8 times a per-row scale) and index uint8 [out, in/8]:
# per group a nibble holding the two kept positions (first in bits 0-1, second in bits 2-3),
# the even group in the low nibble. w[n, 4g + index(n, g, j)] = values[n, 2g + j] * scale[n].


def compress_24(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 2:4-sparse [out, in] matrix -> (values [out, in/2], index uint8 [out, in/8]). Each
    group keeps its two largest-magnitude positions (ties to the first), so a group with more
    than two non-zeros is pruned here."""
    out, k = w.shape
    if k % 8:
        raise IRError(f"2:4 compression needs the input size to be a multiple of 8, got {k}")
    groups = w.reshape(out, k // 4, 4)
    keep = np.sort(np.argsort(-np.abs(groups), axis=-1, kind="stable")[..., :2], axis=-1)
    values = np.take_along_axis(groups, keep, axis=-1).reshape(out, k // 2)
    nibble = (keep[..., 0] | (keep[..., 1] << 2)).astype(np.uint8)  # [out, in/4]
    return values, (nibble[:, 0::2] | (nibble[:, 1::2] << 4)).astype(np.uint8)


def decompress_24(values: np.ndarray, index: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(values [out, in/2], index [out, in/8], scale [out, 1]) -> the dense float32 weight."""
    out, half = values.shape
    nibble = np.stack([index & 15, index >> 4], axis=-1).reshape(out, -1)  # [out, in/4]
    keep = np.stack([nibble & 3, nibble >> 2], axis=-1).astype(np.int64)  # [out, in/4, 2]
    dense = np.zeros((out, half // 2, 4), np.float32)
    kept = values.reshape(out, half // 2, 2).astype(np.float32) * scale.reshape(out, 1, 1)
    np.put_along_axis(dense, keep, kept, axis=-1)
    return dense.reshape(out, half * 2)


def _sparse_linear_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x, values, index, scale = types[:4]
    k, out = x.shape[-1], values.shape[0] if values.shape else 0
    if k % 8 or values.shape != (out, k // 2) or values.dtype not in ("float32", "int8"):
        raise IRError(f"sparse_linear: values for {k} inputs must be float32 or int8 "
                      f"[out, {k // 2}] (and {k} a multiple of 8), got {values}")
    if index.shape != (out, k // 8) or index.dtype != "uint8":
        raise IRError(f"sparse_linear: index must be uint8[{out}, {k // 8}], got {index}")
    if scale.shape != (out, 1) or scale.dtype != x.dtype:
        raise IRError(f"sparse_linear: scale must be {x.dtype}[{out}, 1], got {scale}")
    if len(types) == 5 and types[4].shape != (out,):
        raise IRError(f"sparse_linear: bias {types[4]} does not match {out} outputs")
    return [TensorType(x.shape[:-1] + (out,), x.dtype)]


def _sparse_linear_ref(a: dict[str, Any], x, values, index, scale, b=None):
    return _linear_ref({"activation": a["activation"]}, x, decompress_24(values, index, scale), b)


register("sparse_linear", _sparse_linear_infer, _sparse_linear_ref, {"activation": "none"},
         num_inputs=(4, 5),
         doc="linear with a 2:4-sparse weight kept compressed (values, 2-bit positions, a "
             "per-row scale), decompressed in the kernel")
