"""IR -> Relax lowering with the BlockBuilder: one small function per IR op.

The Relax function `main` takes the graph inputs first and then the weights (constants larger
than `inline_limit` elements) as parameters, with the `num_input` attribute marking the split,
so compiled code stays small and weights live in the artifact's weight file. Small constants
(scalars, masks of a few elements) are embedded.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..errors import CodegenError
from ..ir import Graph, Node, Value
from ..ir.batch_split import BatchSplit
from ..ir.ops import FREE_MERGE, attention_scale, slice_indices, tome_score_tables
from . import attention as fused
from . import winograd
from .int8_dot import KERNEL as INT8_KERNEL
from .int8_dot import W7_KERNEL

R = relax.op
Lowering = Callable[[relax.BlockBuilder, Node, list[relax.Expr]], relax.Expr]


@dataclass
class LoweredModule:
    mod: tvm.IRModule
    params: list[Value]  # weights in the order `main` takes them after the inputs
    param_layouts: list[str]  # how each weight is stored for the kernels: see _kernel_layout

    def stored_params(self, dtypes: Mapping[int, str] | None = None
                      ) -> Iterator[tuple[str, np.ndarray]]:
        """(name, data in the layout the kernels read), one weight at a time: the re-laid-out
        copies are made on demand so a compile never holds a second copy of all weights.
        `dtypes` gives the stored dtype of weights the build narrowed (index -> dtype)."""
        dtypes = dtypes or {}
        for i, (v, layout) in enumerate(zip(self.params, self.param_layouts)):
            data = stored_layout(layout)(v.data)
            if i in dtypes:
                data = data.astype(dtypes[i])
            yield v.name, np.ascontiguousarray(data)


def _const(value: Any, dtype: str) -> relax.Expr:
    # dtype passed explicitly: relax.const narrows 0-d int64 arrays to int32 otherwise
    return relax.const(np.asarray(value, dtype=dtype), dtype)


def _dtype(node: Node) -> str:
    return node.outputs[0].dtype


# ---- per-op lowerings ------------------------------------------------------------------------

UNARY_RELAX: dict[str, Callable[[relax.Expr], relax.Expr]] = {
    "neg": R.negative, "exp": R.exp, "log": R.log, "sqrt": R.sqrt, "rsqrt": R.rsqrt,
    "tanh": R.tanh, "sigmoid": R.sigmoid, "relu": R.nn.relu, "silu": R.nn.silu, "erf": R.erf,
    "abs": R.abs, "sin": R.sin, "cos": R.cos, "floor": R.floor, "trunc": R.trunc, "ceil": R.ceil,
    "round": R.round, "sign": R.sign, "logical_not": R.logical_not, "selu": R.nn.selu,
}
BINARY_RELAX: dict[str, Callable[[relax.Expr, relax.Expr], relax.Expr]] = {
    "add": R.add, "sub": R.subtract, "mul": R.multiply, "div": R.divide, "pow": R.power,
    "maximum": R.maximum, "minimum": R.minimum, "floor_divide": R.floor_divide,
    "mod": R.floor_mod, "equal": R.equal, "not_equal": R.not_equal, "less": R.less,
    "less_equal": R.less_equal, "greater": R.greater, "greater_equal": R.greater_equal,
    "logical_and": R.logical_and, "logical_or": R.logical_or, "logical_xor": R.logical_xor,
}
REDUCE_RELAX = {"reduce_sum": R.sum, "reduce_mean": R.mean, "reduce_max": R.max,
                "reduce_min": R.min, "reduce_prod": R.prod}


def _gelu(x: relax.Expr, dt: str, approximate: str = "none") -> relax.Expr:
    """GELU spelled out so the fast-math pass reaches its erf / tanh (R.nn.gelu legalizes to
    a scalar libm erf: ViT's GELU took 1 ms per layer that way)."""
    half, one = _const(0.5, dt), _const(1, dt)
    if approximate == "tanh":
        cube = R.multiply(_const(0.044715, dt), R.multiply(x, R.multiply(x, x)))
        inner = R.multiply(_const(np.sqrt(2 / np.pi), dt), R.add(x, cube))
        return R.multiply(R.multiply(half, x), R.add(one, R.tanh(inner)))
    erf = R.erf(R.multiply(x, _const(1 / np.sqrt(2), dt)))
    return R.multiply(x, R.add(half, R.multiply(half, erf)))


def _lower_composite_unary(bb: relax.BlockBuilder, node: Node, x: relax.Expr) -> relax.Expr:
    a, dt = node.attrs, _dtype(node)
    one, zero = _const(1, dt), _const(0, dt)
    match node.op:
        case "reciprocal":
            return R.divide(one, x)
        case "gelu":
            return _gelu(x, dt, a["approximate"])
        case "softplus":  # log(1 + e^x) computed stably as max(x, 0) + log1p(e^-|x|)
            return R.add(R.maximum(x, zero), R.log(R.add(one, R.exp(R.negative(R.abs(x))))))
        case "softsign":
            return R.divide(x, R.add(one, R.abs(x)))
        case "leaky_relu":
            return R.nn.leakyrelu(x, a["alpha"])
        case "elu":
            neg = R.multiply(_const(a["alpha"], dt), R.subtract(R.exp(R.minimum(x, zero)), one))
            return R.where(R.greater(x, zero), x, neg)
        case "hard_sigmoid":
            lin = R.add(R.multiply(x, _const(a["alpha"], dt)), _const(a["beta"], dt))
            return R.clip(lin, 0.0, 1.0)
        case "hard_swish":
            return R.multiply(x, R.clip(R.add(R.divide(x, _const(6, dt)), _const(0.5, dt)),
                                        0.0, 1.0))
        case "clip":
            lo = a["min"] if a["min"] is not None else float(np.finfo(np.float32).min)
            hi = a["max"] if a["max"] is not None else float(np.finfo(np.float32).max)
            if not dt.startswith("float"):
                lo, hi = int(max(lo, np.iinfo(dt).min)), int(min(hi, np.iinfo(dt).max))
            return R.clip(x, lo, hi)
    raise CodegenError(f"no lowering for unary op {node.op}")


def _lower_cast(bb, node, args):
    return R.astype(args[0], node.attrs["dtype"])


def _lower_where(bb, node, args):
    return R.where(*args)


def _lower_reduce(bb, node, args):
    axes = list(node.attrs["axes"]) if node.attrs["axes"] is not None else None
    return REDUCE_RELAX[node.op](args[0], axes, node.attrs["keepdims"])


def _lower_arg(bb, node, args):
    fn = R.argmax if node.op == "argmax" else R.argmin
    out = fn(args[0], node.attrs["axis"], node.attrs["keepdims"])
    return R.astype(out, "int64")


def _lower_softmax(bb, node, args):
    fn = R.nn.softmax if node.op == "softmax" else R.nn.log_softmax
    return fn(args[0], node.attrs["axis"])


def _lower_cumsum(bb, node, args):
    return R.cumsum(args[0], node.attrs["axis"], dtype=_dtype(node))


def _lower_reshape(bb, node, args):
    return R.reshape(args[0], node.attrs["shape"])


def _lower_transpose(bb, node, args):
    return R.permute_dims(args[0], node.attrs["perm"])


def _lower_broadcast_to(bb, node, args):
    return R.broadcast_to(args[0], node.attrs["shape"])


def _lower_concat(bb, node, args):
    return R.concat(args, node.attrs["axis"])


def _lower_slice(bb, node, args):
    x_shape = node.inputs[0].shape
    axes, begins, ends, strides = [], [], [], []
    for axis, s, e, st in zip(*(node.attrs[k] for k in ("axes", "starts", "ends", "steps"))):
        r = slice_indices(x_shape[axis % len(x_shape)], s, e, st)
        axes.append(axis % len(x_shape))
        begins.append(r.start)
        # a negative stop from range() means "past the front"; strided_slice wants -(dim+1)
        ends.append(r.stop if r.stop >= 0 else -x_shape[axis % len(x_shape)] - 1)
        strides.append(r.step)
    return R.strided_slice(args[0], axes, begins, ends, strides, assume_inbound=False)


def _nonneg_indices(bb, node, idx: relax.Expr, dim: int) -> relax.Expr:
    """Negative indices count from the end; out-of-range ones are clamped, because TVM's
    gather kernels read whatever address an index gives (a segfault, or a fault on a GPU).
    Indices that come from the user are range-checked by the runtime before that (manifest
    `index_bound`); the clamp covers indices computed inside the model."""
    idx_value = node.inputs[1]
    if idx_value.is_const and ((idx_value.data >= 0) & (idx_value.data < dim)).all():
        return idx
    dt = idx_value.dtype
    wrapped = R.where(R.less(idx, _const(0, dt)), R.add(idx, _const(dim, dt)), idx)
    return R.clip(wrapped, 0, dim - 1)


def _lower_gather(bb, node, args):
    axis = node.attrs["axis"] % len(node.inputs[0].shape)
    idx = _nonneg_indices(bb, node, args[1], node.inputs[0].shape[axis])
    return R.take(args[0], idx, axis)


def _lower_gather_rows_from_panels(bb, node, args, panel: int):
    """Rows of a [n, d] table stored in panels [n / P, d, P] (a tied LM head's weight): row i
    is panel i / P, lane i % P, strided but only d values per looked-up row."""
    from tvm import te

    idx = _nonneg_indices(bb, node, args[1], node.inputs[0].shape[0])
    idx = idx if isinstance(idx, relax.Var) else bb.emit(idx)
    width = node.inputs[0].shape[1]

    def rows(table, ids):
        def at(*pos):
            i = ids[pos[:-1]].astype("int64")
            return table[i // panel, pos[-1], i % panel]
        return te.compute((*ids.shape, width), at, name="take_panels")

    return bb.emit_te(rows, args[0], idx, primfunc_name_hint="take_panels")


def _lower_gather_elements(bb, node, args):
    axis = node.attrs["axis"] % len(node.inputs[0].shape)
    idx = _nonneg_indices(bb, node, args[1], node.inputs[0].shape[axis])
    return R.gather_elements(args[0], idx, axis)


RELAX_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def _lower_pad(bb, node, args):
    pads = node.attrs["pads"]
    mode = RELAX_PAD_MODES[node.attrs["mode"]]
    x = args[0]
    if any(p < 0 for p in pads):  # negative pads crop: pad the positive part, then slice
        shape = node.inputs[0].shape
        pos = [max(p, 0) for p in pads]
        x = bb.emit(R.nn.pad(x, pos, mode, node.attrs["value"]))
        axes = list(range(len(shape)))
        begins = [-min(pads[2 * i], 0) for i in axes]
        ends = [shape[i] + pos[2 * i] + pos[2 * i + 1] + min(pads[2 * i + 1], 0) for i in axes]
        return R.strided_slice(x, axes, begins, ends)
    return R.nn.pad(x, list(pads), mode, node.attrs["value"])


def _lower_matmul(bb, node, args):
    return R.matmul(args[0], args[1])


ACTIVATION_RELAX = {"relu": R.nn.relu, "silu": R.nn.silu, "sigmoid": R.sigmoid,
                    "tanh": R.tanh}


def _epilogue(bb, node: Node, y: relax.Expr) -> relax.Expr:
    """The fused activation of conv/linear; TVM's FuseOps puts it in the same kernel."""
    act = node.attrs.get("activation", "none")
    if act == "gelu":  # act_fuse fuses the exact (erf) GELU only
        return _gelu(bb.emit(y), _dtype(node))
    return y if act == "none" else ACTIVATION_RELAX[act](bb.emit(y))


def _lower_linear(bb, node, args):
    return _epilogue(bb, node, R.linear(args[0], args[1], args[2] if len(args) > 2 else None))


def _as_rows(bb, x: relax.Expr, shape: tuple[int, ...]) -> relax.Expr:
    """x as a [rows, features] matrix; a reshape only where x has more than two axes (on a
    model input even an identity reshape would run as a copy kernel)."""
    if len(shape) == 2:
        return x
    return bb.emit(R.reshape(x, [int(np.prod(shape[:-1], dtype=np.int64)), shape[-1]]))


def _lower_linear_panels(bb, node, args):
    """linear whose weight param is stored in panels [out / P, in, P]: output column o is lane
    o % P of panel o / P. The matmul is computed in the output's own shape, with the bias in
    the same kernel, so no reshape stands between it and its epilogue (activation, residual
    add: FuseOps fuses only elementwise ops into a matmul)."""
    in_features = node.inputs[0].shape[-1]
    panel = int(args[1].ty.shape.values[-1])

    def matmul(x, w, *bias):
        return _panel_product(x, lambda k, o: w[o // panel, k, o % panel], in_features,
                              node.output.shape, bias, "panel_matmul")

    y = bb.emit_te(matmul, *args[:3], primfunc_name_hint="panel_matmul")
    return _epilogue(bb, node, y)


def _panel_product(x, weight_at, in_features: int, out_shape, bias, name: str):
    """y[..., o] = sum_k x[..., k] * weight_at(k, o) (+ bias[o]) in the output's own shape,
    so no reshape keeps the epilogue off the register tile."""
    from tvm import te

    k = te.reduce_axis((0, in_features), name="k")
    y = te.compute(out_shape, lambda *idx: te.sum(x[(*idx[:-1], k)] * weight_at(k, idx[-1]),
                                                  axis=k), name=name)
    if not bias:
        return y
    return te.compute(y.shape, lambda *idx: y[idx] + bias[0][idx[-1]], name="panel_bias")


def _lower_linear_pretransposed(bb, node, args):
    """linear whose weight param is stored [in, out]: a plain matmul, bias and epilogue."""
    y = R.matmul(args[0], args[1])
    if len(args) > 2:
        y = R.add(bb.emit(y), args[2])
    return _epilogue(bb, node, y)


def _spatial(node: Node) -> int:
    return len(node.inputs[0].shape) - 2


def _add_channel_bias(bb, node: Node, y: relax.Expr, bias: relax.Expr) -> relax.Expr:
    out = node.outputs[0].shape
    return R.add(y, R.reshape(bias, (1, out[1]) + (1,) * (len(out) - 2)))


CONV_BY_RANK = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}
CONV_T_BY_RANK = {1: R.nn.conv1d_transpose, 2: R.nn.conv2d_transpose,
                  3: R.nn.conv3d_transpose}
MAX_POOL_BY_RANK = {1: R.nn.max_pool1d, 2: R.nn.max_pool2d, 3: R.nn.max_pool3d}
AVG_POOL_BY_RANK = {1: R.nn.avg_pool1d, 2: R.nn.avg_pool2d, 3: R.nn.avg_pool3d}


def _lower_conv(bb, node, args):
    a = node.attrs
    fn = CONV_BY_RANK[_spatial(node)]
    y = fn(args[0], args[1], a["strides"], a["padding"], a["dilation"], a["groups"])
    if len(args) == 3:
        y = _add_channel_bias(bb, node, bb.emit(y), args[2])
    return _epilogue(bb, node, y)


def _lower_conv_hwio(bb, node, args):
    """conv whose kernel param is stored HWIO (output channels contiguous)."""
    a = node.attrs
    y = R.nn.conv2d(args[0], args[1], a["strides"], a["padding"], a["dilation"], a["groups"],
                    kernel_layout="HWIO")
    if len(args) == 3:
        y = _add_channel_bias(bb, node, bb.emit(y), args[2])
    return _epilogue(bb, node, y)


def _lower_conv_panels(bb, node, args, panel: int):
    """2-D conv whose kernel param is stored in panels [O / P, I, kh, kw, P]: each task of the
    CPU schedule (P output channels) reads one contiguous panel while it sweeps the input
    (HWIO read P channels per 4 KiB page, and ResNet's 512-channel convs ran 3.4x slower).
    The output stays [N, O, OH, OW], so bias, batch norm, residual and activation fuse."""
    from tvm import te, topi

    a = node.attrs
    (sh, sw), (dh, dw), pads = a["strides"], a["dilation"], [int(p) for p in a["padding"]]
    _, c, kh, kw, _ = (int(d) for d in args[1].ty.shape.values)
    out_shape = node.output.shape

    def conv(x, w):
        xp = topi.nn.pad(x, [0, 0, *pads[:2]], [0, 0, *pads[2:]], name="conv_pad") \
            if any(pads) else x
        rc = te.reduce_axis((0, c), name="rc")
        ri = te.reduce_axis((0, kh), name="ri")
        rj = te.reduce_axis((0, kw), name="rj")
        return te.compute(out_shape, lambda n, o, i, j: te.sum(
            xp[n, rc, i * sh + ri * dh, j * sw + rj * dw] * w[o // panel, rc, ri, rj, o % panel],
            axis=[rc, ri, rj]), name="panel_conv2d")

    y = bb.emit_te(conv, args[0], args[1], primfunc_name_hint="panel_conv2d")
    if len(args) == 3:
        y = _add_channel_bias(bb, node, y, args[2])
    return _epilogue(bb, node, y)


def _lower_conv_patchify(bb, node, args, panel: int):
    """A patchify conv (is_patchify: a ViT's patch embedding) with its kernel in panels, as the
    panel matmul with the bias over the flattened patches (see _patch_rows). The panels
    [O / P, C, kh, kw, P] are the linear's [O / P, C * kh * kw, P] viewed so. As a conv, the
    ViT's 14-wide output took 7-row tiles of one vector (123 GFLOP/s at batch 8)."""
    rows, count, features = _patch_rows(bb, node, args[0])
    out = node.inputs[1].shape[0]
    weight = bb.emit(R.reshape(args[1], [out // panel, features, panel]))

    def matmul(x, wt, *bias):
        return _panel_product(x, lambda k, o: wt[o // panel, k, o % panel], features,
                              (count, out), bias, "panel_matmul")

    y = bb.emit_te(matmul, rows, weight, *args[2:3], primfunc_name_hint="panel_matmul")
    return _patch_image(bb, node, _epilogue(bb, node, y))


def _patch_rows(bb, node: Node, x: relax.Expr) -> tuple[relax.Expr, int, int]:
    """A patchify conv's input [N, C, H, W] as rows of flattened patches
    [N * H/kh * W/kw, C * kh * kw] (one transposing copy), with those two extents."""
    n, c, h, w = node.inputs[0].shape
    kh, kw = node.inputs[1].shape[2:]
    count, features = n * (h // kh) * (w // kw), c * kh * kw
    patches = R.permute_dims(R.reshape(x, [n, c, h // kh, kh, w // kw, kw]),
                             [0, 2, 4, 1, 3, 5])
    return bb.emit(R.reshape(bb.emit(patches), [count, features])), count, features


def _patch_image(bb, node: Node, y: relax.Expr) -> relax.Expr:
    """A patchify conv's output rows [N * H/kh * W/kw, O] back as [N, O, H/kh, W/kw]."""
    n, out, hp, wp = node.output.shape
    return R.permute_dims(R.reshape(bb.emit(y), [n, hp, wp, out]), [0, 3, 1, 2])


def _lower_conv_winograd(bb, node, args, panel: int):
    """3x3 stride-1 conv the Winograd way (codegen/winograd.py), one kernel into which bias,
    activation and residual add fuse; its kernel param is stored transformed ("winograd<m>"
    layout). Blocks of tiles are whole vectors (half a weight panel)."""
    pads = [int(p) for p in node.attrs["padding"]]
    y = bb.emit_te(winograd.fused_conv, args[0], args[1], pads, node.output.shape, panel // 2,
                   primfunc_name_hint="winograd_conv")
    if len(args) == 3:
        y = _add_channel_bias(bb, node, y, args[2])
    return _epilogue(bb, node, y)


def _lower_conv_transpose(bb, node, args):
    a = node.attrs
    fn = CONV_T_BY_RANK[_spatial(node)]
    y = fn(args[0], args[1], a["strides"], a["padding"], a["output_padding"], a["dilation"],
           a["groups"])
    return _add_channel_bias(bb, node, bb.emit(y), args[2]) if len(args) == 3 else y


def _lower_pool(bb, node, args):
    a = node.attrs
    if node.op == "max_pool":
        return MAX_POOL_BY_RANK[_spatial(node)](args[0], a["kernel"], a["strides"],
                                                a["padding"], a["dilation"], a["ceil_mode"])
    return AVG_POOL_BY_RANK[_spatial(node)](args[0], a["kernel"], a["strides"], a["padding"],
                                            a["dilation"], a["ceil_mode"],
                                            a["count_include_pad"])


def _lower_batch_norm(bb, node, args):
    x, scale, bias, mean, var = args
    dt, rank = _dtype(node), len(node.inputs[0].shape)
    shape = (1, node.inputs[0].shape[1]) + (1,) * (rank - 2)
    inv = bb.emit(R.multiply(scale, R.rsqrt(R.add(var, _const(node.attrs["eps"], dt)))))
    shift = bb.emit(R.subtract(bias, R.multiply(mean, inv)))
    return R.add(R.multiply(x, R.reshape(inv, shape)), R.reshape(shift, shape))


def _lower_layer_norm(bb, node, args):
    k, dt = node.attrs["normalized_ndim"], _dtype(node)
    shape = node.inputs[0].shape[-k:]
    axes = list(range(-k, 0))
    gamma = args[1] if len(args) > 1 else _const(np.ones(shape), dt)
    beta = args[2] if len(args) > 2 else _const(np.zeros(shape), dt)
    return R.nn.layer_norm(args[0], gamma, beta, axes, node.attrs["eps"])


def _lower_rms_norm(bb, node, args):
    k, dt = node.attrs["normalized_ndim"], _dtype(node)
    weight = args[1] if len(args) > 1 else _const(np.ones(node.inputs[0].shape[-k:]), dt)
    return R.nn.rms_norm(args[0], weight, list(range(-k, 0)), node.attrs["eps"])


def _lower_attention(bb, node, args, key_block: int = 0):
    """softmax(q k^T * scale [masked]) v. With `key_block` (CPUs: the register tile's width),
    keys and values are padded with zeros to a whole number of blocks and the padded scores
    masked to -inf: the score kernel then writes whole tiles (no padded copy of k^T and of
    its output, the scale on the tile) and softmax's rows are whole vectors. Not with a mask
    input, which would need padding too."""
    q, k, v = args[:3]
    qt, kt = node.inputs[0].type, node.inputs[1].type
    dt = qt.dtype
    batch, heads, sq, d = qt.shape
    kv_heads, sk = kt.shape[1], kt.shape[2]
    rep = heads // kv_heads
    # grouped-query attention: the `rep` query heads that share a k/v head become rows of one
    # product with it ([B, kv_heads, rep * sq, d]) instead of copying k and v `rep` times
    # (a decoding step's matmuls then have `rep` rows, not one); a mask given per head
    # keeps the copies
    grouped = rep > 1 and len(args) == 3
    if grouped:
        q = R.reshape(q, [batch, kv_heads, rep * sq, d])
    elif rep > 1:
        k, v = bb.emit(R.repeat(k, rep, axis=1)), bb.emit(R.repeat(v, rep, axis=1))
    keys = sk if not key_block or len(args) == 4 else -(-sk // key_block) * key_block
    if keys != sk:
        pad = [0, 0, 0, 0, 0, keys - sk, 0, 0]
        k, v = bb.emit(R.nn.pad(k, pad)), bb.emit(R.nn.pad(v, pad))
    scores = bb.emit(R.multiply(R.matmul(q, R.permute_dims(k, [0, 1, 3, 2])),
                                _const(attention_scale(node.attrs, d), dt)))
    neg_inf = _const(-np.inf, dt)
    allowed = np.arange(keys)[None, :] < sk  # the real keys
    if node.attrs["causal"]:
        allowed = allowed & np.tril(np.ones((sq, keys), dtype=bool), k=sk - sq)
        if grouped:
            allowed = np.tile(allowed, (rep, 1))
    if not allowed.all():
        scores = bb.emit(R.where(_const(allowed, "bool"), scores, neg_inf))
    if len(args) == 4:
        mask = args[3]
        if node.inputs[3].dtype == "bool":
            scores = bb.emit(R.where(mask, scores, neg_inf))
        else:
            scores = bb.emit(R.add(scores, mask))
    probs = bb.emit(R.nn.softmax(scores, axis=-1))
    out = R.matmul(probs, v)
    dv = node.inputs[2].type.shape[3]
    return R.reshape(bb.emit(out), [batch, heads, sq, dv]) if grouped else out


@dataclass(frozen=True)
class AttentionFold:
    """A float attention lowered as one kernel (codegen/attention.py) that reads q, k and v
    where the graph had them before viewing them head-major (`sources`, read as `operands`
    say) and writes its output token-major where the graph transposes it so (`out`, None to
    write it head-major as the attention's own)."""
    sources: tuple[Value, ...]
    operands: tuple[fused.Operand, ...]
    out: Node | None


HEAD_SWAP = (0, 2, 1, 3)  # [batch, tokens, heads, dim] <-> [batch, heads, tokens, dim]


def fold_attention(graph: Graph) -> tuple[dict[int, AttentionFold], set[int]]:
    """The attentions to lower as one kernel, and the ids of the nodes that kernel takes the
    place of: transposes to and from head-major and, behind them, the per-head view of a
    slice of channels, where this attention is their only user."""
    folds: dict[int, AttentionFold] = {}
    skipped: set[int] = set()
    outputs = {id(v) for v in graph.outputs}
    for node in graph.nodes:
        if node.op != "attention" or node.output.dtype != "float32" \
                or node.inputs[0].shape[1] % node.inputs[1].shape[1] \
                or len(node.inputs) == 4 and (len(node.inputs[3].shape) > 4 or
                                              node.inputs[3].dtype not in ("bool", "float32")):
            continue
        sources, operands = [], []
        for value in node.inputs[:3]:
            source, operand, replaced = _attention_operand(value, node, outputs)
            sources.append(source)
            operands.append(operand)
            skipped |= {id(n) for n in replaced}
        users = node.output.users
        out = users[0] if len(users) == 1 and id(node.output) not in outputs \
            and users[0].op == "transpose" and tuple(users[0].attrs["perm"]) == HEAD_SWAP \
            else None
        if out is not None:
            skipped.add(id(out))
        folds[id(node)] = AttentionFold(tuple(sources), tuple(operands), out)
    return folds, skipped


def _attention_operand(value: Value, attention: Node, outputs: set[int],
                       ) -> tuple[Value, fused.Operand, list[Node]]:
    """Where the one-kernel attention reads `value` (a [batch, heads, tokens, dim] input of
    `attention`): the value itself, head-major; the token-major value a transpose made it
    from; or the [batch, tokens, channels] tensor a slice and a reshape took that from. With
    the nodes no longer needed."""
    swap = _made_for(value, attention, "transpose", outputs)
    if swap is None or tuple(swap.attrs["perm"]) != HEAD_SWAP:
        return value, fused.Operand(fused.HEAD_MAJOR), []
    token_major = swap.inputs[0]
    view = _made_for(token_major, swap, "reshape", outputs)
    part = view and _made_for(view.inputs[0], view, "slice", outputs)
    if part is None or len(part.inputs[0].shape) != 3 \
            or view.inputs[0].shape != (*token_major.shape[:2], int(np.prod(
                token_major.shape[2:]))) or tuple(a % 3 for a in part.attrs["axes"]) != (2,):
        return token_major, fused.Operand(fused.TOKEN_MAJOR), [swap]
    span = slice_indices(part.inputs[0].shape[2], part.attrs["starts"][0],
                         part.attrs["ends"][0], part.attrs["steps"][0])
    if span.step != 1:
        return token_major, fused.Operand(fused.TOKEN_MAJOR), [swap]
    return part.inputs[0], fused.Operand(fused.PACKED, span.start), [swap, view, part]


def _made_for(value: Value, user: Node, op: str, outputs: set[int]) -> Node | None:
    """The `op` node that made `value` if `user` is the only use of it (and it is no graph
    output), else None."""
    producer = value.producer
    if producer is None or producer.op != op or id(value) in outputs \
            or any(u is not user for u in value.users):
        return None
    return producer


def _lower_fused_attention(bb, node: Node, fold: AttentionFold, env: dict[int, relax.Expr],
                           key_block: int) -> None:
    """Emits the one-kernel attention for `node` (see AttentionFold)."""
    (batch, heads, queries, dim), (_, kv_heads, keys, _) = (v.shape for v in node.inputs[:2])
    q, k, v = (env[id(s)] for s in fold.sources)
    masks = []
    if len(node.inputs) == 4:
        mask_shape = node.inputs[3].shape
        masks.append(R.reshape(env[id(node.inputs[3])], (1,) * (4 - len(mask_shape)) + mask_shape))
    # k^T as [batch, kv_heads, dim, keys padded to whole vectors (`key_block`)]: one copy. Whole
    # vectors, not tiles of two: DeiT-Tiny's 197 keys in 13 vectors rather than 14 made its
    # attention kernel 4% faster (the score tile is then one vector wide)
    padded = -(-keys // key_block) * key_block
    shape = fused.AttentionShape(
        batch=batch, heads=heads, kv_heads=kv_heads, queries=queries, keys=keys, dim=dim,
        value_dim=node.inputs[2].shape[3], scale=attention_scale(node.attrs, dim),
        causal=bool(node.attrs["causal"]), q=fold.operands[0], v=fold.operands[2],
        token_major_out=fold.out is not None,
        mask="" if not masks else "bool" if node.inputs[3].dtype == "bool" else "add")
    with _naming(node):
        kt = bb.emit_te(functools.partial(fused.transposed_keys, operand=fold.operands[1],
                                          kv_heads=kv_heads, keys=keys, dim=dim,
                                          padded_keys=padded), k,
                        primfunc_name_hint="transposed_keys",
                        primfunc_attrs=fused.KEYS_KERNEL_ATTRS)
        out = bb.emit_te(functools.partial(fused.fused_attention, shape=shape), q, kt, v,
                         *(bb.emit(m) for m in masks), primfunc_name_hint="attention",
                         primfunc_attrs=fused.KERNEL_ATTRS)
    target = fold.out if fold.out is not None else node
    _check_shape(target, out)
    env[id(target.output)] = out


# ---- token reduction plans: the same steps as the numpy references in ir/ops.py ---------------


def _one_hot(idx: relax.Expr, depth: int, dt: str) -> relax.Expr:
    on, off = (relax.prim_value(tvm.tirx.FloatImm(dt, v)) for v in (1.0, 0.0))
    return R.one_hot(idx, on, off, depth)


def _blend(mask: relax.Expr, a: relax.Expr, b: relax.Expr, dt: str) -> relax.Expr:
    """where(mask, a, b) for a 0/1 float mask, exact for finite a and b. The plans use it
    instead of bool masks: TVM's CUDA code generator mistypes a vectorized bool `where` fused
    into a matmul epilogue (it assigns a ushort2 to a float2)."""
    return R.add(R.multiply(a, mask), R.multiply(b, R.subtract(_const(1, dt), mask)))


def _every_other(x: relax.Expr, first: int, n: int, axis: int = 1) -> relax.Expr:
    return R.strided_slice(x, [axis], [first], [n], [2])


def _lower_tome_plan(bb, node, args):
    k, size = args
    (_, _, n, _), dt = node.inputs[0].shape, _dtype(node)
    r, protect = node.attrs["r"], node.attrs["protect"]
    na, nb = (n + 1) // 2, n // 2
    metric = bb.emit(R.mean(k, axis=[1]))
    norm = R.sqrt(R.sum(R.multiply(metric, metric), axis=[-1], keepdims=True))
    metric = bb.emit(R.divide(metric, R.maximum(norm, _const(1e-12, dt))))
    scores = R.matmul(_every_other(metric, 0, n),
                      R.permute_dims(_every_other(metric, 1, n), [0, 2, 1]))
    free, into_padding, protected, protected_score = tome_score_tables(na, nb, protect)
    real_b = R.expand_dims(R.sign(_every_other(size, 1, n)), 1)
    scores = _blend(real_b, scores, _const(into_padding, dt), dt)
    real_a = R.expand_dims(R.sign(_every_other(size, 0, n)), 2)
    scores = _blend(real_a, scores, _const(free, dt), dt)
    scores = bb.emit(_blend(_const(protected, dt), _const(protected_score, dt), scores, dt))
    order = bb.emit(R.argsort(R.max(scores, axis=[-1]), axis=-1, descending=True, dtype="int64"))
    src = bb.emit(R.strided_slice(order, [1], [0], [r]))
    unmerged = R.sort(R.strided_slice(order, [1], [r], [na]), axis=-1)
    dst = R.gather_elements(R.astype(R.argmax(scores, axis=-1), "int64"), src, axis=1)
    two = _const(2, "int64")
    b_rows = R.add(_const(np.eye(n)[1::2][None], dt),
                   R.matmul(R.permute_dims(_one_hot(dst, nb, dt), [0, 2, 1]),
                            _one_hot(R.multiply(src, two), n, dt)))
    return R.concat([_one_hot(R.multiply(unmerged, two), n, dt), b_rows], axis=1)


def _lower_prune_plan(bb, node, args):
    q, k, size = args
    qt, kt, dt = node.inputs[0].type, node.inputs[1].type, _dtype(node)
    n, r, protect = kt.shape[2], node.attrs["r"], node.attrs["protect"]
    rep = qt.shape[1] // kt.shape[1]
    if rep > 1:
        k = bb.emit(R.repeat(k, rep, axis=1))
    first_query = R.strided_slice(q, [2], [0], [1])
    logits = R.multiply(R.matmul(first_query, R.permute_dims(k, [0, 1, 3, 2])),
                        _const(attention_scale(node.attrs, qt.shape[3]), dt))
    logits = R.add(logits, R.reshape(R.log(size), [kt.shape[0], 1, 1, n]))
    attended = R.reshape(R.mean(R.nn.softmax(logits, axis=-1), axis=[1]), [kt.shape[0], n])
    idx = np.arange(n, dtype=np.float32)
    score = _blend(R.sign(size), attended, _const(-1.0 - idx, dt), dt)
    score = bb.emit(_blend(_const(idx < protect, dt), _const(FREE_MERGE, dt), score, dt))
    order = R.argsort(score, axis=-1, descending=True, dtype="int64")
    keep = R.sort(R.strided_slice(order, [1], [0], [n - r]), axis=-1)
    return _one_hot(keep, n, dt)


# ---- compressed linear weights, decoded inside the matmul's inner loop ------------------------
#
# quant_linear and sparse_linear keep their weights compressed in memory ([in-ish, out]: output
# channels contiguous, so the kernels vectorize over them) and compute every weight element from
# the compressed form where the matmul reads it: memory traffic shrinks, the FLOPs do not.


BITS_DTYPE = "int16"


def _bits(value):
    """Bit fields are unpacked in int16: relax's emit_te rewrites int32 arithmetic to int64
    (its index type), and 64-bit lanes would make the decode four times as wide as the floats
    it feeds; x86 shifts 16-bit lanes by a common count in one instruction."""
    from tvm import tirx

    return tirx.const(value, BITS_DTYPE) if isinstance(value, int) else value.astype(BITS_DTYPE)


def _col(t, row, col: tuple):
    """Element [row, n] of a compressed operand stored [rows, out] (col = (n,)) or in panels
    [out / P, rows, P] (col = (panel, lane))."""
    return t[row, col[0]] if len(col) == 1 else t[col[0], row, col[1]]


def _decoded_matmul(x, weight, in_features: int, out: int, panel: int, name: str):
    """TE compute of y[m, n] = sum_k x[m, k] * weight(k, col of n): [rows, out], or with
    `panel` [rows, out / panel, panel] (the operands are in panels, see _col)."""
    from tvm import te

    k = te.reduce_axis((0, in_features), name="k")
    if panel:
        return te.compute((x.shape[0], out // panel, panel),
                          lambda m, j, p: te.sum(x[m, k] * weight(k, (j, p)), axis=k), name=name)
    return te.compute((x.shape[0], out), lambda m, n: te.sum(x[m, k] * weight(k, (n,)), axis=k),
                      name=name)


def _dequantizer(q, scale, zero, bits: int, in_features: int, panel: int, dtype: str,
                 symmetric: bool) -> Callable:
    """weight(k, col): the float weight decoded from q ([in or in/2, out] or in panels)."""
    groups = scale.shape[-2] if panel else scale.shape[0]
    group = in_features // groups

    def weight(kk, col):
        if bits == 8:
            value = _col(q, kk, col).astype(dtype)
        else:  # the even k in the low nibble (x86 has no 8-bit vector shift)
            byte = _bits(_col(q, kk // 2, col))
            value = ((byte >> _bits((kk % 2) * 4)) & _bits(15)).astype(dtype)
        if not symmetric:
            value = value - _col(zero, kk // group, col).astype(dtype)
        return value * _col(scale, kk // group, col)

    return weight


def _dequant_matmul(x, q, scale, zero, bits: int, in_features: int, out: int, panel: int,
                    dtype: str, symmetric: bool):
    """w dequantized from q as it is read: a decoding step's few rows (decoding bounds the
    kernel anyway), and weights not stored in panels (GPUs)."""
    if panel and bits == 4 and int(x.shape[0]) < DECODE_ROWS:
        return _dequant_gemv(x, q, scale, zero, in_features, out, panel, dtype)
    weight = _dequantizer(q, scale, zero, bits, in_features, panel, dtype, symmetric)
    return _decoded_matmul(x, weight, in_features, out, panel, "dequant_matmul")


def _dequant_panel_matmul(x, q, scale, zero, *bias, bits: int, panel: int, out_shape,
                          dtype: str, symmetric: bool):
    """A register tile's rows or more, weights in panels: each panel decoded once into a
    buffer that every row tile then reads (DECODED_WEIGHT, placed per task by the CPU rule),
    instead of every tile decoding every weight it reads (int8 and int4 weights ran ViT and
    MiniLM linears at 0.8x and 0.4x fp32's speed), and the product in the output's shape with
    the bias, so the epilogue runs on the tile."""
    from tvm import te

    in_features = int(x.shape[-1])
    weight = _dequantizer(q, scale, zero, bits, in_features, panel, dtype, symmetric)
    w = te.compute((int(q.shape[0]), in_features, panel), lambda j, kk, p: weight(kk, (j, p)),
                   name=DECODED_WEIGHT)
    return _panel_product(x, lambda kk, o: w[o // panel, kk, o % panel], in_features,
                          out_shape, bias, "dequant_matmul")


DECODE_ROWS = 4  # fewer rows than a register tile: the weights' decoding bounds the kernel
DECODED_WEIGHT = "decoded_weight"  # block name of a weight decoded a panel at a time
GEMV_DOT, GEMV_KERNEL = "dequant_gemv_dot", "dequant_gemv"  # block names (see codegen/gemv.py)


def _dequant_gemv(x, q, scale, zero, in_features: int, out: int, panel: int, dtype: str):
    """The decoding form of an int4 product (one to three rows, weights in panels): with
    per-group scales s and zero points z, y = sum_g s_g * (sum_{k in g} x_k q_k - z_g *
    sum_{k in g} x_k), so the inner loop only turns each weight's level into a float and
    multiplies it in; the scale and zero point are applied once per group instead of once per
    weight (an int4 576 x 1536 SmolLM2 product: 0.128 -> about 0.065 ms). Per-channel int8
    keeps the general form: with one scale per output it gains nothing here (measured even)."""
    from tvm import te

    rows, groups = x.shape[0], int(scale.shape[-2])
    group = in_features // groups

    def pair(m, g, j, p, t):  # byte b holds inputs 2b (low nibble) and 2b + 1
        byte = g * (group // 2) + t
        value = q[j, byte, p].astype("int32")
        return (x[m, 2 * byte] * (value & 15).astype(dtype)
                + x[m, 2 * byte + 1] * (value >> 4).astype(dtype))

    t = te.reduce_axis((0, group // 2), name="t")
    dot = te.compute((rows, groups, out // panel, panel),
                     lambda m, g, j, p: te.sum(pair(m, g, j, p, t), axis=t), name=GEMV_DOT)
    k = te.reduce_axis((0, group), name="k")
    sums = te.compute((rows, groups), lambda m, gg: te.sum(x[m, gg * group + k], axis=k),
                      name="dequant_gemv_sums")
    g = te.reduce_axis((0, groups), name="g")

    def corrected(m, n):
        j, p = n // panel, n % panel
        return scale[j, g, p] * (dot[m, g, j, p] - zero[j, g, p].astype(dtype) * sums[m, g])

    # the result in the output's shape [rows, out] (a reshape after it would keep FuseOps
    # from putting the bias and residual add on the accumulator)
    return te.compute((rows, out), lambda m, n: te.sum(corrected(m, n), axis=g),
                      name=GEMV_KERNEL)


def _sparse_matmul(x, values, index, scale, in_features: int, out: int, panel: int, dtype: str,
                   scaled: bool):
    """y[m, n] = sum over the kept weights of values[j, n] * x[m, position(j, n)]: half the
    multiply-adds of the dense product. values is [in/2, out], index [in/8, out] (or both in
    panels); the input a kept value meets is picked from its group's four by comparing its
    2-bit position (a blend per candidate, vectorized over n, where a gather would be a load
    per lane)."""
    from tvm import te, tirx

    j = te.reduce_axis((0, in_features // 2), name="j")

    def term(m, col, j):
        group = j // 2
        nibble = (_bits(_col(index, j // 4, col)) >> _bits((group % 2) * 4)) & _bits(15)
        position = (nibble >> _bits((j % 2) * 2)) & _bits(3)
        picked = x[m, group * 4 + 3]
        for p in (2, 1, 0):
            picked = tirx.Select(position == _bits(p), x[m, group * 4 + p], picked)
        return picked * _col(values, j, col).astype(dtype)

    if panel:
        y = te.compute((x.shape[0], out // panel, panel),
                       lambda m, c, p: te.sum(term(m, (c, p), j), axis=j), name="sparse_matmul")
    else:
        y = te.compute((x.shape[0], out), lambda m, n: te.sum(term(m, (n,), j), axis=j),
                       name="sparse_matmul")
    if not scaled:
        return y
    return te.compute(y.shape, lambda m, *col: y[(m, *col)] * _col(scale, 0, col),
                      name="sparse_scale")


def _panel_of(layouts: list[str | None]) -> int:
    """P when the compressed weight (the operand after x) is stored in panels, else 0."""
    return panel_width(layouts[1])


def _compressed_operands(bb, args, layouts: list[str | None], count: int
                         ) -> list[relax.Expr]:
    """x and the first `count - 1` compressed operands, each as [in-ish, out], or all in
    panels when the weight is (an operand small enough to be inlined is put in the same
    layout here)."""
    panel = _panel_of(layouts)
    out = [args[0]]
    for a, layout in zip(args[1:count], layouts[1:count]):
        if layout == "transposed" or (panel and panel_width(layout) == panel):
            out.append(a)
            continue
        a = bb.emit(R.permute_dims(a, [1, 0]))  # [out, X] -> [X, out]
        if panel:
            rows, cols = (int(d) for d in a.ty.shape.values)
            a = bb.emit(R.permute_dims(R.reshape(a, [rows, cols // panel, panel]), [1, 0, 2]))
        out.append(a)
    return out


def _lower_decoded(bb, node, args, y_of_flat) -> relax.Expr:
    """Flattens x to rows, runs the decoded matmul, restores x's leading axes, adds the bias."""
    xt = node.inputs[0].type
    in_features, out = xt.shape[-1], node.output.shape[-1]
    y = y_of_flat(_as_rows(bb, args[0], xt.shape), in_features, out)
    if len(xt.shape) != 2 or len(y.ty.shape.values) != 2:
        y = R.reshape(y, list(xt.shape[:-1]) + [out])
    if len(args) > 4:  # x and three compressed operands, then the bias
        y = R.add(bb.emit(y), args[-1])
    return _epilogue(bb, node, y)


def _lower_quant_linear(bb, node, args, layouts: list[str | None]):
    x, q, scale, zero = _compressed_operands(bb, args, layouts, 4)
    zero_value = node.inputs[3].data
    symmetric = zero_value is not None and not zero_value.any()
    rows = int(np.prod(node.inputs[0].shape[:-1], dtype=np.int64))
    if _panel_of(layouts) and rows >= DECODE_ROWS:
        y = bb.emit_te(_dequant_panel_matmul, x, q, scale, zero, *args[4:],
                       bits=node.attrs["bits"], panel=_panel_of(layouts),
                       out_shape=node.output.shape, dtype=_dtype(node), symmetric=symmetric,
                       primfunc_name_hint="dequant_matmul")
        return _epilogue(bb, node, y)
    return _lower_decoded(bb, node, [x, *args[1:]], lambda flat, k, out: bb.emit_te(
        _dequant_matmul, flat, q, scale, zero, node.attrs["bits"], k, out, _panel_of(layouts),
        _dtype(node), symmetric, primfunc_name_hint="dequant_matmul"))


def _lower_sparse_linear(bb, node, args, layouts: list[str | None]):
    x, values, index, scale = _compressed_operands(bb, args, layouts, 4)
    scale_value = node.inputs[3].data
    scaled = scale_value is None or not np.all(scale_value == 1)
    return _lower_decoded(bb, node, [x, *args[1:]], lambda flat, k, out: bb.emit_te(
        _sparse_matmul, flat, values, index, scale, k, out, _panel_of(layouts), _dtype(node),
        scaled, primfunc_name_hint="sparse_matmul"))


# ---- W8A8: uint8 activations x int8 weights, int32 sums ----------------------------------------
#
# int8_linear quantizes its input rows to uint8 (rows padded to the register tile's height with
# the zero point, so the tile never needs a remainder loop), sums the products in int32 and
# rescales in the same kernel: y = float(sum_k xq * q) * (x_scale * w_scale) + (b - x_zero *
# colsum(q) * x_scale * w_scale), the zero-point correction folded into a per-channel offset.
# On CPUs the weight is stored "int8dot<L>": [out / L, in / 4, L, 4], so one vector register
# holds four consecutive inputs' weights for L output channels, the operand of x86's
# vpmaddubsw / vpdpbusd and ARM's sdot (see cpu_schedule's int8 rule).

INT8_DOT = "int8dot"


def _int8_weight(q, n, k, layout: str | None):
    """Element [n, k] of an int8 weight stored int8dot<L>, transposed ([k, n]) or as-is."""
    lanes = int8_lanes(layout)
    if lanes:
        return q[n // lanes, k // 4, n % lanes, k % 4]
    return q[k, n] if layout == "transposed" else q[n, k]


def _int8_matmul(xq, q, scale, offset, rows: int, out: int, layout: str | None, name: str):
    """int32 sums over the padded rows, rescaled on the same domain (so the CPU rule runs the
    rescale on the register tile), then the real rows (which the CPU rule also computes on the
    tile, from the accumulators)."""
    from tvm import te

    in_features = xq.shape[1]
    k = te.reduce_axis((0, in_features), name="k")
    acc = te.compute((xq.shape[0], out), lambda m, n: te.sum(
        xq[m, k].astype("int32") * _int8_weight(q, n, k, layout).astype("int32"), axis=k),
        name=name)
    y = te.compute(acc.shape, lambda m, n: acc[m, n].astype("float32") * scale[n] + offset[n],
                   name="int8_rescale")
    if int(xq.shape[0]) == rows:
        return y
    return te.compute((rows, out), lambda m, n: y[m, n], name="int8_rows")


# TVM's loop vectorizer widens only calls whose op says TVectorizable, and nearbyint does not
# (round does; both are llvm.nearbyint on CPUs): every W8A8 quantizer's loop was left scalar
# (LLVM then vectorized the outer loop with per-lane loads), 2x slower than its arithmetic
tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)


def _f32(value):
    """A float32 TIR value: a number as a constant, an expression (a scale read from a
    tensor) as it is."""
    from tvm import tirx

    return tirx.const(value, "float32") if isinstance(value, (int, float)) else value


def _u8_code(x, inv_scale, zero):
    """A float -> its uint8 code (rounded half to even, saturating), as ir.ops rounds it."""
    from tvm import tirx

    v = tirx.nearbyint(x * _f32(inv_scale)) + _f32(zero)
    return tirx.max(tirx.min(v, 255.0), 0.0).astype("uint8")


def _s8_code(x, inv_scale, qmax: int):
    """A float -> its int8 code in [-qmax, qmax] (ir.ops.quantize_symmetric)."""
    from tvm import tirx

    v = tirx.nearbyint(x * _f32(inv_scale))
    return tirx.max(tirx.min(v, float(qmax)), float(-qmax)).astype("int8")


def _quantize_rows(x, inv_scale: float, zero: int, padded: int):
    from tvm import te, tirx

    rows = x.shape[0]

    def value(m, k):
        v = _u8_code(x[m, k], inv_scale, zero)
        if padded == rows:
            return v
        return tirx.if_then_else(m < rows, v, tirx.const(zero, "uint8"))

    return te.compute((padded, x.shape[1]), value, name="quantize_u8")


# ---- W8A8 attention (ir.ops int8_attention) -------------------------------------------------
#
# q to uint8 (rows padded to the int8 tile), k and v to int8 in the dot layout the int8 rule
# reads (int8dot<L> per head: the score product's columns are keys, the value product's are
# channels), each key's code sum, the scores with their masks, the exponentials as uint8
# codes and their row sums, and the weighted values normalized by those sums. The q/k/v
# kernels are injective and fuse into the transposes that make the heads. A layer's scales
# are one small tensor (ATTENTION_SCALES), so every layer of a model shares the same kernels.

ATTENTION_SCALES = ("inv_q", "q_zero", "inv_k", "inv_v", "score", "v_scale")


def _attention_scales(node: Node) -> np.ndarray:
    from ..ir.ops import int8_score_scale

    a = node.attrs
    values = {"inv_q": _inverse(a["q_scale"]), "q_zero": float(a["q_zero"]),
              "inv_k": _inverse(a["k_scale"]), "inv_v": _inverse(a["v_scale"]),
              "score": float(int8_score_scale(a, node.inputs[0].shape[3])),
              "v_scale": float(a["v_scale"])}
    return np.array([values[name] for name in ATTENTION_SCALES], np.float32)


def _scale(scales, name: str):
    return scales[ATTENTION_SCALES.index(name)]


def _dot_element(t, b, h, n, k, lanes: int):
    """Element [n, k] of a per-head int8 operand, stored int8dot<lanes> or plain [n, k]."""
    if lanes:
        return t[b, h, n // lanes, k // 4, n % lanes, k % 4]
    return t[b, h, n, k]


def _quantize_heads(x, scales, rows: int):
    """[B, H, S, D] float -> [B, H, rows, D] uint8; padded rows hold the zero point."""
    from tvm import te

    zero = _scale(scales, "q_zero")

    def value(b, h, m, d):
        return _u8_code(_padded_read(x, b, h, m, d, rows), _scale(scales, "inv_q"), zero)

    return te.compute((*x.shape[:2], rows, x.shape[3]), value, name="quantize_u8")


def _padded_read(x, b, h, row, d, rows: int):
    """x[b, h, row, d] of x padded with zero rows to `rows` (the zero's code is then 0, or the
    zero point). Masked by a multiply, not if_then_else: under an if_then_else the simplifier
    drops the clamp of the row, and once the producer's reshape is inlined its index arithmetic
    (a 64-bit div and mod per element) no longer simplifies: the ViT's value packing ran 0.43
    instead of about 0.2 ms at batch 8."""
    from tvm import tirx

    seq = int(x.shape[2])
    if rows == seq:
        return x[b, h, row, d]
    return x[b, h, tirx.min(row, seq - 1), d] * (row < seq).astype(x.dtype)


def _pack_heads(x, scales, keys: int, lanes: int, keys_reduced: bool):
    """[B, H, S, E] float -> int8 per head, S padded to `keys` with zeros: keys as the
    product's columns ([n = key, k = e], the score product) or, with `keys_reduced`, as its
    reduction ([n = e, k = key], the value product); int8dot<lanes> or plain [n, k]."""
    from tvm import te

    from ..ir.ops import KV_QMAX

    width = int(x.shape[3])
    n_size, k_size = (width, keys) if keys_reduced else (keys, width)

    def code(b, h, n, k):
        key, e = (k, n) if keys_reduced else (n, k)
        inv = _scale(scales, "inv_v" if keys_reduced else "inv_k")
        return _s8_code(_padded_read(x, b, h, key, e, keys), inv, KV_QMAX)

    if lanes:
        return te.compute((*x.shape[:2], n_size // lanes, k_size // 4, lanes, 4),
                          lambda b, h, no, ko, nl, kl: code(b, h, no * lanes + nl, ko * 4 + kl),
                          name="pack_int8")
    return te.compute((*x.shape[:2], n_size, k_size), code, name="pack_int8")


def _key_sums(k, scales, keys: int):
    """sum_d of k's int8 codes per key (0 for padded keys), for the zero point's share of the
    scores. From the float k, whose rows are contiguous (summed over the packed layout, the
    ViT's ran 0.164 instead of 0.009 ms), and a kernel of its own: the int8 rule places the scores'
    epilogue on the register tile, and TIR requires every block it reads to be computed
    inside that tile."""
    from tvm import te, tirx

    from ..ir.ops import KV_QMAX

    seq = int(k.shape[2])
    d = te.reduce_axis((0, k.shape[3]), name="d")

    # not _padded_read: no reshape is inlined into this kernel, so if_then_else costs nothing
    # here, and the multiply made it slower (ViT b8: 0.049 -> 0.06 ms)
    def total(b, h, n):
        code = _s8_code(k[b, h, tirx.min(n, seq - 1), d], _scale(scales, "inv_k"), KV_QMAX
                        ).astype("int32")
        return te.sum(code if keys == seq else tirx.if_then_else(n < seq, code, 0), axis=d)

    return te.compute((*k.shape[:2], keys), total, name="key_sums")


def _int8_scores(q8, k8, key_sums, scales, *mask, seq: int, keys_real: int, causal: bool,
                 lanes: int):
    """Scores over the padded rows and keys: int32 sums of (q - zero) * k (the zero point's
    share from each key's sum), scaled to float, with the padded keys, the causal mask and
    the given mask applied (-inf where masked)."""
    from tvm import te, tirx

    batch, heads, rows, width = (int(d) for d in q8.shape)
    keys = int(key_sums.shape[2])
    d = te.reduce_axis((0, width), name="d")
    acc = te.compute((batch, heads, rows, keys), lambda b, h, m, n: te.sum(
        q8[b, h, m, d].astype("int32") * _dot_element(k8, b, h, n, d, lanes).astype("int32"),
        axis=d), name=W7_KERNEL)

    def score(b, h, m, n):
        zero = _scale(scales, "q_zero").astype("int32")
        s = (acc[b, h, m, n] - zero * key_sums[b, h, n]).astype("float32") * \
            _scale(scales, "score")
        allowed = n < keys_real
        if causal:
            allowed = tirx.all(allowed, n <= m + (keys_real - seq))
        if mask:
            s, allowed = _apply_mask(mask[0], s, allowed, (b, h, m, n), (seq, keys_real))
        return tirx.Select(allowed, s, tirx.const(-np.inf, "float32"))

    return te.compute(acc.shape, score, name="int8_rescale")


def _apply_mask(mask, s, allowed, index, real: tuple[int, int]):
    """A keep mask (int8) or additive mask, broadcast from its own shape, read inside the real
    rows and keys (the padding is masked or discarded anyway)."""
    from tvm import tirx

    rank = len(mask.shape)
    clamped = list(index[:2]) + [tirx.min(index[2], real[0] - 1), tirx.min(index[3], real[1] - 1)]
    at = [0 if int(size) == 1 else i for size, i in zip(mask.shape, clamped[-rank:])]
    if mask.dtype == "int8":  # a keep mask (see _lower_int8_attention)
        return s, tirx.all(allowed, mask[tuple(at)] != tirx.const(0, "int8"))
    return s + mask[tuple(at)], allowed


def _exp_codes(scores):
    """uint8 codes of exp(s - row max) (ir.ops.exp_codes; a row masked whole has max 0)."""
    from tvm import te, tirx, topi

    from ..ir.ops import EXP_CODES

    j = te.reduce_axis((0, scores.shape[3]), name="j")
    row_max = te.compute(scores.shape[:3], lambda b, h, m: te.max(scores[b, h, m, j], axis=j),
                         name="row_max")
    finite = te.compute(row_max.shape, lambda *i: tirx.Select(
        row_max(*i) > tirx.const(-np.inf, "float32"), row_max(*i), tirx.const(0, "float32")),
        name="finite_max")
    e = topi.fast_exp(te.compute(scores.shape, lambda b, h, m, n: scores[b, h, m, n]
                                 - finite[b, h, m], name="shifted"))
    return te.compute(scores.shape, lambda *i: tirx.nearbyint(
        e(*i) * tirx.const(EXP_CODES, "float32")).astype("uint8"), name="exp_codes")


def _code_sums(codes):
    """sum_j codes[j] per row: the softmax's denominator (a kernel of its own, see
    _key_sums)."""
    from tvm import te

    j = te.reduce_axis((0, codes.shape[3]), name="j")
    return te.compute(codes.shape[:3], lambda b, h, m: te.sum(
        codes[b, h, m, j].astype("int32"), axis=j), name="code_sums")


def _int8_weighted_values(codes, v8, sums, scales, seq: int, width: int, lanes: int):
    """sum_j codes[j] * v[j] (int32) * v_scale / sum_j codes[j], the real rows only."""
    from tvm import te

    batch, heads, rows, keys = (int(d) for d in codes.shape)
    j = te.reduce_axis((0, keys), name="j")
    acc = te.compute((batch, heads, rows, width), lambda b, h, m, n: te.sum(
        codes[b, h, m, j].astype("int32") * _dot_element(v8, b, h, n, j, lanes).astype("int32"),
        axis=j), name=W7_KERNEL)
    y = te.compute(acc.shape, lambda b, h, m, n: _scale(scales, "v_scale") / sums[b, h, m].astype(
        "float32") * acc[b, h, m, n].astype("float32"), name="int8_rescale")
    if rows == seq:
        return y
    return te.compute((batch, heads, seq, width), lambda b, h, m, n: y[b, h, m, n],
                      name="int8_rows")


def _lower_int8_attention(bb, node, args, key_block: int = 0):
    """int8_attention in int8 kernels. With `key_block` (CPUs: twice the int8 lanes), keys
    are padded to whole blocks and rows to the int8 tile, and k and v stored int8dot."""
    from .int8_dot import padded_rows

    a = node.attrs
    _, _, seq, width = node.inputs[0].shape
    keys_real, v_width = node.inputs[1].shape[2], node.inputs[2].shape[3]
    lanes = key_block // 2
    keys = -(-keys_real // (key_block or 4)) * (key_block or 4)
    v_lanes = lanes if lanes and v_width % lanes == 0 else 0
    scales = _const(_attention_scales(node), "float32")
    q8 = bb.emit_te(_quantize_heads, args[0], scales, padded_rows(seq) if lanes else seq,
                    primfunc_name_hint="quantize_u8")
    k8 = bb.emit_te(_pack_heads, args[1], scales, keys, lanes, False,
                    primfunc_name_hint="pack_int8")
    v8 = bb.emit_te(_pack_heads, args[2], scales, keys, v_lanes, True,
                    primfunc_name_hint="pack_int8")
    key_sums = bb.emit_te(_key_sums, args[1], scales, keys, primfunc_name_hint="key_sums")
    # a bool keep mask is read as int8: TVM's CUDA code generator loads bool vectors as 16-bit
    # values (see gpu.bools_as_int8), and the scores kernel is opaque to its cast
    masks = [bb.emit(R.astype(m, "int8")) if str(m.ty.dtype) == "bool" else m
             for m in args[3:]]
    scores = bb.emit_te(_int8_scores, q8, k8, key_sums, scales, *masks, seq=seq,
                        keys_real=keys_real, causal=bool(a["causal"]), lanes=lanes,
                        primfunc_name_hint="int8_matmul")
    codes = bb.emit_te(_exp_codes, scores, primfunc_name_hint="exp_codes")
    sums = bb.emit_te(_code_sums, codes, primfunc_name_hint="code_sums")
    return bb.emit_te(_int8_weighted_values, codes, v8, sums, scales, seq, v_width, v_lanes,
                      primfunc_name_hint="int8_matmul")


def _inverse(scale: float) -> float:
    return float(np.float32(1.0) / np.float32(scale))


def _require_constant_weights(node: Node) -> None:
    if any(v.data is None for v in node.inputs[1:]):
        raise CodegenError(f"{node.name} ({node.op}): the int8 weight, its scales and the bias "
                           "must be constants (the kernels precompute the rescale from them); "
                           "they are runtime inputs here")


def _int8_rows_matmul(bb, node, x_rows: relax.Expr, rows: int, weight: relax.Expr,
                      layout: str | None) -> relax.Expr:
    """[rows, in] float -> [rows, out] float through the int8 kernels: quantize (padded
    rows), int32 sums, rescale with the zero-point correction folded into the offset."""
    from .int8_dot import fits_int16_pairs, padded_rows

    _require_constant_weights(node)
    q = node.inputs[1].data.reshape(node.inputs[1].shape[0], -1)
    out = q.shape[0]
    x_scale, x_zero = np.float32(node.attrs["x_scale"]), int(node.attrs["x_zero"])
    scale = (x_scale * node.inputs[2].data).astype(np.float32)
    bias = node.inputs[3].data if len(node.inputs) > 3 else np.zeros(out, np.float32)
    offset = (bias - x_zero * q.astype(np.int64).sum(1) * scale).astype(np.float32)
    inv = float(np.float32(1.0) / x_scale)
    xq = bb.emit_te(_quantize_rows, x_rows, inv, x_zero, padded_rows(rows),
                    primfunc_name_hint="quantize_u8")
    # the kernel name tells the CPU rule whether pairs of products fit int16 (vpmaddubsw)
    name = W7_KERNEL if fits_int16_pairs(q) else INT8_KERNEL
    return bb.emit_te(_int8_matmul, xq, weight, _const(scale, "float32"),
                      _const(offset, "float32"), rows, out, layout, name,
                      primfunc_name_hint="int8_matmul")


def _lower_int8_linear(bb, node, args, layouts: list[str | None]):
    xt = node.inputs[0].type
    out = node.output.shape[-1]
    rows = int(np.prod(xt.shape[:-1], dtype=np.int64))
    y = _int8_rows_matmul(bb, node, _as_rows(bb, args[0], xt.shape), rows, args[1], layouts[1])
    # the activation on the rows, before the reshape: FuseOps fuses only elementwise ops into
    # the matmul, so after the reshape the GELU ran in the next layer's quantize pass. On the
    # tile it costs the same (re-measured in turns: MiniLM-sized b1 18.4 ms either way, the
    # Fashion-MNIST ViT 85 vs 86 ms): that pass still reads the float output. Fusing the
    # quantize too would save its traffic; the reshapes around the smoothing multiply stop it.
    y = _epilogue(bb, node, y)
    if len(xt.shape) != 2:
        y = R.reshape(bb.emit(y), list(xt.shape[:-1]) + [out])
    return y


def is_patchify(node: Node) -> bool:
    """A conv whose windows tile the input exactly (stride = kernel, no padding, dilation 1:
    a ViT's patch embedding): the same as a linear over the flattened patches."""
    kh, kw = node.inputs[1].shape[2:]
    return (list(node.attrs["strides"]) == [kh, kw] and not any(node.attrs["padding"])
            and list(node.attrs["dilation"]) == [1, 1] and node.attrs.get("groups", 1) == 1)


def _lower_int8_patchify(bb, node, args, layout: str | None):
    """A patchify int8_conv as int8_linear over the flattened patches (see _patch_rows)."""
    x_rows, rows, features = _patch_rows(bb, node, args[0])
    out = node.inputs[1].shape[0]
    weight = args[1] if int8_lanes(layout) else bb.emit(R.reshape(args[1], [out, features]))
    y = _int8_rows_matmul(bb, node, x_rows, rows, weight, layout)
    return _epilogue(bb, node, _patch_image(bb, node, y))


def _int8_conv2d(xq, q, scale, bias, attrs: dict[str, Any], zero: int, out_shape):
    """int32 sums of (xq - zero) * q over each window (a tap in the padding adds nothing: the
    reference pads with the zero point), then acc * scale[o] + bias[o] in float."""
    from tvm import te, tirx

    _, c, h, w = (int(d) for d in xq.shape)
    kh, kw = (int(d) for d in q.shape[2:])
    (sh, sw), (dh, dw), (ph, pw) = attrs["strides"], attrs["dilation"], attrs["padding"][:2]
    rc = te.reduce_axis((0, c), name="rc")
    ri = te.reduce_axis((0, kh), name="ri")
    rj = te.reduce_axis((0, kw), name="rj")

    def tap(n, o, i, j):
        y, x = i * sh - ph + ri * dh, j * sw - pw + rj * dw
        inside = tirx.all(y >= 0, y < h, x >= 0, x < w)
        code = tirx.if_then_else(inside, xq[n, rc, y, x].astype("int32") - zero, 0)
        return code * q[o, rc, ri, rj].astype("int32")

    acc = te.compute(out_shape, lambda n, o, i, j: te.sum(tap(n, o, i, j), axis=[rc, ri, rj]),
                     name="int8_conv2d")
    return te.compute(out_shape, lambda n, o, i, j: acc[n, o, i, j].astype("float32")
                      * scale[o] + bias[o], name="int8_rescale")


def _lower_int8_conv(bb, node, args):
    """int8_conv as a generic TE compute (no int8 dot-product schedule yet: correctness first):
    the input quantized by int8_linear's quantizer (its rows are the N*C*H rows of W), an
    int32 window sum and the float rescale in the order of the IR's reference."""
    _require_constant_weights(node)
    xt = node.inputs[0].type
    x_scale, x_zero = np.float32(node.attrs["x_scale"]), int(node.attrs["x_zero"])
    scale = (x_scale * node.inputs[2].data).astype(np.float32)
    out = node.output.shape[1]
    bias = node.inputs[3].data if len(node.inputs) > 3 else np.zeros(out, np.float32)
    rows = int(np.prod(xt.shape[:-1], dtype=np.int64))
    xq = bb.emit_te(_quantize_rows, _as_rows(bb, args[0], xt.shape),
                    float(np.float32(1.0) / x_scale), x_zero, rows,
                    primfunc_name_hint="quantize_u8")
    xq = bb.emit(R.reshape(xq, list(xt.shape)))
    y = bb.emit_te(_int8_conv2d, xq, args[1], _const(scale, "float32"),
                   _const(bias, "float32"), dict(node.attrs), x_zero, node.output.shape,
                   primfunc_name_hint="int8_conv2d")
    return _epilogue(bb, node, y)


LOWERINGS: dict[str, Lowering] = {
    "cast": _lower_cast, "where": _lower_where, "argmax": _lower_arg, "argmin": _lower_arg,
    "softmax": _lower_softmax, "log_softmax": _lower_softmax, "cumsum": _lower_cumsum,
    "reshape": _lower_reshape, "transpose": _lower_transpose,
    "broadcast_to": _lower_broadcast_to, "concat": _lower_concat, "slice": _lower_slice,
    "gather": _lower_gather, "gather_elements": _lower_gather_elements, "pad": _lower_pad,
    "matmul": _lower_matmul, "linear": _lower_linear, "conv": _lower_conv,
    "conv_transpose": _lower_conv_transpose, "max_pool": _lower_pool, "avg_pool": _lower_pool,
    "batch_norm": _lower_batch_norm,
    "layer_norm": _lower_layer_norm, "rms_norm": _lower_rms_norm,
    "attention": _lower_attention,
    "tome_plan": _lower_tome_plan, "prune_plan": _lower_prune_plan,
    "quant_linear": functools.partial(_lower_quant_linear, layouts=[None] * 5),
    "sparse_linear": functools.partial(_lower_sparse_linear, layouts=[None] * 5),
    "int8_linear": functools.partial(_lower_int8_linear, layouts=[None] * 4),
    "int8_conv": _lower_int8_conv,
    "int8_attention": _lower_int8_attention,
}
COMPRESSED_LINEAR = {"quant_linear": _lower_quant_linear,
                     "sparse_linear": _lower_sparse_linear}
for _op in REDUCE_RELAX:
    LOWERINGS[_op] = _lower_reduce
for _op, _fn in UNARY_RELAX.items():
    LOWERINGS[_op] = lambda bb, node, args, _fn=_fn: _fn(args[0])
for _op, _fn in BINARY_RELAX.items():
    LOWERINGS[_op] = lambda bb, node, args, _fn=_fn: _fn(args[0], args[1])
for _op in ("reciprocal", "gelu", "softplus", "softsign", "leaky_relu", "elu", "hard_sigmoid",
            "hard_swish", "clip"):
    LOWERINGS[_op] = lambda bb, node, args: _lower_composite_unary(bb, node, args[0])


def supported_ops() -> set[str]:
    return set(LOWERINGS)


# ---- the driver ------------------------------------------------------------------------------


def _tensor_type(v: Value, chunks: int = 1) -> relax.TensorType:
    """v's type; with `chunks`, that of `chunks` of it stacked along axis 0 (a split input)."""
    shape = (v.shape[0] * chunks, *v.shape[1:]) if chunks > 1 else v.shape
    return relax.TensorType(shape, v.dtype)


def _weight_only(v: Value, op: str) -> bool:
    return bool(v.users) and all(u.op == op and u.inputs[1] is v and
                                 all(x is not v for x in u.inputs[:1] + u.inputs[2:])
                                 for u in v.users)


def _int8_matmul_weight(v: Value) -> bool:
    """An int8 weight the int8 matmul kernels read: an int8_linear's, or a patchify
    int8_conv's (flattened to [out, C * kh * kw])."""
    return _weight_only(v, "int8_linear") or (
        _weight_only(v, "int8_conv") and all(is_patchify(u) for u in v.users))


def _quant_operand(v: Value) -> bool:
    """A compressed weight (quantized or 2:4 sparse) or its scales, zeros or positions, read
    by the kernels that decode it only."""
    return bool(v.users) and all(u.op in COMPRESSED_LINEAR and v in u.inputs[1:4] and
                                 v is not u.inputs[0] for u in v.users)


def _tied_embedding(v: Value) -> bool:
    """A linear weight that is also gathered by rows (an LM head tied to the token
    embedding): stored for the linear, the gather reads its rows from the panels."""
    linear = [u for u in v.users if u.op == "linear"]
    rows = [u for u in v.users if u.op == "gather" and u.inputs[0] is v and u.inputs[1] is not v
            and u.attrs["axis"] % len(v.shape) == 0]
    return bool(linear) and bool(rows) and len(linear) + len(rows) == len(v.users) and all(
        u.inputs[1] is v and all(x is not v for x in u.inputs[:1] + u.inputs[2:])
        for u in linear)


def _compressed_panels(v: Value, panel: int) -> bool:
    """A compressed weight operand whose layers have outputs in whole panels."""
    return _quant_operand(v) and all(u.output.shape[-1] % panel == 0 for u in v.users)


def _kernel_layout(v: Value, panel: int, transpose_linears: bool = True) -> str:
    """How a weight param is stored for the kernels that read it:
    - "panels<P>" (with `panel` P): a linear weight as [out / P, in, P], each panel of P output
      columns contiguous, so a matmul streams through one panel at a time (a plain [in, out]
      weight is read a short row per page: a matrix-vector product with a 4096 x 4096 weight
      ran 2.9x slower that way on the x86 host);
    - "transposed": a linear weight as [in, out], so matmuls read output columns contiguously
      (quantized and 2:4-compressed weights and their scales, zeros and positions too); without
      `transpose_linears` plain linear weights stay [out, in] (GPUs: a tensor-core tile reads
      its slice of both operands along the reduction, coalesced only in that layout);
    - "convpanels<P>" (with `panel` P): an ungrouped 2-D conv kernel as [O / P, I, kh, kw, P],
      P output channels contiguous (see _lower_conv_panels);
    - "winograd<m>" (with `panel`): a 3x3 stride-1 conv kernel transformed for the Winograd
      convolution F(m x m, 3x3), [(m + 2)^2, O, I] (see codegen/winograd.py);
    - "HWIO": an ungrouped 2-D conv kernel with output channels last, so convs vectorize over
      output channels (GPUs, and channel counts P does not divide);
    - "as-is" otherwise."""
    if panel and _int8_matmul_weight(v) and v.shape[0] % (panel // 2) == 0 \
            and int(np.prod(v.shape[1:])) % 4 == 0:
        return f"{INT8_DOT}{panel // 2}"
    if panel and (_weight_only(v, "linear") or _compressed_panels(v, panel)
                  or _tied_embedding(v)) and v.shape[0] % panel == 0:
        return f"{PANELS}{panel}"
    if ((_weight_only(v, "linear") or _weight_only(v, "int8_linear")) and transpose_linears) \
            or _quant_operand(v):
        return "transposed"
    if panel and _weight_only(v, "conv"):
        tiles = {winograd.choose(v.shape, u.attrs, u.output.shape, v.dtype) for u in v.users}
        if len(tiles) == 1 and (m := tiles.pop()):
            return f"{WINOGRAD}{m}"
    if _weight_only(v, "conv") and len(v.shape) == 4 and all(
            u.attrs["groups"] == 1 for u in v.users):
        return f"{CONV_PANELS}{panel}" if panel and v.shape[0] % panel == 0 else "HWIO"
    return "as-is"


def _panels(a: np.ndarray, panel: int) -> np.ndarray:
    """[out, in, ...] -> [out / panel, in, ..., panel]."""
    grouped = a.reshape(a.shape[0] // panel, panel, *a.shape[1:])
    return np.moveaxis(grouped, 1, -1)


PANELS = "panels"  # the layout "panels<P>": see _kernel_layout
CONV_PANELS = "convpanels"  # the layout "convpanels<P>": see _kernel_layout
WINOGRAD = "winograd"  # the layout "winograd<m>": see _kernel_layout


def int8_lanes(layout: str | None) -> int:
    """L of an "int8dot<L>" layout, 0 for any other layout (or none)."""
    return _layout_width(layout, INT8_DOT)


def _int8_dot(a: np.ndarray, lanes: int) -> np.ndarray:
    """[out, in] (a conv's [out, C, kh, kw] flattened) -> [out / L, in / 4, L, 4]."""
    a = a.reshape(a.shape[0], -1)
    out, k = a.shape
    return a.reshape(out // lanes, lanes, k // 4, 4).transpose(0, 2, 1, 3)


def panel_width(layout: str | None) -> int:
    """P of a "panels<P>" layout, 0 for any other layout (or none)."""
    return _layout_width(layout, PANELS)


def conv_panel_width(layout: str | None) -> int:
    """P of a "convpanels<P>" layout, 0 for any other layout (or none)."""
    return _layout_width(layout, CONV_PANELS)


def winograd_tile(layout: str | None) -> int:
    """m of a "winograd<m>" layout, 0 for any other layout (or none)."""
    return _layout_width(layout, WINOGRAD)


def _layout_width(layout: str | None, prefix: str) -> int:
    return int(layout[len(prefix):]) if layout and layout.startswith(prefix) else 0


def stored_layout(layout: str) -> Callable[[np.ndarray], np.ndarray]:
    """The function that puts a weight in `layout` (see _kernel_layout)."""
    if panel_width(layout) or conv_panel_width(layout):
        return functools.partial(_panels, panel=panel_width(layout) or conv_panel_width(layout))
    if int8_lanes(layout):
        return functools.partial(_int8_dot, lanes=int8_lanes(layout))
    if winograd_tile(layout):
        return functools.partial(winograd.transform_kernel, m=winograd_tile(layout))
    return STORED_LAYOUT[layout]


STORED_LAYOUT = {"transposed": lambda a: a.T, "HWIO": lambda a: a.transpose(2, 3, 1, 0),
                 "as-is": lambda a: a}


def _stored_shape(v: Value, layout: str) -> tuple[int, ...]:
    if m := winograd_tile(layout):  # computed, not transformed: a float64 copy of the kernel
        return ((m + 2) ** 2, *v.shape[:2])
    # a zero-stride view stands in for the data: the same transpose, no memory
    return stored_layout(layout)(np.broadcast_to(np.zeros((), v.dtype), v.shape)).shape


def lower(graph: Graph, inline_limit: int = 16, panel: int = 0,
          transpose_linears: bool = True, split: BatchSplit | None = None) -> LoweredModule:
    """Builds the Relax module for `graph`; weights above `inline_limit` elements become params.
    With `split`, `graph` is a micro-batch's, and `main` runs it once per micro-batch of its
    inputs (ir/batch_split.py), the weights shared.

    Linear weights are stored transposed ([in, out]) so the matmul kernels read them along
    contiguous rows instead of transposing them on every call; with `panel` (a multiple of the
    target's vector width: CPUs), in panels of that many output columns; without
    `transpose_linears` (GPUs), as they are ([out, in]), see _kernel_layout."""
    missing = sorted({n.op for n in graph.nodes if n.op not in LOWERINGS})
    if missing:
        raise CodegenError(f"no Relax lowering for op(s) {missing}")
    params = [c for c in graph.constants if c.type.size > inline_limit]
    layouts = [_kernel_layout(c, panel, transpose_linears) for c in params]
    stored_shapes = [_stored_shape(c, lay) for c, lay in zip(params, layouts)]
    stored = {id(c): lay for c, lay in zip(params, layouts) if lay != "as-is"}
    bb = relax.BlockBuilder()
    env: dict[int, relax.Expr] = {}
    split = split or BatchSplit(1, (False,) * len(graph.inputs))
    fn_inputs = [relax.Var(v.name, _tensor_type(v, split.chunks if cut else 1))
                 for v, cut in zip(graph.inputs, split.split_inputs)]
    fn_params = [relax.Var(v.name, relax.TensorType(shape, v.dtype))
                 for v, shape in zip(params, stored_shapes)]
    for v, var in zip(list(graph.inputs) + params, fn_inputs + fn_params):
        env[id(v)] = var
    for c in graph.constants:
        if id(c) not in env:
            env[id(c)] = _const(c.data, c.dtype)
    attrs = {"num_input": len(fn_inputs)}
    # CPUs: attention as one kernel, with the transposes around it folded in
    folds, skipped = fold_attention(graph) if panel else ({}, set())
    with bb.function("main", fn_inputs + fn_params, attrs=attrs):
        with bb.dataflow():
            chunk_outs = []
            for chunk in range(split.chunks):
                chunk_env = dict(env)
                for v, var, cut in zip(graph.inputs, fn_inputs, split.split_inputs):
                    if cut:
                        rows = v.shape[0]
                        chunk_env[id(v)] = bb.emit(R.strided_slice(
                            var, axes=[0], begin=[chunk * rows], end=[(chunk + 1) * rows]))
                chunk_outs.append(_emit_graph(bb, graph, chunk_env, folds, skipped, stored,
                                              panel))
            outs = [parts[0] if len(parts) == 1 else bb.emit(R.concat(parts, axis=0))
                    for parts in zip(*chunk_outs)]
            result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
            out = bb.emit_output(result)
        bb.emit_func_output(out)
    # lowerings emit a value and then bind it again (`bb.emit(y)` of a var): FuseOps treats
    # such a var-to-var binding as opaque, and every linear's epilogue (bias, GELU) ran as a
    # kernel of its own
    mod = relax.transform.CanonicalizeBindings()(bb.get())
    return LoweredModule(mod, params, layouts)


def _emit_graph(bb: relax.BlockBuilder, graph: Graph, env: dict[int, relax.Expr],
                folds: dict[int, AttentionFold], skipped: set[int], stored: dict[int, str],
                panel: int) -> list[relax.Expr]:
    """Emits the graph's nodes, its inputs and weights bound in `env`; returns its outputs."""
    for node in graph.nodes:
        if id(node) in folds:
            _lower_fused_attention(bb, node, folds[id(node)], env, panel // 2)
        elif id(node) not in skipped:
            _emit_node(bb, node, env, stored, panel)
    return [env[id(v)] for v in graph.outputs]


def _emit_node(bb: relax.BlockBuilder, node: Node, env: dict[int, relax.Expr],
               stored: dict[int, str], panel: int) -> None:
    args = [env[id(v)] for v in node.inputs]
    lowering = LOWERINGS[node.op]
    layout = stored.get(id(node.inputs[1])) if len(node.inputs) > 1 else None
    if node.op == "linear" and layout == "transposed":
        lowering = _lower_linear_pretransposed
    elif node.op == "linear" and panel_width(layout):
        lowering = _lower_linear_panels
    elif node.op == "gather" and panel_width(stored.get(id(node.inputs[0]))):
        lowering = functools.partial(_lower_gather_rows_from_panels,
                                     panel=panel_width(stored[id(node.inputs[0])]))
    elif node.op == "conv" and layout == "HWIO":
        lowering = _lower_conv_hwio
    elif node.op == "conv" and winograd_tile(layout):
        lowering = functools.partial(_lower_conv_winograd, panel=panel)
    elif node.op == "conv" and conv_panel_width(layout) and len(node.inputs[0].shape) == 4 \
            and is_patchify(node):
        lowering = functools.partial(_lower_conv_patchify, panel=conv_panel_width(layout))
    elif node.op == "conv" and conv_panel_width(layout):
        lowering = functools.partial(_lower_conv_panels, panel=conv_panel_width(layout))
    elif node.op == "int8_linear":
        lowering = functools.partial(_lower_int8_linear,
                                     layouts=[stored.get(id(v)) for v in node.inputs])
    elif node.op == "int8_conv" and is_patchify(node):
        lowering = functools.partial(_lower_int8_patchify, layout=layout)
    elif node.op in ("attention", "int8_attention") and panel:
        lowering = functools.partial(LOWERINGS[node.op], key_block=panel)
    elif node.op in COMPRESSED_LINEAR:
        lowering = functools.partial(COMPRESSED_LINEAR[node.op],
                                     layouts=[stored.get(id(v)) for v in node.inputs])
    with _naming(node):
        expr = bb.emit(lowering(bb, node, args))
    _check_shape(node, expr)
    env[id(node.output)] = expr


@contextlib.contextmanager
def _naming(node: Node) -> Iterator[None]:
    """TVM reports type errors as plain exceptions: name the node being lowered."""
    try:
        yield
    except CodegenError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised as a CodegenError naming the node
        raise CodegenError(f"lowering {node.name} ({node.op}, scope {node.scope!r}) failed: "
                           f"{str(e).splitlines()[-1] if str(e) else type(e).__name__}") from e


def _check_shape(node: Node, expr: relax.Expr) -> None:
    sinfo = expr.struct_info if hasattr(expr, "struct_info") else None
    shape = getattr(sinfo, "shape", None)
    if shape is None:
        return
    got = tuple(int(d) for d in shape.values) if hasattr(shape, "values") else None
    if got is not None and got != node.output.shape:
        raise CodegenError(f"lowering {node.name} ({node.op}) gave shape {got}, IR says "
                           f"{node.output.shape}")

