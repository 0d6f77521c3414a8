"""W8A8 static quantization: the pass against a PyTorch fake-quantized reference written here,
SmoothQuant on activation outliers, the compiled integer kernels against the interpreter (and
the int8 dot-product instructions in their machine code), and the refusals."""

import re

import numpy as np
import pytest
import torch

import honer
from honer.errors import PassError
from honer.frontend import capture
from honer.ir import interpret
from honer.passes import Calibration, run_pipeline
from honer.tests.models.zoo import ZOO


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _outlier_mlp(seed: int = 0):
    """LayerNorm -> Linear -> GELU -> Linear whose normalized inputs have 8 channels 30x larger
    than the rest: the activation outliers SmoothQuant migrates into the weights."""
    torch.manual_seed(seed)
    norm = torch.nn.LayerNorm(64)
    with torch.no_grad():
        norm.weight.copy_(torch.ones(64))
        norm.weight[:8] = 30.0
    return torch.nn.Sequential(norm, torch.nn.Linear(64, 128), torch.nn.GELU(),
                               torch.nn.Linear(128, 32)).eval()


def fake_w8a8(x: torch.Tensor, linear: torch.nn.Linear, x_scale: float, x_zero: int,
              qmax: int) -> torch.Tensor:
    """The W8A8 arithmetic written independently: uint8 input grid, int8 per-channel weight."""
    xq = (torch.round(x * (1 / torch.tensor(x_scale))) + x_zero).clamp(0, 255) - x_zero
    w = linear.weight
    w_scale = w.abs().amax(1).clamp_min(1e-12) / qmax
    wq = torch.round(w / w_scale[:, None]).clamp(-qmax, qmax)
    return (xq @ wq.T) * (x_scale * w_scale) + linear.bias


@pytest.mark.parametrize("qmax, spec", [(63, "w8a8:smooth=false,min_sqnr_db=0"),
                                        (127, "w8a8:smooth=false,min_sqnr_db=0,"
                                              "reduce_range=false,calibrate=minmax")])
def test_matches_a_pytorch_fake_quantized_reference(qmax, spec):
    model = _outlier_mlp()
    x = torch.randn(2, 16, 64)
    calib = Calibration([(torch.randn(2, 16, 64).numpy(),)])
    out, [report] = run_pipeline(capture(model, (x,)), [spec], calib)
    assert report.matches == 2 and [n.op for n in out.nodes].count("int8_linear") == 2
    (first, info1), (second, info2) = zip(
        [model[1], model[3]], [report.effect["layers"][k] for k in ("1", "3")])
    with torch.no_grad():
        h = torch.nn.functional.gelu(fake_w8a8(model[0](x), first, info1["x_scale"],
                                               info1["x_zero"], qmax))
        want = fake_w8a8(h, second, info2["x_scale"], info2["x_zero"], qmax).numpy()
        full = model(x).numpy()
    got = interpret(out, [x.numpy()])[0]
    # same integer grid; float32 rounding of the rescale and of ties may differ by an LSB
    assert _rel(got, want) <= 2e-3
    assert 1e-3 < _rel(got, full) < 0.2


