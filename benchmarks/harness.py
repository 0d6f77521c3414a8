"""Side-by-side latency measurement: pinned threads, warm-up, median of many runs, and a record
of the commit, the machine and every peer's version next to the figures."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def pin_threads(threads: int) -> None:
    """Pins every runtime in this process to `threads` threads; call before any of them starts
    its pool (TVM reads TVM_NUM_THREADS once, when its thread pool is created)."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


@dataclass
class Timing:
    name: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def measure(name: str, fn: Callable[[], Any], runs: int = 30, warmup: int = 5,
            min_seconds: float = 0.0) -> Timing:
    """Median latency of fn() over at least `runs` calls (more if `min_seconds` asks)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return _timing(name, samples)


# Pause before each turn: a runtime's threads keep spinning after its last call (ONNX Runtime's
# for about 70 ms, measured: ResNet-18 through honer took 30, 32, 24, then 17 ms after one ORT
# call), which would fall on whichever variant runs next instead of on the one that spins.
SETTLE_SECONDS = 0.25


def measure_interleaved(fns: dict[str, Callable[[], Any]], rounds: int = 6, runs: int = 10,
                        warmup: int = 5) -> dict[str, Timing]:
    """measure() for several variants taken in turns, `runs` calls each per round: a slow
    spell of a shared machine (seconds to minutes long on these VMs) then falls on every
    variant alike instead of on whichever ran during it. Each turn starts with one untimed
    call: after the pause the threads are asleep and the caches cold (ViT-Tiny at batch 1:
    that call took 5% longer than the next four, through honer and ONNX Runtime alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(SETTLE_SECONDS)
            fn()
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: _timing(name, s) for name, s in samples.items()}


# Turns per measurement. These VMs switch between speeds at the scale of a turn: in 60 rounds
# of ViT-Tiny at batch 1, a sixth of honer's turns and a third of ONNX Runtime's ran 1.5-1.8x
# slower, every call of the turn alike (both threads busy, on both cores): the spells when the
# host places the two vCPUs far apart (benchmarks/core_distance.py). Resampling those turns,
# the honer/ORT ratio of medians spread over 0.63-1.11 (5th-95th percentile) with 6 turns of
# 5 calls, 0.71-1.02 with 15 turns of 2 and 0.77-0.98 with 30 turns of 2, around the same
# middle (0.89).
ROUNDS = 30


def measure_in_turns(fns: dict[str, Callable[[], Any]], runs: int = 30,
                     rounds: int = ROUNDS) -> dict[str, Timing]:
    """measure_interleaved() with `runs` calls per variant in all, split over `rounds` turns:
    how the benchmarks time peers and sweep points side by side."""
    rounds = max(1, min(rounds, runs))
    return measure_interleaved(fns, rounds=rounds, runs=-(-runs // rounds))


def _timing(name: str, samples: list[float]) -> Timing:
    samples = sorted(samples)
    return Timing(name, statistics.median(samples), samples[len(samples) // 10],
                  samples[(len(samples) * 9) // 10], len(samples))


def ort_session(model: str | bytes, threads: int) -> Any:
    """ONNX Runtime as the peer is measured everywhere: CPU execution provider, all graph
    optimizations, `threads` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def cpu_name() -> str:
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


# Independent multiply-adds on registers, the widest vectors the compiler targets natively
# (-march=native): the most float32 work per second a core can do, which is what a kernel's
# GFLOP/s is a fraction of. Twelve accumulators cover the FMA latency on current x86 and ARM.
PEAK_SOURCE = r"""
#include <stdio.h>
#include <time.h>
#if defined(__AVX512F__)
#define VBYTES 64
#elif defined(__AVX__)
#define VBYTES 32
#else
#define VBYTES 16
#endif
typedef float vec __attribute__((vector_size(VBYTES)));
static double now(void) {
  struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9;
}
int main(void) {
  vec a[12], b, c;
  for (int i = 0; i < VBYTES / 4; i++) { b[i] = 1.0001f; c[i] = -0.0001f; }
  for (int k = 0; k < 12; k++) a[k] = b * (float)k;
  long steps = 100000000;
  double t0 = now();
  for (long n = 0; n < steps; n++) {
#pragma GCC unroll 12
    for (int k = 0; k < 12; k++) a[k] = a[k] * b + c;
  }
  double seconds = now() - t0;
  float sum = 0;
  for (int k = 0; k < 12; k++) sum += a[k][0];
  printf("%f %f\n", steps * 12.0 * 2 * (VBYTES / 4) / seconds / 1e9, sum);
  return 0;
}
"""


def fp32_peak_gflops(threads: int, tries: int = 5) -> float | None:
    """The float32 peak of `threads` cores, measured: the multiply-add loop above compiled
    with the system C compiler and run on every core at once, the best of `tries` runs (on
    a shared VM a neighbour's burst takes a core for a while and only ever lowers the
    figure: single runs gave 252, 216 and 128 GFLOP/s within minutes). None without a
    compiler."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="honer-peak-") as tmp:
        exe = compile_probe(PEAK_SOURCE, Path(tmp) / "peak",
                            ["-O3", "-march=native", "-ffp-contract=fast"])
        return max(_all_cores_gflops(exe, threads) for _ in range(tries)) if exe else None


def compile_probe(source: str, exe: Path, flags: list[str]) -> Path | None:
    """A small C program that measures the machine, compiled from `source` with the system C
    compiler into `exe` (its source written beside it); None without a compiler or if it does
    not build."""
    import shutil

    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    src = exe.with_suffix(".c")
    src.write_text(source)
    build = subprocess.run([cc, *flags, str(src), "-o", str(exe)], capture_output=True,
                           text=True)
    return exe if build.returncode == 0 else None


def _all_cores_gflops(exe: Path, threads: int) -> float:
    procs = [subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True)
             for _ in range(threads)]
    return sum(float(p.communicate()[0].split()[0]) for p in procs)


def environment() -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                                    text=True, cwd=Path(__file__).parent,
                                    timeout=10).stdout.strip())
    except OSError:
        commit, dirty = "unknown", False
    return {"commit": commit + ("+dirty" if dirty else ""), "machine": platform.machine(),
            "cpu": cpu_name(), "cores": os.cpu_count(),
            "threads": os.environ.get("TVM_NUM_THREADS"),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": {p: version(p) for p in ("apache-tvm", "torch", "onnxruntime",
                                                 "numpy", "honer")}}


def save(name: str, payload: dict[str, Any]) -> Path:
    """Writes the payload with the environment to `name` (a path, absolute or under
    benchmarks/results/; .json added unless it ends so)."""
    path = RESULTS / name
    if path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=1) + "\n")
    return path


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r]
                        for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
