"""Where a model's host CPU time goes: every kernel timed alone (random inputs, median of
repeats) and multiplied by how often `main` calls it, largest first.

    .venv/bin/python -m honer.benchmarks.kernel_profile vit [--passes w8a8] [--top 15]

The sum is close to, but not, the model's latency (no VM overhead, caches warm per kernel);
it says which kernels to work on, not how fast the model is.
"""

from __future__ import annotations

import argparse

from honer.benchmarks import harness
from honer.benchmarks.cpu_latency import MODELS


def profile(key: str, passes: list[str], batch: int = 1) -> list[dict]:
    import tvm

    import honer
    from honer.codegen.build import _call_counts, _fused_module, rule_scheduled_kernels
    from honer.codegen.tuning import measure_kernel
    from honer.targets import get_target
    from honer.tests.models.zoo import ZOO

    model, examples = ZOO[MODELS[key]](batch=batch)
    calibration = [tuple(e.numpy() for e in examples)] if passes else None
    compiled = honer.compile(model, examples, passes=passes, calibration=calibration)
    target = get_target("host")
    lowered = target.lower(compiled.graph)
    cfg = target.schedule()
    mod = _fused_module(lowered, target.tvm_target(), cfg)
    counts = _call_counts(mod)
    tvm_target = tvm.target.Target(target.tvm_target())
    rows = []
    for name, scheduled in rule_scheduled_kernels(mod, cfg).items():
        ms = measure_kernel(scheduled, tvm_target)
        rows.append({"kernel": name, "calls": counts.get(name, 0), "ms": ms,
                     "total_ms": ms * counts.get(name, 0)})
    return sorted(rows, key=lambda r: -r["total_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--passes", nargs="*", default=[])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    harness.pin_threads(args.threads)
    rows = profile(args.model, args.passes, args.batch)
    total = sum(r["total_ms"] for r in rows)
    print(harness.table([[r["kernel"], r["calls"], f"{r['ms']:.3f}", f"{r['total_ms']:.2f}"]
                         for r in rows[:args.top]], ["kernel", "calls", "ms", "total ms"]))
    print(f"sum over {len(rows)} kernels: {total:.1f} ms")


if __name__ == "__main__":
    main()