def test_smoothquant_moves_the_outliers_into_the_weights():
    from honer.passes.linears import sqnr_db

    model = _outlier_mlp()
    x = torch.randn(2, 16, 64)  # held out: not among the calibration samples
    graph = capture(model, (x,))
    # enough calibration data: smoothing equalizes the channels' ranges, so on a few samples
    # every channel sits at the calibrated edge and new data clips more often
    calib = Calibration([(torch.randn(2, 16, 64).numpy(),) for _ in range(16)])
    with torch.no_grad():
        want = model(x).numpy()
    layer, held_out = {}, {}
    for smooth in (False, True):
        out, [report] = run_pipeline(graph, [f"w8a8:smooth={smooth},min_sqnr_db=0"], calib)
        layer[smooth] = report.effect["layers"]["1"]["sqnr_db"]
        held_out[smooth] = sqnr_db(want, interpret(out, [x.numpy()])[0])
    assert layer[True] > layer[False] + 3.0
    assert held_out[True] > held_out[False]
    # the first linear's 1/s went into the LayerNorm's affine, the second needs a multiply
    ops = [n.op for n in out.nodes]
    assert ops.count("mul") == 1 and ops.index("layer_norm") < ops.index("int8_linear")
    assert _rel(interpret(out, [x.numpy()])[0], want) < 0.06


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_calibration_methods_report_each_layer(method):
    model, inputs = ZOO["bert_minilm"](seq=16)
    calib = Calibration([tuple(x.numpy() for x in inputs)])
    out, [report] = run_pipeline(capture(model, inputs), [f"w8a8:calibrate={method}"], calib)
    layers = report.effect["layers"]
    # 36 linears and 6 attentions, whose two products run in int8 too
    assert report.matches == 42 and len(layers) == 42
    assert sum(1 for key in layers if key.endswith("(attention)")) == 6
    assert all(info["sqnr_db"] > 20 for info in layers.values())
    assert set(report.effect["float_ops"]) >= {"layer_norm", "gelu"}
    assert "attention" not in report.effect["float_ops"]
    with torch.no_grad():
        want = model(*inputs).numpy()
    assert _rel(interpret(out, [x.numpy() for x in inputs])[0], want) < 0.05


@pytest.mark.parametrize("outputs", [48, 1004])
def test_one_compiled_layer_is_the_interpreter_up_to_float_rounding(outputs):
    # 1004 outputs are no whole number of vectors: the weight is not stored for the int8 dot
    # product and the generic rule computes it (the intrinsic once matched it with strided
    # rows and read the wrong bytes)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, outputs).eval()
    x = torch.randn(3, 7, 64)  # 21 rows: padded to the kernel's row tile
    graph, _ = run_pipeline(capture(model, (x,)), ["w8a8:min_sqnr_db=0"],
                            Calibration([(torch.randn(3, 7, 64).numpy(),)]))
    compiled = honer.compile(graph, check=False)
    # the same integer sums; only the rescale's float rounding differs
    assert _rel(compiled(x.numpy()), interpret(graph, [x.numpy()])[0]) <= 1e-6


def test_compiled_integer_kernels_agree_with_the_interpreter():
    model, inputs = ZOO["bert_minilm"](seq=24)  # 24 rows: the kernel pads to its row tile
    arrays = [x.numpy() for x in inputs]
    graph, _ = run_pipeline(capture(model, inputs), ["w8a8"], Calibration([tuple(arrays)]))
    compiled = honer.compile(graph, check=False)
    # layer norms and softmax computed in another order can move an activation across a
    # rounding boundary: one uint8 step, a few 1e-4 of the output scale per layer
    assert _rel(compiled(*arrays), interpret(graph, arrays)[0]) <= 5e-3
    stored = {w["dtype"] for w in compiled.manifest["weights"]}
    assert "int8" in stored
    assert compiled.report["build"]["schedule"]["fallbacks"] == []


def _w8a8_kernels(int8_dot: str, lanes: int, rows: int = 16) -> dict:
    """The unscheduled kernels of the W8A8 outlier MLP on 2 x `rows` rows, by name."""
    from honer.codegen.build import _call_counts, _fused_module, _kernels
    from honer.codegen.cpu_schedule import CPUScheduleConfig
    from honer.codegen.relax_lower import lower

    model = _outlier_mlp()
    x = torch.randn(2, rows, 64)
    graph, _ = run_pipeline(capture(model, (x,)), ["act_fuse", "w8a8:min_sqnr_db=0,reduce_range=" +
                                                   str(int8_dot != "vnni")],
                            Calibration([(x.numpy(),)]))
    cfg = CPUScheduleConfig(lanes=lanes, int8_dot=int8_dot)
    mod = _fused_module(lower(graph, panel=2 * lanes), {"kind": "llvm"}, cfg)
    assert _call_counts(mod)
    return _kernels(mod)


