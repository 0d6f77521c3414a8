"""Standalone host form (honer's C runtime, no TVM) beside the Relax VM form of the same build.

Both forms compile the same graph with the same schedule rules, so the kernels are the same;
what differs is the host side (the VM's instruction loop and allocator versus a static call
list over one arena) and the thread pool. The two are timed in alternating blocks in one
process (threads pinned, warm-up per block, median of >= 30 runs each): not call by call,
because each runtime's idle workers poll for a moment after a call and would take the cores
from the other's. Sizes come from the build report.
Results go to benchmarks/results/aot.json.

    .venv/bin/python -m honer.benchmarks.aot [--models mlp vit bert resnet] [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
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


def bench_model(key: str, threads: int, runs: int) -> dict[str, Any]:
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
            "sizes": build["sizes"], "plan": build["aot"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", default="aot")
    args = parser.parse_args()
    harness.pin_threads(args.threads)
    rows = [bench_model(key, args.threads, args.runs) for key in args.models]
    print(harness.table(
        [[r["model"], r["timings"]["relax-vm"]["median_ms"],
          r["timings"]["standalone"]["median_ms"], r["standalone_over_vm"],
          r["max_error"]["standalone"], r["sizes"]["runtime_code"],
          r["sizes"]["kernel_code"], r["sizes"]["weights"]] for r in rows],
        ["model", "vm ms", "standalone ms", "ratio", "error", "runtime B", "kernels B",
         "weights B"]))
    path = harness.save(args.out, {"threads": args.threads, "runs": args.runs, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
