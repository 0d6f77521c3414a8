"""Constant folding and identity removal, then dead-code elimination.

Matches: nodes whose inputs are all constants (evaluated with the op's numpy reference, up to
`max_elements` per result), and ops that do nothing (reshape or broadcast to the same shape,
identity transposes, casts to the same dtype, full-range slices, adding or subtracting zero,
multiplying or dividing by one, an attention mask that masks nothing). Exact. Runs first: it
exposes constant weights to the passes that fold into them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..ir import Graph, Node, Value
from ..ir.ops import get_schema
from .base import Calibration, PassReport, PassResult
from .rewrite import const


@dataclass(frozen=True)
class Config:
    max_elements: int = 1 << 24  # larger constant results stay computed at run time


def run(graph: Graph, cfg: Config, calib: Calibration | None = None) -> PassResult:
    g = graph.copy()
    report = PassReport("fold", asdict(cfg))
    folded = identities = 0
    for node in list(g.nodes):
        if len(node.outputs) != 1:
            continue
        out = node.output
        if node.inputs and all(v.is_const for v in node.inputs):
            if out.type.size > cfg.max_elements:
                report.reject(node.name, f"constant result of {out.type.size} elements is "
                                         f"above max_elements={cfg.max_elements}")
                continue
            data = get_schema(node.op).reference(node.attrs, *(v.data for v in node.inputs))
            g.replace_all_uses(out, g.add_const(np.asarray(data).astype(out.dtype), out.name))
            folded += 1
        elif (src := _identity_source(node)) is not None:
            g.replace_all_uses(out, src)
            identities += 1
        elif _mask_allows_all(node):
            unmasked = g.add_node("attention", node.inputs[:3], node.attrs, node.scope,
                                  name=node.name, before=node)
            g.replace_all_uses(out, unmasked.output)
            identities += 1
    removed = g.remove_dead()
    report.matches = folded + identities
    report.effect = {"constants_folded": folded, "identities_removed": identities,
                     "nodes_before": len(graph.nodes), "nodes_after": len(g.nodes),
                     "dead_removed": removed}
    return PassResult(g, report.matches > 0 or removed > 0, report)


def _mask_allows_all(node: Node) -> bool:
    """An attention whose constant mask masks nothing (bool all true, additive all zero), as
    torch.export leaves for a model called without one: the select over every score costs a
    pass over the attention matrix."""
    if node.op != "attention" or len(node.inputs) != 4:
        return False
    mask = const(node.inputs[3])
    return mask is not None and bool(np.all(mask if mask.dtype == bool else mask == 0))


def _identity_source(node: Node) -> Value | None:
    """The input a do-nothing node passes through, or None."""
    out, x = node.output, node.inputs[0]
    same_type = out.type == x.type
    match node.op:
        case "reshape" | "broadcast_to" | "cast":
            return x if same_type else None
        case "transpose":
            return x if list(node.attrs["perm"]) == sorted(node.attrs["perm"]) else None
        case "slice":
            return x if same_type and all(s == 1 for s in node.attrs["steps"]) else None
        case "add" | "sub" | "mul" | "div":
            neutral = 0 if node.op in ("add", "sub") else 1
            other = const(node.inputs[1])
            if same_type and other is not None and np.all(other == neutral):
                return x
            if node.op in ("add", "mul") and node.inputs[1].type == out.type:
                first = const(x)
                if first is not None and np.all(first == neutral):
                    return node.inputs[1]
    return None
