"""IR -> a high-level-synthesis C++ project (Vitis HLS style), plus honer's own estimates.

Each IR node becomes one C++ function over fixed-size arrays (a reshape is free: it renames the
flat buffer), the weights become ROM arrays, and a top function chains them under `DATAFLOW`
with AXI-stream or memory-mapped ports. Arithmetic is `float` or a fixed-point type from
`hls_fixed.h` (ap_fixed's rounding and overflow modes, plain C++, so g++ runs the C
simulation). Multiply-accumulate layers (linear, conv) take a reuse factor R, as in hls4ml:
each output's reduction of K products runs in R pipelined steps of ceil(K / R) parallel
multipliers; that choice sets the pragmas, and the same model gives the estimates (multipliers,
on-chip memory, cycles) in the report. Ops with no fixed-point form (softmax, GELU, ...) run in
float inside the fixed-point design and are listed as such.

W8A8-quantized layers (`int8_linear`, `int8_conv` from the w8a8 pass) are integer hardware
whatever `number` says: the layer quantizes its input to uint8 codes (x * (1 / x_scale),
rounded half to even, plus the zero point, saturated to 0..255), multiplies them by int8 weight
ROMs into int32 sums (sum_k xq * q minus the per-channel x_zero * sum_k q: uint8 x int8
products, the form DSP packing takes), and rescales in float as the IR's reference orders it:
float(acc) * (float32(x_scale) * w_scale[n]) + bias[n], then its fused activation. `number`
is the type of the activations between layers, which the IR keeps in float (each int8 layer
rescales to float; the next one quantizes again): with number=float a model made of int8
layers, ReLU, max pooling and reshapes is integer arithmetic plus exactly rounded float32
steps, and its C simulation is bit-exact against `ir.interpret` (compiled with
-ffp-contract=off, so no multiply-add is fused). A design that hands uint8 codes from layer to
layer (requantizing in the epilogue) would halve the buffers but change the graph's semantics;
not done here. The estimates count an int8 layer's multipliers as int8 x int8 MACs packed two
per DSP48E2 (Xilinx WP486, the packing hls4ml and FINN use for 8-bit MACs), plus one float
multiplier for the input quantizer (3 DSPs) and a float multiply and add for the rescale
(3 + 2 DSPs); its weights at 8 bits, its scales, zero-point corrections and bias at 32 bits.

Pragmas are written as `HONER_HLS(...)`, a macro that becomes `_Pragma("HLS ...")` only under
synthesis (`__SYNTHESIS__`), so the C simulation compiles with `-Wall` and no warnings.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CodegenError, HonerError
from ..ir import Graph, Node, Value

FIXED_HEADER = Path(__file__).with_name("hls_fixed.h")
BRAM18_BITS = 18 * 1024
# computed in float inside a fixed-point design (no fixed-point form here)
FLOAT_ONLY = {"gelu", "softmax", "log_softmax", "sigmoid", "tanh", "exp", "layer_norm",
              "attention"}
INT8_OPS = {"int8_linear", "int8_conv", "int8_attention"}
SUPPORTED = ({"linear", "conv", "relu", "max_pool", "reduce_mean", "reshape", "flatten", "add",
              "mul", "transpose", "slice", "concat"} | FLOAT_ONLY | INT8_OPS)
# the fused activation of a linear / conv (set by act_fuse) on a float `v`, as the IR's
# reference computes it (relu keeps a NaN, as numpy's maximum does); model.h defines them
ACTIVATION_FN = {
    "relu": "(v < 0.0f ? 0.0f : v)", "gelu": "0.5f * v * (1.0f + std::erf(v * 0.70710678f))",
    "sigmoid": "1.0f / (1.0f + std::exp(-v))", "tanh": "std::tanh(v)",
    "silu": "v / (1.0f + std::exp(-v))"}
INT32_MAX = (1 << 31) - 1


def conv_geometry(node: Node) -> tuple[int, ...]:
    """(n, c, h, w, out channels, kh, kw, oh, ow, stride h/w, padding top/left, dilation h/w)
    of a 2-D conv (float or int8)."""
    n, c, h, w = node.inputs[0].shape
    oc, _, kh, kw = node.inputs[1].shape
    _, _, oh, ow = node.output.shape
    sh, sw = node.attrs["strides"]
    ph, pw = node.attrs["padding"][0], node.attrs["padding"][1]
    dh, dw = node.attrs["dilation"]
    return n, c, h, w, oc, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw


@dataclass(frozen=True)
class HLSConfig:
    number: str = "fixed<16,6>"  # "float" or "fixed<W,I>" (W total bits, I integer bits)
    rounding: str = "rnd"  # "trn" (truncate, ap_fixed's default) or "rnd" (round half up)
    overflow: str = "sat"  # "wrap" (ap_fixed's default) or "sat"
    interface: str = "axis"  # "axis" (AXI-stream) or "m_axi" (memory-mapped)
    reuse: int = 16  # default reuse factor of linear / conv layers
    layer_reuse: tuple[tuple[str, int], ...] = ()  # (scope glob, reuse) overrides
    clock_mhz: float = 200.0
    part: str = "xcu250-figd2104-2L-e"

    def __post_init__(self) -> None:
        self.fixed  # noqa: B018 - parses the number format, refusing a bad one now
        for key, allowed in {"rounding": ("trn", "rnd"), "overflow": ("wrap", "sat"),
                             "interface": ("axis", "m_axi")}.items():
            if getattr(self, key) not in allowed:
                raise HonerError(f"fpga-hls: {key}={getattr(self, key)!r}; choose "
                                 f"{' or '.join(allowed)}")
        if self.reuse < 1 or any(r < 1 for _, r in self.layer_reuse):
            raise HonerError("fpga-hls: reuse factors must be positive integers")

    @property
    def fixed(self) -> tuple[int, int] | None:
        if self.number == "float":
            return None
        m = re.fullmatch(r"fixed<(\d+),(-?\d+)>", self.number.replace(" ", ""))
        if not m or not 2 <= int(m.group(1)) <= 32:
            raise HonerError(f"fpga-hls: number format {self.number!r}; use float or "
                             "fixed<W,I> with 2 <= W <= 32")
        return int(m.group(1)), int(m.group(2))

    def reuse_for(self, scope: str, name: str) -> int:
        for pattern, reuse in self.layer_reuse:
            if fnmatch.fnmatch(scope, pattern) or fnmatch.fnmatch(name, pattern):
                return reuse
        return self.reuse


@dataclass
class LayerEstimate:
    name: str
    op: str
    arithmetic: str  # "fixed", "float", "int8" or "float fallback"
    reuse: int | None
    multipliers: int
    dsp: int
    weight_bits: int
    weight_bram18: int
    buffer_bits: int
    latency_cycles: int
    ii: int


@dataclass
class HLSModule:
    """What the HLS target builds from: the graph itself (weights go into the C++ as ROM)."""

    graph: Graph
    config: HLSConfig
    param_layouts: list[str] = field(default_factory=list)

    def stored_params(self, dtypes: Any = None) -> Iterator[tuple[str, np.ndarray]]:
        return iter(())


def check_supported(graph: Graph) -> None:
    problems = [(n.op, n.scope or n.name) for n in graph.nodes if n.op not in SUPPORTED]
    problems += [(f"conv with groups={n.attrs['groups']}", n.scope or n.name)
                 for n in graph.nodes if n.op == "conv" and n.attrs.get("groups", 1) != 1]
    # constants of other types: attention masks, int8 weights
    problems += [(f"{n.op} on {v.dtype}", n.scope or n.name) for n in graph.nodes
                 for v in n.inputs if v.dtype != "float32"
                 and not (n.op in {"attention", "int8_attention"} | INT8_OPS
                          and v.data is not None)]
    if problems:
        listing = "\n".join(f"  {op}  (at {where})" for op, where in problems)
        raise CodegenError("fpga-hls cannot put these ops in hardware (fold batch norms first "
                           f"with passes=['bn_fold'] where that is the reason):\n{listing}")


@dataclass(frozen=True)
class _FloatAttention:
    """The C++ pieces of float attention (emit_attention)."""
    score_scale: str
    sum_type = weight_type = "float"

    def score_term(self, q: str, k: str) -> str:
        return f"to_float({q}) * to_float({k})"

    def score(self, acc: str) -> str:
        return f"{acc} * {self.score_scale}"

    def weight(self, shifted: str) -> str:
        return f"std::exp({shifted})"

    def value(self, v: str) -> str:
        return f"to_float({v})"

    def output(self, acc: str, total: str) -> str:
        return f"{acc} / {total}"


@dataclass(frozen=True)
class _Int8Attention:
    """The C++ pieces of int8_attention: `q`, `k`, `v` turn an element (their `{}`) into its
    code."""
    q: str
    k: str
    v: str
    zero: int
    score_scale: str
    v_scale: str
    sum_type = weight_type = "int"

    def score_term(self, q: str, k: str) -> str:
        return f"({self.q.format(q)} - {self.zero}) * {self.k.format(k)}"

    def score(self, acc: str) -> str:
        return f"(float){acc} * {self.score_scale}"

    def weight(self, shifted: str) -> str:
        return f"(int)std::nearbyint(std::exp({shifted}) * 255.0f)"

    def value(self, v: str) -> str:
        return self.v.format(v)

    def output(self, acc: str, total: str) -> str:
        return f"{self.v_scale} / (float){total} * (float){acc}"


# ---------------------------------------------------------------- numbers

def fixed_raw(data: np.ndarray, cfg: HLSConfig) -> np.ndarray:
    """The raw integers hfix::from_float stores for `data` (same rounding and overflow)."""
    w, i = cfg.fixed
    scaled = np.asarray(data, np.float64) * float(2 ** (w - i))
    q = np.floor(scaled + 0.5) if cfg.rounding == "rnd" else np.floor(scaled)
    q = np.clip(q, -4.0e18, 4.0e18).astype(np.int64)
    lo, hi = -(1 << (w - 1)), (1 << (w - 1)) - 1
    if cfg.overflow == "sat":
        return np.clip(q, lo, hi)
    return ((q - lo) % (1 << w)) + lo


def c_float(x: float) -> str:
    """A C++ float literal that reads back as the same float32."""
    if not np.isfinite(x):
        return "NAN" if np.isnan(x) else ("INFINITY" if x > 0 else "-INFINITY")
    text = f"{float(x):.9g}"
    return text + ("f" if any(c in text for c in ".e") else ".0f")


def _literals(data: np.ndarray, cfg: HLSConfig) -> str:
    flat = np.ascontiguousarray(data).ravel()
    if cfg.fixed is None:
        items = [c_float(x) for x in flat]
    else:
        items = [f"{{{int(r)}}}" for r in fixed_raw(flat, cfg)]
    lines = [", ".join(items[k:k + 12]) for k in range(0, len(items), 12)]
    return "{\n  " + ",\n  ".join(lines) + "\n}"


# ---------------------------------------------------------------- code generation

class _Emitter:
    def __init__(self, graph: Graph, cfg: HLSConfig):
        self.graph = graph
        self.cfg = cfg
        self.buffers: dict[int, str] = {}  # value id -> C array name
        self.roms: list[str] = []
        self.layers: list[str] = []
        self.calls: list[str] = []
        self.decls: list[str] = []
        self.estimates: list[LayerEstimate] = []
        self.rom_names: dict[int, str] = {}

    def ident(self, text: str) -> str:
        return re.sub(r"\W", "_", text)

    def buffer(self, v: Value) -> str:
        return self.buffers[id(v)]

    def rom(self, v: Value) -> str:
        if id(v) not in self.rom_names:
            name = "w_" + self.ident(v.name)
            self.rom_names[id(v)] = name
            self.roms.append(f"static const data_t {name}[{v.type.size}] = "
                             f"{_literals(v.data, self.cfg)};")
        return self.rom_names[id(v)]

    def run(self) -> None:
        for i, v in enumerate(self.graph.inputs):
            self.buffers[id(v)] = f"in{i}"
            self.decls.append(f"static data_t in{i}[{v.type.size}];")
        for node in self.graph.nodes:
            if node.op in ("reshape", "flatten"):  # same flat buffer, new shape
                self.buffers[id(node.output)] = self.buffer(node.inputs[0])
                continue
            out = "b_" + self.ident(node.output.name)
            self.buffers[id(node.output)] = out
            self.decls.append(f"static data_t {out}[{node.output.type.size}];")
            getattr(self, "emit_" + node.op, self.emit_float_fallback)(node, out)

    # each emit_* appends one layer function, its call and its estimate
    def add_layer(self, node: Node, body: str, args: list[str], est: LayerEstimate) -> None:
        fn = "layer_" + self.ident(node.name)
        params = ", ".join(f"data_t a{k}[{n}]" if k < len(args) - 1 else f"data_t y[{n}]"
                           for k, n in enumerate(
                               [v.type.size for v in node.inputs if v.data is None]
                               + [node.output.type.size]))
        self.layers.append(f"// {node.op} {node.name} ({node.scope})\n"
                           f"static void {fn}({params}) {{\n{body}}}\n")
        self.calls.append(f"  {fn}({', '.join(args)});")
        self.estimates.append(est)

    def activations(self, node: Node) -> list[str]:
        return [self.buffer(v) for v in node.inputs if v.data is None]

    @staticmethod
    def fused(node: Node, value: str) -> str:
        """`value` (a data_t) through the node's fused activation: ReLU in data_t (exact in
        fixed point too), the others in float."""
        act = node.attrs.get("activation", "none")
        if act == "none":
            return value
        if act == "relu":
            return f"d_max({value}, d_zero())"
        return f"to_data(honer_{act}(to_float({value})))"

    def mac_estimate(self, node: Node, outputs: int, k: int, weight: Value,
                     bias: Value | None, reuse: int) -> LayerEstimate:
        width = 32 if self.cfg.fixed is None else self.cfg.fixed[0]
        units = math.ceil(k / reuse)
        dsp_per_mac = 5 if self.cfg.fixed is None else (1 if width <= 18 else 2)
        wbits = (weight.type.size + (bias.type.size if bias is not None else 0)) * width
        return LayerEstimate(
            node.name, node.op, "float" if self.cfg.fixed is None else "fixed", reuse, units,
            units * dsp_per_mac, wbits, _bram(wbits, units), node.output.type.size * width,
            outputs * reuse + 8, reuse)

    def mac_operands(self, node: Node, k: int) -> tuple[Value, Value | None, str, str, int]:
        """Weight, bias, the weight ROM, the bias expression and the reuse factor of a
        multiply-accumulate layer with reduction size `k`."""
        w = node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        if w.data is None or (b is not None and b.data is None):
            raise CodegenError(f"fpga-hls: {node.name}: {node.op} weights must be constants")
        bias = f"{self.rom(b)}[o]" if b is not None else "d_zero()"
        return w, b, self.rom(w), bias, min(self.cfg.reuse_for(node.scope, node.name), k)

    @staticmethod
    def reduction(k: int, reuse: int, indent: str, mac: str) -> str:
        """The K products of one output in `reuse` pipelined steps of ceil(K / reuse) unrolled
        multipliers; `mac` accumulates product `k` into `acc`."""
        units = math.ceil(k / reuse)
        body = f"""for (int r = 0; r < {reuse}; r++) {{
  HONER_HLS(PIPELINE II=1)
  for (int u = 0; u < {units}; u++) {{
    HONER_HLS(UNROLL)
    const int k = r * {units} + u;
    if (k >= {k}) continue;
{mac}
  }}
}}"""
        return "".join(f"{indent}{line}\n" if line else "\n" for line in body.splitlines())

    def emit_linear(self, node: Node, out: str) -> None:
        m, k = node.inputs[1].shape
        rows = node.inputs[0].type.size // k
        w, b, wname, bias, reuse = self.mac_operands(node, k)
        mac = f"    acc_mac(acc, a0[n * {k} + k], {wname}[o * {k} + k]);"
        body = f"""  {_partition(wname, k, reuse)}
  for (int n = 0; n < {rows}; n++) {{
    for (int o = 0; o < {m}; o++) {{
      acc_t acc = acc_init({bias});
{self.reduction(k, reuse, "      ", mac)}      y[n * {m} + o] = {self.fused(node, "acc_out(acc)")};
    }}
  }}
