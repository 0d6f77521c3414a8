"""The exact passes: golden IR, rejection reasons, and numerics against PyTorch eager."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import honer
from honer.frontend import capture
from honer.ir import Graph, interpret
from honer.passes import run_pipeline
from honer.tests.models.repvgg import ACBlock, RepVGG, RepVGGBlock, randomize_batch_norms
from honer.tests.models.zoo import ZOO

REL = 1e-5  # max |optimized - eager| / max |eager|, the bound for exact passes


def eager_vs_passes(model, examples, passes):
    graph = capture(model, examples)
    optimized, reports = run_pipeline(graph, passes)
    with torch.no_grad():
        want = model(*examples).numpy()
    got = interpret(optimized, [e.numpy() for e in examples])[0]
    err = np.abs(got - want).max() / np.abs(want).max()
    return graph, optimized, {r.name: r for r in reports}, err


GOLDEN_REPVGG = """graph main(%x: f32[1,4,6,6]) {
  const %p_dense_0_weight_folded_rep: f32[4,4,3,3]
  const %p_dense_0_weight_folded_rep_bias: f32[4]
  %conv_0: f32[1,4,6,6] = conv(%x, %p_dense_0_weight_folded_rep, %p_dense_0_weight_folded_rep_bias) {strides=[1,1], padding=[1,1,1,1], dilation=[1,1], activation='relu'}  # dense.0
  return %conv_0
}"""  # noqa: E501


def test_repvgg_block_golden_ir():
    torch.manual_seed(0)
    model = randomize_batch_norms(RepVGGBlock(4, 4))
    graph, optimized, reports, err = eager_vs_passes(model, (torch.randn(1, 4, 6, 6),), ["exact"])
    assert "batch_norm" in graph.dump() and graph.dump().count("conv(") == 2
    assert optimized.dump() == GOLDEN_REPVGG
    assert err <= REL
    assert reports["bn_fold"].matches == 2 and reports["repvgg"].matches == 1
    assert reports["act_fuse"].matches == 1


@pytest.mark.parametrize("make", [lambda: RepVGG(widths=(8, 8, 16, 16, 32), depths=(1, 2, 2, 2, 1),
                                                 in_channels=3),
                                  lambda: ACBlock(6)], ids=["repvgg", "acnet"])
def test_whole_networks_collapse_to_one_conv_per_block(make):
    torch.manual_seed(0)
    model = randomize_batch_norms(make())
    graph, optimized, reports, err = eager_vs_passes(model, (torch.randn(2, 3 if isinstance(
        model, RepVGG) else 6, 16, 16),), ["exact"])
    assert err <= REL
    ops = [n.op for n in optimized.nodes]
    assert "batch_norm" not in ops and "add" not in ops and "relu" not in ops
    blocks = sum(isinstance(m, RepVGGBlock | ACBlock) for m in model.modules())
    assert ops.count("conv") == blocks and reports["repvgg"].matches == blocks


def test_repvgg_rejections_say_why():
    torch.manual_seed(0)

    class MismatchedStride(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 5, 1, 0)  # 8x8 -> 4x4
            self.b = nn.Conv2d(4, 4, 3, 2, 1)  # 8x8 -> 4x4

        def forward(self, x):
            return self.a(x) + self.b(x)

    class OddSizes(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 2, 2, 0)
            self.b = nn.Conv2d(4, 4, 1, 2, 0)

        def forward(self, x):
            return self.a(x) + self.b(x)

    for model, reason in [(MismatchedStride(), "mismatched strides"),
                          (OddSizes(), "mismatched padding")]:
        _, optimized, reports, err = eager_vs_passes(model.eval(), (torch.randn(1, 4, 8, 8),),
                                                     ["repvgg"])
        assert reports["repvgg"].matches == 0
        assert reason in reports["repvgg"].rejections[0]["reason"]
        assert err <= REL
    model, examples = ZOO["resnet18"]()
    _, _, reports, _ = eager_vs_passes(model, examples, ["bn_fold", "repvgg"])
    assert all("residual connection" in r["reason"] for r in reports["repvgg"].rejections)
    assert len(reports["repvgg"].rejections) == 8


def test_bn_fold_numerics_and_rejections():
    model, examples = ZOO["conv_bn_relu_cnn"]()
    _, optimized, reports, err = eager_vs_passes(model, examples, ["bn_fold", "act_fuse"])
    assert err <= REL and reports["bn_fold"].matches == 3
    assert [n.op for n in optimized.nodes][:3] == ["conv"] * 3

    g = Graph()  # a batch_norm whose statistics are run-time inputs cannot fold
    x = g.add_input("x", (1, 3, 4, 4), "float32")
    var = g.add_input("var", (3,), "float32")
    w = g.add_const(np.ones((3, 3, 1, 1), np.float32))
    y = g.op("conv", x, w, strides=(1, 1), padding=(0,) * 4, dilation=(1, 1))
    ones = g.add_const(np.ones(3, np.float32))
    g.set_outputs([g.op("batch_norm", y, ones, ones, ones, var)])
    out, reports = run_pipeline(g, ["bn_fold"])
    assert reports[0].matches == 0
    assert reports[0].rejections[0]["reason"] == "batch_norm parameters are not constants"

    class PaddedAfterBN(nn.Module):  # BN then a padding conv: the shift cannot fold
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(self.bn(x))

    model = randomize_batch_norms(PaddedAfterBN())
    _, _, reports, err = eager_vs_passes(model, (torch.randn(1, 3, 5, 5),), ["bn_fold"])
    assert "pads its input" in reports["bn_fold"].rejections[0]["reason"] and err <= REL


class ReparamFFN(nn.Module):
    """A RePaViT-style FFN: affine in, linear, BatchNorm on tokens, GELU, linear, LayerScale,
    followed by two linears with no nonlinearity between (fusable) and a bottleneck (not)."""

    def __init__(self, dim: int = 16, hidden: int = 32):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(dim) + 0.5)
        self.shift = nn.Parameter(torch.randn(dim))
        self.fc1 = nn.Linear(dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.rand(dim))
        self.proj_a = nn.Linear(dim, dim)
        self.proj_b = nn.Linear(dim, dim)
        self.down = nn.Linear(dim, 2)
        self.up = nn.Linear(2, dim)

    def forward(self, x):  # x: [tokens, dim]
        h = self.bn(self.fc1(x * self.scale + self.shift))
        y = x + self.gamma * self.fc2(F.gelu(h))
        y = self.proj_b(self.proj_a(y))
        return self.up(self.down(y))


def test_linear_fold_folds_affines_batchnorm_layerscale_and_chains():
    torch.manual_seed(0)
    model = randomize_batch_norms(ReparamFFN())
    graph, optimized, reports, err = eager_vs_passes(model, (torch.randn(10, 16),),
                                                     ["fold", "bn_fold", "linear_fold"])
    assert err <= REL
    effect = reports["linear_fold"].effect
    # proj_a and proj_b fuse, then the result fuses into down (fewer FLOPs); up stays apart
    assert effect["affine_before"] >= 1 and effect["linear_chains"] == 2
    assert reports["bn_fold"].matches == 1
    ops = [n.op for n in optimized.nodes]
    assert ops.count("linear") == 4 and "batch_norm" not in ops and "mul" not in ops
    reasons = [r["reason"] for r in reports["linear_fold"].rejections]
    assert any("costs more than the two" in r for r in reasons)


@pytest.mark.parametrize("name,kwargs,groups", [
    ("bert_minilm", {}, 6),  # 6 layers x q/k/v
    ("llama_smollm2", {"layers": 2}, 4),  # 2 layers x (q/k/v + gate/up)
])
def test_qkv_merge_on_transformers(name, kwargs, groups):
    model, examples = ZOO[name](**kwargs)
    _, optimized, reports, err = eager_vs_passes(model, examples, ["qkv_merge"])
    assert err <= REL
    assert reports["qkv_merge"].matches == groups


def test_fold_removes_constant_subgraphs_and_identities():
    g = Graph()
    x = g.add_input("x", (2, 3), "float32")
    a = g.add_const(np.arange(3, dtype=np.float32))
    b = g.op("exp", g.op("neg", a))  # constant subgraph
    y = g.op("reshape", g.op("mul", x, g.add_const(np.ones(3, np.float32))), shape=(2, 3))
    g.set_outputs([g.op("add", y, b)])
    out, reports = run_pipeline(g, ["fold"])
    assert [n.op for n in out.nodes] == ["add"]
    assert reports[0].effect["constants_folded"] == 2
    assert reports[0].effect["identities_removed"] == 2
    xs = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(interpret(out, [xs])[0], interpret(g, [xs])[0], rtol=1e-6)


@pytest.mark.parametrize("mask,dropped", [(np.ones((1, 1, 5, 5), bool), True),
                                          (np.zeros((1, 1, 5, 5), np.float32), True),
                                          (np.tril(np.ones((1, 1, 5, 5), bool)), False)])
def test_fold_drops_an_attention_mask_that_masks_nothing(mask, dropped):
    g = Graph()
    q, k, v = (g.add_input(n, (1, 2, 5, 4), "float32") for n in "qkv")
    g.set_outputs([g.op("attention", q, k, v, g.add_const(mask))])
    out, _ = run_pipeline(g, ["fold"])
    (node,) = out.nodes
    assert len(node.inputs) == (3 if dropped else 4)
    xs = [np.random.default_rng(i).standard_normal((1, 2, 5, 4)).astype(np.float32)
          for i in range(3)]
    np.testing.assert_allclose(interpret(out, xs)[0], interpret(g, xs)[0], rtol=1e-6)


def test_exact_preset_compiles_and_matches_eager_through_the_host_build():
    torch.manual_seed(0)
    model = randomize_batch_norms(RepVGG(widths=(8, 8, 16, 16, 32), depths=(1, 2, 2, 2, 1)))
    x = torch.randn(1, 1, 28, 28)
    compiled = honer.compile(model, (x,), passes=["exact"])
    assert compiled.report["check"]["max_scaled_error"] <= REL
    assert [p["name"] for p in compiled.report["passes"]] == [
        "fold", "bn_fold", "repvgg", "linear_fold", "qkv_merge", "act_fuse"]
