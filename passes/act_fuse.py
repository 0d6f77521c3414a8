"""Activation fusion: conv or linear followed by relu/gelu/silu/sigmoid/tanh becomes one node
with that `activation` epilogue. Exact. Runs last among the exact passes (after bn_fold and
repvgg have produced the final convs), so `conv + BN + activation` ends as one fused conv.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..ir import Graph
from ..ir.ops import ACTIVATIONS
from .base import Calibration, PassReport, PassResult
from .rewrite import sole_user, where


@dataclass(frozen=True)
class Config:
    pass


def run(graph: Graph, cfg: Config, calib: Calibration | None = None) -> PassResult:
    g = graph.copy()
    report = PassReport("act_fuse", asdict(cfg))
    for node in [n for n in g.nodes if n.op in ("conv", "linear")]:
        act = sole_user(g, node.output)
        if act is None or act.op not in ACTIVATIONS or act.op == "none":
            continue
        if act.op == "gelu" and act.attrs["approximate"] != "none":
            report.reject(where(act), "tanh-approximated gelu has no fused form")
            continue
        if node.attrs["activation"] != "none":
            continue
        fused = g.add_node(node.op, node.inputs, {**node.attrs, "activation": act.op},
                           node.scope, before=node)
        g.replace_all_uses(act.output, fused.output)
        report.matches += 1
    g.remove_dead()
    report.effect = {"fused": report.matches}
    return PassResult(g, report.matches > 0, report)
