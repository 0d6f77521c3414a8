"""networkx views of a graph for passes that reason about structure (blocks, dominators)."""

from __future__ import annotations

import networkx as nx

from .graph import Graph, Node


def to_networkx(graph: Graph) -> nx.DiGraph:
    """Node-level DAG: an edge u -> v when v reads an output of u."""
    dag = nx.DiGraph()
    for node in graph.nodes:
        dag.add_node(node.name, node=node)
        for v in node.inputs:
            if v.producer is not None:
                dag.add_edge(v.producer.name, node.name)
    return dag


def scope_prefixes(graph: Graph, depth: int) -> dict[str, list[Node]]:
    """Groups nodes by the first `depth` components of their module scope."""
    groups: dict[str, list[Node]] = {}
    for node in graph.nodes:
        parts = node.scope.split(".") if node.scope else []
        if len(parts) >= depth:
            groups.setdefault(".".join(parts[:depth]), []).append(node)
    return groups


def immediate_dominators(graph: Graph) -> dict[str, str]:
    """Dominator tree over nodes reachable from the first node (entry = a virtual source)."""
    dag = to_networkx(graph)
    dag.add_node("__entry__")
    for node in graph.nodes:
        if dag.in_degree(node.name) == 0:
            dag.add_edge("__entry__", node.name)
    return nx.immediate_dominators(dag, "__entry__")


def node_flops(node: Node) -> int:
    """Multiply-adds x 2 of the contraction ops (the ones that dominate), 0 for the rest."""
    out = node.outputs[0].shape
    size = 1
    for d in out:
        size *= d
    match node.op:
        case "linear" | "int8_linear" | "sparse_linear" | "quant_linear":
            return 2 * size * node.inputs[0].shape[-1]
        case "matmul":
            return 2 * size * node.inputs[0].shape[-1]
        case "conv" | "int8_conv":
            w = node.inputs[1].shape
            window = 1
            for d in w[1:]:
                window *= d
            return 2 * size * window
        case "conv_transpose":
            x, w = node.inputs[0].shape, node.inputs[1].shape
            window = 1
            for d in w[1:]:
                window *= d
            n_in = 1
            for d in x:
                n_in *= d
            return 2 * n_in * window
        case "attention":
            q, k = node.inputs[0].shape, node.inputs[1].shape
            b, h, sq, d = q
            return 2 * b * h * sq * k[2] * (d + node.outputs[0].shape[3])
    return 0


def flops(graph: Graph) -> int:
    return sum(node_flops(n) for n in graph.nodes)


# ops that hand index values through unchanged (only their arrangement or integer width)
_INDEX_PRESERVING = {"reshape", "flatten", "squeeze", "unsqueeze", "transpose", "slice",
                     "broadcast_to", "cast"}


def index_bounds(graph: Graph) -> dict[str, int]:
    """Graph inputs whose values end up, unchanged, as the indices of a gather: the valid
    range is [-n, n) for the gathered axis of size n (the smallest over all such uses). Out of
    range, compiled kernels would read outside the table, so the runtime checks these."""
    bounds: dict[str, int] = {}
    inputs = {id(v): v for v in graph.inputs}
    for node in graph.nodes:
        if node.op not in ("gather", "gather_elements"):
            continue
        size = node.inputs[0].shape[node.attrs["axis"] % len(node.inputs[0].shape)]
        value = node.inputs[1]
        while value.producer is not None and value.producer.op in _INDEX_PRESERVING:
            value = value.producer.inputs[0]
        if id(value) in inputs:
            bounds[value.name] = min(bounds.get(value.name, size), size)
    return bounds
