"""Latency with another process busy on one core: honer on its own thread pool, honer on TVM's
thread pool (what the Relax VM runs parallel loops on unless the loader repoints them), and
ONNX Runtime, in turns, with the machine quiet, then beside a busy loop at nice 19, then at
nice 0.

    .venv/bin/python -m honer.benchmarks.background_load [--models resnet vit] [--batch 1]

TVM's pool yields its core whenever a thread waits, which hands the core to the busy loop for
a whole time slice; honer's pool pauses instead (runtime/honer_pool.c). Results go to
benchmarks/results/background_load.json.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import subprocess
import sys
from pathlib import Path

from honer.benchmarks import harness
from honer.benchmarks.cpu_latency import MODELS, onnx_session

BUSY_LOOP = "while True: pass"


@contextlib.contextmanager
def busy_core(nice: int | None):
    """One process spinning (at `nice`) for the duration; None: nothing."""
    if nice is None:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP],
                            preexec_fn=lambda: os.nice(nice))
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def on_tvm_pool(compiled) -> None:
    """Points a loaded host model's launch hook back at TVM's own thread pool."""
    import tvm

    runtime = ctypes.CDLL(os.fspath(Path(tvm.__file__).parent / "lib" / "libtvm_runtime.so"))
    hook = ctypes.c_void_p.in_dll(compiled.loaded.compiled.pool, "__TVMBackendParallelLaunch")
    hook.value = ctypes.cast(runtime.TVMBackendParallelLaunch, ctypes.c_void_p).value


def bench(key: str, batch: int, runs: int) -> list[dict]:
    import honer
    from honer.tests.models.zoo import ZOO

    model, examples = ZOO[MODELS[key]](batch=batch)
    arrays = [e.numpy() for e in examples]
    ours, theirs = (honer.compile(model, examples, passes=["exact"]) for _ in range(2))
    on_tvm_pool(theirs)
    peers = {"honer": lambda: ours(*arrays), "honer on TVM's pool": lambda: theirs(*arrays),
             "onnxruntime": onnx_session(model, examples, 2)}
    rows = []
    for load, nice in (("quiet", None), ("busy loop, nice 19", 19), ("busy loop, nice 0", 0)):
        with busy_core(nice):
            timings = harness.measure_in_turns(peers, runs)
        rows.append({"model": key, "batch": batch, "load": load,
                     "median_ms": {k: t.median_ms for k, t in timings.items()}})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet", "vit"], choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    harness.pin_threads(2)
    rows = [row for key in args.models for row in bench(key, args.batch, args.runs)]
    path = harness.save("background_load", {"threads": 2, "rows": rows})
    names = list(rows[0]["median_ms"])
    print(harness.table([[r["model"], r["load"], *(r["median_ms"][n] for n in names)]
                         for r in rows], ["model", "load", *(f"{n} ms" for n in names)]))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
