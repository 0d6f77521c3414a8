"""Layer skipping: removes whole residual blocks (a block's output becomes its input).

Matches: the repeated blocks of a model, found from scopes and residual structure, not from
module names. Nodes are grouped by their scope up to an integer component (`<list>.<i>`, what a
module list gives every layer); a group is a block when it has exactly one value used outside
it (its output), exactly one input of that value's shape and dtype (the residual stream; masks,
rotary tables and the like are side inputs), and that input feeds an `add` inside the group
(the residual connection). The blocks of the longest such list are the candidates.

Which blocks go:
- `blocks="3+5"` or `"2-4"`: a fixed list (indices in the list);
- `count=N`: the N blocks with the lowest Block Influence on the calibration data (ShortGPT:
  BI = 1 - cos(block input, block output), per token along the last axis, averaged);
- `speedup=S`: the fewest blocks, lowest BI first, whose removal cuts the graph's FLOPs by S.

Approximate: the report gives each block's BI (with calibration data), FLOPs before and after,
and the output error on the first calibration sample. Belongs before lowering, after exact
passes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import PassError
from ..ir import Graph, Node, Value, interpret
from ..ir.analysis import flops, node_flops
from .base import Calibration, PassReport, PassResult

NAME = "layer_skip"


@dataclass(frozen=True)
class Config:
    blocks: str = ""  # fixed list: "3+5" (or "3,5" from Python) or "2-4": indices of blocks
    count: int = 0  # skip the `count` blocks of lowest Block Influence (needs calibration)
    speedup: float = 0.0  # skip blocks (lowest BI first) until FLOPs drop by this factor


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


def block_influence(graph: Graph, blocks: list[Block], calib: Calibration) -> list[float]:
    """1 - cos(input, output) per token (vectors along the last axis), averaged over tokens
    and calibration samples."""
    names = [b.entry.name for b in blocks] + [b.exit.name for b in blocks]
    sums = np.zeros(len(blocks))
    tokens = 0
    for sample in calib.samples:
        _, seen = interpret(graph, list(sample), capture=names)
        for i, b in enumerate(blocks):
            x = seen[b.entry.name].reshape(-1, b.entry.shape[-1]).astype(np.float64)
            y = seen[b.exit.name].reshape(-1, b.exit.shape[-1]).astype(np.float64)
            cos = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1)
                                              * np.linalg.norm(y, axis=1), 1e-30)
            sums[i] += (1.0 - cos).sum()
        tokens += seen[blocks[0].entry.name].size // blocks[0].entry.shape[-1]
    return list(sums / max(tokens, 1))


def _parse_list(text: str, count: int) -> list[int]:
    chosen: set[int] = set()
    for part in filter(None, (p.strip() for p in re.split(r"[,+]", text))):
        lo, dash, hi = part.partition("-")
        try:
            rng = range(int(lo), int(hi) + 1) if dash else [int(lo)]
        except ValueError:
            raise PassError(NAME, f"blocks={text!r}: use indices like '3+5' or '2-4'") from None
        chosen.update(rng)
    bad = sorted(i for i in chosen if not 0 <= i < count)
    if bad:
        raise PassError(NAME, f"blocks {bad} out of range: the model has {count} blocks")
    return sorted(chosen)


def choose(cfg: Config, blocks: list[Block], total_flops: int,
           influence: list[float] | None) -> list[int]:
    modes = sum([bool(cfg.blocks), cfg.count > 0, cfg.speedup > 0])
    if modes != 1:
        raise PassError(NAME, "give exactly one of blocks=..., count=N or speedup=S")
    if cfg.blocks:
        return _parse_list(cfg.blocks, len(blocks))
    if influence is None:
        raise PassError(NAME, "count= and speedup= rank blocks by Block Influence, which needs "
                              "calibration data (compile(..., calibration=[...]))")
    order = sorted(range(len(blocks)), key=lambda i: influence[i])
    if cfg.count:
        if cfg.count >= len(blocks):
            raise PassError(NAME, f"count={cfg.count}: the model has only {len(blocks)} blocks")
        return sorted(order[:cfg.count])
    if cfg.speedup <= 1.0:
        raise PassError(NAME, f"speedup={cfg.speedup}: must be above 1")
    chosen, removed = [], 0
    for i in order[:-1]:  # never every block
        if total_flops / max(total_flops - removed, 1) >= cfg.speedup:
            break
        chosen.append(i)
        removed += blocks[i].flops
    if total_flops / max(total_flops - removed, 1) < cfg.speedup:
        raise PassError(NAME, f"speedup={cfg.speedup} is out of reach by skipping blocks")
    return sorted(chosen)


def run(graph: Graph, cfg: Config, calib: Calibration | None = None) -> PassResult:
    out = graph.copy()
    report = PassReport(NAME, asdict(cfg), exact=False)
    blocks = find_blocks(out, report)
    if not blocks:
        report.reject("graph", "no repeated residual blocks found")
        return PassResult(out, False, report)
    before = flops(out)
    influence = block_influence(out, blocks, calib) if calib else None
    skip = choose(cfg, blocks, before, influence)
    for i in sorted(skip, reverse=True):  # later blocks first: their entry is still intact
        out.replace_all_uses(blocks[i].exit, blocks[i].entry)
    out.remove_dead()
    report.matches = len(skip)
    report.effect = {
        "blocks": [b.scope for b in blocks], "skipped": [blocks[i].scope for i in skip],
        "layers_before": len(blocks), "layers_after": len(blocks) - len(skip),
        "flops_before": before, "flops_after": flops(out),
        **({"block_influence": {b.scope: round(float(bi), 6)
                                for b, bi in zip(blocks, influence)}}
           if influence is not None else {}),
    }
    if calib:
        want = interpret(graph, list(calib.samples[0]))[0]
        got = interpret(out, list(calib.samples[0]))[0]
        report.effect["output_error"] = float(np.abs(got - want).max()
                                              / max(np.abs(want).max(), 1e-30))
    return PassResult(out, bool(skip), report)