def _scheduled_int8_kernel(mcpu: str, lanes: int, int8_dot: str, kernel: str = "int8_matmul",
                           rows: int = 16):
    """The first W8A8 kernel named like `kernel` of the outlier MLP (2 x `rows` rows),
    scheduled for `mcpu`, and its TVM target."""
    import tvm

    from honer.codegen.cpu_schedule import CPUScheduleConfig, schedule_module

    name, func = next((n, f) for n, f in _w8a8_kernels(int8_dot, lanes, rows).items()
                      if kernel in n)
    cfg = CPUScheduleConfig(lanes=lanes, int8_dot=int8_dot)
    scheduled = schedule_module(tvm.IRModule({"main": func.with_attr("global_symbol", name)}),
                                cfg)
    return scheduled, tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})


def _int8_kernel_asm(mcpu: str, lanes: int, int8_dot: str, kernel: str = "int8_matmul") -> str:
    """Machine code of that kernel built for `mcpu`."""
    import tvm

    scheduled, target = _scheduled_int8_kernel(mcpu, lanes, int8_dot, kernel)
    return tvm.tirx.build(scheduled, target=target).inspect_source("asm")


def test_activation_runs_in_the_int8_kernel():
    # applied after the reshape back to [batch, tokens, features], the GELU was no elementwise
    # consumer of the matmul and ran as a pass of its own
    names = list(_w8a8_kernels("avx2", 8))
    assert any("int8_matmul" in n and "erf" in n for n in names), names


def test_padded_rows_are_rescaled_on_the_register_tile():
    # 14 rows, padded to 18 for the 6-row tile: the rescale of the real rows used to be a
    # second parallel pass over an int32 copy of the whole product
    scheduled, _ = _scheduled_int8_kernel("znver2", 8, "avx2", rows=7)
    text = scheduled.script()
    assert text.count("T.parallel(") == 1
    int32_buffers = [line for line in text.splitlines()
                     if "sblock_alloc_buffer" in line and '"int32"' in line]
    assert int32_buffers and all('scope="local"' in line for line in int32_buffers)
    assert "T.where(" in text  # the guard that skips the padded rows


@pytest.mark.parametrize("mcpu, lanes, int8_dot, instruction", [
    ("znver2", 8, "avx2", "vpmaddubsw"), ("skylake-avx512", 16, "avx512", "vpmaddubsw"),
    ("icelake-server", 16, "vnni", "vpdpbusd")])
def test_kernels_use_the_cpus_int8_dot_product(mcpu, lanes, int8_dot, instruction):
    # built, not run: the machine code is what a CPU with these features would execute
    asm = _int8_kernel_asm(mcpu, lanes, int8_dot)
    assert instruction in asm


def test_activation_quantizer_is_vectorized():
    # nearbyint is no TVectorizable op in TVM; unless honer registers it so, the quantizer's
    # loop stays scalar and LLVM gathers the lanes one load at a time
    asm = _int8_kernel_asm("znver2", 8, "avx2", kernel="quantize_u8")
    assert re.search(r"vroundps\s+\$12, %ymm", asm)
    assert "vinsertps" not in asm


