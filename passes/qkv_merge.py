"""Projection merging: linears that read the same input become one linear and slices.

Matches sibling linears with constant weights over one input (attention's Q, K and V
projections; a gated MLP's gate and up projections). Their weights are concatenated along the
output axis (missing biases become zeros) and each original output is a slice of the merged
one. Exact: each output element is the same dot product. Runs after `linear_fold` (which may
change the weights) and before `act_fuse` (fused activations differ between siblings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..ir import Graph, Node
from .base import Calibration, PassReport, PassResult
from .rewrite import where


@dataclass(frozen=True)
class Config:
    min_group: int = 2


def run(graph: Graph, cfg: Config, calib: Calibration | None = None) -> PassResult:
    g = graph.copy()
    report = PassReport("qkv_merge", asdict(cfg))
    groups: dict[int, list[Node]] = {}
    for node in g.nodes:
        if node.op == "linear":
            groups.setdefault(id(node.inputs[0]), []).append(node)
    merged_linears = 0
    for siblings in groups.values():
        if len(siblings) < cfg.min_group:
            continue
        usable = []
        for n in siblings:
            if not all(v.is_const for v in n.inputs[1:]):
                report.reject(where(n), "weights are not constants")
            elif n.attrs["activation"] != "none":
                report.reject(where(n), "already has a fused activation")
            else:
                usable.append(n)
        if len(usable) >= cfg.min_group:
            _merge(g, usable)
            report.matches += 1
            merged_linears += len(usable)
    g.remove_dead()
    report.effect = {"groups": report.matches, "linears_merged": merged_linears,
                     "linears_before": sum(n.op == "linear" for n in graph.nodes),
                     "linears_after": sum(n.op == "linear" for n in g.nodes)}
    return PassResult(g, report.matches > 0, report)


def _merge(g: Graph, nodes: list[Node]) -> None:
    first = nodes[0]
    ws = [n.inputs[1].data for n in nodes]
    bs = [n.inputs[2].data if len(n.inputs) > 2 else np.zeros(w.shape[0], w.dtype)
          for n, w in zip(nodes, ws)]
    weight = g.add_const(np.concatenate(ws, axis=0), first.inputs[1].name + "_merged")
    bias = g.add_const(np.concatenate(bs, axis=0), first.inputs[1].name + "_merged_bias")
    scope = _common_scope([n.scope for n in nodes])
    merged = g.add_node("linear", [first.inputs[0], weight, bias], {"activation": "none"},
                        scope, before=first).output
    start, last_axis = 0, len(merged.shape) - 1
    for n, w in zip(nodes, ws):
        part = g.op("slice", merged, scope=n.scope, before=first, axes=(last_axis,),
                    starts=(start,), ends=(start + w.shape[0],), steps=(1,))
        g.replace_all_uses(n.output, part)
        start += w.shape[0]


def _common_scope(scopes: list[str]) -> str:
    parts = [s.split(".") for s in scopes]
    common = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    return ".".join(common)
