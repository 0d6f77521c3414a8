"""The public API: `honer.compile` and `honer.load`, with the pipeline as one function."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import HonerError, InputError
from .ir import Graph, interpret, verify
from .ir import batch_split as batching
from .ir.analysis import index_bounds
from .passes.base import Calibration
from .runtime import artifact
from .runtime.loader import LoadedModel, load

if TYPE_CHECKING:
    from .codegen.tuning import TuneConfig

SCHEMA_REPORT = "honer.report/1"
SPLIT_MARGIN = 0.02  # how much faster than the whole batch a batch split must measure
SPLIT_TOLERANCE = 1e-4  # scaled error between a model's whole-batch and micro-batch outputs


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
    batch_split: int | None = None,
) -> CompiledModel:
    """Captures, optimizes, builds and packages `model` for `target`.

    `batch_split=m` compiles the model for micro-batches of m and runs the example inputs'
    batch as micro-batches one after another inside each call (ir/batch_split.py says when that
    pays); the model is captured a second time at m, and must treat batch items independently.

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
    if tune is not None and not tgt.tunable:
        raise HonerError(f"target '{tgt.name}' has no tuner; compile without tune=")
    split, split_choice = None, None
    if batch_split is None and tune is not None and tune.batch_split:
        batch_split, split_choice = timed("batch split choice", lambda: _choose_batch_split(
            model, examples, target, passes, calibration, tune, graph_sha256(captured)))
        # the choice's builds and timing come out of the tuning budget
        tune = dataclasses.replace(
            tune, budget_s=max(0.0, tune.budget_s - timings["batch split choice"]))
    if batch_split is not None:
        graph, split = timed("batch split", lambda: _micro_batch_graph(model, examples, captured,
                                                                         batch_split))
        split_choice = split_choice or {"micro_batch": batch_split,
                                        "batch": batch_split * split.chunks}
    calib = Calibration(_micro_batches(calibration, split)) if calibration else None
    evals = passes_mod.Evaluation(
        _micro_batches(evaluation[0], split),
        _micro_batch_labels(evaluation[1], split)) if evaluation else None
    graph, pass_reports = timed("passes", lambda: passes_mod.run_pipeline(graph, passes, calib,
                                                                          say, evals))
    lowered = timed("lower", lambda: tgt.lower(graph, split))
    tuning = None
    if tune is not None and tune.budget_s > 0:
        tuning = timed("tune", lambda: tgt.tune(lowered, tune, say))
    workdir = tempfile.TemporaryDirectory(prefix="honer-")
    work = Path(workdir.name)
    out_dir = work / "artifact"

    build_facts: dict[str, Any] = {}

    bounds = index_bounds(graph)
    interface = captured if split else graph  # what `main` takes: the whole batch

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
            "inputs": [_spec(v, bounds.get(v.name)) for v in interface.inputs],
            "outputs": [_spec(v) for v in interface.outputs],
            **({"batch_split": split.to_json()} if split else {}),
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
        **({"batch_split": split_choice} if split_choice is not None else {}),
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


def _micro_batch_graph(model: Any, examples: tuple | None, whole: Graph, micro: int
                       ) -> tuple[Graph, batching.BatchSplit]:
    """The model captured at micro-batches of `micro`, and how `main` runs it on the whole
    batch; raises unless the reference gives the same outputs both ways."""
    from . import frontend

    if examples is None:
        raise InputError("batch_split needs example inputs (for an ONNX model on the command "
                         "line, --inputs): they give the batch to split")
    batch = batching.batch_of(_to_numpy_inputs(examples), micro)
    try:
        graph = frontend.capture(model, batching.micro_batch_examples(examples, batch, micro))
    except HonerError as e:
        raise InputError(f"batch_split: capturing the model at micro-batches of {micro} "
                         f"failed: {e}") from e
    verify(graph)
    split = batching.plan(whole, graph, batch, micro)
    _, want = reference_outputs(model, examples, whole)
    got = batching.joined_outputs([reference_outputs(model, part, graph)[1]
                                   for part in batching.split_samples(examples, split)], want)
    if (err := max_scaled_error(got, want)) > SPLIT_TOLERANCE:
        raise InputError(f"batch_split: the model's outputs differ between the whole batch and "
                         f"its micro-batches (scaled error {err:.2g}): it mixes batch items, or "
                         "its batch is not the first axis of every input split, so it cannot "
                         "be split")
    return graph, split