def test_refusals_and_float_layers_are_reported():
    model, inputs = ZOO["bert_minilm"](seq=16)
    graph = capture(model, inputs)
    calib = Calibration([tuple(x.numpy() for x in inputs)])
    with pytest.raises(PassError, match="calibration data"):
        run_pipeline(graph, ["w8a8"])
    with pytest.raises(PassError, match="calibrate='max'"):
        run_pipeline(graph, ["w8a8:calibrate=max"], calib)
    with pytest.raises(PassError, match="alpha=1.5"):
        run_pipeline(graph, ["w8a8:alpha=1.5"], calib)
    _, [report] = run_pipeline(graph, ["w8a8:keep_float=*layer.0.*"], calib)
    kept = [r for r in report.rejections if "keep_float" in r["reason"]]
    assert report.matches == 35 and len(kept) == 7  # 6 linears and the attention of layer 0
    _, [report] = run_pipeline(graph, ["w8a8:attention=false"], calib)
    assert report.matches == 36 and report.effect["float_ops"]["attention"]["count"] == 6
    # a demanding SQNR floor keeps the worst layers float, and says so
    _, [report] = run_pipeline(graph, ["w8a8:min_sqnr_db=60"], calib)
    assert report.matches == 0 and all("SQNR" in r["reason"] for r in report.rejections)
    assert report.effect["float_ops"]["linear"]["count"] == 36


# ---- attention ---------------------------------------------------------------------------------

class _Attention(torch.nn.Module):
    def __init__(self, causal: bool = False):
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v, *mask):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[0] if mask else None, is_causal=self.causal)


def _attention_case(shape, causal=False, masked=False, seed=0):
    """q, k, v (and a key padding mask hiding the last 5 keys of the first sample) and the
    W8A8 graph of one attention calibrated on them."""
    torch.manual_seed(seed)
    inputs = [torch.randn(*shape) * s for s in (1.0, 2.0, 0.5)]
    if masked:
        mask = torch.ones(shape[0], 1, 1, shape[2], dtype=torch.bool)
        mask[0, ..., -5:] = False
        inputs.append(mask)
    model = _Attention(causal)
    graph, [report] = run_pipeline(capture(model, tuple(inputs)), ["w8a8:min_sqnr_db=0"],
                                   Calibration([tuple(x.numpy() for x in inputs)]))
    return model, inputs, graph, report


def test_int8_attention_is_integer_products_of_the_codes():
    # an independent torch spelling of ir.ops' int8_attention: q uint8 with a zero point, k
    # and v int8 in [-63, 63], exp(s - max) as codes of 1/255, normalized by the codes' sum
    model, inputs, graph, report = _attention_case((2, 3, 21, 32))
    [node] = graph.nodes
    a = node.attrs
    q, k, v = inputs
    q8 = torch.clamp(torch.round(q / a["q_scale"]) + a["q_zero"], 0, 255) - a["q_zero"]
    k8, v8 = (torch.clamp(torch.round(t / a[f"{n}_scale"]), -63, 63) for t, n in ((k, "k"),
                                                                                 (v, "v")))
    s = (q8.double() @ k8.double().transpose(-1, -2)) * (a["q_scale"] * a["k_scale"] / 32 ** 0.5)
    codes = torch.round(torch.exp(s - s.amax(-1, keepdim=True)) * 255)
    want = (codes @ v8.double()) * a["v_scale"] / codes.sum(-1, keepdim=True)
    got = interpret(graph, [x.numpy() for x in inputs])[0]
    assert _rel(got, want.numpy()) < 1e-5
    # and it is attention: the report's SQNR is the error against float
    [info] = report.effect["layers"].values()
    with torch.no_grad():
        assert 10 * np.log10(1 / _rel(got, model(*inputs).numpy()) ** 2) > 20
    assert info["sqnr_db"] > 25


@pytest.mark.parametrize("shape, causal, masked", [
    ((1, 3, 21, 64), False, False),  # rows padded to the int8 tile, keys to whole blocks
    ((2, 2, 21, 32), True, False), ((2, 4, 16, 32), False, True)])
def test_compiled_int8_attention_is_the_interpreter(shape, causal, masked):
    _, inputs, graph, _ = _attention_case(shape, causal, masked)
    assert [n.op for n in graph.nodes] == ["int8_attention"]
    compiled = honer.compile(graph, check=False)
    arrays = [x.numpy() for x in inputs]
    # the same integer sums and codes; only float rounding may differ
    assert _rel(compiled(*arrays), interpret(graph, arrays)[0]) <= 1e-6
    assert compiled.report["build"]["schedule"]["fallbacks"] == []