"""
        self.add_layer(node, body, self.activations(node) + [out],
                       self.mac_estimate(node, rows * m, k, w, b, reuse))

    def emit_conv(self, node: Node, out: str) -> None:
        x = node.inputs[0]
        if len(x.shape) != 4:
            raise CodegenError(f"fpga-hls: {node.name}: only 2-D convs")
        n, c, h, wd, oc, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw = conv_geometry(node)
        k = c * kh * kw
        w, b, wname, bias, reuse = self.mac_operands(node, k)
        taps = self.conv_taps(node, c, h, wd, kh, kw, dh, dw)
        out_value = self.fused(node, "acc_out(acc)")
        mac = f"""    const int yy = i * {sh} - {ph} + {taps}_dy[k];
    const int xx = j * {sw} - {pw} + {taps}_dx[k];
    if (yy >= 0 && yy < {h} && xx >= 0 && xx < {wd})
      acc_mac(acc, a0[n * {c * h * wd} + {taps}_ch[k] + yy * {wd} + xx],
              {wname}[o * {k} + k]);"""
        body = f"""  {_partition(wname, k, reuse)}
  for (int n = 0; n < {n}; n++)
  for (int o = 0; o < {oc}; o++)
  for (int i = 0; i < {oh}; i++)
  for (int j = 0; j < {ow}; j++) {{
    acc_t acc = acc_init({bias});
{self.reduction(k, reuse, "    ", mac)}    y[((n * {oc} + o) * {oh} + i) * {ow} + j] = {out_value};
  }}
