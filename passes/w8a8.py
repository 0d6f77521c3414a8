"""W8A8 static quantization of linear and conv layers: int8 weights, int8 activations, int32
sums.

Matches: `linear` nodes with a constant float32 weight whose input width is a multiple of 4
(the int8 dot products read four inputs at a time), except those a `keep_float` scope pattern
names. Each becomes an `int8_linear`: its input is quantized to uint8 with one scale and zero
point per tensor fixed on the calibration data, its weight is int8 per output channel
(symmetric), the products are summed in int32 and rescaled in the kernel's epilogue.

Ungrouped 2-D `conv` nodes with a constant float32 weight (and no `keep_float` match) become
`int8_conv` the same way: uint8 input per tensor (the padding holds the zero point, i.e. real
0.0), int8 weight per output channel over its in x kh x kw window, int32 sums. Their ranges come
from the same calibration methods; they are never smoothed (SmoothQuant is for linears only: a
conv's per-input-channel 1/s would have to be folded into its producer, which this pass does
not attempt).

- Activation ranges from the calibration data: `minmax` (the observed range), `percentile`
  (the range between the `percentile`-th and the (100 - percentile)-th value: a few outliers
  no longer stretch the step), or `mse` (the clipping of the observed range, searched on a grid,
  that minimises the squared quantization error).
- SmoothQuant difficulty migration (Xiao et al., ICML 2023), with `alpha` in [0, 1]: per input
  channel s = max|x|^alpha / max|w|^(1 - alpha) over the linears that read x; weights become
  w * s and the input x / s (folded into a preceding layer norm's affine, else one multiply),
  so activation outliers move into the per-channel weight scales. Exact in float.
- `granularity=channel`: static per-input-channel activation quantization in the spirit of
  MergeQuant (2025): each channel c of a linear's input gets its own uint8 grid (step_c,
  integer zero point z_c, from the same calibration methods per channel), and the steps are
  merged into the neighbouring linear maps instead of quantize/dequantize ops: the input
  becomes x / step + z (folded into a preceding layer norm's affine where the graph allows,
  else one multiply-add fused into the producer's kernel), which the kernel only rounds and
  clamps (scale 1, zero point 0); the weights become w * step (then int8 per output channel)
  and the bias absorbs -sum_c z_c w_c. SmoothQuant does not apply (every channel's range is
  already its own); the per-channel steps move the activation outliers into the weights
  entirely. Convs keep the per-tensor grid.
- `reduce_range` (default on) keeps weights in [-63, 63]: x86 CPUs without VNNI sum pairs of
  uint8 x int8 products in int16 (vpmaddubsw), and 2 * 255 * 63 cannot overflow it. Turn it off
  for VNNI CPUs, GPUs and FPGAs, which accumulate in int32 directly. It applies to convs too (one
  rule for every int8 weight; an int8 conv kernel on vpmaddubsw would need it).

`attention` (default on): both products of each `attention` node in int8, SmoothQuant's O3
(`int8_attention`): q as uint8 with a zero point, k and v as int8 in [-63, 63] (per-tensor
scales from the same calibration methods, symmetric for k and v), int32 sums; the softmax's
exponentials exp(s - max), in (0, 1], become uint8 codes of step 1/255 and the normalization
moves after the second product (divided by the codes' own sum). Attentions with grouped
key/value heads or a head size not a multiple of 4 stay float; so does one whose output SQNR
falls below `min_sqnr_db`.

Which ops stay float, by rule (listed in the report): other products of two activations (a
plain `matmul`: no constant operand for a per-channel weight scale), normalizations, softmax
and activation functions (nonlinear: their inputs need float range), linears named by
`keep_float`, linears with an input width not a multiple of 4, grouped, 1-D or 3-D convs, and
linears, convs and attentions whose output SQNR on the calibration data falls below
`min_sqnr_db` (the layer that would hurt).

Approximate; needs calibration data. The report gives, per layer, the output SQNR on the
calibration data and the activation scale and zero point. Belongs last among the graph passes.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import PassError
from ..ir import Graph, Node, interpret
from ..ir.ops import KV_QMAX, get_schema, int8_accumulate, quantize_activation, quantize_symmetric
from .base import Calibration, PassReport, PassResult
from .linears import (
    calibration_inputs,
    const_linears,
    divide_input,
    replace_linear,
    scope_patterns,
    sqnr_db,
)
from .rewrite import where

NAME = "w8a8"
METHODS = ("minmax", "percentile", "mse")
GRANULARITIES = ("tensor", "channel")
CLIP_RATIOS = np.linspace(0.3, 1.0, 36)  # clippings of the observed range the mse method tries
MSE_SAMPLE = 200_000  # values the mse method's error is measured on
# ops that stay float by rule, with the reason the report gives
FLOAT_BY_RULE = {
    "matmul": "product of two activations (no constant weight for per-channel scales)",
    "attention": "int8 only with attention=True, and not grouped key/value heads (see "
                 "rejections)",
    "softmax": "nonlinear", "layer_norm": "nonlinear", "rms_norm": "nonlinear",
    "gelu": "nonlinear", "silu": "nonlinear", "tanh": "nonlinear", "exp": "nonlinear",
}


@dataclass(frozen=True)
class Config:
    # activation range: minmax, percentile or mse; mse kept MiniLM's embeddings closest to fp32
    # (cosine 0.990 vs 0.956 for percentile 99.99, which clips outliers the model needs)
    calibrate: str = "mse"
    percentile: float = 99.99  # for calibrate=percentile
    smooth: bool = True  # SmoothQuant difficulty migration
    alpha: float = 0.5  # SmoothQuant migration strength, 0..1
    # activation grid: one scale per "tensor", or one step per input "channel" (MergeQuant)
    granularity: str = "tensor"
    reduce_range: bool = True  # weights in [-63, 63] (CPUs without VNNI, see above)
    min_sqnr_db: float = 15.0  # layers with a lower output SQNR on the calibration data stay float
    keep_float: str = ""  # scope patterns kept in float, "+"-separated: "*classifier*"
    max_tokens: int = 4096  # calibration rows (linears) or output positions (convs) per layer
    attention: bool = True  # both attention products in int8 (SmoothQuant's O3)


def run(graph: Graph, cfg: Config, calib: Calibration | None = None) -> PassResult:
    report = PassReport(NAME, asdict(cfg), exact=False)
    _check(cfg, calib)
    out = graph.copy()
    groups = const_linears(out, scope_patterns(cfg.keep_float), "kept float (keep_float)",
                           report, _unsuitable)
    convs = _const_convs(out, scope_patterns(cfg.keep_float), report)
    attentions = _attentions(out, cfg, report)
    # all on the float graph; convs and attentions share one interpreter run per sample
    inputs = calibration_inputs(out, groups, calib, cfg.max_tokens)
    captured = _captured(out, convs + attentions, calib)
    conv_inputs = {id(node): np.concatenate([seen[node.inputs[0].name].astype(np.float32)
                                             for seen in captured]) for node in convs}
    attention_inputs = {id(node): [[v.data if v.is_const else seen[v.name]
                                    for v in node.inputs] for seen in captured]
                        for node in attentions}
    layers: dict[str, dict] = {}
    for source, nodes in groups.items():
        layers.update(_quantize_group(out, nodes, inputs[source], cfg, report))
    for node in convs:
        layers.update(_quantize_conv(out, node, conv_inputs[id(node)], cfg, report))
    for node in attentions:
        layers.update(_quantize_attention(out, node, attention_inputs[id(node)], cfg, report))
    out.remove_dead()
    report.matches = sum(1 for info in layers.values() if "x_scale" in info or "q_scale" in info)
    report.effect = {"layers": layers, "float_ops": _float_ops(out)}
    return PassResult(out, report.matches > 0, report)


def _check(cfg: Config, calib: Calibration | None) -> None:
    if cfg.calibrate not in METHODS:
        raise PassError(NAME, f"calibrate={cfg.calibrate!r}: use one of {list(METHODS)}")
    if not 50.0 < cfg.percentile <= 100.0:
        raise PassError(NAME, f"percentile={cfg.percentile}: use a value in (50, 100]")
    if cfg.granularity not in GRANULARITIES:
        raise PassError(NAME, f"granularity={cfg.granularity!r}: use one of "
                              f"{list(GRANULARITIES)}")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise PassError(NAME, f"alpha={cfg.alpha}: SmoothQuant's alpha lies in [0, 1]")
    if calib is None or not calib.samples:
        raise PassError(NAME, "static activation scales need calibration data: pass "
                              "calibration samples (compile(..., calibration=[...]))")


def _unsuitable(w: np.ndarray) -> str | None:
    if w.shape[1] % 4:
        return f"{w.shape[1]} input channels are not a multiple of 4; kept float"
    return None


@dataclass
class _InputGrid:
    """How a group's input x reaches its uint8 grid: x' = x / divide + shift per input channel
    (folded into x's producer where the graph allows), then x' quantized with one
    (x_scale, x_zero). The linears read x', so their weights become w * divide and their bias
    b - (w * divide) @ shift."""
    divide: np.ndarray | None
    shift: np.ndarray | None
    x_scale: float
    x_zero: int

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = x if self.divide is None else x / self.divide
        return x if self.shift is None else x + self.shift


def _tensor_grid(x: np.ndarray, weights: list[np.ndarray], cfg: Config) -> _InputGrid:
    """One scale and zero point for the tensor, after SmoothQuant's division if enabled."""
    s = _smoothing(x, weights, cfg.alpha) if cfg.smooth else None
    x_scale, x_zero = activation_range(x if s is None else x / s, cfg)
    return _InputGrid(s, None, x_scale, x_zero)


def _channel_grid(x: np.ndarray, cfg: Config) -> _InputGrid:
    """MergeQuant-style static per-channel steps: x' = x / step + zero is already in uint8
    codes (scale 1, zero point 0), so quantizing it is only rounding and clamping, and the
    steps live in the producer and the weights instead of a quantize/dequantize pair."""
    step, zero = channel_range(x, cfg)
    return _InputGrid(step, zero, 1.0, 0)


def _quantize_group(graph: Graph, nodes: list[Node], x: np.ndarray, cfg: Config,
                    report: PassReport) -> dict[str, dict]:
    """Quantizes the linears that read one value (they share its grid); when every one of them
    stays float, the group is left as it was."""
    weights = [n.inputs[1].data.astype(np.float32) for n in nodes]
    grid = _channel_grid(x, cfg) if cfg.granularity == "channel" else _tensor_grid(x, weights, cfg)
    xq = quantize_activation(grid.apply(x), grid.x_scale, grid.x_zero)
    shift = np.zeros(x.shape[1], np.float32) if grid.shift is None else grid.shift
    plans = []
    for node, w in zip(nodes, weights):
        ws = w if grid.divide is None else w * grid.divide[None, :]
        q, w_scale = quantize_weight(ws, 63 if cfg.reduce_range else 127)
        shifted = q.astype(np.int64) @ shift.astype(np.int64)  # sum_k q[n, k] * shift[k]
        approx = (int8_accumulate(xq, grid.x_zero, q) - shifted) * (np.float32(grid.x_scale)
                                                                     * w_scale)
        plans.append((node, ws, q, w_scale, shifted, round(sqnr_db(x @ w.T, approx), 2)))
    layers = {}
    for node, *_, sqnr in plans:
        layers[node.scope or node.name] = {"sqnr_db": sqnr}
        if sqnr < cfg.min_sqnr_db:
            report.reject(where(node), f"output SQNR {sqnr} dB < min_sqnr_db="
                                       f"{cfg.min_sqnr_db}; kept float")
            layers[node.scope or node.name]["kept_float"] = True
    if all(sqnr < cfg.min_sqnr_db for *_, sqnr in plans):
        return layers
    replaced = []
    for node, ws, q, w_scale, shifted, sqnr in plans:
        bias = node.inputs[2].data if len(node.inputs) > 2 else np.zeros(len(ws), np.float32)
        if sqnr < cfg.min_sqnr_db:  # float, but reading the group's x'
            replaced.append(node if grid.divide is None else replace_linear(
                graph, node, "linear", [(ws, "x_grid")], {},
                None if grid.shift is None else bias - ws @ grid.shift))
            continue
        layers[node.scope or node.name].update(x_scale=float(grid.x_scale),
                                               x_zero=int(grid.x_zero))
        replaced.append(replace_linear(
            graph, node, "int8_linear", [(q, "q"), (w_scale, "w_scale")],
            {"x_scale": float(grid.x_scale), "x_zero": int(grid.x_zero)},
            None if grid.shift is None else bias - w_scale * shifted))
    if grid.divide is not None:
        where_to = divide_input(graph, replaced, grid.divide, "x_grid", grid.shift)
        for node, *_ in plans:
            layers[node.scope or node.name]["input_scaling"] = where_to
    return layers


def _const_convs(graph: Graph, keep: list[str], report: PassReport) -> list[Node]:
    """Ungrouped 2-D convs with a float32 constant weight, minus those `keep` names; the other
    convs are listed in the report with the reason."""
    def why_not(node: Node) -> str | None:
        w = node.inputs[1]
        return ("weight is not a float32 constant" if not w.is_const or w.dtype != "float32"
                else f"{len(w.shape) - 2}-D conv: only 2-D convs are quantized; kept float"
                if len(w.shape) != 4
                else f"groups={node.attrs['groups']}: only ungrouped convs; kept float"
                if node.attrs["groups"] != 1
                else None)

    return _suitable(graph, "conv", why_not, keep, report)


def _suitable(graph: Graph, op: str, why_not, keep: list[str], report: PassReport
              ) -> list[Node]:
    """The `op` nodes that `why_not` has no reason against and no `keep` pattern names; the
    report lists the others with the reason."""
    found = []
    for node in graph.nodes:
        if node.op != op:
            continue
        reason = why_not(node) or ("kept float (keep_float)" if any(
            fnmatch.fnmatch(node.scope, p) for p in keep) else None)
        if reason:
            report.reject(where(node), reason)
        else:
            found.append(node)
    return found


def _captured(graph: Graph, nodes: list[Node], calib: Calibration
              ) -> list[dict[str, np.ndarray]]:
    """The non-constant inputs of `nodes` on each calibration sample (one interpreter run per
    sample, none when there are no nodes)."""
    names = sorted({v.name for node in nodes for v in node.inputs if not v.is_const})
    return [interpret(graph, list(sample), capture=names)[1]
            for sample in (calib.samples if names else [])]


def _quantize_conv(graph: Graph, node: Node, x: np.ndarray, cfg: Config,
                   report: PassReport) -> dict[str, dict]:
    """One conv -> int8_conv, unless its output SQNR on (part of) the calibration data falls
    below the floor. The range uses every calibration value (at most ~2M, evenly spread); the
    SQNR the first images covering `max_tokens` output positions (at least one)."""
    w = node.inputs[1].data.astype(np.float32)
    x_scale, x_zero = activation_range(_spread(x, 1 << 21), cfg)
    q, w_scale = quantize_weight(w.reshape(len(w), -1), 63 if cfg.reduce_range else 127)
    q = q.reshape(w.shape)
    attrs = {key: node.attrs[key] for key in ("strides", "padding", "dilation")}
    positions = int(np.prod(node.output.shape[2:]))
    sample = x[: max(1, cfg.max_tokens // positions)]
    want = get_schema("conv").reference({**attrs, "groups": 1, "activation": "none"}, sample, w)
    got = get_schema("int8_conv").reference(
        {**attrs, "x_scale": x_scale, "x_zero": x_zero, "activation": "none"}, sample, q,
        w_scale)
    key = node.scope or node.name
    info: dict = {"sqnr_db": round(sqnr_db(want, got), 2)}
    if info["sqnr_db"] < cfg.min_sqnr_db:
        report.reject(where(node), f"output SQNR {info['sqnr_db']} dB < min_sqnr_db="
                                   f"{cfg.min_sqnr_db}; kept float")
        return {key: {**info, "kept_float": True}}
    info.update(x_scale=float(x_scale), x_zero=int(x_zero))
    replace_linear(graph, node, "int8_conv", [(q, "q"), (w_scale, "w_scale")],
                   {**attrs, "x_scale": float(x_scale), "x_zero": int(x_zero)})
    return {key: info}


def _attentions(graph: Graph, cfg: Config, report: PassReport) -> list[Node]:
    """Attention nodes whose two products can run in int8; the others are listed in the
    report with the reason."""
    def why_not(node: Node) -> str | None:
        q, k = node.inputs[0].type, node.inputs[1].type
        return ("q, k, v are not float32" if any(v.dtype != "float32" for v in node.inputs[:3])
                else "grouped key/value heads; kept float" if q.shape[1] != k.shape[1]
                else f"head size {q.shape[3]} is not a multiple of 4; kept float"
                if q.shape[3] % 4 else None)

    if not cfg.attention:
        return []
    return _suitable(graph, "attention", why_not, scope_patterns(cfg.keep_float), report)


def _quantize_attention(graph: Graph, node: Node, samples: list[list[np.ndarray]],
                        cfg: Config, report: PassReport) -> dict[str, dict]:
    """One attention -> int8_attention (q uint8 with a zero point, k and v int8 per tensor),
    unless its output SQNR on the first calibration sample falls below the floor."""
    q, k, v = (np.concatenate([_spread(inputs[i], (1 << 21) // len(samples))
                               for inputs in samples]) for i in range(3))
    q_scale, q_zero = activation_range(q, cfg)
    scales = {"q_scale": float(q_scale), "q_zero": int(q_zero),
              "k_scale": symmetric_scale(k, cfg, KV_QMAX),
              "v_scale": symmetric_scale(v, cfg, KV_QMAX)}
    want = get_schema("attention").reference(node.attrs, *samples[0])
    got = get_schema("int8_attention").reference({**node.attrs, **scales}, *samples[0])
    key = f"{node.scope or node.name} (attention)"
    info: dict = {"sqnr_db": round(sqnr_db(want, got), 2)}
    if info["sqnr_db"] < cfg.min_sqnr_db:
        report.reject(where(node), f"output SQNR {info['sqnr_db']} dB < min_sqnr_db="
                                   f"{cfg.min_sqnr_db}; kept float")
        return {key: {**info, "kept_float": True}}
    new = graph.add_node("int8_attention", node.inputs, {**node.attrs, **scales}, node.scope,
                         name=node.name, before=node)
    graph.replace_all_uses(node.output, new.output)
    return {key: {**info, **scales}}


def _spread(x: np.ndarray, limit: int) -> np.ndarray:
    """At most ~`limit` values of x, evenly spread (ranges need not see every value)."""
    flat = x.reshape(-1)
    return flat[:: max(1, flat.size // limit)]


def symmetric_scale(x: np.ndarray, cfg: Config, qmax: int) -> float:
    """The step of a symmetric int grid [-qmax, qmax] for x, by the configured method."""
    mag = np.abs(x)
    hi = float(np.percentile(mag, cfg.percentile) if cfg.calibrate == "percentile"
               else mag.max(initial=0.0))
    if cfg.calibrate == "mse":
        sample = _spread(x, MSE_SAMPLE)

        def error(ratio: float) -> float:
            step = max(hi * ratio, 1e-8) / qmax
            back = quantize_symmetric(sample, step, qmax) * np.float32(step)
            return float(((back - sample) ** 2).sum())

        hi *= min(CLIP_RATIOS, key=error)
    return max(hi, 1e-8) / qmax


def _smoothing(x: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel s = max|x|^alpha / max|w|^(1 - alpha)."""
    x_max = np.maximum(np.abs(x).max(0), 1e-5)
    w_max = np.maximum(np.max([np.abs(w).max(0) for w in weights], axis=0), 1e-5)
    s = x_max ** alpha / w_max ** (1.0 - alpha)
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def activation_range(x: np.ndarray, cfg: Config) -> tuple[float, int]:
    """(scale, zero point) of the uint8 grid for x, by the configured method."""
    if cfg.calibrate == "percentile":
        lo, hi = np.percentile(x, [100.0 - cfg.percentile, cfg.percentile])
    else:
        lo, hi = float(x.min()), float(x.max())
    if cfg.calibrate == "mse":
        lo, hi = _mse_clip(x, lo, hi)
    return _grid(lo, hi)


def channel_range(x: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Per input channel (step, integer zero point) of the uint8 grid for x [tokens, channels],
    by the configured method. Unlike the per-tensor grid, 0.0 need not lie on it (nothing pads
    a linear's input), so a channel that only takes values in [2, 5] gets all 256 codes there."""
    if cfg.calibrate == "percentile":
        lo, hi = np.percentile(x, [100.0 - cfg.percentile, cfg.percentile], axis=0)
    else:
        lo, hi = x.min(0), x.max(0)
    if cfg.calibrate == "mse":
        lo, hi = _mse_clip_channels(x[:: max(1, len(x) // 1024)], lo, hi)
    return _channel_steps(lo, hi)


def _channel_steps(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # x / step + zero runs in float32: a span of at least 1/128 of the channel's magnitude
    # keeps |zero| <= 2^15 codes, where float32 still resolves a fraction of a code
    span = np.maximum(hi - lo, np.maximum(np.abs(lo), np.abs(hi)) / 128.0)
    step = (np.maximum(span, 1e-8) / 255.0).astype(np.float32)
    return step, np.rint(-lo / step).astype(np.float32)


def _mse_clip_channels(x: np.ndarray, lo: np.ndarray, hi: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the shrinking of [lo, hi] about its middle (ratios 0.3 to 1) with the least
    squared error on x."""
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    best_lo, best_hi, best_err = lo.copy(), hi.copy(), np.full(lo.shape, np.inf)
    for ratio in CLIP_RATIOS:
        lo_r, hi_r = mid - ratio * half, mid + ratio * half
        step, zero = _channel_steps(lo_r, hi_r)
        back = (np.clip(np.rint(x / step) + zero, 0, 255) - zero) * step
        err = ((back - x) ** 2).sum(0)
        better = err < best_err
        best_lo[better], best_hi[better], best_err[better] = lo_r[better], hi_r[better], \
            err[better]
    return best_lo, best_hi


def _grid(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)  # zero must be exact on the grid
    scale = max(hi - lo, 1e-8) / 255.0
    return scale, int(np.clip(np.rint(-lo / scale), 0, 255))


def _mse_clip(x: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """The clipping ratio of [lo, hi] (searched from 0.3 to 1) with the least squared error."""
    sample = _spread(x, MSE_SAMPLE)
    best, best_err = (lo, hi), np.inf
    for ratio in CLIP_RATIOS:
        scale, zero = _grid(lo * ratio, hi * ratio)
        back = (quantize_activation(sample, scale, zero).astype(np.float32) - zero) * scale
        err = float(((back - sample) ** 2).sum())
        if err < best_err:
            best, best_err = (lo * ratio, hi * ratio), err
    return best


def quantize_weight(w: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per output channel: (int8 q, float32 scale), w ~ q * scale[:, None]."""
    scale = np.maximum(np.abs(w).max(1), 1e-12) / qmax
    q = np.clip(np.rint(w / scale[:, None]), -qmax, qmax).astype(np.int8)
    return q, scale.astype(np.float32)


def _float_ops(graph: Graph) -> dict[str, dict]:
    """Ops left in float with the rule that keeps them there."""
    counts = Counter(n.op for n in graph.nodes
                     if n.op in FLOAT_BY_RULE or n.op in ("linear", "conv"))
    return {op: {"count": c, "why": FLOAT_BY_RULE.get(op, "see rejections")}
            for op, c in sorted(counts.items())}
