"""BatchNorm folding into the neighbouring conv or linear.

Inference BatchNorm is y = x * s + t per channel, with s = gamma / sqrt(var + eps) and
t = beta - mean * s. After a conv (or a linear on [N, C] features) it folds into the weights:
W' = W * s (per output channel), b' = b * s + t. Before a linear it folds the other way:
W' = W * s (per input column), b' = b + W @ t; before a conv only when the conv does not pad
(padding zeros would not be shifted by t). Exact to float rounding. Runs after `fold`, before
`repvgg` (whose branches are then plain convs with bias) and `act_fuse`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..ir import Graph, Node, Value
from .base import Calibration, PassReport, PassResult
from .rewrite import new_weight, sole_user, where


@dataclass(frozen=True)
class Config:
    pass


def bn_affine(node: Node) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of an inference batch_norm with constant parameters, in float64."""
    gamma, beta, mean, var = (v.data.astype(np.float64) for v in node.inputs[1:])
    scale = gamma / np.sqrt(var + node.attrs["eps"])
    return scale, beta - mean * scale


def run(graph: Graph, cfg: Config, calib: Calibration | None = None) -> PassResult:
    g = graph.copy()
    report = PassReport("bn_fold", asdict(cfg))
    for bn in [n for n in g.nodes if n.op == "batch_norm"]:
        reason = _fold_one(g, bn)
        if reason:
            report.reject(where(bn), reason)
        else:
            report.matches += 1
    g.remove_dead()
    report.effect = {"batch_norms_before": sum(n.op == "batch_norm" for n in graph.nodes),
                     "batch_norms_after": sum(n.op == "batch_norm" for n in g.nodes)}
    return PassResult(g, report.matches > 0, report)


def _fold_one(g: Graph, bn: Node) -> str | None:
    if not all(v.is_const for v in bn.inputs[1:]):
        return "batch_norm parameters are not constants"
    x = bn.inputs[0]
    prev = x.producer
    if prev is not None and prev.op in ("conv", "linear") and sole_user(g, x) is bn:
        return _fold_into_producer(g, bn, prev)
    nxt = sole_user(g, bn.output)
    if nxt is not None and nxt.op in ("conv", "linear") and nxt.inputs[0] is bn.output:
        return _fold_into_consumer(g, bn, nxt)
    if prev is not None and prev.op in ("conv", "linear") and sole_user(g, x) is not bn:
        return f"{prev.op} output is also read elsewhere, so its weights cannot absorb the scale"
    return "no conv or linear next to it to fold into"


def _weights(node: Node) -> tuple[np.ndarray, np.ndarray] | None:
    w = node.inputs[1].data
    if w is None or (len(node.inputs) > 2 and not node.inputs[2].is_const):
        return None
    out_channels = w.shape[0]
    b = node.inputs[2].data if len(node.inputs) > 2 else np.zeros(out_channels, w.dtype)
    return w.astype(np.float64), b.astype(np.float64)


def _rebuild(g: Graph, node: Node, w: np.ndarray, b: np.ndarray, x: Value | None = None):
    """Replaces `node` by the same op with new weight and bias (and input `x`, if given),
    inserted at its place; returns the new output (every user of the old one now reads it)."""
    wv = new_weight(g, w, node.inputs[1], "_folded")
    bv = new_weight(g, b, node.inputs[1], "_bias_folded")
    new = g.add_node(node.op, [node.inputs[0] if x is None else x, wv, bv], dict(node.attrs),
                     node.scope, before=node)
    g.replace_all_uses(node.output, new.output)
    return new.output


def _fold_into_producer(g: Graph, bn: Node, prev: Node) -> str | None:
    if prev.attrs.get("activation", "none") != "none":
        return f"{prev.op} already applies an activation before the batch_norm"
    if prev.op == "linear" and len(prev.output.shape) != 2:
        return "batch_norm normalizes axis 1 of a linear output with more than 2 dimensions"
    weights = _weights(prev)
    if weights is None:
        return f"{prev.op} weights are not constants"
    w, b = weights
    scale, shift = bn_affine(bn)
    w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    g.replace_all_uses(bn.output, _rebuild(g, prev, w, b * scale + shift))
    return None


def _fold_into_consumer(g: Graph, bn: Node, nxt: Node) -> str | None:
    if nxt.op == "conv" and any(nxt.attrs["padding"]):
        return "the following conv pads its input, so the batch_norm shift cannot fold into it"
    if nxt.op == "conv" and nxt.attrs["groups"] != 1:
        return "the following conv is grouped"
    if nxt.op == "linear" and len(bn.output.shape) != 2:
        return "batch_norm normalizes axis 1 but the following linear reads the last axis"
    weights = _weights(nxt)
    if weights is None:
        return f"{nxt.op} weights are not constants"
    w, b = weights
    scale, shift = bn_affine(bn)
    in_shape = (1, -1) + (1,) * (w.ndim - 2)
    w_new = w * scale.reshape(in_shape)
    b_new = b + (w * shift.reshape(in_shape)).reshape(w.shape[0], -1).sum(axis=1)
    _rebuild(g, nxt, w_new, b_new, x=bn.inputs[0])  # reads the batch_norm's input directly
    return None
