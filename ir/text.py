"""The readable text form of a graph, used by golden tests and `honer inspect`."""

from __future__ import annotations

from typing import Any

from .graph import Graph
from .ops import get_schema


def _fmt_attr(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, tuple):
        return "[" + ",".join(_fmt_attr(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def dump(graph: Graph, with_scopes: bool = True) -> str:
    args = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines = [f"graph {graph.name}({args}) {{"]
    for c in graph.constants:
        lines.append(f"  const %{c.name}: {c.type}")
    for node in graph.nodes:
        outs = ", ".join(f"%{v.name}: {v.type}" for v in node.outputs)
        ins = ", ".join(f"%{v.name}" for v in node.inputs)
        defaults = get_schema(node.op).attrs
        attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in node.attrs.items()
                          if k not in defaults or defaults[k] != v)  # defaults go unsaid
        line = f"  {outs} = {node.op}({ins})"
        if attrs:
            line += f" {{{attrs}}}"
        if with_scopes and node.scope:
            line += f"  # {node.scope}"
        lines.append(line)
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)
