"""Weight-only int8 / int4 quantization against PyTorch models whose weights were fake-quantized
by a reference written here, compiled kernels (packed weights, dequantized in the loop) against
the interpreter, AWQ scaling, and the refusals."""

import copy

import numpy as np
import pytest
import torch

import honer
from honer.errors import PassError
from honer.frontend import capture
from honer.ir import interpret
from honer.ir.ops import dequantize
from honer.passes import Calibration, run_pipeline
from honer.passes.weight_quant import quantize_weight
from honer.tests.models.zoo import ZOO

TOL = 1e-5  # same dequantized weights, the same float arithmetic in another order


def fake_quant(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Round-to-nearest: int8 symmetric per output row; int4 asymmetric per group, the 16
    levels spanning the group's min to max (a fractional zero point)."""
    if bits == 8:
        scale = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
        return (w / scale).round().clamp(-127, 127) * scale
    g = w.reshape(w.shape[0], -1, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = (hi - lo).clamp_min(1e-12) / 15
    q = ((g - lo) / scale).round().clamp(0, 15)
    return (q * scale + lo).reshape(w.shape)


def quantized_copy(model: torch.nn.Module, bits: int, group: int) -> torch.nn.Module:
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.Linear) and (bits == 8 or m.in_features % group == 0):
                m.weight.copy_(fake_quant(m.weight, bits, group))
    return ref


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("spec, bits, group", [
    ("weight_quant:bits=8", 8, 0), ("weight_quant:bits=4,group=64,refine=0", 4, 64),
    ("weight_quant:bits=4,group=128,refine=0", 4, 128)])
def test_round_to_nearest_matches_pytorch_with_fake_quantized_weights(spec, bits, group):
    model, inputs = ZOO["bert_minilm"](seq=32)
    out, [report] = run_pipeline(capture(model, inputs), [spec])
    with torch.no_grad():
        want = quantized_copy(model, bits, group)(*inputs).numpy()
        full = model(*inputs).numpy()
    got = interpret(out, [x.numpy() for x in inputs])[0]
    assert _rel(got, want) <= TOL
    assert _rel(got, full) > 1e-4  # it did change the model
    assert report.matches == 36 and {n.op for n in out.nodes} >= {"quant_linear"}
    assert "linear" not in {n.op for n in out.nodes}
    ratio = report.effect["weight_bytes_before"] / report.effect["weight_bytes_after"]
    assert ratio > (3.9 if bits == 8 else 6.0)


def test_int4_refinement_never_raises_the_rounding_error_and_finds_a_4_bit_grid():
    rng = np.random.default_rng(0)
    w = rng.standard_t(3, size=(64, 256)).astype(np.float32)  # heavy tails: outlier extremes
    errors = []
    for rounds in (0, 1, 4):
        qw = quantize_weight(w, 4, 64, rounds)
        errors.append(float(((dequantize(qw.q, qw.scale, qw.zero, 4, 256) - w) ** 2).sum()))
    assert errors[0] >= errors[1] >= errors[2] and errors[2] < 0.97 * errors[0]
    # weights that are a 4-bit grid per group already (a Q4_1 checkpoint: any offset, levels
    # not all used) come back exactly: the fractional zero point puts the grid where it is
    levels = rng.integers(1, 15, size=(64, 4, 64)).astype(np.float32)
    levels[..., 0], levels[..., 1] = 0, 15
    grid = (levels * rng.uniform(0.01, 0.1, (64, 4, 1)) + rng.normal(0, 0.3, (64, 4, 1)))
    grid = grid.reshape(64, 256).astype(np.float32)
    qw = quantize_weight(grid, 4, 64, 4)
    assert np.abs(dequantize(qw.q, qw.scale, qw.zero, 4, 256) - grid).max() < 1e-6


@pytest.mark.parametrize("spec", ["weight_quant:bits=8", "weight_quant:bits=4,group=32"])
def test_compiled_kernels_agree_with_the_interpreter_and_store_packed_weights(spec):
    model, inputs = ZOO["llama_smollm2"](layers=2, seq=16)
    graph, _ = run_pipeline(capture(model, inputs), [spec])
    arrays = [x.numpy() for x in inputs]
    compiled = honer.compile(graph, check=False)
    assert _rel(compiled(*arrays), interpret(graph, arrays)[0]) <= TOL
    stored = {w["dtype"] for w in compiled.manifest["weights"]}
    assert ("int8" if "bits=8" in spec else "uint8") in stored


def _outlier_mlp():
    """A LayerNorm -> Linear -> GELU -> Linear block whose inputs have a few channels 30x
    larger than the rest, the case AWQ is for."""
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(256)
    with torch.no_grad():
        norm.weight.copy_(torch.ones(256))
        norm.weight[:8] = 30.0
    model = torch.nn.Sequential(norm, torch.nn.Linear(256, 512), torch.nn.GELU(),
                                torch.nn.Linear(512, 256)).eval()
    return model, torch.randn(4, 64, 256)


def test_awq_scaling_helps_the_layer_whose_inputs_have_outliers():
    model, x = _outlier_mlp()
    graph = capture(model, (x,))
    calib = Calibration([(torch.randn(4, 64, 256).numpy(),)])
    layers = {}
    for awq in (False, True):
        out, [report] = run_pipeline(graph, [f"weight_quant:bits=4,group=32,awq={awq}"], calib)
        layers[awq] = report.effect["layers"]
    # alpha = 0 (no scaling) is on the grid, so AWQ never does worse on a layer's own output
    assert all(layers[True][k]["sqnr_db"] >= layers[False][k]["sqnr_db"] - 1e-6 for k in "13")
    assert layers[True]["1"]["alpha"] > 0  # the outlier channels are worth protecting
    assert layers[True]["1"]["sqnr_db"] > layers[False]["1"]["sqnr_db"] + 1.0
    # the first layer's 1/s went into the LayerNorm's affine; the second needs a multiply
    ops = [n.op for n in out.nodes]
    assert ops.count("mul") == (1 if layers[True]["3"]["alpha"] else 0)
    assert ops.index("layer_norm") < ops.index("quant_linear")


def test_refusals_and_kept_layers_are_reported():
    model, inputs = ZOO["bert_minilm"](seq=16)
    graph = capture(model, inputs)
    _, [report] = run_pipeline(graph, ["weight_quant:bits=8,keep_float=*layer.0.*+*layer.5.*"])
    kept = [r for r in report.rejections if "keep_float" in r["reason"]]
    assert report.matches == 24 and len(kept) == 12
    with pytest.raises(PassError, match="bits=3"):
        run_pipeline(graph, ["weight_quant:bits=3"])
    with pytest.raises(PassError, match="group=48"):
        run_pipeline(graph, ["weight_quant:bits=4,group=48"])
    with pytest.raises(PassError, match="refine=-1"):
        run_pipeline(graph, ["weight_quant:bits=4,refine=-1"])
    _, [report] = run_pipeline(graph, ["weight_quant:bits=8"])
    assert any("no calibration data" in r["reason"] for r in report.rejections)


def _quantized_linear_with_residual(rows: int, spec: str):
    """A [rows, 128] -> [rows, 160] linear with bias and a residual add, quantized by `spec`,
    compiled and checked against the interpreter; (the quantized graph, schedule stats)."""
    from honer.ir import Graph

    rng = np.random.default_rng(1)
    g = Graph()
    x = g.add_input("x", (rows, 128), "float32")
    r = g.add_input("r", (rows, 160), "float32")
    w = g.add_const(rng.standard_normal((160, 128)).astype(np.float32))
    y = g.op("linear", x, w, g.add_const(rng.standard_normal(160).astype(np.float32)))
    g.set_outputs([g.op("add", y, r)])
    graph, _ = run_pipeline(g, [spec])
    arrays = [rng.standard_normal((rows, 128)).astype(np.float32),
              rng.standard_normal((rows, 160)).astype(np.float32)]
    compiled = honer.compile(graph, check=False)
    assert _rel(compiled(*arrays), interpret(graph, arrays)[0]) <= TOL
    return graph, compiled.report["build"]["schedule"]


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("spec", ["weight_quant:bits=4,group=32", "weight_quant:bits=4,group=64",
                                  "weight_quant:bits=8"])
def test_decoding_rows_take_the_per_group_kernel_with_bias_and_residual_on_its_tile(rows, spec):
    """Fewer int4 rows than a register tile (a decoding step) compute each group's dot
    product first and scale it once (codegen/gemv.py); per-channel int8 keeps the general
    kernel. Either way the result is the interpreter's."""
    _, stats = _quantized_linear_with_residual(rows, spec)
    decoding = "bits=4" in spec
    assert stats["contractions"] == 1 and stats["fallbacks"] == []
    assert stats["decoding"] == int(decoding)
    if decoding:
        assert stats["elementwise"] == 0  # bias and residual ran on the accumulator


@pytest.mark.parametrize("rows", [4, 197])
@pytest.mark.parametrize("spec", ["weight_quant:bits=4,group=32", "weight_quant:bits=8"])
def test_many_rows_decode_each_weight_panel_once_per_task(rows, spec):
    """A register tile's rows or more: each task decodes its panel of the weight into a
    buffer its row tiles share (instead of every tile decoding every weight it reads), with
    the bias and residual add still on the tile; the result is the interpreter's."""
    import tvm

    from honer.codegen.build import _fused_module, _kernels
    from honer.codegen.cpu_schedule import schedule_module
    from honer.codegen.relax_lower import DECODED_WEIGHT
    from honer.targets import get_target

    graph, stats = _quantized_linear_with_residual(rows, spec)
    assert stats["contractions"] == 1 and stats["elementwise"] == 0
    assert stats["fallbacks"] == [] and stats["decoding"] == 0

    target = get_target("host")
    [kernel] = [f for n, f in _kernels(_fused_module(target.lower(graph), target.tvm_target(),
                                                     target.schedule())).items()
                if "dequant" in n]
    text = schedule_module(tvm.IRModule({"main": kernel}), target.schedule())["main"].script()
    lines = text.splitlines()
    parallel = next(i for i, line in enumerate(lines) if "T.parallel" in line)
    decode = next(i for i, line in enumerate(lines) if f'T.sblock("{DECODED_WEIGHT}")' in line)
    indent = len(lines[parallel]) - len(lines[parallel].lstrip())
    assert decode > parallel and len(lines[decode]) - len(lines[decode].lstrip()) > indent
