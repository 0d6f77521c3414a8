"""The coverage models in the standalone form: host (in-process), arm (aarch64, under
qemu-aarch64 here, so no latency: "emulated"), wasm (Node.js) and the same wasm build in
headless Chromium (a real page over HTTP, runtime/browser.py), each with its max error
against PyTorch eager
(scaled by the output's largest magnitude) and the sizes of runtime code, kernel code and
weights. Results go to benchmarks/results/aot_coverage.json. With --passes, models after the
acceleration passes instead, each compared with the Relax VM build of the same passes (their
error against eager is the pass's own), into aot_coverage_passes.json.

    .venv/bin/python -m honer.benchmarks.aot_coverage [--models ...] [--targets host arm wasm]
    .venv/bin/python -m honer.benchmarks.aot_coverage --passes
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from honer.benchmarks import harness

TARGETS = {"host": "host:form=standalone", "arm": "arm", "wasm": "wasm",
           "chromium": "wasm"}  # the wasm build, run in headless Chromium instead of Node
DEFAULT_MODELS = ["mlp", "conv_bn_relu_cnn", "resnet18", "vit_deit_tiny", "bert_minilm",
                  "gpt2_6l", "llama_smollm2"]


PASS_CASES = [("vit_deit_tiny", ["exact", "tome:r=8"]),
              ("vit_deit_tiny", ["weight_quant:bits=8,awq=false"]),
              ("bert_minilm", ["layer_skip:blocks=2+3", "weight_quant:bits=4,group=64,awq=false"]),
              ("bert_minilm", ["sparse24:form=compressed"]),
              ("resnet18", ["exact"])]


def run_passes(name: str, passes: list[str], targets: list[str]) -> list[dict[str, Any]]:
    import honer
    from honer.api import max_scaled_error
    from honer.tests.models.zoo import ZOO

    model, examples = ZOO[name]()
    arrays = [e.numpy() for e in examples]
    want = honer.compile(model, examples, passes=passes, check=False).run(*arrays)
    rows = []
    for target in targets:
        compiled = honer.compile(model, examples, passes=passes, target=TARGETS[target],
                                 check=False)
        got = outputs(compiled, target, arrays)
        rows.append({"model": name, "passes": passes, "target": target,
                     "max_scaled_error_vs_relax_vm": max_scaled_error(got, want)})
    return rows


def outputs(compiled: Any, target: str, arrays: list) -> list:
    """The compiled model run on its target's runner (Chromium: a saved copy, through a page)."""
    if target != "chromium":
        return compiled.run(*arrays)
    from honer.runtime.browser import run_in_chromium

    with tempfile.TemporaryDirectory() as tmp:
        return run_in_chromium(compiled.save(Path(tmp) / "site"), arrays)


def run(name: str, target: str) -> dict[str, Any]:
    import honer
    from honer.api import max_scaled_error, reference_outputs
    from honer.tests.models.zoo import ZOO

    model, examples = ZOO[name]()
    start = time.perf_counter()
    compiled = honer.compile(model, examples, target=TARGETS[target])
    build = compiled.report["build"]
    error = compiled.report["check"]["max_scaled_error"]
    if target == "chromium":  # the check above ran the wasm build in Node
        _, want = reference_outputs(model, examples, compiled.graph)
        error = max_scaled_error(outputs(compiled, target, [e.numpy() for e in examples]), want)
    return {"model": name, "target": target, "form": compiled.manifest["target"]["form"],
            "max_scaled_error": error,
            "seconds": round(time.perf_counter() - start, 1),
            "sizes": build["sizes"], "plan": build["aot"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--passes", action="store_true", help="the pass cases instead")
    parser.add_argument("--out", help="results name (default aot_coverage[_passes])")
    args = parser.parse_args()
    harness.pin_threads(2)
    if args.passes:
        rows = [r for name, passes in PASS_CASES for r in run_passes(name, passes, args.targets)]
        print(harness.table([[r["model"], " ".join(r["passes"]), r["target"],
                              r["max_scaled_error_vs_relax_vm"]] for r in rows],
                            ["model", "passes", "target", "error vs Relax VM"]))
        print(f"wrote {harness.save(args.out or 'aot_coverage_passes', {'rows': rows})}")
        return
    rows = [run(m, t) for m in args.models for t in args.targets]
    print(harness.table([[r["model"], r["target"], r["max_scaled_error"],
                          r["sizes"]["runtime_code"], r["sizes"]["kernel_code"],
                          r["sizes"]["weights"], r["seconds"]] for r in rows],
                        ["model", "target", "error", "runtime B", "kernels B", "weights B",
                         "compile+check s"]))
    print(f"wrote {harness.save(args.out or 'aot_coverage', {'rows': rows})}")


if __name__ == "__main__":
    main()
