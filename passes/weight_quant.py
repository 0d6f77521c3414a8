"""Weight-only quantization of linear layers: int8 per output channel, or int4 per group.

Matches: `linear` nodes with a constant weight, except those whose scope matches a
`keep_float` pattern. Each becomes a `quant_linear` whose weight stays quantized in memory
and is dequantized inside the kernel:
- `bits=8`: symmetric per output channel, scale = max|w| / 127;
- `bits=4`: asymmetric per group of `group` input channels (32, 64 or 128), two values per
  byte, w ~ (q - zero) * scale with a fractional (float) zero point, as llama.cpp's Q4_1 and
  HQQ store it: the grid's two ends sit on the group's min and max wherever they are (an
  integer zero point moves one end by up to half a step, and a range forced through 0 wastes
  levels). Starting from min-max, `refine` rounds of least squares fit (scale, zero) to the
  values' current levels and re-round them (Lloyd-style), which lowers the rounding error of
  groups whose extreme values are outliers.
With calibration data, AWQ-style activation-aware scaling (Lin et al., MLSys 2024): the input
channels that carry large activations are scaled up before rounding, w' = w * s, and the input
is divided by s (folded into a preceding layer norm's affine, or one elementwise multiply).
s = mean|x|^alpha, normalized, with alpha searched on a grid to minimise the layer's output
error on the calibration data; linears that read the same input share s.

Approximate. The report gives, per layer, the output SQNR on the calibration data (so the layer
that hurts shows), the chosen alpha, the weight bytes before and after, and which layers stayed
float and why. Belongs last among the graph passes (after merging and folding passes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import PassError
from ..ir import Graph, Node
from ..ir.ops import dequantize, pack_int4
from .base import Calibration, PassReport, PassResult
from .linears import (
    calibration_inputs,
    const_linears,
    divide_input,
    replace_linear,
    scope_patterns,
    sqnr_db,
)

NAME = "weight_quant"


@dataclass(frozen=True)
class Config:
    bits: int = 8  # 8 (per output channel) or 4 (per group)
    group: int = 128  # int4 group size along the input channels: 32, 64 or 128
    refine: int = 4  # int4: least-squares rounds fitting each group's scale and zero
    awq: bool = True  # activation-aware scaling (needs calibration data)
    alpha_grid: int = 11  # alphas tried: 0, 0.1, ... 1
    keep_float: str = ""  # scope patterns kept in float, "+"-separated: "*lm_head*+*.0.*"
    max_tokens: int = 4096  # calibration rows used per layer for the AWQ search


@dataclass
class Quantized:
    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray


def quantize_weight(w: np.ndarray, bits: int, group: int, refine: int = 0) -> Quantized:
    """int8 symmetric per row (round to nearest), int4 asymmetric per group of columns."""
    out, k = w.shape
    if bits == 8:
        scale = np.maximum(np.abs(w).max(1, keepdims=True), 1e-12) / 127.0
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        return Quantized(q, scale.astype(np.float32), np.zeros((out, 1), np.int8))
    wg = w.reshape(out, k // group, group).astype(np.float32)
    lo, hi = wg.min(-1), wg.max(-1)
    scale = np.maximum(hi - lo, 1e-12) / 15.0
    offset = lo  # w ~ q * scale + offset, zero = -offset / scale
    levels = _levels(wg, scale, offset)
    for _ in range(refine):
        scale, offset = _least_squares(wg, levels, scale, offset)
        levels = _levels(wg, scale, offset)
    return Quantized(pack_int4(levels.reshape(out, k)), scale.astype(np.float32),
                     (-offset / scale).astype(np.float32))


def _levels(wg: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    return np.clip(np.round((wg - offset[..., None]) / scale[..., None]), 0, 15)


def _least_squares(wg: np.ndarray, levels: np.ndarray, scale: np.ndarray, offset: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the (scale, offset) minimising sum (levels * scale + offset - w)^2 for the
    given levels; groups whose levels are all equal (no slope to fit) keep theirs."""
    n = wg.shape[-1]
    sq, sqq = levels.sum(-1), (levels * levels).sum(-1)
    sw, sqw = wg.sum(-1), (levels * wg).sum(-1)
    det = n * sqq - sq * sq
    fit = det > 0.5  # integer levels: det is 0 or at least n - 1
    safe = np.where(fit, det, 1.0)
    new_scale = np.where(fit, (n * sqw - sq * sw) / safe, scale)
    fit &= new_scale > 1e-12
    new_scale = np.where(fit, new_scale, scale)
    return new_scale, np.where(fit, (sw - new_scale * sq) / n, offset)


