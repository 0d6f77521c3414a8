"""Mutation fuzzing of the ONNX frontend: every malformed model must end in a successful
capture or a `HonerError` that names the problem — never a crash, a hang, unbounded memory or
an exception from inside onnx, numpy or TVM.

Seeds are the real models in the onnx wheel's test data and a few models exported here. Each
case mutates one seed (protobuf bytes, or the model's structure: attributes, value names,
cycles, dimensions, dtypes, domains, opsets) and runs it in a forked child with a time and
address-space limit, through capture, `verify`, the IR interpreter and Relax lowering.

    python -m honer.benchmarks.fuzz --cases 20000       # the long run; figures in results/
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .harness import save

ONNX_TEST_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
SEED_SUITES = ("pytorch-operator", "pytorch-converted", "simple", "light")
HUGE = 1 << 40
INTERPRET_LIMIT = 1 << 24  # elements per value


def seed_models(limit_bytes: int = 8 << 20) -> list[Path]:
    """The onnx wheel's test models (each under `limit_bytes`, so cases stay fast)."""
    paths = sorted(p for suite in SEED_SUITES for p in (ONNX_TEST_DATA / suite).rglob("*.onnx"))
    return [p for p in paths if p.stat().st_size <= limit_bytes]


# ---- mutators: each changes one thing and says what --------------------------------------

Mutator = Callable[[random.Random, onnx.ModelProto], str]


def _pick_node(rng: random.Random, m: onnx.ModelProto) -> onnx.NodeProto | None:
    return rng.choice(m.graph.node) if len(m.graph.node) else None


def drop_attribute(rng, m):
    nodes = [n for n in m.graph.node if n.attribute]
    if not nodes:
        return "no-op"
    n = rng.choice(nodes)
    a = n.attribute[rng.randrange(len(n.attribute))]
    n.attribute.remove(a)
    return f"drop attribute {a.name} of {n.op_type}"


def corrupt_attribute(rng, m):
    nodes = [n for n in m.graph.node if n.attribute]
    if not nodes:
        return "no-op"
    n = rng.choice(nodes)
    a = rng.choice(n.attribute)
    choice = rng.randrange(5)
    if choice == 0 and a.ints:
        a.ints[rng.randrange(len(a.ints))] = rng.choice([-HUGE, -1, 0, HUGE, 2**63 - 1])
    elif choice == 1:
        a.i = rng.choice([-HUGE, -7, -1, 0, 3, 99, HUGE])
        a.type = onnx.AttributeProto.INT
    elif choice == 2:  # the right name, the wrong kind
        a.type = rng.choice([onnx.AttributeProto.STRING, onnx.AttributeProto.FLOATS,
                             onnx.AttributeProto.TENSOR, onnx.AttributeProto.GRAPH])
    elif choice == 3:
        a.f = rng.choice([float("nan"), float("inf"), -1e30, 0.0])
    else:
        del a.ints[:]
        a.ints.extend(rng.randint(-4, 4) for _ in range(rng.randrange(6)))
        a.type = onnx.AttributeProto.INTS
    return f"corrupt attribute {a.name} of {n.op_type} (variant {choice})"


def dangling_input(rng, m):
    n = _pick_node(rng, m)
    if n is None or not n.input:
        return "no-op"
    k = rng.randrange(len(n.input))
    n.input[k] = rng.choice(["", "does_not_exist", n.output[0] if n.output else "x"])
    return f"input {k} of {n.op_type} -> {n.input[k]!r}"


def duplicate_output(rng, m):
    if len(m.graph.node) < 2:
        return "no-op"
    a, b = rng.sample(list(m.graph.node), 2)
    if not a.output or not b.output:
        return "no-op"
    b.output[0] = a.output[0]
    return f"{b.op_type} now also produces {a.output[0]!r}"


def make_cycle(rng, m):
    nodes = list(m.graph.node)
    if len(nodes) < 2:
        return "no-op"
    i = rng.randrange(len(nodes) - 1)
    j = rng.randrange(i + 1, len(nodes))
    if not nodes[i].input or not nodes[j].output:
        return "no-op"
    nodes[i].input[0] = nodes[j].output[0]
    return f"{nodes[i].op_type} reads {nodes[j].output[0]!r}, produced later"


def reorder_nodes(rng, m):
    nodes = list(m.graph.node)
    rng.shuffle(nodes)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return "nodes shuffled"