def test_int8_attention_products_use_the_int8_dot_product():
    import tvm

    from honer.codegen.build import _fused_module, _kernels
    from honer.codegen.cpu_schedule import CPUScheduleConfig, schedule_module
    from honer.codegen.relax_lower import lower

    _, _, graph, _ = _attention_case((1, 3, 21, 64))
    cfg = CPUScheduleConfig(lanes=8, int8_dot="avx2")
    products = {name: func for name, func in _kernels(
        _fused_module(lower(graph, panel=16), {"kind": "llvm"}, cfg)).items()
        if "int8_matmul" in name}
    assert len(products) == 2  # q k^T and p v
    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver2", "num-cores": 2})
    for name, func in products.items():
        scheduled = schedule_module(tvm.IRModule({"main": func.with_attr("global_symbol",
                                                                         name)}), cfg)
        assert "vpmaddubsw" in tvm.tirx.build(scheduled, target=target).inspect_source("asm")


# ---- convolutions -----------------------------------------------------------------------------

def test_int8_conv_reference_is_an_exact_integer_conv():
    """The op's reference against the same arithmetic written with torch: uint8 codes, padding
    with the zero point, an integer conv (float64 holds these sums exactly), the rescale."""
    from honer.ir.ops import get_schema

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32) * 2
    q = rng.integers(-127, 128, (5, 3, 3, 2)).astype(np.int8)
    w_scale = (rng.random(5) * 0.01 + 1e-3).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    x_scale, zero = 0.02, 120
    attrs = get_schema("int8_conv").normalize_attrs(dict(
        x_scale=x_scale, x_zero=zero, strides=(2, 1), padding=(1, 2, 0, 1), dilation=(1, 2)))
    got = get_schema("int8_conv").reference(attrs, x, q, w_scale, b)
    xq = (torch.round(torch.from_numpy(x) * (1 / torch.tensor(x_scale))) + zero).clamp(0, 255)
    xp = torch.nn.functional.pad(xq.double(), (2, 1, 1, 0), value=zero) - zero
    acc = torch.nn.functional.conv2d(xp, torch.from_numpy(q).double(), stride=(2, 1),
                                     dilation=(1, 2))
    want = (acc.float() * (torch.tensor(x_scale) * torch.from_numpy(w_scale))[:, None, None]
            + torch.from_numpy(b)[:, None, None]).numpy()
    np.testing.assert_array_equal(got, want)


