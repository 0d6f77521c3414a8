"""Reference interpreter: runs a graph with the ops' numpy references.

It is the ground truth for the codegen and the calibration hook for approximate passes:
`interpret(g, inputs, capture=[...])` also returns chosen intermediate values by name.
Values are freed once their last user has run, so capture costs only what is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..errors import InputError, IRError
from .graph import Graph, Value
from .ops import get_schema


def check_inputs(graph: Graph, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]
                 ) -> list[np.ndarray]:
    """Orders and validates user inputs against the graph signature."""
    if isinstance(inputs, Mapping):
        missing = [v.name for v in graph.inputs if v.name not in inputs]
        if missing:
            raise InputError(f"missing input(s) {missing}; the graph takes "
                             f"{[v.name for v in graph.inputs]}")
        arrays = [inputs[v.name] for v in graph.inputs]
    else:
        arrays = list(inputs)
    if len(arrays) != len(graph.inputs):
        raise InputError(f"expected {len(graph.inputs)} input(s), got {len(arrays)}")
    out = []
    for value, array in zip(graph.inputs, arrays):
        array = np.asarray(array)
        if array.shape != value.shape or str(array.dtype) != value.dtype:
            raise InputError(f"input {value.name}: expected {value.type}, got "
                             f"{array.dtype}{list(array.shape)}")
        out.append(array)
    return out


def interpret(graph: Graph, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray],
              capture: Iterable[str] = ()) -> list[np.ndarray] | tuple[list, dict]:
    """Runs the graph; with `capture`, returns (outputs, {name: array}) for the named values."""
    wanted = set(capture)
    env: dict[int, np.ndarray] = {}
    remaining: dict[int, int] = {}
    keep = {id(v) for v in graph.outputs}
    for v in graph.values():
        remaining[id(v)] = len(v.users)
        if v.name in wanted:
            keep.add(id(v))
    captured: dict[str, np.ndarray] = {}

    def store(v: Value, array: np.ndarray) -> None:
        env[id(v)] = array
        if v.name in wanted:
            captured[v.name] = array

    for v, array in zip(graph.inputs, check_inputs(graph, inputs)):
        store(v, array)
    for c in graph.constants:
        store(c, c.data)
    for node in graph.nodes:
        schema = get_schema(node.op)
        args = [env[id(v)] for v in node.inputs]
        try:
            result = schema.reference(node.attrs, *args)
        except (ValueError, IndexError, TypeError) as e:
            raise IRError(f"interpreting {node.name} ({node.op}, scope {node.scope!r}): {e}") from e
        results = result if isinstance(result, tuple) else (result,)
        for v, array in zip(node.outputs, results):
            array = np.asarray(array)
            if array.shape != v.shape:
                raise IRError(f"{node.name} ({node.op}) produced {array.shape}, "
                              f"inferred {v.shape}")
            store(v, array.astype(v.dtype, copy=False))
        for v in node.inputs:  # free what no later node reads
            remaining[id(v)] -= 1
            if remaining[id(v)] == 0 and id(v) not in keep and not v.is_const:
                env.pop(id(v), None)
    outputs = [env[id(v)] for v in graph.outputs]
    missing = wanted - set(captured)
    if missing:
        raise IRError(f"capture: no value(s) named {sorted(missing)}")
    return (outputs, captured) if wanted else outputs