def bad_dimension(rng, m):
    values = list(m.graph.input) + list(m.graph.output)
    if not values:
        return "no-op"
    v = rng.choice(values)
    dims = v.type.tensor_type.shape.dim
    if not dims:
        return "no-op"
    d = dims[rng.randrange(len(dims))]
    d.dim_value = rng.choice([-5, -1, 0, HUGE, 2**62])
    return f"dim of {v.name} -> {d.dim_value}"


def bad_initializer(rng, m):
    inits = list(m.graph.initializer)
    if not inits:
        return "no-op"
    t = rng.choice(inits)
    choice = rng.randrange(4)
    if choice == 0 and t.dims:
        t.dims[rng.randrange(len(t.dims))] = rng.choice([-3, 0, HUGE, 2**62])
    elif choice == 1:
        t.data_type = rng.choice([0, 8, 16, 99, onnx.TensorProto.INT8, onnx.TensorProto.INT64])
    elif choice == 2:
        t.raw_data = t.raw_data[: len(t.raw_data) // 2]
    else:
        t.dims.append(rng.choice([2, 7]))
    return f"initializer {t.name} variant {choice}"


def bad_dtype(rng, m):
    values = list(m.graph.input) + list(m.graph.output)
    if not values:
        return "no-op"
    v = rng.choice(values)
    v.type.tensor_type.elem_type = rng.choice([0, 3, 7, 9, 10, 11, 14, 99])
    return f"elem_type of {v.name} -> {v.type.tensor_type.elem_type}"


def unknown_domain_or_opset(rng, m):
    choice = rng.randrange(4)
    if choice == 0 and len(m.graph.node):
        n = rng.choice(m.graph.node)
        n.domain = "com.example.unknown"
        return f"{n.op_type} in an unknown domain"
    if choice == 1:
        for o in m.opset_import:
            o.version = rng.choice([0, 1, 999, -3])
        return "opset version changed"
    if choice == 2:
        del m.opset_import[:]
        return "opset_import removed"
    n = _pick_node(rng, m)
    if n is None:
        return "no-op"
    n.op_type = rng.choice(["Conv", "Gemm", "Reshape", "Concat", "NoSuchOp", "Loop", "If"])
    return f"op_type -> {n.op_type}"


def drop_node_or_output(rng, m):
    if rng.random() < 0.5 and len(m.graph.node):
        n = rng.choice(m.graph.node)
        m.graph.node.remove(n)
        return f"node {n.op_type} removed"
    if len(m.graph.output):
        m.graph.output.remove(rng.choice(m.graph.output))
        return "a graph output removed"
    return "no-op"


STRUCTURAL: tuple[Mutator, ...] = (
    drop_attribute, corrupt_attribute, dangling_input, duplicate_output, make_cycle,
    reorder_nodes, bad_dimension, bad_initializer, bad_dtype, unknown_domain_or_opset,
    drop_node_or_output,
)


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    buf = bytearray(data)
    choice = rng.randrange(3)
    if choice == 0:
        cut = rng.randrange(len(buf) + 1)
        return bytes(buf[:cut]), f"truncated at {cut}/{len(buf)}"
    if choice == 1:
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        return bytes(buf), "random bytes overwritten"
    at = rng.randrange(len(buf) + 1)
    return bytes(buf[:at]) + rng.randbytes(rng.randint(1, 64)) + bytes(buf[at:]), \
        "random bytes inserted"


def make_case(rng: random.Random, seed_bytes: bytes) -> tuple[bytes, str]:
    if rng.random() < 0.3:
        return mutate_bytes(rng, seed_bytes)
    model = onnx.ModelProto()
    model.ParseFromString(seed_bytes)
    what = [rng.choice(STRUCTURAL)(rng, model) for _ in range(rng.choice((1, 1, 2)))]
    return model.SerializeToString(), "; ".join(what)


# ---- running one case in a child process ------------------------------------------------


@dataclass
class Outcome:
    kind: str  # ok | error (a HonerError) | bug (another exception) | crash | hang
    detail: str = ""


def exercise(path: Path) -> None:
    """What a case goes through: capture, verify, interpret on random inputs, Relax lowering."""
    from ..codegen.relax_lower import lower
    from ..frontend import capture
    from ..ir import interpret, verify

    graph = capture(path)
    verify(graph)
    # legal but huge models (a 2^30-row input) are compiled, not run here
    if max((v.type.size for n in graph.nodes for v in n.outputs), default=0) <= INTERPRET_LIMIT:
        rng = np.random.default_rng(0)
        inputs = [_random_input(rng, v.shape, v.dtype) for v in graph.inputs]
        with np.errstate(all="ignore"):
            interpret(graph, inputs)
    lower(graph)


def _random_input(rng: np.random.Generator, shape: tuple, dtype: str) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 3, shape).astype(dtype)


