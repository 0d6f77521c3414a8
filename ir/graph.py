"""The graph IR: SSA values with static shapes and dtypes, ordered nodes with module scopes.

A `Graph` owns its `Node`s in topological order. Every `Value` is produced by exactly one node,
or is a graph input, or is a constant (a numpy array). Passes build new graphs with
`Graph.copy()` and the editing helpers below; they never mutate a graph they were handed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import IRError

# dtype names follow numpy ("float32", "int64", "bool"); short forms are for the text dump.
DTYPE_SHORT = {
    "float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8",
    "bool": "bool",
}


# No real tensor comes near this; bigger sizes are corrupt models (and would overflow int64
# byte counts in numpy and TVM), so they are refused where a type is made.
MAX_TENSOR_BYTES = 1 << 40
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4,
            "int16": 2, "int8": 1, "uint8": 1, "bool": 1}


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if any(not isinstance(d, int | np.integer) or d < 0 for d in self.shape):
            raise IRError(f"invalid shape {list(self.shape)}: dimensions must be integers >= 0")
        nbytes = ITEMSIZE.get(self.dtype, 8)
        for d in self.shape:
            nbytes *= int(d)
        if nbytes > MAX_TENSOR_BYTES:
            raise IRError(f"a {self.dtype} tensor of shape {list(self.shape)} would take "
                          f"{nbytes:.3g} bytes (limit {MAX_TENSOR_BYTES:.3g}); the model's "
                          "sizes are corrupt")

    def __str__(self) -> str:
        return f"{DTYPE_SHORT.get(self.dtype, self.dtype)}[{','.join(map(str, self.shape))}]"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(eq=False)
class Value:
    name: str
    type: TensorType
    producer: Node | None = None
    data: np.ndarray | None = None  # set for constants
    users: list[Node] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def is_const(self) -> bool:
        return self.data is not None

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    op: str
    inputs: list[Value]
    outputs: list[Value]
    attrs: dict[str, Any]
    scope: str = ""  # module path, e.g. "encoder.layer.3.attention"
    name: str = ""

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise IRError(f"node {self.name} ({self.op}) has {len(self.outputs)} outputs")
        return self.outputs[0]

    def __repr__(self) -> str:
        return f"Node({self.name}: {self.op})"


class Graph:
    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.constants: list[Value] = []
        self._names: set[str] = set()  # value names
        self._node_names: set[str] = set()
        self._counter = itertools.count()

    # ---- construction -------------------------------------------------------------------

    def unique_name(self, hint: str, taken: set[str] | None = None) -> str:
        taken = self._names if taken is None else taken
        base = _sanitize(hint) or "v"
        name = base
        while name in taken:
            name = f"{base}_{next(self._counter)}"
        taken.add(name)
        return name

    def add_input(self, name: str, shape: Sequence[int], dtype: str) -> Value:
        value = Value(self.unique_name(name), TensorType(tuple(int(d) for d in shape), dtype))
        self.inputs.append(value)
        return value

    def add_const(self, array: Any, name: str = "const") -> Value:
        data = np.asarray(array)
        if not data.flags.c_contiguous:
            data = data.copy(order="C")  # (np.ascontiguousarray would turn 0-d into 1-d)
        value = Value(self.unique_name(name), TensorType(tuple(data.shape), str(data.dtype)))
        value.data = data
        self.constants.append(value)
        return value

    def add_node(
        self,
        op: str,
        inputs: Sequence[Value],
        attrs: dict[str, Any] | None = None,
        scope: str = "",
        name: str | None = None,
        before: Node | None = None,
    ) -> Node:
        """Appends a node (or inserts it before `before`, keeping topological order when its
        inputs are defined earlier); output types come from the op's shape inference."""
        from .ops import get_schema

        schema = get_schema(op)
        attrs = schema.normalize_attrs(attrs or {})
        out_types = schema.infer([v.type for v in inputs], attrs)
        node = Node(op, list(inputs), [], attrs, scope,
                    self.unique_name(name or op, self._node_names))
        for i, t in enumerate(out_types):
            suffix = "" if len(out_types) == 1 else f"_{i}"
            node.outputs.append(Value(self.unique_name(node.name + suffix), t, producer=node))
        for v in inputs:
            v.users.append(node)
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)
        return node

    def op(self, op: str, *inputs: Value, scope: str = "", before: Node | None = None,
           **attrs: Any) -> Value:
        """Shorthand for single-output nodes: `g.op("add", a, b)`."""
        return self.add_node(op, inputs, attrs, scope, before=before).output

    def set_outputs(self, outputs: Iterable[Value]) -> None:
        self.outputs = list(outputs)

    # ---- editing ------------------------------------------------------------------------

    def replace_all_uses(self, old: Value, new: Value) -> None:
        for node in list(old.users):
            node.inputs = [new if v is old else v for v in node.inputs]
            new.users.append(node)
        old.users = []
        self.outputs = [new if v is old else v for v in self.outputs]

    def remove_dead(self) -> int:
        """Removes nodes and constants nothing reaches from the outputs; returns how many."""
        live: set[int] = {id(v) for v in self.outputs}
        kept: list[Node] = []
        for node in reversed(self.nodes):
            if any(id(v) in live for v in node.outputs):
                kept.append(node)
                live.update(id(v) for v in node.inputs)
            else:
                for v in node.inputs:
                    v.users = [u for u in v.users if u is not node]
        removed = len(self.nodes) - len(kept)
        self.nodes = kept[::-1]
        consts = [c for c in self.constants if id(c) in live]
        removed += len(self.constants) - len(consts)
        self.constants = consts
        return removed

    def copy(self) -> Graph:
        """A structural copy; constant arrays are shared (they are never mutated in place)."""
        g = Graph(self.name)
        mapping: dict[int, Value] = {}

        def clone(v: Value) -> Value:
            nv = Value(v.name, v.type, data=v.data)
            g._names.add(v.name)
            mapping[id(v)] = nv
            return nv

        g.inputs = [clone(v) for v in self.inputs]
        g.constants = [clone(v) for v in self.constants]
        for node in self.nodes:
            n = Node(node.op, [mapping[id(v)] for v in node.inputs], [], dict(node.attrs),
                     node.scope, node.name)
            g._node_names.add(node.name)
            for v in n.inputs:
                v.users.append(n)
            for v in node.outputs:
                nv = clone(v)
                nv.producer = n
                n.outputs.append(nv)
            g.nodes.append(n)
        g.outputs = [mapping[id(v)] for v in self.outputs]
        return g

    # ---- queries ------------------------------------------------------------------------

    def values(self) -> Iterable[Value]:
        yield from self.inputs
        yield from self.constants
        for node in self.nodes:
            yield from node.outputs

    def find(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise IRError(f"no value named %{name} in graph {self.name}")

    def weight_bytes(self) -> int:
        return sum(c.data.nbytes for c in self.constants)

    def dump(self, with_scopes: bool = True) -> str:
        from .text import dump

        return dump(self, with_scopes=with_scopes)

    def __repr__(self) -> str:
        return (f"Graph({self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes, "
                f"{len(self.constants)} constants)")


def _sanitize(name: str) -> str:
    out = "".join(c if c.isalnum() or c in "_." else "_" for c in name)
    return out.strip("_")
