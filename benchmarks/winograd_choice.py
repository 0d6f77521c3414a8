"""Which convs should take Winograd: a model compiled with different tile minimums for
F(4x4) and F(2x2) (codegen/winograd.py), each build timed in turns with the others in one
process, so a slow spell of the machine falls on all alike. The minimums in winograd.py were
chosen from this run on ResNet-18 at batch 1.

    .venv/bin/python -m honer.benchmarks.winograd_choice [--model resnet] [--batch 1]
        [--variants 4:32,2:32 4:16,2:32 4:32,2:64 2:32 none]

A variant lists `m:min_tiles` per algorithm, in order of preference; `none` is direct convs
only. Results go to benchmarks/results/winograd_choice.json.
"""

from __future__ import annotations

import argparse
import dataclasses

from honer.benchmarks import harness
from honer.benchmarks.cpu_latency import MODELS

DEFAULT_VARIANTS = ["4:32,2:32", "4:16,2:32", "4:32,2:64", "2:32", "none"]


def algorithms(spec: str, base: dict) -> dict:
    """The ALGORITHMS table a variant stands for."""
    if spec == "none":
        return {}
    chosen = {}
    for part in spec.split(","):
        m, tiles = (int(s) for s in part.split(":"))
        chosen[m] = dataclasses.replace(base[m], min_tiles=tiles)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    harness.pin_threads(args.threads)

    import honer
    from honer.codegen import winograd
    from honer.tests.models.zoo import ZOO

    model, examples = ZOO[MODELS[args.model]](batch=args.batch)
    arrays = [e.numpy() for e in examples]
    base = dict(winograd.ALGORITHMS)
    runs = {}
    try:
        for spec in args.variants:
            winograd.ALGORITHMS.clear()
            winograd.ALGORITHMS.update(algorithms(spec, base))
            compiled = honer.compile(model, examples, passes=["exact"])
            runs[spec] = lambda compiled=compiled: compiled(*arrays)
    finally:
        winograd.ALGORITHMS.clear()
        winograd.ALGORITHMS.update(base)
    timings = harness.measure_in_turns(runs, args.runs)
    rows = [{"variant": spec, "median_ms": t.median_ms, "p10_ms": t.p10_ms, "p90_ms": t.p90_ms}
            for spec, t in timings.items()]
    path = harness.save("winograd_choice", {"model": args.model, "batch": args.batch,
                                            "threads": args.threads, "rows": rows})
    print(harness.table([[r["variant"], r["median_ms"]] for r in rows], ["variant", "ms"]))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
