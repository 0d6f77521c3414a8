"""The standalone ahead-of-time form: a model as C host code over TVM-built kernels.

After Relax's CPU pipeline up to static memory planning (codegen.build.plan_static), `main` is a
flat list of storage allocations, tensor views at offsets into them, reshapes (views again) and
kernel calls. `plan` turns that into an AotPlan: every tensor a kernel sees has a place (arena,
weights file, constants blob, an input or an output buffer, plus a byte offset), the calls are
listed in order, and outputs that are views of something else are copied out at the end.
`emit_c` writes the plan as data (model.c) for the runtime's executor (runtime/honer_rt.c) and
a header (model.h) with the entry point `honer_run`.

Weights are read from weights.bin where runtime/artifact.write_weights puts them (in the order
`main` takes them, each 64-byte aligned); the plan records those offsets and the loader checks
them against the manifest, so a weights file laid out differently is refused, not misread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx

from ..errors import BuildError

ALIGN = 64  # arena, constants and weights: kernels may assume 64-byte aligned buffers
BASES = {"arena": "HONER_ARENA", "weights": "HONER_WEIGHTS", "consts": "HONER_CONSTS",
         "input": "HONER_INPUT", "output": "HONER_OUTPUT"}
# functions kernels may call by name that runtime/honer_rt.c provides (TVM's contrib sort)
RUNTIME_FUNCTIONS = frozenset({"tvm.contrib.sort.argsort", "tvm.contrib.sort.sort"})


@dataclass(frozen=True)
class Region:
    """A block of memory: `kind` in {input, weight, storage, alloc, const} and its number."""
    kind: str
    index: int


@dataclass(frozen=True)
class View:
    """A tensor: `nbytes`-long bytes at `offset` in `region`, read as `shape` x `dtype`."""
    region: Region
    offset: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * _itemsize(self.dtype)


@dataclass(frozen=True)
class Place:
    base: str  # a key of BASES
    index: int  # which input / output (0 otherwise)
    offset: int


@dataclass
class AotPlan:
    inputs: list[tuple[tuple[int, ...], str]]
    outputs: list[tuple[tuple[int, ...], str]]
    tensors: list[tuple[Place, tuple[int, ...], str]]  # what kernels receive, by index
    calls: list[tuple[str, tuple[int, ...]]]  # (kernel, tensor indices)
    copies: list[tuple[int, int, int]]  # (tensor, output, nbytes) run after the calls
    arena_bytes: int
    weights: list[tuple[int, int]]  # (offset in weights.bin, nbytes) per weight
    consts: bytes  # the constants `main` passes to kernels, each 64-byte aligned
    kernels: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"kernels": len(self.kernels), "calls": len(self.calls),
                "tensors": len(self.tensors), "arena_bytes": self.arena_bytes,
                "constant_bytes": len(self.consts), "output_copies": len(self.copies)}


def _itemsize(dtype: str) -> int:
    return 1 if dtype == "bool" else max(1, tvm.runtime.DataType(dtype).bits // 8)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _ints(shape_expr: Any) -> tuple[int, ...]:
    values = shape_expr.values if hasattr(shape_expr, "values") else shape_expr
    try:
        return tuple(int(v) for v in values)
    except TypeError:
        raise BuildError(f"the standalone form needs static shapes, got {shape_expr}") from None


def _op_name(call: relax.Call) -> str:
    op = call.op
    if isinstance(op, tvm.ir.Op):
        return op.name
    if isinstance(op, tvm.ir.GlobalVar):
        return "kernel"
    return type(op).__name__


class _Planner:
    """Walks `main` once, giving every bound variable a View."""

    def __init__(self, main: relax.Function, num_inputs: int):
        self.views: dict[relax.Var, View | tuple] = {}
        self.storage_bytes: dict[int, int] = {}
        self.alloc_bytes: dict[int, int] = {}
        self.consts: list[np.ndarray] = []
        self.calls: list[tuple[str, tuple[View, ...]]] = []
        self.weights: list[View] = []
        self.inputs: list[View] = []
        for i, p in enumerate(main.params):
            kind, index = ("input", i) if i < num_inputs else ("weight", i - num_inputs)
            view = View(Region(kind, index), 0, _ints(p.ty.shape), str(p.ty.dtype))
            self.views[p] = view
            (self.inputs if kind == "input" else self.weights).append(view)

    def tensor(self, expr: relax.Expr) -> View:
        if isinstance(expr, relax.Var):
            view = self.views.get(expr)
            if isinstance(view, View):
                return view
            raise BuildError(f"standalone form: {expr.name_hint} is not a planned tensor")
        if isinstance(expr, tvm.ir.GenericConst) and isinstance(expr.value, tvm.runtime.Tensor):
            data = expr.value.numpy()
            self.consts.append(data)
            return View(Region("const", len(self.consts) - 1), 0, tuple(data.shape),
                        str(data.dtype))
        raise BuildError(f"standalone form: unsupported argument {type(expr).__name__}: {expr}")

    def bind(self, var: relax.Var, value: relax.Expr) -> None:
        if isinstance(value, relax.Var):
            self.views[var] = self.views[value]
        elif isinstance(value, relax.Tuple):
            self.views[var] = tuple(self.tensor(f) for f in value.fields)
        elif isinstance(value, relax.TupleGetItem):
            self.views[var] = self.views[value.tuple_value][value.index]
        elif isinstance(value, relax.Call):
            self.bind_call(var, value)
        else:
            raise BuildError(f"standalone form: unsupported binding {type(value).__name__} "
                             f"for {var.name_hint}")

    def bind_call(self, var: relax.Var, call: relax.Call) -> None:
        name = _op_name(call)
        args = call.args
        if name == "relax.memory.alloc_storage":
            index = len(self.storage_bytes)
            self.storage_bytes[index] = int(_ints(args[0])[0])
            self.views[var] = View(Region("storage", index), 0, (), "uint8")
        elif name == "relax.memory.alloc_tensor":
            storage = self.tensor(args[0])
            self.views[var] = View(storage.region, int(args[1]), _ints(args[2]),
                                   str(args[3].value))
        elif name == "relax.builtin.alloc_tensor":
            index = len(self.alloc_bytes)
            view = View(Region("alloc", index), 0, _ints(args[0]), str(args[1].value))
            self.alloc_bytes[index] = view.nbytes
            self.views[var] = view
        elif name == "relax.reshape":  # a view: same bytes, another shape
            src = self.tensor(args[0])
            self.views[var] = View(src.region, src.offset, _ints(var.ty.shape), src.dtype)
        elif name == "kernel":
            self.calls.append((call.op.name_hint, tuple(self.tensor(a) for a in args)))
        else:
            raise BuildError(f"standalone form: `main` calls {name}, which has no standalone "
                             "lowering (only kernels, allocations and reshapes do)")


def _check_called_functions(mod: tvm.IRModule) -> None:
    """Kernels that call a packed function by name need it from the C runtime: refuse the
    build, naming them, rather than link a library that fails (or crashes) when run."""
    missing: dict[str, set[str]] = {}
    for gv, func in mod.functions.items():
        # TVM 0.27 exposes no TIR visitor to Python; the printed form names every call
        text = str(func) if isinstance(func, tirx.PrimFunc) else ""
        for name in re.findall(r'call_packed(?:_lowered)?\("([^"]+)"', text):
            if name not in RUNTIME_FUNCTIONS:
                missing.setdefault(name, set()).add(gv.name_hint)
    if missing:
        raise BuildError("standalone form: kernels call functions honer's C runtime lacks: "
                         + "; ".join(f"{name} (in {', '.join(sorted(kernels))})"
                                     for name, kernels in sorted(missing.items())))


def plan(mod: tvm.IRModule, num_inputs: int) -> AotPlan:
    """The AotPlan of a module after static memory planning (see codegen.build.plan_static)."""
    _check_called_functions(mod)
    main = mod["main"]
    planner = _Planner(main, num_inputs)
    for block in main.body.blocks:
        for binding in block.bindings:
            planner.bind(binding.var, binding.value)
    result = planner.views.get(main.body.body) if isinstance(main.body.body, relax.Var) \
        else planner.tensor(main.body.body)
    outputs = list(result) if isinstance(result, tuple) else [result]
    return _layout(planner, outputs, num_inputs)


def _layout(p: _Planner, outputs: list[View], num_inputs: int) -> AotPlan:
    places: dict[Region, Place] = {}
    # an output freshly allocated by `main` is written straight into the caller's buffer
    for k, out in enumerate(outputs):
        if out.region.kind == "alloc" and out.region not in places and out.offset == 0:
            places[out.region] = Place("output", k, 0)
    arena = 0
    for kind, sizes in (("storage", p.storage_bytes), ("alloc", p.alloc_bytes)):
        for index, nbytes in sizes.items():
            if Region(kind, index) not in places:
                places[Region(kind, index)] = Place("arena", 0, arena)
                arena += _align(nbytes)
    weights, offset = [], 0
    for w in p.weights:  # write_weights' layout: back to back, 64-byte aligned
        offset = _align(offset)
        places[w.region] = Place("weights", 0, offset)
        weights.append((offset, w.nbytes))
        offset += w.nbytes
    blob = bytearray()
    for i, data in enumerate(p.consts):
        blob.extend(b"\0" * (_align(len(blob)) - len(blob)))
        places[Region("const", i)] = Place("consts", 0, len(blob))
        blob.extend(np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes())
    for i in range(num_inputs):
        places[Region("input", i)] = Place("input", i, 0)

    slots: dict[tuple[Place, tuple[int, ...], str], int] = {}

    def slot(view: View) -> int:
        base = places[view.region]
        key = (Place(base.base, base.index, base.offset + view.offset), view.shape, view.dtype)
        return slots.setdefault(key, len(slots))

    calls = [(kernel, tuple(slot(v) for v in args)) for kernel, args in p.calls]
    copies = []
    for k, out in enumerate(outputs):
        if places[out.region] != Place("output", k, 0):
            copies.append((slot(out), k, out.nbytes))
    return AotPlan(inputs=[(v.shape, v.dtype) for v in p.inputs],
                   outputs=[(o.shape, o.dtype) for o in outputs],
                   tensors=list(slots), calls=calls, copies=copies, arena_bytes=arena,
                   weights=weights, consts=bytes(blob),
                   kernels=sorted({kernel for kernel, _ in p.calls}))


# ---- C emission -------------------------------------------------------------------------------

def _c_dtype(dtype: str) -> str:
    dt = tvm.runtime.DataType(dtype)
    return f"{{{int(dt.type_code)}, {int(dt.bits)}, {int(dt.lanes)}}}"


def _c_array(ctype: str, name: str, values: list[str], per_line: int = 16) -> str:
    if not values:
        values = ["0"]  # C has no empty arrays; counts elsewhere say none is used
    lines = [", ".join(values[i:i + per_line]) for i in range(0, len(values), per_line)]
    return f"static {ctype} {name}[] = {{\n  " + ",\n  ".join(lines) + "\n};\n"


def _consts_c(blob: bytes) -> str:
    """The constants as 64-byte aligned 64-bit words (a C array compiles with any toolchain,
    the cross compilers included, unlike an assembler .incbin)."""
    padded = blob + b"\0" * ((-len(blob)) % 8 or 0)
    words = np.frombuffer(padded, dtype="<u8") if padded else np.zeros(1, "<u8")
    body = ",".join(f"0x{int(w):x}" for w in words)
    return (f"static const uint64_t honer_consts[{len(words)}] __attribute__((aligned(64))) = "
            f"{{{body}}};\n")


def emit_c(plan: AotPlan) -> str:
    """model.c: the plan as static tables for honer_rt_execute, and `honer_run`."""
    out = ['/* Generated by honer: the model\'s static call list and memory plan. */',
           '#include "honer_rt.h"', '#include "model.h"', ""]
    out += [f"extern int __tvm_ffi_{k}(void*, const honer_any_t*, int32_t, honer_any_t*);"
            for k in plan.kernels]
    out.append("")
    for i, (_, shape, _) in enumerate(plan.tensors):
        out.append(f"static int64_t S{i}[] = {{{', '.join(map(str, shape)) or '1'}}};")
    tensors = [f"{{NULL, {{1, 0}}, {len(shape)}, {_c_dtype(dtype)}, S{i}, NULL, 0}}"
               for i, (_, shape, dtype) in enumerate(plan.tensors)]
    out.append(_c_array("honer_tensor_t", "tensors", tensors, 1))
    places = [f"{{{BASES[p.base]}, {p.index}, {p.offset}u}}" for p, _, _ in plan.tensors]
    out.append(_c_array("const honer_place_t", "places", places, 4))
    for c, (_, args) in enumerate(plan.calls):
        out.append(f"static const int32_t A{c}[] = {{{', '.join(map(str, args)) or '0'}}};")
    calls = [f'{{__tvm_ffi_{k}, "{k}", {len(args)}, A{c}}}'
             for c, (k, args) in enumerate(plan.calls)]
    out.append(_c_array("const honer_call_t", "calls", calls, 1))
    copies = [f"{{{t}, {o}, {n}u}}" for t, o, n in plan.copies]
    out.append(_c_array("const honer_copy_t", "copies", copies, 4) if copies else
               "static const honer_copy_t copies[1];\n")
    nbytes = [str(View(Region("input", 0), 0, s, d).nbytes) + "u" for s, d in plan.inputs]
    out.append(_c_array("const uint64_t", "input_nbytes", nbytes))
    nbytes = [str(View(Region("output", 0), 0, s, d).nbytes) + "u" for s, d in plan.outputs]
    out.append(_c_array("const uint64_t", "output_nbytes", nbytes))
    out.append(_consts_c(plan.consts))
    weights_bytes = max((o + n for o, n in plan.weights), default=0)
    out.append(f"""static const honer_model_t model = {{
  {len(plan.inputs)}, {len(plan.outputs)}, {len(plan.tensors)}, {len(plan.calls)}, \
{len(plan.copies)},
  input_nbytes, output_nbytes, {plan.arena_bytes}u, {weights_bytes}u,
  tensors, places, calls, copies, (const unsigned char*)honer_consts}};