"""
        self.add_layer(node, body, self.activations(node) + [out],
                       self.mac_estimate(node, n * oc * oh * ow, k, w, b, reuse))

    # ---- W8A8 layers: uint8 codes x int8 weights, int32 sums, float rescale

    def typed_rom(self, name: str, ctype: str, items: list[str]) -> str:
        lines = [", ".join(items[k:k + 16]) for k in range(0, len(items), 16)]
        self.roms.append(f"static const {ctype} {name}[{len(items)}] = {{\n  "
                         + ",\n  ".join(lines) + "\n};")
        return name

    def int8_operands(self, node: Node, k: int) -> dict[str, Any]:
        """The ROMs of an int8 layer with reduction size `k` (weights, the rescale per output,
        the zero-point correction per output, the bias) and its quantizer's constants."""
        if any(v.data is None for v in node.inputs[1:]):
            raise CodegenError(f"fpga-hls: {node.name}: {node.op} weights, scales and bias "
                               "must be constants")
        if 255 * 127 * k > INT32_MAX:  # the int32 sum of uint8 x int8 products must not wrap
            raise CodegenError(f"fpga-hls: {node.name}: {node.op} sums {k} products; more "
                               f"than {INT32_MAX // (255 * 127)} can overflow its int32 sum")
        q, w_scale = node.inputs[1].data, node.inputs[2].data
        name = self.ident(node.name)
        x_scale, zero = np.float32(node.attrs["x_scale"]), int(node.attrs["x_zero"])
        rows = q.reshape(len(q), -1).astype(np.int64)
        scale = (x_scale * w_scale).astype(np.float32)  # as the reference rounds it
        ops = {
            "q": self.typed_rom(f"i8q_{name}", "int8_t", [str(int(v)) for v in rows.ravel()]),
            "scale": self.typed_rom(f"i8s_{name}", "float", [c_float(v) for v in scale]),
            "corr": self.typed_rom(f"i8zc_{name}", "int32_t",
                                   [str(int(v)) for v in zero * rows.sum(1)]),
            "inv": c_float(np.float32(1.0) / x_scale), "zero": zero,
            "zero_f": c_float(float(zero)),
            "reuse": min(self.cfg.reuse_for(node.scope, node.name), k),
            "act": "v" if node.attrs["activation"] == "none"
            else f"honer_{node.attrs['activation']}(v)"}
        ops["bias"] = ""
        if len(node.inputs) > 3:
            b = self.typed_rom(f"i8b_{name}", "float", [c_float(v) for v in node.inputs[3].data])
            ops["bias"] = f" + {b}[o]"
        return ops

    @staticmethod
    def int8_quantize(size: int, offset: str, ops: dict[str, Any], indent: str,
                      partition: int = 0) -> str:
        """The codes xq of one sample's input (a linear reads `partition` of them at once)."""
        lines = [f"uint8_t xq[{size}];"]
        if partition > 1:
            lines.append(f"HONER_HLS(ARRAY_PARTITION variable=xq cyclic factor={partition} "
                         "dim=1)")
        lines += [
                 f"for (int i = 0; i < {size}; i++) {{",
                 "  HONER_HLS(PIPELINE II=1)",
                 f"  xq[i] = honer_quantize_u8(to_float(a0[{offset} + i]), {ops['inv']}, "
                 f"{ops['zero_f']});",
                 "}"]
        return "".join(indent + line + "\n" for line in lines)

    @staticmethod
    def int8_epilogue(ops: dict[str, Any], index: str, indent: str) -> str:
        # int32 first (exact), then the reference's float steps, one rounding each
        return (f"{indent}const float v = float(acc - {ops['corr']}[o]) * {ops['scale']}[o]"
                f"{ops['bias']};\n{indent}y[{index}] = to_data({ops['act']});\n")

    def int8_estimate(self, node: Node, cycles: int, k: int, codes: int,
                      ops: dict[str, Any]) -> LayerEstimate:
        """Two int8 MACs per DSP48E2, plus the quantizer's float multiply (3 DSPs) and the
        rescale's multiply and add (3 + 2); weights at 8 bits, per-output scale, correction and
        bias at 32."""
        q = node.inputs[1]
        units = math.ceil(k / ops["reuse"])
        width = 32 if self.cfg.fixed is None else self.cfg.fixed[0]
        wbits = q.type.size * 8 + q.shape[0] * 32 * (2 + (len(node.inputs) > 3))
        return LayerEstimate(
            node.name, node.op, "int8", ops["reuse"], units, math.ceil(units / 2) + 8, wbits,
            _bram(wbits, units), node.output.type.size * width + codes * 8, cycles + 8,
            ops["reuse"])

    def emit_int8_linear(self, node: Node, out: str) -> None:
        m, k = node.inputs[1].shape
        rows = node.inputs[0].type.size // k
        ops = self.int8_operands(node, k)
        mac = f"    acc += int32_t(xq[k]) * int32_t({ops['q']}[o * {k} + k]);"
        quantize = self.int8_quantize(k, f"n * {k}", ops, "    ", math.ceil(k / ops["reuse"]))
        epilogue = self.int8_epilogue(ops, f"n * {m} + o", "      ")
        body = f"""  {_partition(ops['q'], k, ops['reuse'])}
  for (int n = 0; n < {rows}; n++) {{
{quantize}    for (int o = 0; o < {m}; o++) {{
      int32_t acc = 0;
{self.reduction(k, ops["reuse"], "      ", mac)}{epilogue}    }}
  }}
"""
        self.add_layer(node, body, self.activations(node) + [out],
                       self.int8_estimate(node, rows * (k + m * ops["reuse"]), k, k, ops))

    def emit_int8_conv(self, node: Node, out: str) -> None:
        n, c, h, wd, oc, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw = conv_geometry(node)
        k = c * kh * kw
        ops = self.int8_operands(node, k)
        taps = self.conv_taps(node, c, h, wd, kh, kw, dh, dw)
        # a tap in the padding reads the zero point (real 0.0): its product cancels against
        # the correction, as the reference's zero-point padding does
        mac = f"""    const int yy = i * {sh} - {ph} + {taps}_dy[k];
    const int xx = j * {sw} - {pw} + {taps}_dx[k];
    const bool inside = yy >= 0 && yy < {h} && xx >= 0 && xx < {wd};
    const uint8_t code = inside ? xq[{taps}_ch[k] + yy * {wd} + xx] : uint8_t({ops['zero']});
    acc += int32_t(code) * int32_t({ops['q']}[o * {k} + k]);"""
        quantize = self.int8_quantize(c * h * wd, f"n * {c * h * wd}", ops, "    ")
        epilogue = self.int8_epilogue(ops, f"((n * {oc} + o) * {oh} + i) * {ow} + j", "      ")
        body = f"""  {_partition(ops['q'], k, ops['reuse'])}
  for (int n = 0; n < {n}; n++) {{
{quantize}    for (int o = 0; o < {oc}; o++)
    for (int i = 0; i < {oh}; i++)
    for (int j = 0; j < {ow}; j++) {{
      int32_t acc = 0;
{self.reduction(k, ops["reuse"], "      ", mac)}{epilogue}    }}
  }}
"""
        cycles = n * (c * h * wd + oc * oh * ow * ops["reuse"])
        self.add_layer(node, body, self.activations(node) + [out],
                       self.int8_estimate(node, cycles, k, c * h * wd, ops))

    def conv_taps(self, node: Node, c: int, h: int, w: int, kh: int, kw: int, dh: int,
                  dw: int) -> str:
        """Per reduction step k = (channel, kernel row, kernel column): the channel's offset
        and the row / column displacement, as small ROMs instead of divisions per product."""
        name = "taps_" + self.ident(node.name)
        ci, ki, kj = np.meshgrid(np.arange(c), np.arange(kh), np.arange(kw), indexing="ij")
        for suffix, table in (("ch", ci * h * w), ("dy", ki * dh), ("dx", kj * dw)):
            items = ", ".join(str(int(v)) for v in table.ravel())
            self.roms.append(f"static const int {name}_{suffix}[{table.size}] = {{{items}}};")
        return name

    def simple_estimate(self, node: Node, cycles: int, arithmetic: str,
                        dsp: int = 0) -> LayerEstimate:
        width = 32 if self.cfg.fixed is None else self.cfg.fixed[0]
        return LayerEstimate(node.name, node.op, arithmetic, None, 0, dsp, 0, 0,
                             node.output.type.size * width, cycles + 4, 1)

    def arithmetic(self) -> str:
        return "float" if self.cfg.fixed is None else "fixed"

    def emit_relu(self, node: Node, out: str) -> None:
        size = node.output.type.size
        body = f"""  for (int i = 0; i < {size}; i++) {{
    HONER_HLS(PIPELINE II=1)
    y[i] = d_max(a0[i], d_zero());
  }}
"""
        self.add_layer(node, body, self.activations(node) + [out],
                       self.simple_estimate(node, size, self.arithmetic()))

    def elementwise_operands(self, node: Node) -> list[str]:
        """The two operands of add / mul at flat index i: activations of the output's shape,
        or constants that repeat over its leading axes."""
        operands = []
        for v in node.inputs:
            if v.data is None and v.shape == node.output.shape:
                operands.append(f"a{len([o for o in operands if o.startswith('a')])}[i]")
            elif v.data is not None and tuple(node.output.shape[len(node.output.shape)
                                                              - len(v.shape):]) == v.shape:
                operands.append(f"{self.rom(v)}[i % {v.type.size}]")
            else:
                raise CodegenError(f"fpga-hls: {node.name}: {node.op} broadcasting {v.shape} "
                                   f"to {node.output.shape} is not supported")
        return operands

    def emit_add(self, node: Node, out: str) -> None:
        """Two activations of one shape, or an activation plus a constant that repeats over
        the leading axes (a bias, position embeddings)."""
        size = node.output.type.size
        operands = self.elementwise_operands(node)
        body = f"""  for (int i = 0; i < {size}; i++) {{
    HONER_HLS(PIPELINE II=1)
    y[i] = d_add({operands[0]}, {operands[1]});
  }}
"""
        self.add_layer(node, body, self.activations(node) + [out],
                       self.simple_estimate(node, size, self.arithmetic()))

    def emit_mul(self, node: Node, out: str) -> None:
        """As add: two activations of one shape, or an activation times a constant repeating
        over the leading axes (SmoothQuant's 1/s before an int8 layer); one product through
        the accumulator type, so fixed point rounds it as a MAC does and float is exact."""
        operands = self.elementwise_operands(node)
        size = node.output.type.size
        body = f"""  for (int i = 0; i < {size}; i++) {{
    HONER_HLS(PIPELINE II=1)
    acc_t acc = acc_init(d_zero());
    acc_mac(acc, {operands[0]}, {operands[1]});
    y[i] = acc_out(acc);
  }}
"""
        dsp = 3 if self.cfg.fixed is None else (1 if self.cfg.fixed[0] <= 18 else 2)
        self.add_layer(node, body, self.activations(node) + [out],
                       self.simple_estimate(node, size, self.arithmetic(), dsp))

    def emit_max_pool(self, node: Node, out: str) -> None:
        x = node.inputs[0]
        if len(x.shape) != 4:
            raise CodegenError(f"fpga-hls: {node.name}: only 2-D max pooling")
        n, c, h, w = x.shape
        _, _, oh, ow = node.output.shape
        kh, kw = node.attrs["kernel"]
        sh, sw = node.attrs["strides"]
        ph, pw = node.attrs["padding"][0], node.attrs["padding"][1]
        dh, dw = node.attrs["dilation"]
        body = f"""  for (int p = 0; p < {n * c}; p++)
  for (int i = 0; i < {oh}; i++)
  for (int j = 0; j < {ow}; j++) {{
    HONER_HLS(PIPELINE II=1)
    data_t m = d_lowest();
    for (int ki = 0; ki < {kh}; ki++)
    for (int kj = 0; kj < {kw}; kj++) {{
      const int yy = i * {sh} - {ph} + ki * {dh}, xx = j * {sw} - {pw} + kj * {dw};
      if (yy >= 0 && yy < {h} && xx >= 0 && xx < {w}) m = d_max(m, a0[(p * {h} + yy) * {w} + xx]);
    }}
    y[(p * {oh} + i) * {ow} + j] = m;
  }}
"""
        self.add_layer(node, body, self.activations(node) + [out],
                       self.simple_estimate(node, node.output.type.size, self.arithmetic()))

    def index_rom(self, node: Node, indices: np.ndarray) -> str:
        name = "idx_" + self.ident(node.name)
        items = ", ".join(str(int(i)) for i in indices.ravel())
        self.roms.append(f"static const int {name}[{indices.size}] = {{{items}}};")
        return name

    def emit_gather_copy(self, node: Node, out: str, indices: np.ndarray) -> None:
        """An output element i is input element indices[i]: transposes and slices."""
        rom = self.index_rom(node, indices)
        body = f"""  for (int i = 0; i < {indices.size}; i++) {{
    HONER_HLS(PIPELINE II=1)
    y[i] = a0[{rom}[i]];
  }}
"""
        self.add_layer(node, body, self.activations(node) + [out],
                       self.simple_estimate(node, indices.size, self.arithmetic()))

    def emit_transpose(self, node: Node, out: str) -> None:
        x = node.inputs[0]
        order = np.arange(x.type.size).reshape(x.shape).transpose(node.attrs["perm"])
        self.emit_gather_copy(node, out, order)

    def emit_slice(self, node: Node, out: str) -> None:
        x = node.inputs[0]
        grid = np.arange(x.type.size).reshape(x.shape)
        index = [slice(None)] * len(x.shape)
        for axis, start, end, step in zip(node.attrs["axes"], node.attrs["starts"],
                                          node.attrs["ends"], node.attrs["steps"]):
            index[axis] = slice(start, end, step)
        self.emit_gather_copy(node, out, grid[tuple(index)])

    def emit_concat(self, node: Node, out: str) -> None:
        axis = node.attrs["axis"] % len(node.output.shape)
        outer = int(np.prod(node.output.shape[:axis]))
        lines, offset, act = [], 0, 0
        total = int(np.prod(node.output.shape[axis:]))
        for v in node.inputs:
            chunk = int(np.prod(v.shape[axis:]))
            src = self.rom(v) if v.data is not None else f"a{act}"
            act += v.data is None
            lines.append(f"""    for (int i = 0; i < {chunk}; i++) {{
      HONER_HLS(PIPELINE II=1)
      y[o * {total} + {offset} + i] = {src}[o * {chunk} + i];
    }}""")
            offset += chunk
        body = f"  for (int o = 0; o < {outer}; o++) {{\n" + "\n".join(lines) + "\n  }\n"
        self.add_layer(node, body, self.activations(node) + [out],
                       self.simple_estimate(node, node.output.type.size, self.arithmetic()))

    def emit_layer_norm(self, node: Node, out: str) -> None:
        x, gamma = node.inputs[0], node.inputs[1]
        beta = node.inputs[2] if len(node.inputs) > 2 else None
        if node.attrs.get("normalized_ndim", 1) != 1 or gamma.data is None or (
                beta is not None and beta.data is None):
            raise CodegenError(f"fpga-hls: {node.name}: layer norm over the last axis with "
                               "constant scale and shift only")
        n = x.shape[-1]
        shift = f"to_float({self.rom(beta)}[i])" if beta is not None else "0.0f"
        body = f"""  for (int r = 0; r < {x.type.size // n}; r++) {{
    float v[{n}], mean = 0.0f, var = 0.0f;
    for (int i = 0; i < {n}; i++) {{ v[i] = to_float(a0[r * {n} + i]); mean += v[i]; }}
    mean /= {n}.0f;
    for (int i = 0; i < {n}; i++) var += (v[i] - mean) * (v[i] - mean);
    const float inv = 1.0f / std::sqrt(var / {n}.0f + {c_float(node.attrs["eps"])});
    for (int i = 0; i < {n}; i++)
      y[r * {n} + i] = to_data((v[i] - mean) * inv * to_float({self.rom(gamma)}[i]) + {shift});
  }}
"""
        self.add_layer(node, body, self.activations(node) + [out],
                       self.simple_estimate(node, 3 * x.type.size + 30, self.fallback(), 8))

    def emit_attention(self, node: Node, out: str) -> None:
        """softmax(q k^T * scale + mask) v per (batch, head, query), in float."""
        d = node.inputs[0].shape[3]
        scale = node.attrs["scale"] if node.attrs["scale"] is not None else d ** -0.5
        self._attention(node, out, _FloatAttention(score_scale=c_float(scale)))

    def emit_int8_attention(self, node: Node, out: str) -> None:
        """int8_attention as ir.ops computes it: q, k, v rounded to their codes as they are
        read, integer sums, exp(s - max) as codes of 1/255, normalized by their sum."""
        from ..ir.ops import KV_QMAX, int8_score_scale

        a = node.attrs

        def inverse(name: str) -> str:
            return c_float(np.float32(1.0) / np.float32(a[name]))

        zero = int(a["q_zero"])
        self._attention(node, out, _Int8Attention(
            q=f"int(honer_quantize_u8(to_float({{}}), {inverse('q_scale')}, {float(zero)}f))",
            k=f"int(honer_quantize_s8(to_float({{}}), {inverse('k_scale')}, {float(KV_QMAX)}f))",
            v=f"int(honer_quantize_s8(to_float({{}}), {inverse('v_scale')}, {float(KV_QMAX)}f))",
            zero=zero, score_scale=c_float(int8_score_scale(a, node.inputs[0].shape[3])),
            v_scale=c_float(a["v_scale"])))

    def _attention(self, node: Node, out: str, kind: _FloatAttention | _Int8Attention) -> None:
        q, k, v = node.inputs[:3]
        if any(t.data is not None for t in (q, k, v)):
            raise CodegenError(f"fpga-hls: {node.name}: attention on constant q/k/v")
        b, h, sq, d = q.shape
        hk, sk, dv = k.shape[1], k.shape[2], v.shape[3]
        mask = ""
        if len(node.inputs) == 4:
            m = node.inputs[3]
            if m.data is None:
                raise CodegenError(f"fpga-hls: {node.name}: attention masks must be constant")
            full = np.broadcast_to(m.data, (b, h, sq, sk))
            name = "mask_" + self.ident(node.name)
            if m.dtype == "bool":
                items = ", ".join("1" if x else "0" for x in full.ravel())
                self.roms.append(f"static const unsigned char {name}[{full.size}] = {{{items}}};")
                mask = f"if (!{name}[((bb * {h} + hh) * {sq} + i) * {sk} + j]) s = -INFINITY;"
            else:
                items = ", ".join(c_float(x) for x in full.ravel())
                self.roms.append(f"static const float {name}[{full.size}] = {{{items}}};")
                mask = f"s += {name}[((bb * {h} + hh) * {sq} + i) * {sk} + j];"
        causal = f"if (j > i + {sk - sq}) s = -INFINITY;" if node.attrs["causal"] else ""
        q_at = f"a0[((bb * {h} + hh) * {sq} + i) * {d} + t]"
        k_at = f"a1[((bb * {hk} + kh) * {sk} + j) * {d} + t]"
        v_at = f"a2[((bb * {hk} + kh) * {sk} + j) * {dv} + t]"
        body = f"""  for (int bb = 0; bb < {b}; bb++)
  for (int hh = 0; hh < {h}; hh++)
  for (int i = 0; i < {sq}; i++) {{
    const int kh = hh / {h // hk};
    float p[{sk}], mx = -INFINITY;
    {kind.weight_type} w[{sk}], sum = 0;
    for (int j = 0; j < {sk}; j++) {{
      {kind.sum_type} acc = 0;
      for (int t = 0; t < {d}; t++)
        acc += {kind.score_term(q_at, k_at)};
      float s = {kind.score('acc')};
      {mask}
      {causal}
      p[j] = s;
      mx = std::fmax(mx, s);
    }}
    if (!std::isfinite(mx)) mx = 0.0f;
    for (int j = 0; j < {sk}; j++) {{ w[j] = {kind.weight('p[j] - mx')}; sum += w[j]; }}
    for (int t = 0; t < {dv}; t++) {{
      {kind.sum_type} o = 0;
      for (int j = 0; j < {sk}; j++)
        o += w[j] * {kind.value(v_at)};
      y[((bb * {h} + hh) * {sq} + i) * {dv} + t] = to_data({kind.output('o', 'sum')});
    }}
  }}
"""
        macs = b * h * sq * sk * (d + dv)
        arithmetic = "int8" if isinstance(kind, _Int8Attention) else self.fallback()
        self.add_layer(node, body, self.activations(node) + [out],
                       self.simple_estimate(node, macs + 40, arithmetic, 10))

    def fallback(self) -> str:
        return "float" if self.cfg.fixed is None else "float fallback"

    def emit_reduce_mean(self, node: Node, out: str) -> None:
        x = node.inputs[0]
        axes = sorted(a % len(x.shape) for a in node.attrs["axes"])
        if axes != list(range(len(x.shape) - len(axes), len(x.shape))):
            raise CodegenError(f"fpga-hls: {node.name}: mean over trailing axes only, got "
                               f"{node.attrs['axes']} of {len(x.shape)}-D")
        inner = int(np.prod([x.shape[a] for a in axes]))
        body = f"""  for (int o = 0; o < {x.type.size // inner}; o++) {{
    msum_t s = msum_zero();
    for (int i = 0; i < {inner}; i++) {{
      HONER_HLS(PIPELINE II=1)
      msum_add(s, a0[o * {inner} + i]);
    }}
    y[o] = d_mean(s, {inner});
  }}
"""
        self.add_layer(node, body, self.activations(node) + [out],
                       self.simple_estimate(node, x.type.size, self.arithmetic()))

    def emit_float_fallback(self, node: Node, out: str) -> None:
        """Ops with no fixed-point form: computed in float on the last axis (softmax family)
        or elementwise."""
        x = node.inputs[0]
        size = x.type.size
        if node.op in ("softmax", "log_softmax"):
            axis = node.attrs.get("axis", -1)
            if axis not in (-1, len(x.shape) - 1):
                raise CodegenError(f"fpga-hls: {node.name}: softmax on the last axis only")
            n = x.shape[-1]
            final = "std::log(s)" if node.op == "log_softmax" else "s"
            value = ("v[i] - mx - " + final) if node.op == "log_softmax" \
                else "std::exp(v[i] - mx) / s"
            body = f"""  for (int r = 0; r < {size // n}; r++) {{
    float v[{n}];
    float mx = -INFINITY, s = 0.0f;
    for (int i = 0; i < {n}; i++) {{ v[i] = to_float(a0[r * {n} + i]); mx = std::fmax(mx, v[i]); }}
    for (int i = 0; i < {n}; i++) s += std::exp(v[i] - mx);
    for (int i = 0; i < {n}; i++) y[r * {n} + i] = to_data({value});
  }}
"""
        else:
            expr = {"gelu": "0.5f * v * (1.0f + std::erf(v * 0.70710678f))",
                    "sigmoid": "1.0f / (1.0f + std::exp(-v))", "tanh": "std::tanh(v)",
                    "exp": "std::exp(v)"}[node.op]
            body = f"""  for (int i = 0; i < {size}; i++) {{
    HONER_HLS(PIPELINE II=1)
    const float v = to_float(a0[i]);
    y[i] = to_data({expr});
  }}
"""
        self.add_layer(node, body, self.activations(node) + [out],
                       self.simple_estimate(node, 2 * size + 30, self.fallback(), dsp=8))


