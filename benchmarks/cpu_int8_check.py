"""W8A8 against fp32 on a CPU with AVX-512 VNNI, from artifacts built here for that CPU.

This machine's CPU has AVX2 only (no int8 dot product wider than vpmaddubsw, whose int8 rate
matches its fp32 FMA rate), so the VNNI kernels are built here with `host:mcpu=...` in the
standalone form (no TVM needed to run them) and timed on a machine that has VNNI (the GPU
machine's host CPU), fp32 and W8A8 side by side with the same pinned cores.

    python -m honer.benchmarks.cpu_int8_check build --out B [--mcpu icelake-server]
        [--models vit bert]                       # here
    python -m honer.benchmarks.cpu_int8_check build --onnx --out O   # ONNX Runtime's models
    python3 -m honer.benchmarks.cpu_int8_check run --bundle B --out R.json [--threads 2]
                                                  # there: numpy and honer's runtime only
                                                  # (onnxruntime for a bundle from --onnx)

Weights are stored once per model and scheme, deflated (batch 1 and 8 share them: same
calibration rows),
BERT with MiniLM dimensions has a 1024-token vocabulary in this check so a bundle fits the
transfer to the GPU machine (the embedding gather's cost does not depend on the vocabulary).
"""

from __future__ import annotations

import argparse
import json
import os
import zlib
from pathlib import Path

import numpy as np

from . import harness

SCHEMES = {"fp32": [], "w8a8": ["w8a8:reduce_range=false"]}  # VNNI sums int32 directly


def _model(key: str, batch: int):
    from honer.tests.models.zoo import ZOO

    if key == "bert":
        return ZOO["bert_minilm"](batch=batch, vocab=1024)
    return ZOO["vit_deit_tiny"](batch=batch)


def build_onnx(out: Path, models: list[str], batches: list[int]) -> None:
    """ONNX Runtime's fp32, quantize_dynamic and quantize_static models, one per batch (their
    own files: the transfer to the GPU machine carries them separately from honer's)."""
    from .quant_schemes import export_ort_int8

    out.mkdir(parents=True, exist_ok=True)
    for key in models:
        rows = [tuple(e.numpy() for e in _model(key, 1)[1]) for _ in range(16)]
        for batch in batches:
            model, examples = _model(key, batch)
            calib = [tuple(np.concatenate(part) for part in zip(*rows[i:i + batch]))
                     for i in range(0, len(rows), batch)]
            target = out / f"{key}_b{batch}_ort"
            target.mkdir(exist_ok=True)
            export_ort_int8(model, examples, calib, target)
            for i, e in enumerate(examples):
                np.save(out / f"{key}_b{batch}_in{i}.npy", e.numpy())
            print(f"exported {key} batch {batch}", flush=True)


def build(out: Path, mcpu: str, models: list[str], batches: list[int]) -> None:
    import torch

    import honer

    out.mkdir(parents=True, exist_ok=True)
    for key in models:
        # the same 16 calibration rows for every batch (so the batches' weights are equal),
        # in samples of that batch
        rows = [tuple(e.numpy() for e in _model(key, 1)[1]) for _ in range(16)]
        for batch in batches:
            calib = [tuple(np.concatenate(part) for part in zip(*rows[i:i + batch]))
                     for i in range(0, len(rows), batch)]
            model, examples = _model(key, batch)
            arrays = [e.numpy() for e in examples]
            with torch.no_grad():
                np.save(out / f"{key}_b{batch}_eager.npy", model(*examples).numpy())
            for i, a in enumerate(arrays):
                np.save(out / f"{key}_b{batch}_in{i}.npy", a)
            for scheme, passes in SCHEMES.items():
                name = f"{key}_b{batch}_{scheme}"
                compiled = honer.compile(model, examples,
                                         target=f"host:form=standalone,mcpu={mcpu}",
                                         passes=passes, calibration=calib if passes else None,
                                         check=False)
                compiled.save(out / name)
                _share_weights(out, key, batch, batches[0], scheme)
            print(f"built {key} batch {batch}", flush=True)


