"""Every quantization and 2:4 scheme on real weights and data, and W8A8 against ONNX Runtime's
own int8, in one run.

Accuracy (each scheme compiled by honer for the host, timed beside fp32 in the same run):
- all-MiniLM-L6-v2 + the Rotten Tomatoes probe: probe accuracy and the embeddings' mean cosine
  with fp32's (see minilm_probe);
- the Fashion-MNIST ViT trained by vit_fashion_mnist: top-1 on the 10k test images.
Speed (`--speed`): ViT with DeiT-Tiny dimensions and BERT with MiniLM dimensions, batch 1 and
8, timed in turns: honer fp32 and W8A8 (both after the exact passes) beside ONNX Runtime fp32,
`quantize_dynamic` (int8 weights, uint8 activations quantized per call) and `quantize_static`
(QDQ, per-channel int8 weights, uint8 activations, calibrated on the same samples as honer),
all with the same threads. `--only-speed` re-times the speed table and keeps the accuracy
tables of the results file it updates (with their run's environment as accuracy_environment).

    .venv/bin/python -m honer.benchmarks.quant_schemes [--speed] [--only-speed]
        [--w8a8 "w8a8:reduce_range=false"] [--out quant_schemes]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from . import harness, sweep

SCHEMES = {
    "int8 weight-only": ["weight_quant:bits=8"],
    "int4 g32 AWQ": ["weight_quant:bits=4,group=32"],
    "W8A8 percentile + SmoothQuant": ["w8a8:calibrate=percentile"],
    "W8A8 minmax + SmoothQuant": ["w8a8:calibrate=minmax"],
    "W8A8 MSE + SmoothQuant": ["w8a8:calibrate=mse"],
    "W8A8 percentile, no smoothing": ["w8a8:calibrate=percentile,smooth=false"],
    "W8A8 MSE per channel (MergeQuant)": ["w8a8:granularity=channel"],
    "2:4 Wanda": ["sparse24:method=wanda"],
    "2:4 Wanda + int8 values": ["sparse24:method=wanda,bits=8"],
}


def minilm_accuracy(train: int, test: int, seq: int, calibration: int) -> list[dict]:
    import torch

    from honer.tests.models.zoo import load_minilm

    from .minilm_probe import probe, rotten_tomatoes

    texts, labels = rotten_tomatoes()
    order = np.random.default_rng(0).permutation(len(texts))
    used = order[:train + test + calibration]
    model, tokenizer = load_minilm()
    enc = tokenizer([texts[i] for i in used], padding="max_length", max_length=seq,
                    truncation=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    n = train + test
    calib = [(ids[k][None], mask[k][None]) for k in range(n, len(used))]
    example = (torch.from_numpy(ids[:1]), torch.from_numpy(mask[:1]))
    points = [("fp32", [])] + list(SCHEMES.items())
    return sweep.run_sweep(model, example, points, probe(ids[:n], mask[:n], labels[used[:n]],
                                                         train), calib, runs=50)


def vit_accuracy(test: int, batch: int, calibration: int) -> list[dict]:
    import torch

    from .datasets import fashion_mnist
    from .vit_fashion_mnist import load_model

    model = load_model()
    x, y = fashion_mnist("test")
    x, y = x[:test], y[:test]
    train_x, _ = fashion_mnist("train")
    calib = [(train_x[i * batch:(i + 1) * batch],) for i in range(calibration)]
    points = [("fp32", [])] + list(SCHEMES.items())
    return sweep.run_sweep(model, (torch.from_numpy(x[:batch]),), points,
                           sweep.top1([x], y, batch), calib, runs=30)


def export_ort_int8(model, examples, calib: list[tuple], work: Path) -> list[str]:
    """Writes fp32.onnx, dynamic.onnx (quantize_dynamic: int8 weights, activations quantized
    per call) and static.onnx (quantize_static, QDQ: per-channel int8 weights, uint8
    activations calibrated on `calib`) into `work`; returns the model's input names."""
    import io
    import warnings

    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(examples), buf, dynamo=False, opset_version=17)
    (work / "export.onnx").write_bytes(buf.getvalue())
    quant_pre_process(str(work / "export.onnx"), str(work / "fp32.onnx"))
    (work / "export.onnx").unlink()
    names = [i.name for i in harness.ort_session(str(work / "fp32.onnx"), 1).get_inputs()]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter([dict(zip(names, s)) for s in calib])

        def get_next(self):
            return next(self.samples, None)

    quantize_dynamic(str(work / "fp32.onnx"), str(work / "dynamic.onnx"),
                     weight_type=QuantType.QInt8)
    quantize_static(str(work / "fp32.onnx"), str(work / "static.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    return names


def ort_int8_variants(model, examples, calib: list[tuple], threads: int, work: Path) -> dict:
    """ONNX Runtime fp32, quantize_dynamic and quantize_static (QDQ) sessions as callables."""
    names = export_ort_int8(model, examples, calib, work)
    feeds = {n: e.numpy() for n, e in zip(names, examples)}
    out = {}
    for label, file in (("onnxruntime fp32", "fp32"), ("onnxruntime int8 dynamic", "dynamic"),
                        ("onnxruntime int8 static", "static")):
        session = harness.ort_session(str(work / f"{file}.onnx"), threads)
        out[label] = lambda s=session: s.run(None, feeds)
    return out


def speed(key: str, batch: int, w8a8: list[str], threads: int, runs: int) -> dict:
    import honer
    from honer.tests.models.zoo import ZOO

    from .cpu_latency import MODELS

    make = ZOO[MODELS[key]]
    model, examples = make(batch=batch)
    calib = [tuple(e.numpy() for e in make(batch=batch)[1]) for _ in range(4)]
    arrays = [e.numpy() for e in examples]
    # both with the exact passes, as cpu_latency compiles fp32 (QKV merged, masks folded)
    fp32 = honer.compile(model, examples, passes=["exact"])
    int8 = honer.compile(model, examples, passes=["exact", *w8a8], calibration=calib)
    peers = {"honer fp32": lambda: fp32(*arrays), "honer W8A8": lambda: int8(*arrays)}
    with tempfile.TemporaryDirectory() as tmp:
        peers.update(ort_int8_variants(model, examples, calib, threads, Path(tmp)))
        timings = harness.measure_in_turns(peers, runs)
    ms = {k: round(t.median_ms, 3) for k, t in timings.items()}
    w8a8_report = next(r for r in int8.report["passes"] if r["name"] == "w8a8")
    return {"model": key, "batch": batch, "median_ms": ms,
            "w8a8_error_vs_eager": int8.report["check"]["max_scaled_error"],
            "w8a8_vs_honer_fp32": round(ms["honer fp32"] / ms["honer W8A8"], 3),
            "w8a8_vs_ort_int8_dynamic": round(ms["onnxruntime int8 dynamic"]
                                              / ms["honer W8A8"], 3),
            "w8a8_vs_ort_int8_static": round(ms["onnxruntime int8 static"]
                                             / ms["honer W8A8"], 3),
            "int8_dot": int8.report["build"].get("schedule", {}).get("int8_dot"),
            "w8a8_layers": w8a8_report["matches"],
            "w8a8_float_ops": w8a8_report["effect"]["float_ops"]}


def _saved_accuracy(name: str) -> dict:
    """The accuracy tables of an earlier run's results file, with that run's environment (the
    speed table is re-timed without re-running them)."""
    path = harness.RESULTS / f"{name}.json"
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    kept = {k: saved[k] for k in ("minilm_probe", "vit_fashion_mnist") if k in saved}
    if kept:
        kept["accuracy_environment"] = saved.get("accuracy_environment", saved["environment"])
    return kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", action="store_true", help="also the ONNX Runtime int8 table")
    parser.add_argument("--only-speed", action="store_true")
    parser.add_argument("--w8a8", default="w8a8", help="the W8A8 pass spec timed in --speed")
    parser.add_argument("--models", nargs="*", default=["vit", "bert"])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--out", default="quant_schemes")
    args = parser.parse_args(argv)
    harness.pin_threads(args.threads)
    payload: dict = {"threads": args.threads, "schemes": SCHEMES}
    if args.only_speed:
        payload.update(_saved_accuracy(args.out))
    else:
        payload["minilm_probe"] = minilm_accuracy(args.train, args.test, 48, 16)
        print(sweep.summary(payload["minilm_probe"], "probe accuracy"))
        payload["vit_fashion_mnist"] = vit_accuracy(10000, 64, 8)
        print(sweep.summary(payload["vit_fashion_mnist"], "top-1"))
    if args.speed or args.only_speed:
        rows = [speed(m, b, [args.w8a8], args.threads, args.runs)
                for m in args.models for b in args.batches]
        payload["speed"] = {"w8a8_spec": args.w8a8, "rows": rows}
        names = list(rows[0]["median_ms"])
        print(harness.table([[r["model"], r["batch"], *(r["median_ms"][n] for n in names),
                              r["w8a8_vs_honer_fp32"], r["w8a8_vs_ort_int8_dynamic"]]
                             for r in rows],
                            ["model", "batch", *names, "W8A8 speedup", "vs ORT int8 dyn"]))
    print(f"saved {harness.save(args.out, payload)}")


if __name__ == "__main__":
    main()