def _partition(rom: str, k: int, reuse: int) -> str:
    """Each step of a reduction reads ceil(K / reuse) weights at once."""
    return f"HONER_HLS(ARRAY_PARTITION variable={rom} cyclic factor={math.ceil(k / reuse)} dim=1)"


def _bram(bits: int, partitions: int) -> int:
    """BRAM18K blocks: by capacity, and at least one per partition once a partition is
    too deep for distributed RAM (64 words)."""
    if bits <= 1024:
        return 0  # small ROMs go to LUTs
    return max(math.ceil(bits / BRAM18_BITS), partitions)


def number_types(cfg: HLSConfig) -> str:
    if cfg.fixed is None:
        return """typedef float data_t;
typedef float acc_t;
static inline data_t to_data(float f) { return f; }
static inline float to_float(data_t v) { return v; }
static inline acc_t acc_init(data_t b) { return b; }
static inline void acc_mac(acc_t &a, data_t x, data_t w) { a += x * w; }
static inline data_t acc_out(const acc_t &a) { return a; }
static inline data_t d_add(data_t a, data_t b) { return a + b; }
static inline data_t d_max(data_t a, data_t b) { return a >= b ? a : b; }
static inline data_t d_zero() { return 0.0f; }
static inline data_t d_lowest() { return -INFINITY; }
typedef float msum_t;
static inline msum_t msum_zero() { return 0.0f; }
static inline void msum_add(msum_t &s, data_t v) { s += v; }
static inline data_t d_mean(msum_t s, int n) { return s / float(n); }
"""
    w, i = cfg.fixed
    rnd = "true" if cfg.rounding == "rnd" else "false"
    sat = "true" if cfg.overflow == "sat" else "false"
    ap = f"ap_fixed<{w}, {i}, AP_{cfg.rounding.upper()}, AP_{cfg.overflow.upper()}>"
    # the mean's division rounds as the quantization mode: floor(s / n) or floor((2s + n) / 2n)
    num, den = ("2 * s + n", "2 * int64_t(n)") if cfg.rounding == "rnd" else ("s", "int64_t(n)")
    return f"""typedef hfix<{w}, {i}, {rnd}, {sat}> data_t;  // {ap}
typedef hacc<data_t> acc_t;
static inline data_t to_data(float f) {{ return data_t::from_float(f); }}
static inline float to_float(data_t v) {{ return v.to_float(); }}
static inline acc_t acc_init(data_t b) {{ return acc_t::from(b); }}
static inline void acc_mac(acc_t &a, data_t x, data_t w) {{ a.mac(x, w); }}
static inline data_t acc_out(const acc_t &a) {{ return a.out(); }}
static inline data_t d_add(data_t a, data_t b) {{
  return data_t::from_raw(int64_t(a.raw) + b.raw);
}}
static inline data_t d_max(data_t a, data_t b) {{ return a.raw >= b.raw ? a : b; }}
static inline data_t d_zero() {{ return data_t::from_raw(0); }}
static inline data_t d_lowest() {{ return data_t::from_raw(-(int64_t(1) << {w - 1})); }}
typedef int64_t msum_t;  // exact sum of raw values
static inline msum_t msum_zero() {{ return 0; }}
static inline void msum_add(msum_t &s, data_t v) {{ s += v.raw; }}
static inline data_t d_mean(msum_t s, int n) {{
  const int64_t num = {num}, den = {den};
  return data_t::from_raw(num / den - ((num % den != 0) && (num < 0) ? 1 : 0));
}}
"""


