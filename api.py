"""The public API: `honer.compile` and `honer.load`, with the pipeline as one function."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import HonerError
from .ir import Graph, interpret, verify
from .ir.analysis import index_bounds
from .passes.base import Calibration
from .runtime import artifact
from .runtime.loader import LoadedModel, load

if TYPE_CHECKING:
    from .codegen.tuning import TuneConfig

SCHEMA_REPORT = "honer.report/1"


@dataclass
class CompiledModel:
    """A compiled model: call it on numpy arrays; `.save(path)` writes the artifact."""

    loaded: LoadedModel
    graph: Graph
    report: dict[str, Any]
    _workdir: tempfile.TemporaryDirectory = field(repr=False)

    def __call__(self, *inputs: np.ndarray, **named: np.ndarray) -> np.ndarray | list:
        return self.loaded(*inputs, **named)

    def run(self, *inputs: np.ndarray, **named: np.ndarray) -> list[np.ndarray]:
        return self.loaded.run(*inputs, **named)

    @property
    def manifest(self) -> dict[str, Any]:
        return self.loaded.manifest

    def save(self, path: str | Path) -> Path:
        """Copies the artifact to `path` atomically (a temporary directory, then a rename)."""
        return artifact.copy_artifact(self.loaded.path, Path(path))


def compile(  # noqa: A001 - the public name users expect
    model: Any,
    example_inputs: Sequence[Any] | Any | None = None,
    target: str = "host",
    passes: Sequence[Any] = (),
    calibration: Sequence[Sequence[np.ndarray]] | None = None,
    evaluation: tuple[Sequence[Sequence[np.ndarray]], Sequence[np.ndarray]] | None = None,
    check: bool = True,
    progress: Callable[[str], None] | None = None,
    tune: TuneConfig | None = None,
) -> CompiledModel:
    """Captures, optimizes, builds and packages `model` for `target`.

    `tune` tunes the kernels with MetaSchedule for up to `tune.budget_s` seconds (kernels
    already in `tune.database` are reused, budget 0 only reads it) and builds each kernel with
    whichever of tuned and rule schedules measured faster.

    `calibration` (input tuples) feeds the passes that calibrate; `evaluation` (input tuples,
    and the labels of each) adds the top-1 before and after to every approximate pass's report.

    `check` runs the compiled model once on the example inputs and records the max error
    against the reference (PyTorch eager for torch models, the IR interpreter otherwise).
    """
    from . import frontend, targets
    from . import passes as passes_mod

    say = progress or (lambda msg: None)
    tgt = targets.get_target(target)
    tgt.check_toolchain()  # before any work, so a missing tool costs nothing
    timings: dict[str, float] = {}

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        say(stage)
        start = time.perf_counter()
        result = fn()
        timings[stage] = round(time.perf_counter() - start, 3)
        return result

    examples = _as_tuple(example_inputs)
    graph = timed("capture", lambda: frontend.capture(model, examples))
    verify(graph)
    captured = graph
    calib = Calibration([tuple(s) for s in calibration]) if calibration else None
    evals = passes_mod.Evaluation([tuple(s) for s in evaluation[0]],
                                  [np.asarray(y) for y in evaluation[1]]) if evaluation else None
    graph, pass_reports = timed("passes", lambda: passes_mod.run_pipeline(graph, passes, calib,
                                                                          say, evals))
    lowered = timed("lower", lambda: tgt.lower(graph))
    tuning = None
    if tune is not None and tune.budget_s > 0:
        tuning = timed("tune", lambda: tgt.tune(lowered, tune, say))
    workdir = tempfile.TemporaryDirectory(prefix="honer-")
    work = Path(workdir.name)
    out_dir = work / "artifact"

    build_facts: dict[str, Any] = {}

    bounds = index_bounds(graph)

    def fill(tmp: Path) -> dict[str, Any]:
        build = timed("build", lambda: tgt.build(lowered, tmp, work, tune))
        build_facts.update(build.report)
        index = artifact.write_weights(tmp / artifact.WEIGHTS,
                                       lowered.stored_params(build.weight_dtypes))
        for entry, layout in zip(index, lowered.param_layouts):
            entry["layout"] = layout
        (tmp / "graph.txt").write_text(graph.dump() + "\n")
        return {
            "model_sha256": graph_sha256(captured),
            "target": {"name": tgt.name, "tvm_target": tgt.tvm_target(), "form": build.form,
                       **build.manifest},
            "tools": tool_versions(),
            "inputs": [_spec(v, bounds.get(v.name)) for v in graph.inputs],
            "outputs": [_spec(v) for v in graph.outputs],
            "weights": index,
            "passes": [r.to_json() for r in pass_reports],
        }

    artifact.write_artifact(out_dir, fill)
    loaded = load(out_dir, lazy=not tgt.can_run_here())
    report = {
        "schema": SCHEMA_REPORT,
        "target": tgt.name,
        "graph": graph_summary(captured, graph),
        "passes": [r.to_json() for r in pass_reports],
        "seconds": timings,
        "build": build_facts,
        **({"tuning": tuning} if tuning is not None else {}),
        "artifact_bytes": {rel: (out_dir / rel).stat().st_size
                           for rel in loaded.manifest["files"]},
    }
    if check and examples is not None and tgt.can_run_here():
        report["check"] = timed("check", lambda: _check(model, examples, captured, loaded))
    return CompiledModel(loaded, graph, report, workdir)


def _as_tuple(example_inputs: Any) -> tuple | None:
    if example_inputs is None:
        return None
    if isinstance(example_inputs, tuple | list):
        return tuple(example_inputs)
    return (example_inputs,)


def _spec(v: Any, index_bound: int | None = None) -> dict[str, Any]:
    """An input or output's signature; `index_bound` n for inputs used as gather indices,
    whose values the runtime keeps in [-n, n)."""
    spec = {"name": v.name, "shape": list(v.shape), "dtype": v.dtype}
    return spec if index_bound is None else {**spec, "index_bound": index_bound}


def graph_sha256(graph: Graph) -> str:
    """Identity of the captured model: its text form and every constant's bytes."""
    h = hashlib.sha256(graph.dump(with_scopes=False).encode())
    for c in graph.constants:
        h.update(np.ascontiguousarray(c.data).tobytes())
    return h.hexdigest()


