"""Token merging and pruning against plain PyTorch implementations of the same methods (written
here from the ToMe paper, not from honer's code) on the coverage ViT and BERT, compiled against
the interpreter, and the refusals."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import honer
from honer.errors import PassError
from honer.frontend import capture
from honer.ir import interpret
from honer.passes import Evaluation, run_pipeline
from honer.tests.models.zoo import ZOO

TOL = 1e-4  # of the output's scale: the same arithmetic in another order


# ---- the PyTorch references ------------------------------------------------------------------


def merge_ref(x, k, sizes, r, protect):
    """ToMe bipartite soft matching with size-weighted averages. Returns the merged tokens,
    their sizes and, for every input token, the index of the token it went into. Merging
    padding (size 0) anywhere is free, so it goes first; a real token goes into a padding slot
    (lossless: it just moves) only when no real partner is left."""
    metric = k.mean(1)
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)
    na, nb = scores.shape[1:]
    i = torch.arange(na, dtype=scores.dtype)[:, None]
    j = torch.arange(nb, dtype=scores.dtype)[None, :]
    # real into padding ranks below real pairs; padding sources rank first; protected last
    scores = torch.where((sizes[:, 1::2] > 0)[:, None, :], scores, -1e4 - j)
    scores = torch.where((sizes[:, ::2] > 0)[:, :, None], scores, 2.0 + i - j / (nb + 1))
    protected = (i * 2 < protect) | (j * 2 + 1 < protect)
    scores = torch.where(protected, -3e4 - j, scores)
    best, best_dst = scores.max(-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    src, unm = order[:, :r], order[:, r:].sort(-1).values
    dst = best_dst.gather(1, src)
    w = sizes.clamp_min(1e-30)[..., None]

    def merged(t):  # t [B, N, C]: unmerged A tokens, then B tokens with their sources added
        a, b = t[:, ::2], t[:, 1::2]
        take = lambda idx: a.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
        b = b.scatter_reduce(1, dst[..., None].expand(-1, -1, t.shape[-1]), take(src), "sum")
        return torch.cat([take(unm), b], 1)

    out = merged(x * w) / merged(w)
    new_sizes = merged(sizes[..., None])[..., 0]
    into = torch.empty_like(sizes, dtype=torch.long)
    bsz = x.shape[0]
    rows = torch.arange(bsz)[:, None]
    into[rows, 2 * unm] = torch.arange(na - r)[None].expand(bsz, -1)
    into[rows, 2 * src] = na - r + dst
    into[:, 1::2] = na - r + torch.arange(nb)
    return out, new_sizes, into


def prune_ref(x, q, k, sizes, r, protect, scale):
    """Keeps the tokens the class token attends to most (padding goes first)."""
    logits = (q[:, :, :1] @ k.transpose(-1, -2)) * scale + sizes.log()[:, None, None, :]
    attended = logits.softmax(-1).mean(1)[:, 0]
    idx = torch.arange(x.shape[1], dtype=x.dtype)
    score = torch.where(sizes > 0, attended, -1.0 - idx)
    score = torch.where(idx < protect, 2.0, score)
    keep = score.argsort(dim=-1, descending=True, stable=True)[:, :x.shape[1] - r].sort(-1).values
    into = torch.full_like(sizes, -1, dtype=torch.long)
    into.scatter_(1, keep, torch.arange(keep.shape[1])[None].expand(x.shape[0], -1))
    pick = lambda t: t.gather(1, keep[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
    return pick(x), pick(sizes[..., None])[..., 0], into


def reduce_ref(mode, x, q, k, sizes, r, protect, scale):
    if mode == "merge":
        return merge_ref(x, k, sizes, r, protect)
    return prune_ref(x, q, k, sizes, r, protect, scale)


def _heads(linear, x, heads):
    b, n, c = x.shape
    return linear(x).view(b, n, heads, c // heads).transpose(1, 2)


def _attend(q, k, v, bias):
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


@torch.no_grad()
def vit_ref(model, pixels, rs, mode="merge"):
    """HF ViT, block by block, reducing r tokens after each attention (proportional
    attention after that); the head reads the class token."""
    vit, heads = model.model.vit, model.model.config.num_attention_heads
    x = vit.embeddings(pixels)
    sizes, bias = torch.ones(x.shape[:2]), None
    for layer, r in zip(vit.layers, rs):
        att, h = layer.attention, layer.layernorm_before(x)
        q, k, v = (_heads(p, h, heads) for p in (att.q_proj, att.k_proj, att.v_proj))
        x = x + att.o_proj(_attend(q, k, v, bias))
        if r:
            x, sizes, _ = reduce_ref(mode, x, q, k, sizes, r, 1, q.shape[-1] ** -0.5)
            bias = sizes.log()[:, None, None, :]
        x = x + layer.mlp(layer.layernorm_after(x))
    return model.model.classifier(vit.layernorm(x)[:, 0])


@torch.no_grad()
def bert_ref(model, ids, mask, rs):
    """HF BERT (post-norm) with padding, merging after each attention's residual add, and
    the tokens spread back to their positions at the end."""
    bert, heads = model.model, model.model.config.num_attention_heads
    x = bert.embeddings(input_ids=ids)
    sizes = mask.to(x.dtype)
    where = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
    for layer, r in zip(bert.encoder.layer, rs):
        sa, out = layer.attention.self, layer.attention.output
        q, k, v = (_heads(p, x, heads) for p in (sa.query, sa.key, sa.value))
        x = out.dense(_attend(q, k, v, sizes.log()[:, None, None, :])) + x
        if r:
            x, sizes, into = merge_ref(x, k, sizes, r, 0)
            where = into.gather(1, where)
        x = out.LayerNorm(x)
        x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
    return x.gather(1, where[..., None].expand(-1, -1, x.shape[-1]))


def _rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


# ---- numerics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, rs, mode", [
    ("tome:r=8", [8] * 12, "merge"),
    ("tome:r=12,schedule=decreasing", [18, 17, 16, 15, 14, 13, 11, 10, 9, 8, 7, 6], "merge"),
    ("tome:r=16,mode=prune,blocks=2-9", [0, 0] + [16] * 8 + [0, 0], "prune"),
])
def test_vit_matches_pytorch_tome(spec, rs, mode):
    model, (pixels,) = ZOO["vit_deit_tiny"](batch=2)
    graph = capture(model, (pixels,))
    out, [report] = run_pipeline(graph, [spec])
    got = interpret(out, [pixels.numpy()])[0]
    want = vit_ref(model, pixels, rs, mode).numpy()
    assert _rel_err(got, want) <= TOL
    tokens = list(report.effect["tokens"].values())
    assert [a - b for a, b in tokens] == rs and tokens[0][0] == 197
    assert report.effect["class_token_head"] and report.effect["protect"] == 1
    assert report.effect["flops_after"] < report.effect["flops_before"]
    with torch.no_grad():  # the model changed: fewer tokens, a different (close) answer
        assert _rel_err(got, model(pixels).numpy()) > 1e-3


def test_bert_with_padding_matches_pytorch_tome_and_keeps_per_token_outputs():
    model, (ids, mask) = ZOO["bert_minilm"](batch=2, seq=64)
    mask[1, 20:] = 0  # the second sentence is mostly padding
    graph = capture(model, (ids, mask))
    out, reports = run_pipeline(graph, ["fold", "tome:r=10"])
    report = reports[-1]
    got = interpret(out, [ids.numpy(), mask.numpy()])[0]
    rs = [a - b for a, b in report.effect["tokens"].values()]
    assert rs == [10, 10, 10, 10, 10, 7]  # the last block has 14 tokens: at most 7 go
    want = bert_ref(model, ids, mask, rs).numpy()
    real = mask.numpy().astype(bool)
    assert got.shape == want.shape == (2, 64, 384)
    assert _rel_err(got[real], want[real]) <= TOL
    assert not report.effect["class_token_head"] and report.effect["protect"] == 0


def test_compiled_tome_agrees_with_the_interpreter():
    model, (ids, mask) = ZOO["bert_minilm"](batch=2, seq=32)
    mask[0, 25:] = 0
    graph, _ = run_pipeline(capture(model, (ids, mask)), ["exact", "tome:r=6"])
    compiled = honer.compile(graph, check=False)
    inputs = [ids.numpy(), mask.numpy()]
    real = mask.numpy().astype(bool)
    assert _rel_err(compiled(*inputs)[real], interpret(graph, inputs)[0][real]) <= TOL


def test_compiled_pruning_agrees_with_the_interpreter():
    model, (pixels,) = ZOO["vit_deit_tiny"]()
    graph, _ = run_pipeline(capture(model, (pixels,)), ["exact", "tome:r=20,mode=prune"])
    compiled = honer.compile(graph, check=False)
    got = compiled(pixels.numpy())
    assert _rel_err(got, interpret(graph, [pixels.numpy()])[0]) <= TOL


# ---- structure and refusals ------------------------------------------------------------------


def test_merge_sits_between_attention_and_mlp():
    model, (pixels,) = ZOO["vit_deit_tiny"]()
    out, _ = run_pipeline(capture(model, (pixels,)), ["tome:r=8,blocks=0"])
    ops = [(n.op, n.scope) for n in out.nodes if n.scope.startswith("model.vit.layers.0")]
    plan = [i for i, (op, _) in enumerate(ops) if op == "tome_plan"]
    assert len(plan) == 1 and ops[plan[0]][1] == "model.vit.layers.0.tome"
    names = [op for op, _ in ops]
    assert names.index("attention") < plan[0] < names.index("gelu")
    # block 1 sees 189 tokens and the merged sizes as its attention bias
    att1 = next(n for n in out.nodes if n.op == "attention" and "layers.1" in n.scope)
    assert att1.inputs[0].shape[2] == 189 and att1.inputs[3].shape == (1, 1, 1, 189)


def test_refusals_name_the_reason():
    model, inputs = ZOO["gpt2_6l"]()  # its causal mask is an input to attention
    with pytest.raises(PassError, match="varies along the queries"):
        run_pipeline(capture(model, inputs), ["tome:r=4"])

    model, inputs = ZOO["bert_minilm"](seq=16)
    graph = capture(model, inputs)
    with pytest.raises(PassError, match="class token"):
        run_pipeline(graph, ["tome:r=2,mode=prune"])
    with pytest.raises(PassError, match="mode="):
        run_pipeline(graph, ["tome:r=2,mode=fuse"])
    with pytest.raises(PassError, match="r=N"):
        run_pipeline(graph, ["tome"])
    with pytest.raises(PassError, match="one r >= 0 per block"):
        run_pipeline(graph, ["tome:schedule=4+4"])
    _, [report] = run_pipeline(graph, ["tome:r=6"])
    clamped = [r for r in report.rejections if "clamped" in r["reason"]]
    assert clamped and "16 tokens" not in clamped[0]["reason"]  # later blocks run out


def test_report_gives_the_task_metric_before_and_after():
    """Labels from the unmerged model itself (fixed seeds): top-1 starts at 1.0 and merging
    most tokens in every block loses some of it; mild merging loses less."""
    model, (pixels,) = ZOO["vit_deit_tiny"](batch=8)
    graph = capture(model, (pixels,))
    labels = interpret(graph, [pixels.numpy()])[0].argmax(-1)
    evaluation = Evaluation([(pixels.numpy(),)], [labels])
    top1 = {}
    for r in (4, 16):
        _, [report] = run_pipeline(graph, [f"tome:r={r}"], evaluation=evaluation)
        assert report.effect["top1_before"] == 1.0
        top1[r] = report.effect["top1_after"]
    assert top1[16] <= top1[4] <= 1.0 and top1[16] < 1.0
