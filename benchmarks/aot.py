"""Standalone host form (honer's C runtime, no TVM) beside the Relax VM form of the same build.

Both forms compile the same graph with the same schedule rules, so the kernels are the same;
what differs is the host side (the VM's instruction loop and allocator versus a static call
list over one arena) and the thread pool. The two are timed in alternating blocks in one
process (threads pinned, warm-up per block, median of >= 30 runs each): not call by call,
because each runtime's idle workers poll for a moment after a call and would take the cores
from the other's. Sizes come from the build report.
With --wasm, the same model built for the wasm target is timed in Node.js (one thread: its
driver's median over the same number of runs) beside the standalone host form on one thread and,
when --ort-web names a node_modules with onnxruntime-web (npm install --prefix out/node
onnxruntime-web@1.30.0), beside ONNX Runtime Web's wasm backend on one thread in Node.js.
Results go to benchmarks/results/aot.json.

    .venv/bin/python -m honer.benchmarks.aot [--models mlp vit bert resnet] [--runs 30] [--wasm
                                            [--ort-web out/node/node_modules]]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from honer.benchmarks import harness

MODELS = {"mlp": "mlp", "vit": "vit_deit_tiny", "bert": "bert_minilm", "resnet": "resnet18",
          "gpt2": "gpt2_6l"}


def alternating(fns: dict[str, Any], runs: int, blocks: int = 4,
                warmup: int = 3) -> dict[str, harness.Timing]:
    """Alternates the candidates block by block, so a busy neighbour slows both alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            for _ in range(-(-runs // blocks)):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, s in samples.items():
        s.sort()
        out[name] = harness.Timing(name, statistics.median(s), s[len(s) // 10],
                                   s[(len(s) * 9) // 10], len(s))
    return out


def node_median_ms(compiled: Any, arrays: list, runs: int) -> float:
    """The wasm artifact's Node.js driver, timing `runs` runs after loading once."""
    aot = compiled.manifest["target"]["aot"]
    path = compiled.loaded.path
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in.bin"
        inputs.write_bytes(b"".join(a.tobytes() for a in arrays))
        proc = subprocess.run([*aot["emulator"], str(path / aot["executable"]),
                               str(path / "weights.bin"), str(inputs), str(Path(tmp) / "out"),
                               "1", str(runs)], capture_output=True, text=True, check=True)
    return float(re.search(r"median ([0-9.]+) ms", proc.stderr).group(1))


def ort_web_median_ms(model: Any, examples: Any, runs: int, ort_web: str) -> float:
    """ONNX Runtime Web (wasm backend, one thread) in Node.js on the torch.onnx export."""
    import io
    import json
    import os
    import warnings

    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(examples), buf, dynamo=False, opset_version=17)
    names = [i.name for i in onnx.load_from_string(buf.getvalue()).graph.input]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.onnx").write_bytes(buf.getvalue())
        specs = []
        for i, (name, e) in enumerate(zip(names, examples)):
            (Path(tmp) / f"in{i}.bin").write_bytes(e.numpy().tobytes())
            specs.append({"name": name, "dims": list(e.shape), "dtype": str(e.numpy().dtype),
                          "file": str(Path(tmp) / f"in{i}.bin")})
        (Path(tmp) / "inputs.json").write_text(json.dumps(specs))
        proc = subprocess.run(["node", str(Path(__file__).with_name("ort_web.mjs")),
                               str(Path(tmp) / "model.onnx"), str(Path(tmp) / "inputs.json"),
                               str(runs)], capture_output=True, text=True, check=True,
                              env={**os.environ, "ORT_WEB_DIR": str(Path(ort_web).resolve())})
    return float(re.search(r"median ([0-9.]+) ms", proc.stdout).group(1))


def bench_wasm(model: Any, examples: Any, standalone: Any, runs: int, threads: int,
               ort_web: str | None) -> dict[str, Any]:
    import honer

    wasm = honer.compile(model, examples, target="wasm")
    arrays = [e.numpy() for e in examples]
    standalone.loaded.compiled.set_num_threads(1)
    one = alternating({"standalone": lambda: standalone(*arrays)}, runs)["standalone"]
    standalone.loaded.compiled.set_num_threads(threads)
    wasm_ms = node_median_ms(wasm, arrays, runs)
    ort = {}
    if ort_web:
        ort_ms = ort_web_median_ms(model, examples, runs, ort_web)
        ort = {"ort_web_node_ms": ort_ms, "wasm_over_ort_web": wasm_ms / ort_ms}
    return {"wasm_node_ms": wasm_ms, "standalone_1_thread_ms": one.median_ms, **ort,
            "wasm_over_standalone_1_thread": wasm_ms / one.median_ms,
            "wasm_max_error": wasm.report["check"]["max_scaled_error"],
            "wasm_sizes": wasm.report["build"]["sizes"]}


def bench_model(key: str, threads: int, runs: int, wasm: bool = False,
                ort_web: str | None = None) -> dict[str, Any]:
    import honer
    from honer.tests.models.zoo import ZOO

    model, examples = ZOO[MODELS[key]]()
    vm = honer.compile(model, examples, target="host")
    standalone = honer.compile(model, examples, target="host:form=standalone")
    standalone.loaded.compiled.set_num_threads(threads)
    arrays = [e.numpy() for e in examples]
    timings = alternating({"relax-vm": lambda: vm(*arrays),
                           "standalone": lambda: standalone(*arrays)}, runs)
    build = standalone.report["build"]
    return {"model": key,
            "max_error": {"relax-vm": vm.report["check"]["max_scaled_error"],
                          "standalone": standalone.report["check"]["max_scaled_error"]},
            "timings": {k: t.to_json() for k, t in timings.items()},
            "standalone_over_vm": timings["standalone"].median_ms
            / timings["relax-vm"].median_ms,
            "sizes": build["sizes"], "plan": build["aot"],
            **(bench_wasm(model, examples, standalone, runs, threads, ort_web) if wasm
               else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--wasm", action="store_true", help="also time the wasm build in Node")
    parser.add_argument("--ort-web", help="node_modules holding onnxruntime-web (with --wasm)")
    parser.add_argument("--out", default="aot")
    args = parser.parse_args()
    harness.pin_threads(args.threads)
    rows = [bench_model(key, args.threads, args.runs, args.wasm, args.ort_web)
            for key in args.models]
    print(harness.table(
        [[r["model"], r["timings"]["relax-vm"]["median_ms"],
          r["timings"]["standalone"]["median_ms"], r["standalone_over_vm"],
          r["max_error"]["standalone"], r["sizes"]["runtime_code"],
          r["sizes"]["kernel_code"], r["sizes"]["weights"]] for r in rows],
        ["model", "vm ms", "standalone ms", "ratio", "error", "runtime B", "kernels B",
         "weights B"]))
    if args.wasm:
        print(harness.table([[r["model"], r["standalone_1_thread_ms"], r["wasm_node_ms"],
                              r["wasm_over_standalone_1_thread"], r["wasm_max_error"],
                              r.get("ort_web_node_ms", "-"), r.get("wasm_over_ort_web", "-")]
                             for r in rows],
                            ["model", "standalone 1 thread ms", "wasm node ms", "ratio",
                             "wasm error", "ORT Web ms", "wasm/ORT Web"]))
    path = harness.save(args.out, {"threads": args.threads, "runs": args.runs, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
