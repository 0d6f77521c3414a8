"""What the passes that rewrite linear weights share: finding the linears with a constant float
weight (minus those a scope pattern keeps), grouped by the value they read, and capturing
those values on calibration data."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import numpy as np

from ..ir import Graph, Node, interpret
from .base import Calibration, PassReport
from .rewrite import where

NORMS = ("layer_norm", "rms_norm")


def scope_patterns(spec: str) -> list[str]:
    """'*lm_head*+*.0.*' (or comma-separated) -> the fnmatch patterns."""
    return [p for p in spec.replace(",", "+").split("+") if p]


def const_linears(graph: Graph, keep: list[str], keep_reason: str, report: PassReport,
                  unsuitable: Callable[[np.ndarray], str | None] = lambda w: None
                  ) -> dict[int, list[Node]]:
    """Linears with a float32 constant weight, grouped by the id of the value they read;
    the others are listed in the report with the reason (`unsuitable(weight)` may give one)."""
    groups: dict[int, list[Node]] = {}
    for node in graph.nodes:
        if node.op != "linear":
            continue
        w = node.inputs[1]
        reason = ("weight is not a float32 constant" if not w.is_const or w.dtype != "float32"
                  else keep_reason if any(fnmatch.fnmatch(node.scope, p) for p in keep)
                  else unsuitable(w.data))
        if reason:
            report.reject(where(node), reason)
        else:
            groups.setdefault(id(node.inputs[0]), []).append(node)
    return groups


def calibration_inputs(graph: Graph, groups: dict[int, list[Node]], calib: Calibration,
                       max_tokens: int) -> dict[int, np.ndarray]:
    """Each group's input activations on the calibration data, [tokens, in] (at most
    `max_tokens` rows, evenly spread)."""
    names = {nodes[0].inputs[0].name: key for key, nodes in groups.items()}
    if not names:
        return {}
    rows: dict[int, list[np.ndarray]] = {key: [] for key in groups}
    for sample in calib.samples:
        _, seen = interpret(graph, list(sample), capture=list(names))
        for name, key in names.items():
            rows[key].append(seen[name].reshape(-1, seen[name].shape[-1]))
    out = {}
    for key, parts in rows.items():
        x = np.concatenate(parts).astype(np.float32)
        step = max(1, len(x) // max_tokens)
        out[key] = x[::step][:max_tokens]
    return out


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    noise = float(((reference - approx) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((reference ** 2).sum()) / noise)


def unlink(graph: Graph, node: Node) -> None:
    graph.nodes.remove(node)
    for v in node.inputs:
        v.users.remove(node)


def replace_linear(graph: Graph, node: Node, op: str, weights: list[tuple[np.ndarray, str]],
                   attrs: dict, bias: np.ndarray | None = None) -> Node:
    """node (a linear) -> `op`(x, *weights as constants named after its weight, bias), with the
    linear's activation; `bias` replaces the linear's own."""
    consts = [graph.add_const(a, f"{node.inputs[1].name}_{part}") for a, part in weights]
    bias_value = (node.inputs[2:3] if bias is None
                  else [graph.add_const(bias.astype(np.float32), f"{node.inputs[1].name}_bias")])
    new = graph.add_node(op, [node.inputs[0], *consts, *bias_value],
                         {**attrs, "activation": node.attrs["activation"]}, node.scope,
                         before=node)
    graph.replace_all_uses(node.output, new.output)
    unlink(graph, node)
    return new


def divide_input(graph: Graph, nodes: list[Node], s: np.ndarray, tag: str,
                 shift: np.ndarray | None = None) -> str:
    """x -> x / s (+ shift) for the linears `nodes` (which all read x; AWQ and SmoothQuant scale
    their weights by s, per-channel activation quantization also shifts by its zero points):
    folded into the affine of a layer norm that feeds only them (a shift needs the norm's
    bias), else a multiply (and add) before them, which fuses into x's producer. Says where
    it went."""
    x = nodes[0].inputs[0]
    norm = x.producer
    if norm is not None and norm.op in NORMS and len(norm.inputs) > (1 if shift is None else 2) \
            and all(v.is_const for v in norm.inputs[1:]) \
            and {id(u) for u in x.users} == {id(n) for n in nodes} \
            and not any(o is x for o in graph.outputs):
        for i, v in enumerate(norm.inputs[1:], start=1):
            data = v.data / s + (shift if i == 2 and shift is not None else 0.0)
            scaled = graph.add_const(data.astype(v.dtype), f"{v.name}_{tag}")
            v.users.remove(norm)
            norm.inputs[i] = scaled
            scaled.users.append(norm)
        return f"folded into {norm.op} {norm.name}"
    inv = graph.add_const((1.0 / s).astype(np.float32), f"{x.name}_{tag}_inv")
    scaled = graph.add_node("mul", [x, inv], scope=nodes[0].scope, before=nodes[0]).output
    if shift is not None:
        offset = graph.add_const(shift.astype(np.float32), f"{x.name}_{tag}_shift")
        scaled = graph.add_node("add", [scaled, offset], scope=nodes[0].scope,
                                before=nodes[0]).output
    for node in nodes:
        node.inputs[0] = scaled
        scaled.users.append(node)
        x.users.remove(node)
    return "applied before the layers (fused into the producer's kernel)"
