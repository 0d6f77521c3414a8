"""Host CPU latency: honer beside ONNX Runtime, PyTorch eager and torch.compile, in one run.

Models: ViT with DeiT-Tiny dimensions (224x224), BERT with MiniLM-L6 dimensions (seq 128),
ResNet-18; batch 1 and 8. Threads pinned (2 by default), warm-up, median of 60 runs taken
in turns with the peers (30 rounds, harness.ROUNDS).
Results (with commit, machine and versions) go to benchmarks/results/cpu_latency.json.

    .venv/bin/python -m honer.benchmarks.cpu_latency [--models vit bert resnet] [--batches 1 8]

honer's GFLOP/s (the model's multiply-adds as if computed directly, so Winograd convs count
the work they save) are given against the cores' float32 peak measured by a multiply-add loop
(benchmarks/harness.py: 191 GFLOP/s on the 2-core AVX2 host, 252 on the 2-core AVX-512 one,
where the issue had estimated 510).

With --tuning-db, honer tunes each model and batch first (MetaSchedule within the budget, and
the batch split into micro-batches where that measured faster, ir/batch_split.py); the table
gives the micro-batch it ran and the tuning seconds spent.

honer compiles with its `exact` passes (constant folding, BatchNorm folding, linear and QKV
merging, activation fusion: all exact to float rounding), the counterpart of the graph
optimizations ONNX Runtime runs at ORT_ENABLE_ALL; `--passes` changes that.
"""

from __future__ import annotations

import argparse
import io
import warnings

from honer.benchmarks import harness

MODELS = {"vit": "vit_deit_tiny", "bert": "bert_minilm", "resnet": "resnet18"}


def onnx_session(model, examples, threads: int):
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(examples), buf, dynamo=False, opset_version=17)
    sess = harness.ort_session(buf.getvalue(), threads)
    feeds = {i.name: e.numpy() for i, e in zip(sess.get_inputs(), examples)}
    return lambda: sess.run(None, feeds)


def bench_model(key: str, batch: int, threads: int, runs: int, tune=None,
                passes: tuple[str, ...] = ("exact",)) -> dict:
    import torch

    import honer
    from honer.ir.analysis import flops
    from honer.tests.models.zoo import ZOO

    model, examples = ZOO[MODELS[key]](batch=batch)
    compiled = honer.compile(model, examples, passes=passes, tune=tune,
                             progress=print if tune else None)
    arrays = [e.numpy() for e in examples]
    # a split batch's graph is one micro-batch's (ir/batch_split.py): main runs it `chunks` times
    split = compiled.manifest.get("batch_split", {"chunks": 1})
    work = flops(compiled.graph) * split["chunks"]
    peers = {"honer": lambda: compiled(*arrays), "onnxruntime": onnx_session(model, examples,
                                                                             threads)}
    with torch.no_grad():
        peers["torch eager"] = lambda: model(*examples)
        compiled_torch = torch.compile(model)
        peers["torch.compile"] = lambda: compiled_torch(*examples)
        timings = harness.measure_in_turns(peers, runs)
    honer_ms = timings["honer"].median_ms
    return {"model": key, "batch": batch, "passes": list(passes), "gflop": work / 1e9,
            "max_error": compiled.report["check"]["max_scaled_error"],
            "compile_seconds": sum(compiled.report["seconds"].values()),
            "schedule": compiled.report["build"].get("schedule"),
            "tuning": compiled.report.get("tuning"),
            "batch_split": compiled.report.get("batch_split"),
            "tuning_seconds": sum(compiled.report["seconds"].get(stage, 0.0)
                                  for stage in ("tune", "batch split choice")),
            "median_ms": {k: t.median_ms for k, t in timings.items()},
            # the spread says how far a slow spell of the shared cores moved each median
            "p10_ms": {k: t.p10_ms for k, t in timings.items()},
            "p90_ms": {k: t.p90_ms for k, t in timings.items()},
            "honer_gflops": work / 1e9 / (honer_ms / 1e3),
            "ratio_vs_onnxruntime": honer_ms / timings["onnxruntime"].median_ms,
            "ratio_vs_eager": honer_ms / timings["torch eager"].median_ms,
            "ratio_vs_torch_compile": honer_ms / timings["torch.compile"].median_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--passes", nargs="*", default=["exact"],
                        help="honer's passes (default: the exact preset)")
    parser.add_argument("--out", help="result file name (default cpu_latency[_tuned])")
    parser.add_argument("--tuning-db", help="tune into / reuse this database (rules only if "
                                            "not given)")
    parser.add_argument("--tune-budget", type=float, default=1200.0,
                        help="tuning seconds per model and batch (with --tuning-db)")
    args = parser.parse_args()
    harness.pin_threads(args.threads)
    tune = None
    if args.tuning_db:
        from honer.codegen.tuning import TuneConfig

        tune = TuneConfig(args.tuning_db, budget_s=args.tune_budget)
    rows = []
    for key in args.models:
        for batch in args.batches:
            rows.append(bench_model(key, batch, args.threads, args.runs, tune,
                                    tuple(args.passes)))
            print(rows[-1], flush=True)
    peak = harness.fp32_peak_gflops(args.threads)
    for row in rows:
        row["percent_of_peak"] = 100 * row["honer_gflops"] / peak if peak else None
    name = args.out or ("cpu_latency_tuned" if tune else "cpu_latency")
    path = harness.save(name, {"threads": args.threads, "rows": rows,
                               "fp32_peak_gflops": peak,
                               "tune_budget_s": args.tune_budget if tune else 0})
    table = [[r["model"], r["batch"], r["median_ms"]["honer"], r["median_ms"]["onnxruntime"],
              r["median_ms"]["torch eager"], r["median_ms"]["torch.compile"],
              r["ratio_vs_onnxruntime"], r["honer_gflops"], r["percent_of_peak"] or "-",
              (r["batch_split"] or {}).get("micro_batch") or r["batch"], r["tuning_seconds"]]
             for r in rows]
    print(harness.table(table, ["model", "batch", "honer ms", "ORT ms", "eager ms",
                                "torch.compile ms", "honer/ORT", "honer GFLOP/s", "% of peak",
                                "micro-batch", "tuning s"]))
    print(f"fp32 peak of {args.threads} cores, measured: "
          + (f"{peak:.0f} GFLOP/s" if peak else "no C compiler to measure it"))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