def generate(graph: Graph, cfg: HLSConfig, out: Path) -> list[LayerEstimate]:
    """Writes the project under `out` (firmware/, tb/, the vendor script); returns estimates."""
    check_supported(graph)
    em = _Emitter(graph, cfg)
    em.run()
    in_sizes = [v.type.size for v in graph.inputs]
    out_sizes = [v.type.size for v in graph.outputs]
    fw = out / "firmware"
    fw.mkdir(parents=True, exist_ok=True)
    (out / "tb").mkdir(exist_ok=True)
    (fw / "hls_fixed.h").write_text(FIXED_HEADER.read_text())
    (fw / "model.h").write_text(_model_header(cfg, in_sizes, out_sizes))
    (fw / "weights.h").write_text("// generated by honer: weights as ROM\n#pragma once\n"
                                  "#include \"model.h\"\n\n" + "\n\n".join(em.roms) + "\n")
    (fw / "model.cpp").write_text(_model_source(em, cfg, in_sizes, out_sizes))
    (out / "tb" / "testbench.cpp").write_text(_testbench(cfg, in_sizes, out_sizes))
    (out / "vitis_hls.tcl").write_text(_vendor_script(cfg))
    return em.estimates


def _model_header(cfg: HLSConfig, in_sizes: list[int], out_sizes: list[int]) -> str:
    ports = _ports(cfg, in_sizes, out_sizes)
    return f"""// generated by honer
#pragma once
#include <cmath>
#include <cstdint>
#include "hls_fixed.h"

#ifdef __SYNTHESIS__
#define HONER_STR(x) #x
#define HONER_HLS(x) _Pragma(HONER_STR(HLS x))
#else
#define HONER_HLS(x)
#endif

#if defined(__has_include)
#if __has_include(<hls_stream.h>)
#include <hls_stream.h>
#define HONER_HAVE_HLS_STREAM 1
#endif
#endif
#ifdef HONER_HAVE_HLS_STREAM
template <class T> using honer_stream = hls::stream<T>;
#else
#include <deque>
template <class T> struct honer_stream {{  // what C simulation needs of hls::stream
  std::deque<T> q;
  void write(const T &v) {{ q.push_back(v); }}
  T read() {{ T v = q.front(); q.pop_front(); return v; }}
  bool empty() const {{ return q.empty(); }}
}};
#endif

{number_types(cfg)}
// x -> uint8 code as honer's int8 ops quantize it: x * (1 / x_scale) rounded half to even
// (nearbyint under the default rounding mode), plus the zero point, saturated to 0..255
static inline uint8_t honer_quantize_u8(float x, float inv_scale, float zero) {{
  const float v = std::nearbyint(x * inv_scale) + zero;
  return v > 0.0f ? (v < 255.0f ? uint8_t(v) : uint8_t(255)) : uint8_t(0);
}}
// x -> int8 code in [-qmax, qmax] (int8_attention's k and v), rounded as above
static inline int8_t honer_quantize_s8(float x, float inv_scale, float qmax) {{
  const float v = std::nearbyint(x * inv_scale);
  return int8_t(v < -qmax ? -qmax : (v > qmax ? qmax : v));
}}

{_activation_functions()}
void honer_top({ports});
"""


