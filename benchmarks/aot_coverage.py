"""The coverage models in the standalone form: host (in-process), arm (aarch64, under
qemu-aarch64 here, so no latency: "emulated") and wasm (Node.js), each with its max error
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
import time
from typing import Any

from honer.benchmarks import harness

TARGETS = {"host": "host:form=standalone", "arm": "arm", "wasm": "wasm"}
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
        rows.append({"model": name, "passes": passes, "target": target,
                     "max_scaled_error_vs_relax_vm": max_scaled_error(compiled.run(*arrays),
                                                                      want)})
    return rows


def run(name: str, target: str) -> dict[str, Any]:
    import honer
    from honer.tests.models.zoo import ZOO

    model, examples = ZOO[name]()
    start = time.perf_counter()
    compiled = honer.compile(model, examples, target=TARGETS[target])
    build = compiled.report["build"]
    return {"model": name, "target": target, "form": compiled.manifest["target"]["form"],
            "max_scaled_error": compiled.report["check"]["max_scaled_error"],
            "seconds": round(time.perf_counter() - start, 1),
            "sizes": build["sizes"], "plan": build["aot"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--passes", action="store_true", help="the pass cases instead")
    args = parser.parse_args()
    harness.pin_threads(2)
    if args.passes:
        rows = [r for name, passes in PASS_CASES for r in run_passes(name, passes, args.targets)]
        print(harness.table([[r["model"], " ".join(r["passes"]), r["target"],
                              r["max_scaled_error_vs_relax_vm"]] for r in rows],
                            ["model", "passes", "target", "error vs Relax VM"]))
        print(f"wrote {harness.save('aot_coverage_passes', {'rows': rows})}")
        return
    rows = [run(m, t) for m in args.models for t in args.targets]
    print(harness.table([[r["model"], r["target"], r["max_scaled_error"],
                          r["sizes"]["runtime_code"], r["sizes"]["kernel_code"],
                          r["sizes"]["weights"], r["seconds"]] for r in rows],
                        ["model", "target", "error", "runtime B", "kernels B", "weights B",
                         "compile+check s"]))
    print(f"wrote {harness.save('aot_coverage', {'rows': rows})}")


if __name__ == "__main__":
    main()
