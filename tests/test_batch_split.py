"""Batch splitting (ir/batch_split.py): the model compiled for a micro-batch and run over the
whole batch inside one call, checked against PyTorch eager; refused, with the reason, for
models it would change; chosen by measurement when tuning."""

import json

import numpy as np
import pytest
import torch

import honer
from honer.api import SPLIT_MARGIN
from honer.codegen.tuning import BATCH_FILE, TuneConfig
from honer.errors import InputError


def _encoder():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 2, 64, batch_first=True, dropout=0.0)
    return layer.eval(), (torch.randn(4, 10, 32),)


def _eager(model, examples):
    with torch.no_grad():
        out = model(*examples)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("target", ["host", "host:form=standalone"])
def test_split_attention_model_matches_eager(target):
    model, examples = _encoder()
    want = _eager(model, examples)
    compiled = honer.compile(model, examples, target=target, passes=["exact"], batch_split=2)
    assert compiled.manifest["batch_split"] == {"chunks": 2, "split_inputs": [True]}
    assert compiled.manifest["inputs"][0]["shape"] == [4, 10, 32]  # takes the whole batch
    got = compiled(examples[0].numpy())
    np.testing.assert_allclose(got, want[0], rtol=1e-4, atol=1e-4)
    assert compiled.report["check"]["max_scaled_error"] < 1e-5


class ScaleAndSum(torch.nn.Module):
    """Two outputs, and an input without a batch axis: it goes whole to every micro-batch."""

    def forward(self, x, scale):
        y = torch.relu(x * scale)
        return y, y.sum(-1)


def test_split_passes_unbatched_inputs_whole():
    x = torch.randn(6, 8, 16)
    scale = torch.linspace(0.5, 1.5, 16)
    compiled = honer.compile(ScaleAndSum(), (x, scale), batch_split=2)
    assert compiled.manifest["batch_split"] == {"chunks": 3, "split_inputs": [True, False]}
    got = compiled.run(x.numpy(), scale.numpy())
    for g, w in zip(got, _eager(ScaleAndSum(), (x, scale))):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


class BatchCentered(torch.nn.Module):
    def forward(self, x):
        return x - x.mean(0, keepdim=True)


class Total(torch.nn.Module):
    def forward(self, x):
        return x.sum(0)


@pytest.mark.parametrize("model,micro,message", [
    (BatchCentered(), 2, "mixes batch items"),
    (Total(), 2, "only models whose outputs have the batch as their first axis"),
    (torch.nn.ReLU(), 3, "use a divisor of 4"),
    (torch.nn.ReLU(), 4, "use a divisor of 4"),
])
def test_split_refuses_what_it_would_change(model, micro, message):
    with pytest.raises(InputError, match=message):
        honer.compile(model, (torch.randn(4, 5),), batch_split=micro)


def test_tuning_measures_the_split_and_later_compiles_reuse_it(tmp_path):
    model, examples = _encoder()
    # min_share 1: no kernel is worth a MetaSchedule round, only the split is measured
    tuned = honer.compile(model, examples, passes=["exact"],
                          tune=TuneConfig(tmp_path, budget_s=120, min_share=1.0))
    choice = tuned.report["batch_split"]
    ms = choice["median_ms"]
    assert set(ms) == {"4", "2", "1"} and choice["batch"] == 4
    fastest = min(ms, key=ms.get)
    if choice["micro_batch"] is None:  # no split measured enough faster than the whole batch
        assert ms[fastest] >= (1 - SPLIT_MARGIN) * ms["4"]
    else:
        assert str(choice["micro_batch"]) == fastest
        assert ms[fastest] < (1 - SPLIT_MARGIN) * ms["4"]
    assert tuned.manifest.get("batch_split", {"chunks": 1})["chunks"] == \
        4 // (choice["micro_batch"] or 4)
    recorded = json.loads((tmp_path / BATCH_FILE).read_text())["entries"]
    assert [c["micro_batch"] for c in recorded.values()] == [choice["micro_batch"]]
    # a compile that only reads the database takes the recorded choice without measuring
    again = honer.compile(model, examples, passes=["exact"], tune=TuneConfig(tmp_path, budget_s=0))
    assert again.report["batch_split"] == choice
    assert "batch split choice" in again.report["seconds"]
    assert again.manifest.get("batch_split") == tuned.manifest.get("batch_split")
    np.testing.assert_allclose(again(examples[0].numpy()), _eager(model, examples)[0],
                               rtol=1e-4, atol=1e-4)


def test_tune_on_a_target_without_a_tuner_is_refused_before_any_work(tmp_path):
    with pytest.raises(honer.errors.HonerError, match="has no tuner"):
        honer.compile(torch.nn.ReLU(), (torch.randn(4, 5),), target="fpga-hls",
                      tune=TuneConfig(tmp_path, budget_s=60))
    assert not (tmp_path / BATCH_FILE).exists()