def _activation_functions() -> str:
    return "".join(f"static inline float honer_{name}(float v) {{ return {expr}; }}\n"
                   for name, expr in ACTIVATION_FN.items())


def _ports(cfg: HLSConfig, in_sizes: list[int], out_sizes: list[int]) -> str:
    if cfg.interface == "axis":
        return "honer_stream<data_t> &in, honer_stream<data_t> &out"
    return ", ".join([f"const data_t in_{k}[{n}]" for k, n in enumerate(in_sizes)]
                     + [f"data_t out_{k}[{n}]" for k, n in enumerate(out_sizes)])


def _model_source(em: _Emitter, cfg: HLSConfig, in_sizes: list[int],
                  out_sizes: list[int]) -> str:
    outs = [em.buffer(v) for v in em.graph.outputs]
    if cfg.interface == "axis":
        iface = ["  HONER_HLS(INTERFACE axis port=in)", "  HONER_HLS(INTERFACE axis port=out)",
                 "  HONER_HLS(INTERFACE ap_ctrl_hs port=return)"]
        load = [f"  for (int i = 0; i < {n}; i++) in{k}[i] = in.read();"
                for k, n in enumerate(in_sizes)]
        store = [f"  for (int i = 0; i < {n}; i++) out.write({b}[i]);"
                 for b, n in zip(outs, out_sizes)]
    else:
        iface = [f"  HONER_HLS(INTERFACE m_axi port=in_{k} offset=slave bundle=gmem)"
                 for k in range(len(in_sizes))]
        iface += [f"  HONER_HLS(INTERFACE m_axi port=out_{k} offset=slave bundle=gmem)"
                  for k in range(len(out_sizes))]
        iface += ["  HONER_HLS(INTERFACE s_axilite port=return)"]
        load = [f"  for (int i = 0; i < {n}; i++) in{k}[i] = in_{k}[i];"
                for k, n in enumerate(in_sizes)]
        store = [f"  for (int i = 0; i < {n}; i++) out_{k}[i] = {b}[i];"
                 for k, (b, n) in enumerate(zip(outs, out_sizes))]
    body = "\n".join(iface + ["  HONER_HLS(DATAFLOW)"] + load + em.calls + store)
    return ("// generated by honer: one function per layer, chained under DATAFLOW\n"
            "#include \"model.h\"\n#include \"weights.h\"\n\n"
            + "\n".join(em.decls) + "\n\n" + "\n".join(em.layers)
            + f"\nvoid honer_top({_ports(cfg, in_sizes, out_sizes)}) {{\n{body}\n}}\n")