def _choose_batch_split(model: Any, examples: tuple | None, target: str, passes: Sequence[Any],
                        calibration: Sequence[Sequence[np.ndarray]] | None, tune: TuneConfig,
                        model_sha: str) -> tuple[int | None, dict[str, Any] | None]:
    """The micro-batch that ran the model fastest here (None: the whole batch at once), built
    with the rule schedules and timed in turns, or the choice the database recorded for this
    model, passes, target and input shapes. Compiles that only read the database (budget 0)
    reuse a choice but never measure one."""
    from . import targets
    from .codegen.tuning import TuningDatabase

    arrays = _to_numpy_inputs(examples) if examples else []
    batch = int(arrays[0].shape[0]) if arrays and arrays[0].ndim else 1
    # halvings only: at batch 64 six builds, not every divisor's
    candidates = [batch >> k for k in range(1, batch.bit_length()) if batch % (1 << k) == 0]
    if not candidates:
        return None, None
    tgt = targets.get_target(target)
    db = TuningDatabase(tune.database)
    key = json.dumps({"model": model_sha, "target": target, "tvm_target": tgt.tvm_target(),
                      "passes": list(map(str, passes)),
                      "inputs": [list(x.shape) for x in arrays]}, sort_keys=True)
    if (known := db.batch_split(key)) is not None:
        return known["micro_batch"], known
    if tune.budget_s <= 0 or not tgt.can_run_here():
        return None, None
    deadline = time.monotonic() + tune.budget_s / 2  # half the budget at most: kernels next
    builds = {None: compile(model, examples, target, passes, calibration, check=False)}
    for micro in candidates:
        if time.monotonic() > deadline:
            break
        try:
            builds[micro] = compile(model, examples, target, passes, calibration, check=False,
                                    batch_split=micro)
        except InputError:  # the model mixes batch items, or its outputs are not per item
            break
    ms = _median_ms_in_turns({m: functools.partial(c.run, *arrays) for m, c in builds.items()})
    fastest = min(ms, key=lambda m: ms[m])
    # a split must beat the whole batch by more than ten turns' timing noise
    best = fastest if ms[fastest] < (1 - SPLIT_MARGIN) * ms[None] else None
    choice = {"micro_batch": best, "batch": batch,
              "median_ms": {str(m or batch): round(t, 3) for m, t in ms.items()}}
    db.record_batch_split(key, choice)
    return best, choice


def _median_ms_in_turns(fns: dict[Any, Callable[[], Any]], rounds: int = 10) -> dict[Any, float]:
    """Median latency of each, timed in turns (a slow spell of the machine then falls on all
    alike), each turn one warm-up call and two timed."""
    samples: dict[Any, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            fn()
            for _ in range(2):
                start = time.perf_counter()
                fn()
                samples[k].append((time.perf_counter() - start) * 1e3)
    return {k: float(np.median(v)) for k, v in samples.items()}


def _micro_batches(samples: Sequence[Sequence[Any]], split: batching.BatchSplit | None
                   ) -> list[tuple]:
    """Input tuples of the whole batch as the micro-batch graph takes them."""
    if split is None:
        return [tuple(s) for s in samples]
    return [part for s in samples for part in batching.split_samples(tuple(s), split)]


def _micro_batch_labels(labels: Sequence[Any], split: batching.BatchSplit | None
                        ) -> list[np.ndarray]:
    if split is None:
        return [np.asarray(y) for y in labels]
    return [part for y in labels for part in np.split(np.asarray(y), split.chunks)]


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
