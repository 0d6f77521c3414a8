"""Layer skipping against PyTorch references that delete the same layers from the module list,
Block Influence against the same formula on torch's hidden states, and the refusals."""

import copy

import numpy as np
import pytest
import torch

from honer.errors import PassError
from honer.frontend import capture
from honer.ir import interpret
from honer.passes import run_pipeline
from honer.passes.base import Calibration
from honer.passes.layer_skip import find_blocks
from honer.tests.models.zoo import ZOO

TOL = 1e-5  # a skip is exact relative to the model without those layers


def _without(model, layers_attr: str, skip: list[int]):
    """The PyTorch reference: the same model with those entries of its layer list removed."""
    ref = copy.deepcopy(model)
    owner_path, _, name = layers_attr.rpartition(".")
    owner = ref.get_submodule(owner_path)
    layers = getattr(owner, name)
    setattr(owner, name, torch.nn.ModuleList(m for i, m in enumerate(layers) if i not in skip))
    if hasattr(ref.model, "config") and hasattr(ref.model.config, "num_hidden_layers"):
        ref.model.config.num_hidden_layers = len(layers) - len(skip)
    return ref


def _compare(model, inputs, spec, layers_attr, calib=None):
    graph = capture(model, inputs)
    out, reports = run_pipeline(graph, [spec], calib)
    report = reports[0]
    skip = [int(s.rsplit(".", 1)[1]) for s in report.effect["skipped"]]
    with torch.no_grad():
        want = _without(model, layers_attr, skip)(*inputs).numpy()
    got = interpret(out, [x.numpy() for x in inputs])[0]
    return report, skip, np.abs(got - want).max() / np.abs(want).max()


def test_fixed_list_on_bert_matches_bert_without_those_layers():
    model, inputs = ZOO["bert_minilm"]()
    report, skip, err = _compare(model, inputs, "layer_skip:blocks=1+3", "model.encoder.layer")
    assert skip == [1, 3] and err <= TOL
    assert report.effect["layers_before"] == 6 and report.effect["layers_after"] == 4
    assert report.effect["flops_after"] < report.effect["flops_before"]


def test_block_influence_picks_what_shortgpt_picks_on_llama():
    model, inputs = ZOO["llama_smollm2"](layers=4)
    calib = Calibration([tuple(x.numpy() for x in inputs)])
    report, skip, err = _compare(model, inputs, "layer_skip:count=1", "model.model.layers",
                                 calib)
    assert err <= TOL
    with torch.no_grad():  # ShortGPT's BI from torch's own hidden states
        hidden = model.model(*inputs, output_hidden_states=True).hidden_states
    bi = [1 - torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()
          for a, b in zip(hidden[:-1], hidden[1:])]
    # the last hidden state is after the final norm, so only the first three compare exactly
    ours = list(report.effect["block_influence"].values())
    np.testing.assert_allclose(ours[:3], bi[:3], rtol=1e-4)
    assert skip == [int(np.argmin(ours))]


def test_target_speedup_is_met_in_flops():
    model, inputs = ZOO["vit_deit_tiny"]()
    calib = Calibration([tuple(x.numpy() for x in inputs)])
    report, skip, err = _compare(model, inputs, "layer_skip:speedup=1.3",
                                 "model.vit.layers", calib)
    assert err <= TOL
    effect = report.effect
    assert effect["flops_before"] / effect["flops_after"] >= 1.3
    assert len(skip) == 3  # 2 would not reach 1.3x on 12 equal layers plus the embedding


def test_blocks_come_from_structure_and_refusals_say_why():
    model, inputs = ZOO["mlp"]()
    graph = capture(model, inputs)
    assert find_blocks(graph) == []
    out, reports = run_pipeline(graph, ["layer_skip:blocks=0"])
    assert reports[0].matches == 0
    assert any("no repeated residual blocks" in r["reason"] for r in reports[0].rejections)
    model, inputs = ZOO["bert_minilm"]()
    graph = capture(model, inputs)
    with pytest.raises(PassError, match="out of range"):
        run_pipeline(graph, ["layer_skip:blocks=6"])
    with pytest.raises(PassError, match="calibration"):
        run_pipeline(graph, ["layer_skip:count=2"])
    with pytest.raises(PassError, match="exactly one"):
        run_pipeline(graph, ["layer_skip"])
