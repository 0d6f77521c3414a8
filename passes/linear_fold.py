"""RePaViT-style FFN reparameterization: affine maps and linear chains folded into linears.

Matches, along the last (feature) axis:
- a per-feature scale or shift (`mul`/`add`/`sub` by a constant vector, a LayerScale, a
  BatchNorm on [tokens, features]) right after a linear: W' = diag(s) W, b' = s * b + t;
- the same right before a linear: W' = W diag(s), b' = b + W t;
- linear -> linear with nothing between: W = W2 W1, b = W2 b1 + b2, only when that does not add
  FLOPs (a low-rank bottleneck stays two matmuls; the report says so).
Exact to float rounding. Runs after `bn_fold` and before `qkv_merge` and `act_fuse`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..ir import Graph, Node, Value
from .base import Calibration, PassReport, PassResult
from .bn_fold import bn_affine
from .rewrite import channel_vector, new_weight, sole_user, where

AFFINE_OPS = ("mul", "add", "sub", "batch_norm")


@dataclass(frozen=True)
class Config:
    max_rounds: int = 8  # folding exposes new chains; repeat until nothing changes


def run(graph: Graph, cfg: Config, calib: Calibration | None = None) -> PassResult:
    g = graph.copy()
    report = PassReport("linear_fold", asdict(cfg))
    counts = {"affine_after": 0, "affine_before": 0, "linear_chains": 0}
    rejected: dict[str, str] = {}
    for _ in range(cfg.max_rounds):
        changed = False
        for lin in [n for n in g.nodes if n.op == "linear"]:
            if not _const_linear(lin) or lin not in g.nodes:
                continue
            kind, reason = _try(g, lin)
            if kind:
                counts[kind] += 1
                changed = True
                g.remove_dead()
            elif reason:
                rejected[where(lin)] = reason
        if not changed:
            break
    for w, reason in rejected.items():
        report.reject(w, reason)
    report.matches = sum(counts.values())
    report.effect = {**counts, "linears_before": sum(n.op == "linear" for n in graph.nodes),
                     "linears_after": sum(n.op == "linear" for n in g.nodes)}
    return PassResult(g, report.matches > 0, report)


def _const_linear(lin: Node) -> bool:
    return all(v.is_const for v in lin.inputs[1:]) and lin.attrs["activation"] == "none"


def _wb(lin: Node) -> tuple[np.ndarray, np.ndarray]:
    w = lin.inputs[1].data.astype(np.float64)
    b = lin.inputs[2].data.astype(np.float64) if len(lin.inputs) > 2 else np.zeros(w.shape[0])
    return w, b


def _replace_linear(g: Graph, old: Node, x: Value, w: np.ndarray, b: np.ndarray,
                    out: Value, before: Node) -> None:
    new = g.add_node("linear", [x, new_weight(g, w, old.inputs[1], "_fold"),
                                new_weight(g, b, old.inputs[1], "_fold_bias")],
                     {"activation": "none"}, old.scope, before=before)
    g.replace_all_uses(out, new.output)


def _affine(node: Node, value: Value, features: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) of `node` as a map of `value` over the last axis, or None when it is not
    such an affine map."""
    if node.op == "batch_norm":
        if node.inputs[0] is not value or len(node.output.shape) != 2 or \
                not all(v.is_const for v in node.inputs[1:]):
            return None
        return bn_affine(node)
    if node.output.shape != value.shape:
        return None
    if node.inputs[0] is value:
        other = node.inputs[1]
    elif node.op in ("mul", "add") and node.inputs[1] is value:  # commutative
        other = node.inputs[0]
    else:
        return None
    vec = channel_vector(other, features, 1)
    if vec is None:
        return None
    vec = vec.astype(np.float64)
    if node.op == "mul":
        return vec, np.zeros(features)
    return np.ones(features), vec if node.op == "add" else -vec


def _affine_source(node: Node) -> Value | None:
    """The non-constant input an affine node transforms."""
    dynamic = [v for v in node.inputs if not v.is_const]
    return dynamic[0] if len(dynamic) == 1 else None


def _try(g: Graph, lin: Node) -> tuple[str | None, str | None]:
    out = lin.output
    nxt = sole_user(g, out)
    w, b = _wb(lin)
    if nxt is not None and nxt.op in AFFINE_OPS:
        aff = _affine(nxt, out, w.shape[0])
        if aff is not None:
            s, t = aff
            _replace_linear(g, lin, lin.inputs[0], w * s[:, None], b * s + t, nxt.output,
                            before=nxt)
            return "affine_after", None
    prev = lin.inputs[0].producer
    if prev is not None and prev.op in AFFINE_OPS and sole_user(g, lin.inputs[0]) is lin:
        source = _affine_source(prev)
        aff = _affine(prev, source, w.shape[1]) if source is not None else None
        if aff is not None:
            s, t = aff
            _replace_linear(g, lin, source, w * s[None, :], b + w @ t, out, before=lin)
            return "affine_before", None
    if nxt is not None and nxt.op == "linear" and _const_linear(nxt):
        w2, b2 = _wb(nxt)
        fused_flops, split_flops = w2.shape[0] * w.shape[1], w.size + w2.size
        if fused_flops > split_flops:
            return None, (f"linear -> {where(nxt)} not fused: one {w2.shape[0]}x{w.shape[1]} "
                          f"matmul costs more than the two ({fused_flops} > {split_flops} "
                          "multiply-adds per token)")
        _replace_linear(g, lin, lin.inputs[0], w2 @ w, w2 @ b + b2, nxt.output, before=nxt)
        return "linear_chains", None
    return None, None
