"""Dead-code elimination: drops nodes and constants that no graph output depends on.

Exact. Runs first and after any pass that leaves values unused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..ir import Graph
from .base import Calibration, PassReport, PassResult


@dataclass(frozen=True)
class Config:
    pass


def run(graph: Graph, cfg: Config, calib: Calibration | None = None) -> PassResult:
    out = graph.copy()
    removed = out.remove_dead()
    report = PassReport("dce", asdict(cfg), matches=removed,
                        effect={"nodes_before": len(graph.nodes), "nodes_after": len(out.nodes)})
    return PassResult(out, removed > 0, report)