def _testbench(cfg: HLSConfig, in_sizes: list[int], out_sizes: list[int]) -> str:
    """Reads float32 samples (all inputs of a sample, concatenated) until the end of the input
    file, runs the top function on each, and writes the outputs as float32."""
    n_in, n_out = sum(in_sizes), sum(out_sizes)
    if cfg.interface == "axis":
        call = f"""    honer_stream<data_t> in, out;
    for (int i = 0; i < {n_in}; i++) in.write(to_data(x[i]));
    honer_top(in, out);
    for (int i = 0; i < {n_out}; i++) y[i] = to_float(out.read());"""
    else:
        ins, outs, offset = [], [], 0
        decl = []
        for k, n in enumerate(in_sizes):
            decl.append(f"    static data_t in_{k}[{n}];\n"
                        f"    for (int i = 0; i < {n}; i++) in_{k}[i] = to_data(x[{offset} + i]);")
            ins.append(f"in_{k}")
            offset += n
        offset = 0
        fetch = []
        for k, n in enumerate(out_sizes):
            decl.append(f"    static data_t out_{k}[{n}];")
            outs.append(f"out_{k}")
            fetch.append(f"    for (int i = 0; i < {n}; i++) y[{offset} + i] = "
                         f"to_float(out_{k}[i]);")
            offset += n
        call = "\n".join(decl + [f"    honer_top({', '.join(ins + outs)});"] + fetch)
    return f"""// generated by honer: C simulation testbench
#include <cstdio>
#include "../firmware/model.h"

int main(int argc, char **argv) {{
  if (argc != 3) {{
    std::fprintf(stderr, "usage: %s inputs.f32 outputs.f32\\n", argv[0]);
    return 2;
  }}
  std::FILE *fin = std::fopen(argv[1], "rb"), *fout = std::fopen(argv[2], "wb");
  if (!fin || !fout) {{
    std::fprintf(stderr, "cannot open %s or %s\\n", argv[1], argv[2]);
    return 2;
  }}
  static float x[{n_in}], y[{n_out}];
  while (std::fread(x, sizeof(float), {n_in}, fin) == {n_in}) {{
{call}
    if (std::fwrite(y, sizeof(float), {n_out}, fout) != {n_out}) return 3;
  }}
  std::fclose(fin);
  return std::fclose(fout) == 0 ? 0 : 3;
}}
"""