class _ConvNet(torch.nn.Module):
    """A plain conv, a grouped one, a 1-D one and a head: what W8A8 takes and leaves."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.body = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.line = torch.nn.Conv1d(16, 16, 3, padding=1)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.body(torch.relu(self.grouped(torch.relu(self.stem(x))))))
        return self.head(torch.relu(self.line(x.flatten(2))).mean(-1))


def _conv_graph_and_calibration(seed: int = 0):
    torch.manual_seed(seed)
    model = _ConvNet().eval()
    rng = np.random.default_rng(seed)
    calib = Calibration([(rng.standard_normal((2, 3, 12, 12)).astype(np.float32),)
                         for _ in range(4)])
    return model, capture(model, (torch.randn(2, 3, 12, 12),)), calib


def test_ungrouped_2d_convs_become_int8_conv():
    model, graph, calib = _conv_graph_and_calibration()
    out, [report] = run_pipeline(graph, ["w8a8:min_sqnr_db=0"], calib)
    ops = [n.op for n in out.nodes]
    assert ops.count("int8_conv") == 2 and ops.count("conv") == 2  # grouped and 1-D stay
    text = out.dump()
    assert re.search(r"= int8_conv\(%\w+, %p_stem_weight_q, %p_stem_weight_w_scale, "
                     r"%p_stem_bias\) \{x_scale=[\d.e-]+, x_zero=\d+, strides=\[1,1\], "
                     r"padding=\[1,1,1,1\], dilation=\[1,1\]\}  # stem", text), text
    reasons = {r["where"].split("(")[-1].rstrip(")"): r["reason"] for r in report.rejections}
    assert "groups=2" in reasons["grouped"] and "1-D conv" in reasons["line"]
    layers = report.effect["layers"]
    assert report.matches == 3 and {"stem", "body", "head"} <= set(layers)
    assert all(layers[k]["sqnr_db"] > 30 for k in ("stem", "body"))
    assert report.effect["float_ops"]["conv"]["count"] == 2
    assert all(0 <= layers[k]["x_zero"] <= 255 for k in ("stem", "body"))
    # unsmoothed: no multiply before a conv
    assert not any(n.op == "mul" and any(u.op == "int8_conv" for u in n.output.users)
                   for n in out.nodes)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        want = model(x).numpy()
    assert _rel(interpret(out, [x.numpy()])[0], want) < 0.05  # W8A8 error, stated here


def test_conv_rules_keep_float_and_sqnr_floor():
    _, graph, calib = _conv_graph_and_calibration()
    _, [report] = run_pipeline(graph, ["w8a8:min_sqnr_db=0,keep_float=stem"], calib)
    assert any(r["where"].endswith("(stem)") and "keep_float" in r["reason"]
               for r in report.rejections)
    out, [report] = run_pipeline(graph, ["w8a8:min_sqnr_db=80"], calib)
    assert report.matches == 0 and not any(n.op.startswith("int8") for n in out.nodes)
    floor = [r for r in report.rejections if "SQNR" in r["reason"]]
    assert {r["where"].split("(")[-1] for r in floor} >= {"stem)", "body)", "head)"}
    assert report.effect["layers"]["stem"]["kept_float"]


def test_compiled_int8_conv_is_the_interpreter_up_to_float_rounding():
    _, graph, calib = _conv_graph_and_calibration()
    out, _ = run_pipeline(graph, ["w8a8:min_sqnr_db=0"], calib)
    x = np.random.default_rng(7).standard_normal((2, 3, 12, 12)).astype(np.float32)
    compiled = honer.compile(out, check=False)
    # the same integer sums; only the rescale's float rounding (and the float convs) differ
    assert _rel(compiled(x), interpret(out, [x])[0]) <= 1e-6


@pytest.mark.parametrize("outputs", [32, 20])
def test_patchify_conv_runs_on_the_int8_matmul_kernels(outputs):
    # a ViT's patch embedding (stride = kernel): a linear over the flattened patches; 20
    # outputs are no whole number of vectors and take the generic rule
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, outputs, 4, 4).eval()
    x = torch.randn(2, 3, 28, 20)
    graph, _ = run_pipeline(capture(model, (x,)), ["w8a8:min_sqnr_db=0"],
                            Calibration([(torch.randn(2, 3, 28, 20).numpy(),)]))
    compiled = honer.compile(graph, check=False)
    assert _rel(compiled(x.numpy()), interpret(graph, [x.numpy()])[0]) <= 1e-6
    layouts = {w["layout"] for w in compiled.manifest["weights"]}
    assert any(lay.startswith("int8dot") for lay in layouts) == (outputs == 32)


def test_builds_for_another_cpu_refuse_to_load_where_features_are_missing():
    from honer.errors import ArtifactError, HonerError
    from honer.runtime.cpu import cpu_flags
    from honer.targets import get_target

    with pytest.raises(HonerError, match="mcpu='bogus'"):
        get_target("host:mcpu=bogus")
    if cpu_flags() is None or "avx512vnni" in cpu_flags():
        pytest.skip("this CPU has AVX-512 VNNI (or its features cannot be read)")
    model, inputs = ZOO["mlp"]()
    compiled = honer.compile(model, inputs, target="host:form=standalone,mcpu=icelake-server",
                             check=False)
    assert "avx512vnni" in compiled.manifest["target"]["cpu_features"]
    with pytest.raises(ArtifactError, match="avx512vnni"):
        compiled(*[x.numpy() for x in inputs])


def test_per_channel_grids_merge_into_the_layer_norm_and_the_weights():
    """granularity=channel: each input channel its own uint8 grid (min-max here), its step
    folded into the LayerNorm (first linear) or one multiply-add (after the GELU), the weights
    scaled by the steps; checked against the arithmetic written out in PyTorch."""
    model = _outlier_mlp()
    x = torch.randn(2, 16, 64)
    samples = [torch.randn(2, 16, 64) for _ in range(4)]
    calib = Calibration([(s.numpy(),) for s in samples])
    spec = "w8a8:granularity=channel,calibrate=minmax,min_sqnr_db=0"
    out, [report] = run_pipeline(capture(model, (x,)), [spec], calib)
    ops = [n.op for n in out.nodes]
    assert ops == ["layer_norm", "int8_linear", "gelu", "mul", "add", "int8_linear"]
    layers = report.effect["layers"]
    assert layers["1"]["input_scaling"].startswith("folded into layer_norm")
    assert layers["3"]["input_scaling"].startswith("applied before")
    assert all(info["x_scale"] == 1.0 and info["x_zero"] == 0 for info in layers.values())

    def fake(h, seen, linear):
        lo, hi = seen.amin((0, 1)), seen.amax((0, 1))
        step = torch.maximum(hi - lo, torch.maximum(lo.abs(), hi.abs()) / 128) / 255
        zero = torch.round(-lo / step)
        codes = (torch.round(h / step) + zero).clamp(0, 255) - zero
        w = linear.weight * step[None, :]
        w_scale = w.abs().amax(1) / 63
        return (codes @ torch.round(w / w_scale[:, None]).T) * w_scale + linear.bias

    with torch.no_grad():
        seen1 = torch.cat([model[0](s) for s in samples])
        seen3 = torch.cat([torch.nn.functional.gelu(model[1](model[0](s))) for s in samples])
        h = torch.nn.functional.gelu(fake(model[0](x), seen1, model[1]))
        want = fake(h, seen3, model[3]).numpy()
    got = interpret(out, [x.numpy()])[0]
    assert _rel(got, want) <= 2e-3  # same grids; float32 rounding near ties may differ
    compiled = honer.compile(out, check=False)
    assert _rel(compiled(x.numpy()), got) <= 5e-3


def test_per_channel_grids_resolve_spiking_channels():
    """Two input channels spike to +-300 on a tenth of the tokens (read by small weights, as
    MiniLM's outlier dimensions are): one grid for the tensor loses the other channels under
    the spikes' step, a grid per channel resolves every channel, as well as SmoothQuant's
    migration does here."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32).eval()
    with torch.no_grad():
        linear.weight[:, :2] /= 50
    rng = np.random.default_rng(0)

    def sample():
        x = rng.standard_normal((2, 16, 64)).astype(np.float32)
        spikes = rng.random((2, 16)) < 0.1
        x[..., 0] += spikes * 300
        x[..., 1] -= spikes * 200
        return (x,)

    calib = Calibration([sample() for _ in range(8)])
    graph = capture(linear, (torch.randn(2, 16, 64),))
    sqnr = {}
    for name, options in [("tensor", "smooth=false"), ("smoothquant", "smooth=true"),
                          ("channel", "granularity=channel")]:
        _, [report] = run_pipeline(graph, [f"w8a8:{options},min_sqnr_db=0"], calib)
        sqnr[name] = report.effect["layers"]["linear"]["sqnr_db"]
    assert sqnr["channel"] > sqnr["tensor"] + 20
    assert sqnr["channel"] > sqnr["smoothquant"] - 1
    with pytest.raises(PassError, match="granularity='row'"):
        run_pipeline(graph, ["w8a8:granularity=row"], calib)
