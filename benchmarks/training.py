"""Training loop for the small classifiers honer trains itself for its evaluations."""

from __future__ import annotations

import time
from pathlib import Path

from honer.benchmarks.datasets import fashion_mnist


def train_fashion_mnist(model, epochs: int, lr: float, path: Path, seed: int = 0,
                        batch: int = 128) -> dict:
    """AdamW with a one-cycle schedule on the 60k training images (random horizontal flips
    but in the last epoch); saves the weights as safetensors at `path`."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    x, y = (torch.from_numpy(a) for a in fashion_mnist("train"))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = len(x) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr,
                                                total_steps=epochs * steps_per_epoch)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            xb = x[idx]
            if epoch < epochs - 1:
                flip = torch.rand(len(xb)) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if i % 100 == 0:
                print(f"  step {i}/{steps_per_epoch}: loss {loss.item():.3f}, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(path))
    return {"epochs": epochs, "train_seconds": round(time.perf_counter() - start, 1)}
