"""Small graph-matching helpers shared by the passes."""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Value


def sole_user(graph: Graph, v: Value) -> Node | None:
    """The only node reading `v`, if exactly one does and `v` is not a graph output."""
    if len(v.users) != 1 or any(o is v for o in graph.outputs):
        return None
    return v.users[0]


def const(v: Value | None) -> np.ndarray | None:
    return None if v is None else v.data


def where(node: Node) -> str:
    return f"{node.name} ({node.scope})" if node.scope else node.name


def new_weight(graph: Graph, array: np.ndarray, like: Value, suffix: str) -> Value:
    return graph.add_const(np.ascontiguousarray(array.astype(like.dtype)), like.name + suffix)


def channel_vector(v: Value, channels: int, axis_from_end: int) -> np.ndarray | None:
    """A constant that only varies along one axis of size `channels` (broadcast elsewhere), as
    a 1-D array; None when `v` is not such a constant."""
    data = const(v)
    if data is None:
        return None
    if data.size == 1:
        return np.full(channels, data.reshape(()), dtype=data.dtype)
    shape = data.shape
    if len(shape) < axis_from_end or shape[-axis_from_end] != channels or \
            data.size != channels:
        return None
    return data.reshape(channels)
