"""2:4 structured sparsity against PyTorch models pruned by a reference written here (magnitude
and Wanda), the compressed storage and its kernels against the interpreter, and the refusals."""

import copy

import numpy as np
import pytest
import torch

import honer
from honer.errors import PassError
from honer.frontend import capture
from honer.ir import interpret
from honer.ir.ops import compress_24, decompress_24
from honer.passes import Calibration, run_pipeline
from honer.tests.models.zoo import ZOO

TOL = 1e-5


def prune_reference(w: torch.Tensor, x_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Zeroes the 2 smallest of every 4 consecutive input weights by |w| (or |w| * ||x_j||)."""
    score = w.abs() if x_norm is None else w.abs() * x_norm[None, :]
    groups = score.reshape(w.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return w * keep.reshape(w.shape)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(),
                               torch.nn.Linear(128, 32)).eval(), (torch.randn(3, 64),)


def test_magnitude_matches_pytorch_pruned_weights():
    model, inputs = ZOO["bert_minilm"](seq=32)
    out, [report] = run_pipeline(capture(model, inputs), ["sparse24:form=compressed"])
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(prune_reference(m.weight))
        want = ref(*inputs).numpy()
    got = interpret(out, [x.numpy() for x in inputs])[0]
    assert _rel(got, want) <= TOL
    assert report.matches == 36 and "linear" not in {n.op for n in out.nodes}
    layer = next(iter(report.effect["layers"].values()))
    assert layer["kept"] == 0.5 and layer["form"] == "compressed"
    # half the values, 2-bit positions (1/32 of the dense bytes), a scale per output row
    ratio = report.effect["weight_bytes_after"] / report.effect["weight_bytes_before"]
    assert 17 / 32 < ratio < 17 / 32 + 0.01


def test_wanda_weighs_by_the_input_norm():
    model, inputs = _mlp()
    rng = np.random.default_rng(1)
    loud = np.ones(64, np.float32)
    loud[::4] = 30.0  # one loud channel per group: Wanda keeps its weights
    calib = [(rng.standard_normal((3, 64)).astype(np.float32) * loud,) for _ in range(4)]
    graph = capture(model, inputs)
    out, [report] = run_pipeline(graph, ["sparse24:method=wanda,form=dense"],
                                 Calibration(calib))
    x = torch.from_numpy(np.concatenate([c[0] for c in calib]))
    ref = copy.deepcopy(model)
    with torch.no_grad():  # the norms are the unpruned model's activations
        hidden = model[1](model[0](x))
        ref[0].weight.copy_(prune_reference(ref[0].weight, x.norm(dim=0)))
        ref[2].weight.copy_(prune_reference(ref[2].weight, hidden.norm(dim=0)))
        want = ref(inputs[0]).numpy()
    assert _rel(interpret(out, [inputs[0].numpy()])[0], want) <= TOL
    first = next(n for n in out.nodes if n.op == "linear").inputs[1].data
    assert (first[:, ::4] != 0).mean() > 0.95  # the loud channels' weights survive
    _, [by_magnitude] = run_pipeline(graph, ["sparse24:form=dense"], Calibration(calib))
    assert report.effect["layers"]["0"]["sqnr_db"] > \
        by_magnitude.effect["layers"]["0"]["sqnr_db"]


@pytest.mark.parametrize("spec", ["sparse24:form=compressed", "sparse24:form=dense",
                                  "sparse24:form=compressed,bits=8",
                                  "sparse24:form=dense,bits=8"])
def test_compiled_forms_match_the_interpreter(spec):
    model, inputs = _mlp()
    compiled = honer.compile(model, inputs, passes=[spec])
    want = interpret(compiled.graph, [inputs[0].numpy()])[0]
    assert _rel(compiled(inputs[0].numpy()), want) <= TOL
    ops = {n.op for n in compiled.graph.nodes}
    assert ("sparse_linear" in ops) == ("compressed" in spec)
    assert ("quant_linear" in ops) == (spec.endswith("dense,bits=8"))


def test_int8_values_give_the_same_numbers_in_both_forms():
    model, inputs = _mlp()
    graph = capture(model, inputs)
    outs = [interpret(run_pipeline(graph, [f"sparse24:form={form},bits=8"])[0],
                      [inputs[0].numpy()])[0] for form in ("compressed", "dense")]
    assert _rel(outs[0], outs[1]) <= TOL


def test_auto_form_times_both_kernels_and_keeps_the_faster():
    model, inputs = _mlp()
    _, [report] = run_pipeline(capture(model, inputs), ["sparse24"])
    for layer in report.effect["layers"].values():
        faster = "dense" if layer["dense_us"] <= layer["compressed_us"] else "compressed"
        assert layer["form"] == faster


def test_compression_round_trip():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 32)).astype(np.float32)
    values, index = compress_24(w)
    dense = decompress_24(values, index, np.ones((6, 1), np.float32))
    assert values.shape == (6, 16) and index.shape == (6, 4) and index.dtype == np.uint8
    assert ((dense != 0).reshape(6, 8, 4).sum(-1) == 2).all()
    np.testing.assert_array_equal(decompress_24(*compress_24(dense), np.ones((6, 1))), dense)
    # the positions of each group are stored in increasing order (mma.sp's ordered metadata)
    nibbles = np.stack([index & 15, index >> 4], -1).reshape(6, -1)
    assert ((nibbles & 3) < (nibbles >> 2)).all()


def test_refusals_name_the_problem():
    model, inputs = _mlp()
    graph = capture(model, inputs)
    with pytest.raises(PassError, match="calibration"):
        run_pipeline(graph, ["sparse24:method=wanda"])
    with pytest.raises(PassError, match="bits=4"):
        run_pipeline(graph, ["sparse24:bits=4"])
    with pytest.raises(PassError, match="form='csr'"):
        run_pipeline(graph, ["sparse24:form=csr"])
    _, [report] = run_pipeline(graph, ["sparse24:form=dense,keep_dense=2"])
    assert report.matches == 1 and "keep_dense" in report.rejections[0]["reason"]