def _dequantized(w: np.ndarray, cfg: Config) -> np.ndarray:
    qw = quantize_weight(w, cfg.bits, cfg.group, cfg.refine)
    return dequantize(qw.q, qw.scale, qw.zero, cfg.bits, w.shape[1])


def run(graph: Graph, cfg: Config, calib: Calibration | None = None) -> PassResult:
    report = PassReport(NAME, asdict(cfg), exact=False)
    _check(cfg)
    out = graph.copy()
    groups = _matches(out, cfg, report)
    inputs = calibration_inputs(out, groups, calib, cfg.max_tokens) if calib else {}
    layers, bytes_before, bytes_after = {}, 0, 0
    for source, nodes in groups.items():
        x = inputs.get(source)
        scales = _awq_scales(nodes, x, cfg) if x is not None and cfg.awq else None
        quantized = []
        for node in nodes:
            w = node.inputs[1].data.astype(np.float32)
            qw = quantize_weight(w if scales is None else w * scales[0][None, :], cfg.bits,
                                 cfg.group, cfg.refine)
            info = {"bits": cfg.bits, "alpha": None if scales is None else scales[1]}
            if x is not None:
                approx = dequantize(qw.q, qw.scale, qw.zero, cfg.bits, w.shape[1])
                if scales is not None:
                    approx = approx / scales[0][None, :]
                info["sqnr_db"] = round(sqnr_db(x @ w.T, x @ approx.T), 2)
            bytes_before += node.inputs[1].data.nbytes
            bytes_after += qw.q.nbytes + qw.scale.nbytes + qw.zero.nbytes
            layers[node.scope or node.name] = info
            quantized.append(_replace(out, node, qw, cfg.bits))
        if scales is not None:
            divide_input(out, quantized, scales[0], "awq")
    out.remove_dead()
    report.matches = len(layers)
    report.effect = {"layers": layers, "weight_bytes_before": bytes_before,
                     "weight_bytes_after": bytes_after,
                     "awq": bool(calib) and cfg.awq}
    if cfg.awq and not calib:
        report.reject("graph", "no calibration data: plain round-to-nearest, no AWQ scaling")
    return PassResult(out, bool(layers), report)


def _check(cfg: Config) -> None:
    if cfg.bits not in (8, 4):
        raise PassError(NAME, f"bits={cfg.bits}: use 8 (per channel) or 4 (per group)")
    if cfg.bits == 4 and cfg.group not in (32, 64, 128):
        raise PassError(NAME, f"group={cfg.group}: int4 groups are 32, 64 or 128")
    if cfg.refine < 0:
        raise PassError(NAME, f"refine={cfg.refine}: the least-squares rounds are 0 or more")


def _matches(graph: Graph, cfg: Config, report: PassReport) -> dict[int, list[Node]]:
    """Linears to quantize, grouped by the value they read (they share AWQ scales)."""
    def unsuitable(w: np.ndarray) -> str | None:
        if cfg.bits == 4 and w.shape[1] % cfg.group:
            return f"{w.shape[1]} input channels are not a multiple of group={cfg.group}; " \
                   "kept float"
        return None

    return const_linears(graph, scope_patterns(cfg.keep_float), "kept float (keep_float)",
                         report, unsuitable)


def _awq_scales(nodes: list[Node], x: np.ndarray, cfg: Config
                ) -> tuple[np.ndarray, float] | None:
    """(s, alpha) minimising the group's output error; None when alpha = 0 (no scaling) wins."""
    magnitude = np.maximum(np.abs(x).mean(0), 1e-8)
    weights = [n.inputs[1].data.astype(np.float32) for n in nodes]
    wanted = [x @ w.T for w in weights]
    best, best_err = None, np.inf
    for alpha in np.linspace(0.0, 1.0, cfg.alpha_grid):
        s = magnitude ** alpha
        s = s / np.sqrt(s.max() * s.min())
        err = sum(float(((x @ (_dequantized(w * s[None, :], cfg)
                                / s[None, :]).T - y) ** 2).sum())
                  for w, y in zip(weights, wanted))
        if err < best_err:
            best, best_err = (s.astype(np.float32), round(float(alpha), 3)), err
    return None if best is None or best[1] == 0.0 else best


def _replace(graph: Graph, node: Node, qw: Quantized, bits: int) -> Node:
    return replace_linear(graph, node, "quant_linear",
                          [(qw.q, "q"), (qw.scale, "scale"), (qw.zero, "zero")], {"bits": bits})