def graph_summary(before: Graph, after: Graph) -> dict[str, Any]:
    ops: dict[str, int] = {}
    for n in after.nodes:
        ops[n.op] = ops.get(n.op, 0) + 1
    return {"nodes_captured": len(before.nodes), "nodes": len(after.nodes),
            "weight_bytes": after.weight_bytes(),
            "parameters": int(sum(c.type.size for c in after.constants)),
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for pkg in ("honer", "apache-tvm", "numpy", "torch", "onnx"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _to_numpy_inputs(examples: tuple) -> list[np.ndarray]:
    out = []
    for x in examples:
        out.append(x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x))
    return out


def reference_outputs(model: Any, examples: tuple, graph: Graph) -> tuple[str, list]:
    """PyTorch eager for torch models, the IR interpreter for everything else."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        with torch.no_grad():
            out = model.eval()(*examples)
        leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        return "pytorch-eager", [t.detach().numpy() for t in leaves]
    return "ir-interpreter", interpret(graph, _to_numpy_inputs(examples))


def max_scaled_error(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    """max |got - want| / max |want| over all outputs (the coverage tolerance's measure)."""
    worst = 0.0
    for g, w in zip(got, want):
        g64, w64 = np.asarray(g, np.float64), np.asarray(w, np.float64)
        scale = max(float(np.max(np.abs(w64))) if w64.size else 0.0, 1e-12)
        err = float(np.max(np.abs(g64 - w64))) if w64.size else 0.0
        worst = max(worst, err / scale)
    return worst


def _check(model: Any, examples: tuple, graph: Graph, loaded: LoadedModel) -> dict[str, Any]:
    ref_name, want = reference_outputs(model, examples, graph)
    got = loaded.run(*_to_numpy_inputs(examples))
    if len(got) != len(want):
        raise HonerError(f"compiled model returned {len(got)} outputs, reference {len(want)}")
    return {"reference": ref_name, "max_scaled_error": max_scaled_error(got, want)}


__all__ = ["compile", "load", "CompiledModel"]
