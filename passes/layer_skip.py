"""Layer skipping: removes whole residual blocks (a block's output becomes its input).

Matches: the repeated residual blocks of a model (`blocks.find_blocks`: from scopes and
residual structure, not from module names).

Which blocks go:
- `blocks="3+5"` or `"2-4"`: a fixed list (indices in the list);
- `count=N`: the N blocks with the lowest Block Influence on the calibration data (ShortGPT:
  BI = 1 - cos(block input, block output), per token along the last axis, averaged);
- `speedup=S`: the fewest blocks, lowest BI first, whose removal cuts the graph's FLOPs by S.

Approximate: the report gives each block's BI (with calibration data) and FLOPs before and
after; the pipeline adds the output error on the first calibration sample. Belongs before
lowering, after exact passes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import PassError
from ..ir import Graph, interpret
from ..ir.analysis import flops
from .base import Calibration, PassReport, PassResult
from .blocks import Block, find_blocks, parse_block_list

NAME = "layer_skip"


@dataclass(frozen=True)
class Config:
    blocks: str = ""  # fixed list: "3+5" (or "3,5" from Python) or "2-4": indices of blocks
    count: int = 0  # skip the `count` blocks of lowest Block Influence (needs calibration)
    speedup: float = 0.0  # skip blocks (lowest BI first) until FLOPs drop by this factor


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


def choose(cfg: Config, blocks: list[Block], total_flops: int,
           influence: list[float] | None) -> list[int]:
    modes = sum([bool(cfg.blocks), cfg.count > 0, cfg.speedup > 0])
    if modes != 1:
        raise PassError(NAME, "give exactly one of blocks=..., count=N or speedup=S")
    if cfg.blocks:
        return parse_block_list(NAME, cfg.blocks, len(blocks))
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
    return PassResult(out, bool(skip), report)