def _vendor_script(cfg: HLSConfig) -> str:
    period = 1000.0 / cfg.clock_mhz
    return f"""# Vitis HLS: vitis_hls -f vitis_hls.tcl (C simulation, synthesis, IP export)
open_project -reset honer_prj
set_top honer_top
add_files firmware/model.cpp -cflags "-std=c++14 -ffp-contract=off"
add_files -tb tb/testbench.cpp -cflags "-std=c++14 -ffp-contract=off"
open_solution -reset solution1 -flow_target vivado
set_part {{{cfg.part}}}
create_clock -period {period:.3f} -name default
csim_design -argv "tb_inputs.f32 tb_outputs.f32"
csynth_design
export_design -format ip_catalog
exit
"""


def csim_command(project: Path, executable: Path) -> list[str]:
    # no fused multiply-adds: the int8 layers' rescale must round as the IR's reference does
    return ["g++", "-std=c++14", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-o",
            str(executable),
            str(project / "tb" / "testbench.cpp"), str(project / "firmware" / "model.cpp")]


def summary(estimates: list[LayerEstimate], cfg: HLSConfig) -> dict[str, Any]:
    total = sum(e.latency_cycles for e in estimates)
    return {
        "number": cfg.number, "rounding": cfg.rounding, "overflow": cfg.overflow,
        "interface": cfg.interface, "clock_mhz": cfg.clock_mhz, "part": cfg.part,
        "dsp": sum(e.dsp for e in estimates),
        "weight_bram18": sum(e.weight_bram18 for e in estimates),
        "buffer_bram18": sum(_bram(e.buffer_bits, 1) for e in estimates),
        "latency_cycles": total, "latency_us": round(total / cfg.clock_mhz, 2),
        "dataflow_ii_cycles": max((e.latency_cycles for e in estimates), default=0),
        "float_fallback": [e.name for e in estimates if e.arithmetic == "float fallback"],
        "int8_layers": [e.name for e in estimates if e.arithmetic == "int8"],
        "layers": [e.__dict__ for e in estimates],
        "note": "honer's own estimates from its schedule model; a vendor synthesis report is "
                "the reference",
    }
