"""Structural checks of the IR invariants; run after every frontend and pass."""

from __future__ import annotations

from ..errors import IRError
from .graph import Graph
from .ops import get_schema


def verify(graph: Graph) -> None:
    """Raises IRError naming the first broken invariant; returns None when the graph is sound."""
    defined: set[int] = set()
    names: set[str] = set()

    def define(v, where: str) -> None:
        if id(v) in defined:
            raise IRError(f"value %{v.name} defined twice ({where})")
        if v.name in names:
            raise IRError(f"duplicate value name %{v.name} ({where})")
        defined.add(id(v))
        names.add(v.name)

    for v in graph.inputs:
        if v.is_const or v.producer is not None:
            raise IRError(f"graph input %{v.name} must be a plain value")
        define(v, "input")
    for c in graph.constants:
        if c.data is None:
            raise IRError(f"constant %{c.name} has no data")
        if tuple(c.data.shape) != c.shape or str(c.data.dtype) != c.dtype:
            raise IRError(f"constant %{c.name}: data {c.data.dtype}{c.data.shape} != {c.type}")
        define(c, "constant")
    for node in graph.nodes:
        for v in node.inputs:
            if id(v) not in defined:
                raise IRError(f"node {node.name} ({node.op}) reads %{v.name} before it is "
                              "defined (graph not topologically ordered, or value dangling)")
            if not any(u is node for u in v.users):
                raise IRError(f"%{v.name} does not list {node.name} among its users")
        schema = get_schema(node.op)
        inferred = schema.infer([v.type for v in node.inputs], node.attrs)
        if [v.type for v in node.outputs] != inferred:
            raise IRError(f"node {node.name} ({node.op}): output types "
                          f"{[str(v.type) for v in node.outputs]} != inferred "
                          f"{[str(t) for t in inferred]}")
        for v in node.outputs:
            if v.producer is not node:
                raise IRError(f"%{v.name} does not name {node.name} as its producer")
            define(v, f"node {node.name}")
    for v in graph.outputs:
        if id(v) not in defined:
            raise IRError(f"graph output %{v.name} is not defined in the graph")
    if not graph.outputs:
        raise IRError("graph has no outputs")
