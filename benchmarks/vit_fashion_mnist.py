"""A ViT-Tiny-style classifier trained here on Fashion-MNIST, and token merging on it.

The model: Hugging Face's ViT, patch 4 on 28x28 (49 patches + a class token = 50 tokens),
width 128, 6 blocks, 4 heads, MLP 512 (1.2 M parameters), trained on the 60k training images
in a few CPU minutes (`--retrain`; the weights are kept in benchmarks/results/). The sweep
compiles it with honer for every r of token merging (ToMe) and of the pruning variant, and
reports top-1 on the 10k test images and the latency measured beside the unmerged model.

    .venv/bin/python -m honer.benchmarks.vit_fashion_mnist [--retrain] [--epochs 3]
"""

from __future__ import annotations

import argparse

import numpy as np

from honer.benchmarks import harness, sweep
from honer.benchmarks.datasets import fashion_mnist
from honer.benchmarks.training import train_fashion_mnist

WEIGHTS = harness.RESULTS / "vit_fashion_mnist.safetensors"


def make_model():
    from transformers import ViTConfig, ViTForImageClassification

    from honer.tests.models.zoo import _FirstOutput

    cfg = ViTConfig(hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
                    intermediate_size=512, image_size=28, patch_size=4, num_channels=1,
                    num_labels=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    attn_implementation="sdpa")
    return _FirstOutput(ViTForImageClassification(cfg), "logits")


def train(epochs: int, seed: int = 0) -> dict:
    import torch

    torch.manual_seed(seed)
    return train_fashion_mnist(make_model(), epochs, 2e-3, WEIGHTS, seed)


def load_model():
    from safetensors.torch import load_file

    if not WEIGHTS.exists():
        print(f"{WEIGHTS} is missing: training it (a few minutes)", flush=True)
        train(3)
    model = make_model()
    model.load_state_dict(load_file(str(WEIGHTS)))
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--r", default="1-8", help="tokens merged (or pruned) per block")
    parser.add_argument("--test", type=int, default=10000, help="test images used")
    parser.add_argument("--batch", type=int, default=64, help="batch compiled, evaluated and "
                                                              "timed (batch 1 is timed too)")
    args = parser.parse_args(argv)
    harness.pin_threads(2)
    training = train(args.epochs) if args.retrain else None
    model = load_model()
    x, y = fashion_mnist("test")
    x, y = x[:args.test], y[:args.test]
    with torch.no_grad():
        eager = np.concatenate([model(torch.from_numpy(x[i:i + 500])).argmax(1).numpy()
                                for i in range(0, len(x), 500)])
    eager_top1 = float((eager == y).mean())
    print(f"PyTorch eager top-1 {100 * eager_top1:.2f} %")
    values = sweep.parse_values(args.r)
    methods = {"token merging (ToMe)": "tome:r={}", "token pruning": "tome:r={},mode=prune"}
    curves, batch1 = {}, {}
    for name, template in methods.items():
        points = sweep.points_for(template, values)
        curves[name] = sweep.run_sweep(model, (torch.from_numpy(x[:args.batch]),), points,
                                       sweep.top1([x], y, args.batch), runs=30)
        batch1[name] = sweep.run_sweep(model, (torch.from_numpy(x[:1]),), points, runs=300)
        for rows, title in ((curves[name], f"batch {args.batch}"), (batch1[name], "batch 1")):
            print(f"{name}, {title}")
            print(sweep.summary(rows, "top-1"))
    sweep.save_curve(harness.RESULTS / "vit_fashion_mnist_tome", curves,
                     f"ViT (50 tokens, 6 blocks) on Fashion-MNIST, batch {args.batch}", "top-1",
                     {"eager_top1": eager_top1, "test_images": len(y), "batch": args.batch,
                      "batch1": batch1, **({"training": training} if training else {})})


if __name__ == "__main__":
    main()
