"""The coverage models in the standalone form: host (in-process), arm (aarch64, under
qemu-aarch64 here, so no latency: "emulated") and wasm (Node.js), each with its max error
against PyTorch eager
(scaled by the output's largest magnitude) and the sizes of runtime code, kernel code and
weights. Results go to benchmarks/results/aot_coverage.json.

    .venv/bin/python -m honer.benchmarks.aot_coverage [--models ...] [--targets host arm wasm]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from honer.benchmarks import harness

TARGETS = {"host": "host:form=standalone", "arm": "arm", "wasm": "wasm"}
DEFAULT_MODELS = ["mlp", "conv_bn_relu_cnn", "resnet18", "vit_deit_tiny", "bert_minilm",
                  "gpt2_6l", "llama_smollm2"]


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
    args = parser.parse_args()
    harness.pin_threads(2)
    rows = [run(m, t) for m in args.models for t in args.targets]
    print(harness.table([[r["model"], r["target"], r["max_scaled_error"],
                          r["sizes"]["runtime_code"], r["sizes"]["kernel_code"],
                          r["sizes"]["weights"], r["seconds"]] for r in rows],
                        ["model", "target", "error", "runtime B", "kernels B", "weights B",
                         "compile+check s"]))
    print(f"wrote {harness.save('aot_coverage', {'rows': rows})}")


if __name__ == "__main__":
    main()