def _share_weights(out: Path, key: str, batch: int, first: int, scheme: str) -> None:
    """Stores weights.bin deflated (the transfer's size limit), once where a later batch's
    equals the first batch's (fp32; calibration statistics computed on other batch shapes
    can differ in the last bits, and so can W8A8's weights)."""
    mine = out / f"{key}_b{batch}_{scheme}" / "weights.bin"
    shared = out / f"{key}_b{first}_{scheme}" / "weights.bin.z"
    if batch == first or mine.read_bytes() != zlib.decompress(shared.read_bytes()):
        mine.with_suffix(".bin.z").write_bytes(zlib.compress(mine.read_bytes(), 6))
    mine.unlink()


def run(bundle: Path, out: Path, threads: int, runs: int) -> None:
    import honer
    from honer.runtime.cpu import cpu_flags

    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))
    rows = [_ort_row(p, threads, runs) for p in sorted(bundle.glob("*_ort"))]
    for art in sorted(p for p in bundle.iterdir() if p.is_dir() and p.name.endswith("_fp32")):
        stem = art.name[:-len("_fp32")]
        key, batch = stem.rsplit("_b", 1)
        inputs = [np.load(p) for p in sorted(bundle.glob(f"{stem}_in*.npy"))]
        eager = np.load(bundle / f"{stem}_eager.npy")
        row = {"model": key, "batch": int(batch)}
        for scheme in SCHEMES:
            path = bundle / f"{stem}_{scheme}"
            _restore_weights(bundle, path, key, scheme)
            model = honer.load(path)
            got = model(*inputs)
            got = got[0] if isinstance(got, list | tuple) else got
            row[f"{scheme}_error"] = float(np.abs(got - eager).max() / np.abs(eager).max())
            row[f"{scheme}_ms"] = _median_ms(lambda m=model, x=inputs: m(*x), runs)
            row[f"{scheme}_kernels"] = _kernel_profile(model, inputs)
        row["w8a8_speedup"] = round(row["fp32_ms"] / row["w8a8_ms"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    payload = {"cpu": harness.cpu_name(), "cpu_features": cpu_flags(), "threads": threads,
               "runs": runs, "rows": rows}
    out.write_text(json.dumps(payload, indent=1) + "\n")


def _ort_row(folder: Path, threads: int, runs: int) -> dict:
    import onnxruntime as ort

    stem = folder.name[:-len("_ort")]
    key, batch = stem.rsplit("_b", 1)
    inputs = [np.load(p) for p in sorted(folder.parent.glob(f"{stem}_in*.npy"))]
    row = {"model": key, "batch": int(batch), "onnxruntime": ort.__version__}
    for model in sorted(folder.glob("*.onnx")):
        session = harness.ort_session(str(model), threads)
        feeds = {i.name: x for i, x in zip(session.get_inputs(), inputs)}
        row[f"ort_{model.stem}_ms"] = _median_ms(lambda s=session, f=feeds: s.run(None, f), runs)
    print(json.dumps(row), flush=True)
    return row


def _restore_weights(bundle: Path, path: Path, key: str, scheme: str) -> None:
    if not (path / "weights.bin").exists():
        packed = path / "weights.bin.z"
        if not packed.exists():  # this batch shares the first batch's weights
            packed = next(bundle.glob(f"{key}_b*_{scheme}/weights.bin.z"))
        (path / "weights.bin").write_bytes(zlib.decompress(packed.read_bytes()))


def _kernel_profile(model, inputs: list[np.ndarray], top: int = 12) -> list:
    """The kernels taking the most time per run (ms, summed over their calls)."""
    total: dict[str, float] = {}
    for name, ms in model.compiled.profile(inputs, runs=5):
        total[name] = total.get(name, 0.0) + ms
    return sorted(([k, round(v, 3)] for k, v in total.items()), key=lambda kv: -kv[1])[:top]


def _median_ms(fn, runs: int) -> float:
    return round(harness.measure("", fn, runs=runs).median_ms, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--mcpu", default="icelake-server")
    b.add_argument("--models", nargs="*", default=["vit", "bert"])
    b.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    b.add_argument("--onnx", action="store_true", help="ONNX Runtime's models instead")
    r = sub.add_parser("run")
    r.add_argument("--bundle", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    if args.command == "build" and args.onnx:
        build_onnx(args.out, args.models, args.batches)
    elif args.command == "build":
        build(args.out, args.mcpu, args.models, args.batches)
    else:
        run(args.bundle, args.out, args.threads, args.runs)


if __name__ == "__main__":
    main()
