"""honer and ONNX Runtime in turns, each turn opened by a probe of how far apart the host has
placed this VM's two vCPUs (core_distance.c: one cache line's round trip between them), the
turns then grouped by it.

    .venv/bin/python -m honer.benchmarks.core_distance [--models resnet vit bert]
        [--batch 1] [--turns 200]

Why: on these VMs, ResNet-18 at batch 1 through honer switched for seconds at a time between
about 16.5 and 21-23 ms, while ONNX Runtime beside it moved from about 17 to 18 ms. Those
spells are the turns where the round trip between the two vCPUs reads 330-750 ns instead of
50-170 ns: the host has put them far apart, and every cache line passing between the two
threads costs tens of ns. At one thread honer showed no such spells. Since its Winograd convs
are one kernel per conv, each thread keeping its own tiles (codegen/winograd.py), and the
direct convs and pools around them split by rows as well, ResNet-18 takes 15.0 ms near and
17.1 far (ONNX Runtime 17.0 and 17.8). Results go to benchmarks/results/core_distance.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from honer.benchmarks import harness
from honer.benchmarks.cpu_latency import MODELS, onnx_session

PROBE_SOURCE = Path(__file__).with_name("core_distance.c")
FAR_NS = 300  # between the round trips seen with the vCPUs near (50-170) and far (330-750)
PROBE_MS = 50
CALLS_PER_TURN = 3


def build_probe(directory: Path) -> Path:
    """core_distance.c compiled into `directory`."""
    probe = harness.compile_probe(PROBE_SOURCE.read_text(), directory / "core_distance",
                                  ["-O2", "-pthread"])
    if probe is None:
        raise SystemExit("core_distance needs a C compiler (gcc or cc) for its probe")
    return probe


def round_trip_ns(probe: Path) -> float:
    out = subprocess.run([str(probe), str(PROBE_MS)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"core_distance's probe failed: {out.stderr.strip() or out.returncode}")
    return float(out.stdout)


def record(peers: dict[str, Callable[[], Any]], probe: Path, turns: int) -> list[dict]:
    """Per turn: the round trip, then each peer's median of CALLS_PER_TURN calls after one
    untimed call (the probe's threads leave the caches and the pools cold)."""
    rows = []
    for _ in range(turns):
        row = {"round_trip_ns": round_trip_ns(probe), "ms": {}}
        for name, fn in peers.items():
            fn()
            samples = []
            for _ in range(CALLS_PER_TURN):
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1e3)
            row["ms"][name] = statistics.median(samples)
        rows.append(row)
    return rows


def by_placement(rows: list[dict]) -> list[dict]:
    """Median of each peer's turn medians, the turns with the vCPUs near and far apart."""
    groups = {"near": [r for r in rows if r["round_trip_ns"] < FAR_NS],
              "far": [r for r in rows if r["round_trip_ns"] >= FAR_NS]}
    return [{"placement": name, "turns": len(group),
             "round_trip_ns": statistics.median(r["round_trip_ns"] for r in group),
             "median_ms": {peer: statistics.median(r["ms"][peer] for r in group)
                           for peer in group[0]["ms"]}}
            for name, group in groups.items() if group]


def peers_for(key: str, batch: int) -> dict[str, Callable[[], Any]]:
    import honer
    from honer.tests.models.zoo import ZOO

    model, examples = ZOO[MODELS[key]](batch=batch)
    arrays = [e.numpy() for e in examples]
    compiled = honer.compile(model, examples, passes=["exact"])
    return {"honer": lambda: compiled(*arrays), "onnxruntime": onnx_session(model, examples, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet", "vit", "bert"],
                        choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--out", default="core_distance",
                        help="result file (default benchmarks/results/core_distance.json)")
    args = parser.parse_args()
    harness.pin_threads(2)

    results = []
    with tempfile.TemporaryDirectory(prefix="honer-probe-") as tmp:
        probe = build_probe(Path(tmp))
        for key in args.models:
            turns = record(peers_for(key, args.batch), probe, args.turns)
            results.append({"model": key, "batch": args.batch,
                            "summary": by_placement(turns), "turns": turns})
    path = harness.save(args.out, {"threads": 2, "models": results})
    print(harness.table([[r["model"], s["placement"], s["turns"], s["round_trip_ns"],
                          *s["median_ms"].values(),
                          s["median_ms"]["honer"] / s["median_ms"]["onnxruntime"]]
                         for r in results for s in r["summary"]],
                        ["model", "vCPUs", "turns", "round trip ns", "honer ms",
                         "onnxruntime ms", "honer / ORT"]))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