def _child(path: Path, write_fd: int, memory_limit: int) -> None:
    from ..errors import HonerError

    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    try:
        exercise(path)
        outcome = Outcome("ok")
    except HonerError as e:
        outcome = Outcome("error", f"{type(e).__name__}: {str(e)[:300]}")
    except BaseException as e:  # exactly what the fuzzer is looking for
        frame = traceback.extract_tb(e.__traceback__)[-1]
        outcome = Outcome("bug", f"{type(e).__name__}: {str(e)[:200]} "
                                 f"[{Path(frame.filename).name}:{frame.lineno}]")
    os.write(write_fd, json.dumps(outcome.__dict__).encode())
    os._exit(0)


def run_case(data: bytes, workdir: Path, timeout: float, memory_limit: int) -> Outcome:
    path = workdir / "case.onnx"
    path.write_bytes(data)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        _child(path, write_fd, memory_limit)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.002)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)
        return Outcome("hang", f"no result after {timeout:.0f} s")
    with os.fdopen(read_fd, "rb") as f:
        message = f.read()
    if os.WIFSIGNALED(status):
        return Outcome("crash", f"killed by signal {os.WTERMSIG(status)}")
    if not message:
        return Outcome("crash", f"exited with status {os.WEXITSTATUS(status)} and no result")
    return Outcome(**json.loads(message))


@dataclass
class Summary:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # HonerError class -> count
    findings: list[dict[str, str]] = field(default_factory=list)  # bug/crash/hang cases

    def to_json(self) -> dict[str, Any]:
        return {"cases": self.cases, "outcomes": dict(self.outcomes),
                "errors": dict(self.errors), "findings": self.findings}


def fuzz(cases: int, seed: int = 0, timeout: float = 30.0, memory_limit: int = 6 << 30,
         seeds: list[Path] | None = None, keep: Path | None = None) -> Summary:
    """Runs `cases` mutated models; `keep` saves each finding's model bytes for replay."""
    rng = random.Random(seed)
    seed_paths = seeds if seeds is not None else seed_models()
    seed_bytes = {p: p.read_bytes() for p in seed_paths}
    summary = Summary()
    sys.stdout.flush()  # a forked child must not inherit unflushed output
    with tempfile.TemporaryDirectory(prefix="honer-fuzz-") as tmp:
        for k in range(cases):
            source = rng.choice(seed_paths)
            data, what = make_case(rng, seed_bytes[source])
            outcome = run_case(data, Path(tmp), timeout, _address_space() + memory_limit)
            summary.cases += 1
            summary.outcomes[outcome.kind] += 1
            if outcome.kind == "error":
                summary.errors[outcome.detail.split(":")[0]] += 1
            elif outcome.kind != "ok":
                finding = {"case": k, "seed": source.parent.name + "/" + source.name,
                           "mutation": what, "kind": outcome.kind, "detail": outcome.detail}
                summary.findings.append(finding)
                if keep is not None:
                    keep.mkdir(parents=True, exist_ok=True)
                    (keep / f"case{k}.onnx").write_bytes(data)
    return summary


def _address_space() -> int:
    """This process's mapped size: the child's limit is on top of it (TVM maps a lot)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--keep", type=Path, help="save each finding's model here")
    args = ap.parse_args(argv)
    import honer.codegen.relax_lower  # noqa: F401 - import TVM once, before forking

    start = time.time()
    summary = fuzz(args.cases, args.seed, args.timeout, keep=args.keep)
    record = {"summary": summary.to_json(), "seconds": round(time.time() - start, 1),
              "seed": args.seed, "seed_models": len(seed_models())}
    save("fuzz", record)
    print(json.dumps(summary.to_json()["outcomes"]), f"{summary.cases} cases,",
          f"{record['seconds']} s")
    for f in summary.findings[:30]:
        print(f" case {f['case']} {f['kind']}: {f['seed']} [{f['mutation']}] {f['detail']}")


if __name__ == "__main__":
    main()
