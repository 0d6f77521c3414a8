"""The repeated residual blocks of a model (transformer layers, ResNet stages' blocks), found
from scopes and residual structure, never from module names.

Nodes are grouped by their scope up to an integer component (`<list>.<i>`, what a module list
gives every layer); a group is a block when it has exactly one value used outside it (its
output), exactly one input of that value's shape and dtype (the residual stream; masks, rotary
tables and the like are side inputs), and that input feeds an `add` inside the group (the
residual connection). The blocks of the longest such list are the candidates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import PassError
from ..ir import Graph, Node, Value
from ..ir.analysis import node_flops
from .base import PassReport


@dataclass
class Block:
    scope: str
    nodes: list[Node]
    entry: Value
    exit: Value
    flops: int = 0


def find_blocks(graph: Graph, report: PassReport | None = None) -> list[Block]:
    """The residual blocks of the longest repeated list, in order."""
    groups: dict[str, list[Node]] = {}
    for node in graph.nodes:
        m = re.match(r"^(.*?\.\d+)(?:\.|$)", node.scope or "")
        if m:
            groups.setdefault(m.group(1), []).append(node)
    lists: dict[str, list[Block]] = {}
    for scope, nodes in groups.items():
        block = _as_block(graph, scope, nodes, report)
        if block is not None:
            lists.setdefault(scope.rsplit(".", 1)[0], []).append(block)
    if not lists:
        return []
    parent = max(lists, key=lambda p: len(lists[p]))
    return sorted(lists[parent], key=lambda b: int(b.scope.rsplit(".", 1)[1]))


def _as_block(graph: Graph, scope: str, nodes: list[Node],
              report: PassReport | None) -> Block | None:
    inside = {id(n) for n in nodes}
    produced = {id(v) for n in nodes for v in n.outputs}
    outputs = {id(v) for v in graph.outputs}
    exits = [v for n in nodes for v in n.outputs
             if id(v) in outputs or any(id(u) not in inside for u in v.users)]
    entries = {id(v): v for n in nodes for v in n.inputs
               if id(v) not in produced and not v.is_const}

    def reject(reason: str) -> None:
        if report is not None:
            report.reject(scope, reason)

    if len(exits) != 1:
        reject(f"{len(exits)} values leave the scope (a block has one output)")
        return None
    out = exits[0]
    stream = [v for v in entries.values() if v.shape == out.shape and v.dtype == out.dtype]
    if len(stream) != 1:
        reject(f"{len(stream)} inputs have the output's type {out.type} (need one residual "
               "stream)")
        return None
    if not any(u.op == "add" and id(u) in inside for u in stream[0].users):
        reject("its input reaches no residual add inside it")
        return None
    return Block(scope, nodes, stream[0], out, sum(node_flops(n) for n in nodes))


def parse_block_list(pass_name: str, text: str, count: int) -> list[int]:
    """Block indices from "3+5" (or "3,5"), "2-4" or a mix."""
    chosen: set[int] = set()
    for part in filter(None, (p.strip() for p in re.split(r"[,+]", text))):
        lo, dash, hi = part.partition("-")
        try:
            rng = range(int(lo), int(hi) + 1) if dash else [int(lo)]
        except ValueError:
            raise PassError(pass_name,
                            f"blocks={text!r}: use indices like '3+5' or '2-4'") from None
        chosen.update(rng)
    bad = sorted(i for i in chosen if not 0 <= i < count)
    if bad:
        raise PassError(pass_name, f"blocks {bad} out of range: the model has {count} blocks")
    return sorted(chosen)