HONER_API int honer_run(void* const* inputs, void* const* outputs, const void* weights,
                        void* arena) {{
  return honer_rt_execute(&model, inputs, outputs, weights, arena);
}}

HONER_API const honer_model_t* honer_model(void) {{ return &model; }}
""")
    return "\n".join(out)


def emit_header(plan: AotPlan, model_name: str = "model") -> str:
    """model.h: the entry point and the model's signature, for C callers."""
    weights_bytes = max((o + n for o, n in plan.weights), default=0)
    sig = [f" *   input {i}: {d}{list(s)}" for i, (s, d) in enumerate(plan.inputs)]
    sig += [f" *   output {i}: {d}{list(s)}" for i, (s, d) in enumerate(plan.outputs)]
    return f"""/* Generated by honer: {model_name}, standalone ahead-of-time form.
{chr(10).join(sig)}
 * honer_run(inputs, outputs, weights, arena): `inputs`/`outputs` point to each tensor's
 * row-major data (64-byte aligned), `weights` to the contents of weights.bin, `arena` to
 * HONER_ARENA_BYTES of 64-byte aligned scratch. Returns 0, or nonzero with honer_last_error().
 * Runs are serialized; kernels use honer_set_num_threads() threads (default: one per core).
 */
#ifndef HONER_MODEL_H_
#define HONER_MODEL_H_
#include "honer_rt.h"

#define HONER_NUM_INPUTS {len(plan.inputs)}
#define HONER_NUM_OUTPUTS {len(plan.outputs)}
#define HONER_ARENA_BYTES {plan.arena_bytes}u
#define HONER_WEIGHTS_BYTES {weights_bytes}u

HONER_API int honer_run(void* const* inputs, void* const* outputs, const void* weights,
                        void* arena);
HONER_API const honer_model_t* honer_model(void);

#endif
"""
