"""The CUDA target without a GPU: every coverage model builds, its kernels compile with nvcc for
sm_80 and sm_90 within their launch limits, and the rewrites the GPU path applies keep the
model's meaning (checked by building the rewritten module for the host). Running on a GPU is
benchmarks/gpu_check.py's job (results in benchmarks/results/gpu_check.json)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

import honer
from honer import frontend
from honer.codegen.gpu import bools_as_int8, scans_as_matmul
from honer.errors import ArtifactError, BuildError, HonerError
from honer.ir import interpret
from honer.runtime.loader import _runs_on, check_shared_memory
from honer.targets import get_target
from honer.tests.models.repvgg import RepVGG, randomize_batch_norms
from honer.tests.models.zoo import ZOO

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")


@needs_nvcc
@pytest.mark.parametrize("name", ["mlp", "conv_bn_relu_cnn", "gpt2_6l"])
def test_coverage_models_build_for_cuda(name, tmp_path):
    model, inputs = ZOO[name]()
    compiled = honer.compile(model, inputs, target="cuda")
    build = compiled.report["build"]
    assert build["schedule"]["archs"] == ["sm_80", "sm_90"]
    for kernel, launch in build["kernels"].items():
        threads = np.prod(launch["threads"])
        assert 1 <= threads <= 1024, kernel
        for arch in ("sm_80", "sm_90"):  # ptxas compiled each kernel for each arch
            assert launch["registers"][arch] * threads <= 65536, kernel
    compiled.save(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["target"]["form"] == "relax-vm-cuda"
    assert manifest["target"]["cuda"]["archs"] == ["sm_80", "sm_90"]
    if not get_target("cuda").can_run_here():
        with pytest.raises(ArtifactError, match="no CUDA GPU"):
            honer.load(tmp_path / "a")


@needs_nvcc
@pytest.mark.parametrize("name", ["repvgg", "bert_minilm"])
def test_every_exact_pass_then_cuda_builds(name):
    """The passes that have landed (the "exact" preset: folding, BN folding, RepVGG, linear
    folding, QKV merging, activation fusion), then the CUDA build. (fp32: the first fp16
    build with tensor-core matmuls in a process spends ~2 minutes importing TVM's tensor
    intrinsics; test_fp16_stores_matmul_weights_in_half covers fp16.)"""
    if name == "repvgg":
        torch.manual_seed(0)
        model = randomize_batch_norms(RepVGG(widths=(8, 8, 16, 16, 32), depths=(1, 2, 2, 2, 1)))
        inputs = (torch.randn(1, 1, 28, 28),)
    else:
        model, inputs = ZOO[name]()
    compiled = honer.compile(model, inputs, target="cuda", passes=["exact"])
    applied = [p["name"] for p in compiled.report["passes"] if p["matches"]]
    assert applied, compiled.report["passes"]
    assert compiled.report["build"]["schedule"]["kernels"] > 0


@needs_nvcc
def test_w8a8_builds_for_cuda():
    """W8A8's uint8 x int8 -> int32 matmuls on the GPU path: the linears' on the int8 tensor
    cores (int8_tc.py; its arithmetic is checked by test_cuda_device_functions), attention's
    on dlight's generic rules, all within the architecture's launch limits."""
    model, inputs = ZOO["bert_minilm"](seq=32)
    compiled = honer.compile(model, inputs, target="cuda", passes=["w8a8"],
                             calibration=[tuple(x.numpy() for x in inputs)])
    assert compiled.report["passes"][-1]["matches"] == 36 + 6  # linears and attentions
    kernels = compiled.report["build"]["kernels"]
    # one kernel per linear shape (qkv/out 384 -> 384, fc1 -> 1536, fc2 -> 384), one warp of
    # 32 tokens x 32 channels per block at 32 tokens
    tensor_core = {k: v for k, v in kernels.items() if re.fullmatch(r"int8_matmul\d*_tc", k)}
    assert sorted(v["blocks"][1] for v in tensor_core.values()) == [12, 12, 48]
    assert all(v["threads"] == [32, 1, 1] for v in tensor_core.values())
    assert any(k.startswith("int8_matmul") and not k.endswith("_tc") for k in kernels)
    for kernel, launch in kernels.items():
        assert 1 <= np.prod(launch["threads"]) <= 1024, kernel


@needs_nvcc
@pytest.mark.parametrize("name, passes", [
    ("bert_minilm", ["exact", "layer_skip:blocks=2", "tome:r=16"]),
    ("vit_deit_tiny", ["exact", "tome:r=8,mode=prune"]),
])
def test_approximate_passes_then_cuda_builds(name, passes):
    """Token merging's plans (sorting, one-hot matrices) and layer skipping on the GPU path.
    (Skipping goes first: a block that merges tokens cannot be skipped, its output has fewer
    tokens than its input.)"""
    model, inputs = ZOO[name]()
    compiled = honer.compile(model, inputs, target="cuda", passes=passes)
    assert all(p["matches"] for p in compiled.report["passes"][-len(passes) + 1:])
    for kernel, launch in compiled.report["build"]["kernels"].items():
        assert 1 <= np.prod(launch["threads"]) <= 1024, kernel


@needs_nvcc
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_weight_quantized_layers_build_in_half_precision(precision):
    """ToMixedPrecision in TVM 0.27 asserts on a call_tir whose input it converted; honer's
    own kernels (dequantizing matmuls here) are hidden from it while it runs."""
    model, inputs = ZOO["llama_smollm2"](layers=2)
    compiled = honer.compile(model, inputs, target=f"cuda:precision={precision}",
                             passes=["weight_quant:bits=4,group=64"])
    assert any(k.startswith("dequant_matmul") for k in compiled.report["build"]["kernels"])


@needs_nvcc
def test_sparse_layers_run_on_sparse_tensor_cores_in_fp16():
    """2:4-sparse linears: the mma.sp kernel in half precision (its float values stored in
    half), the generic decompressing kernel in float32 (the tensor cores would round)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 64)).eval()
    inputs = (torch.randn(5, 256),)  # tokens need not fill the 8 columns of a tile
    spec = ["sparse24:form=compressed"]
    half = honer.compile(model, inputs, target="cuda:precision=fp16", passes=spec)
    kernels = half.report["build"]["kernels"]
    tensor_core = sorted(k for k in kernels if re.fullmatch(r"sparse_matmul\d*_tc", k))
    # a warp per 32 input channels of the layer, at most 8, sharing each 16 x 8 tile
    assert [kernels[k]["threads"] for k in tensor_core] == [[32, 4, 1], [32, 8, 1]]
    assert half.report["build"]["schedule"]["half_weights"] >= len(tensor_core)
    full = honer.compile(model, inputs, target="cuda", passes=spec)
    assert not any(k.endswith("_tc") for k in full.report["build"]["kernels"])
    # many tokens: the tiled kernel, blocks of 64 outputs x 64 tokens (its arithmetic is
    # checked by test_cuda_device_functions), each layer's bias added in its epilogue
    many = honer.compile(model, (torch.randn(200, 256),), target="cuda:precision=fp16",
                         passes=spec)
    kernels = many.report["build"]["kernels"]
    tiled = sorted((k, v["blocks"]) for k, v in kernels.items() if "sparse_matmul" in k)
    assert tiled == [("sparse_matmul1_tc_bias", [4, 1, 1]), ("sparse_matmul_tc_bias", [4, 2, 1])]
    assert not any(k.startswith(("add", "fused_add")) for k in kernels)
    # tokens in a batch (the product reshaped back to [2, 100, 128] before the bias add)
    batched = honer.compile(model, (torch.randn(2, 100, 256),), target="cuda:precision=fp16",
                            passes=spec)
    kernels = batched.report["build"]["kernels"]
    assert sorted(k for k in kernels if "sparse_matmul" in k) == [
        "sparse_matmul1_tc_bias", "sparse_matmul_tc_bias"]
    assert not any(k.startswith(("add", "fused_add")) for k in kernels)
    # a named block where it divides the layer: 128 outputs x 64 tokens, 8 warps, 64
    # channels per stage (the 64-output layer keeps a 64-output block)
    wide = honer.compile(model, (torch.randn(200, 256),),
                         target="cuda:precision=fp16,sparse_tile=128x64x64", passes=spec)
    kernels = wide.report["build"]["kernels"]
    tiled = sorted((v["blocks"], v["threads"]) for k, v in kernels.items()
                   if "sparse_matmul" in k)
    assert tiled == [([4, 1, 1], [32, 4, 1]), ([4, 1, 1], [32, 8, 1])]
    # a pipelined block: its stages in dynamic shared memory (three of 37,120 bytes), within
    # what sm_80 and sm_90 give a block, not within sm_86's 99 KB
    piped = honer.compile(model, (torch.randn(200, 256),),
                          target="cuda:precision=fp16,sparse_tile=128x64x128p3", passes=spec)
    wide_layer = piped.report["build"]["kernels"]["sparse_matmul_tc_bias"]
    assert wide_layer["threads"] == [32, 8, 1]
    assert wide_layer["dynamic_shared_bytes"] == 3 * 37120
    # for the loader, which refuses GPUs that give a block less (check_shared_memory)
    assert piped.manifest["target"]["cuda"]["dynamic_shared_bytes"] == 3 * 37120
    with pytest.raises(HonerError, match="sm_86: 111360 bytes of dynamic shared memory"):
        honer.compile(model, (torch.randn(200, 256),), passes=spec,
                      target="cuda:precision=fp16,sparse_tile=128x64x128p3,arch=sm_86")
    with pytest.raises(HonerError, match="sparse_tile='64x64'"):
        get_target("cuda:sparse_tile=64x64")


def test_sparse_tile_fills_the_gpu():
    from honer.codegen.sparse_tc import choose_tile

    assert choose_tile(16, 4096, 4096) is None  # few tokens: the split-channel kernel
    # the choices measured fastest on an H200 (benchmarks/results/gpu_check_sparse.json)
    assert choose_tile(256, 4096, 4096).name == "128x64x128p3"  # 128 blocks
    assert choose_tile(256, 4096, 8192).name == "128x64x128p3"
    assert choose_tile(64, 4096, 4096).name == "64x64x64p4"  # 64 blocks, 128 outputs: 32
    # int8 values are converted on their way through registers: the register-staged tiles
    assert choose_tile(256, 4096, 4096, half_values=False).name == "128x64x128"
    # the pipeline's 111 KB of dynamic shared memory is more than sm_86 gives a block
    assert choose_tile(256, 4096, 4096, shared_limit=99 * 1024).name == "128x64x64p4"
    assert choose_tile(256, 96, 8192).name == "128x64x32"  # 96 channels: 3 steps
    assert choose_tile(256, 4096, 4096, "64x64x64").name == "64x64x64"
    assert choose_tile(200, 256, 64, "128x64x64").name == "64x64x64p4"  # does not divide
    assert choose_tile(200, 32, 64).name == "64x64x32"  # one stage: no group split


@needs_nvcc
def test_cuda_graphs_option_captures_the_static_kernels(tmp_path):
    from honer.codegen.gpu import build_cuda

    model, inputs = ZOO["mlp"]()
    target = get_target("cuda:graphs=on")
    build = build_cuda(target.lower(frontend.capture(model, inputs)), target.tvm_target(),
                       target.config, tmp_path)
    assert "vm.builtin.cuda_graph.run_or_capture" in build.executable.as_text()
    with pytest.raises(HonerError, match="graphs='yes'"):
        get_target("cuda:graphs=yes")


@needs_nvcc
def test_bf16_builds():
    model, inputs = ZOO["mlp"]()
    compiled = honer.compile(model, inputs, target="cuda:precision=bf16")
    assert compiled.report["build"]["schedule"]["precision"] == "bfloat16"


@needs_nvcc
def test_fp16_stores_matmul_weights_in_half(tmp_path):
    model, inputs = ZOO["mlp"]()
    full = honer.compile(model, inputs, target="cuda")
    half = honer.compile(model, inputs, target="cuda:precision=fp16")
    assert half.report["build"]["schedule"]["half_weights"] == 3  # the three linear weights
    assert half.report["artifact_bytes"]["weights.bin"] < \
        0.6 * full.report["artifact_bytes"]["weights.bin"]


def _run_on_host(mod, lowered, arrays, half=()):
    vm = relax.VirtualMachine(relax.build(mod, target="llvm"), tvm.cpu())
    params = [tvm.runtime.tensor(a.astype(np.float16) if i in half else a)
              for i, (_, a) in enumerate(lowered.stored_params())]
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays], *params).numpy()


@pytest.mark.parametrize("name", ["gpt2_6l", "bert_minilm"])
def test_gpu_rewrites_keep_the_meaning(name):
    """The GPU's lowering ([out, in] linear weights, each transpose fused into its matmul) and
    its cumsum and bool rewrites, built for the host, against the IR interpreter."""
    model, inputs = ZOO[name]()
    graph = frontend.capture(model, inputs)
    lowered = get_target("cuda").lower(graph)
    mod = relax.transform.FuseTransposeMatmul()(bools_as_int8(scans_as_matmul(lowered.mod)))
    assert "relax.cumsum" not in mod.script() and "NT_matmul" in mod.script()
    arrays = [x.numpy() for x in inputs]
    got = _run_on_host(mod, lowered, arrays)
    want = interpret(graph, arrays)[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_half_precision_keeps_the_meaning():
    """fp16: every linear weight stored in half and read by one NT matmul, within fp16's
    rounding (2e-3 of the output scale) of the interpreter."""
    from honer.codegen.gpu import _mixed_precision

    model, inputs = ZOO["mlp"]()
    graph = frontend.capture(model, inputs)
    lowered = get_target("cuda").lower(graph)
    mod, half = _mixed_precision(lowered.mod, "float16")
    matrices = [i for i, v in enumerate(lowered.params) if len(v.shape) == 2]
    assert half == matrices and all(lowered.param_layouts[i] == "as-is" for i in half)
    mod = relax.transform.FuseTransposeMatmul()(mod)
    assert mod.script().count("NT_matmul") >= len(half)
    arrays = [x.numpy() for x in inputs]
    got = _run_on_host(mod, lowered, arrays, set(half))
    want = interpret(graph, arrays)[0]
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()


def test_target_options_are_checked():
    assert get_target("cuda:arch=sm_90,precision=fp16").config.archs == ("sm_90",)
    with pytest.raises(HonerError, match="unknown arch"):
        get_target("cuda:arch=sm_99")
    with pytest.raises(HonerError, match="precision"):
        get_target("cuda:precision=int3")
    with pytest.raises(HonerError, match="unknown option"):
        get_target("cuda:threads=4")
    with pytest.raises(HonerError, match=r"unknown option\(s\) \['arch'\]"):
        get_target("host:arch=sm_80")
    with pytest.raises(HonerError, match="key=value"):
        get_target("cuda:fp16")


def test_machine_code_compatibility():
    assert _runs_on("sm_90", "sm_90") and _runs_on("sm_86", "sm_80")
    assert not _runs_on("sm_90", "sm_80") and not _runs_on("sm_80", "sm_86")
    assert not _runs_on("sm_90", "compute_90")
    # sm_80 code on an sm_86 GPU, whose blocks get 99 KB of shared memory, not 163
    piped = {"archs": ["sm_80"], "dynamic_shared_bytes": 111360}
    check_shared_memory(Path("a.honer"), piped, "sm_80", "A100")
    with pytest.raises(ArtifactError, match=r"111360 bytes .* \(RTX A6000, sm_86\) gives at "
                                            r"most 101376; rebuild with target 'cuda:arch=sm_86'"):
        check_shared_memory(Path("a.honer"), piped, "sm_86", "RTX A6000")
    check_shared_memory(Path("a.honer"), {"archs": ["sm_80"]}, "sm_86", "RTX A6000")  # older


def test_launch_limits_are_enforced():
    from honer.codegen.gpu import KernelLaunch, check_launch_limits

    ok = {"k": KernelLaunch((256, 1, 1), (10, 1, 1), {"sm_80": 64}, {"sm_80": 1024})}
    check_launch_limits(ok, ("sm_80",))
    too_many = {"k": KernelLaunch((512, 1, 1), (10, 1, 1), {"sm_80": 255}, {"sm_80": 0})}
    with pytest.raises(BuildError, match="registers"):
        check_launch_limits(too_many, ("sm_80",))
    with pytest.raises(BuildError, match="threads per block"):
        check_launch_limits({"k": KernelLaunch((2048, 1, 1))}, ("sm_90",))


def test_tensor_core_tile_fills_the_gpu():
    import inspect

    from honer.codegen.gpu_matmul import MIN_BLOCKS, TILES, choose_tile, tensor_intrinsics

    stack = inspect.stack
    assert tensor_intrinsics().get_wmma_intrin_group and inspect.stack is stack  # put back

    assert all(t.launches() for t in TILES)  # within the shared memory a launch gets
    assert [t.shared_bytes() for t in TILES[1:]] == [(55296, 33792), (27648, 8704), (18432, 4608)]

    assert choose_tile(1, 4096, 4096, "auto").name == "128x128"  # 1024 blocks already
    bert_b8 = choose_tile(1, 1024, 384, "auto")  # 128x128 would leave 108 of 132 SMs idle
    assert bert_b8.name == "32x64" and 32 * 6 >= MIN_BLOCKS
    assert choose_tile(1, 128, 384, "auto").name == "32x32"  # the smallest, still too few
    assert choose_tile(None, 128, 384, "auto").name == "128x128"  # dynamic: dlight's size
    assert choose_tile(1, 128, 384, "64x128").name == "64x128"
    assert choose_tile(1, 256, 4096, "auto").name == "32x64"  # 64x128 makes 128 blocks


@needs_nvcc
@pytest.mark.parametrize("tile, warps, blocks", [("auto", 4, 192), ("128x128", 16, 24),
                                                 ("32x32", 4, 384)])
def test_tensor_core_tiles_compile(tile, warps, blocks):
    """fp16 matmuls (1024 tokens x 384 -> 1536 -> 384, bias and GELU fused) on wmma with
    each tile; nvcc compiles them for sm_80 and sm_90 within the launch limits."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(384, 1536), torch.nn.GELU(),
                                torch.nn.Linear(1536, 384)).eval()
    compiled = honer.compile(model, (torch.randn(1024, 384),),
                             target=f"cuda:precision=fp16,mma_tile={tile}")
    kernels = compiled.report["build"]["kernels"]
    down = next(v for k, v in kernels.items() if k.startswith("fused_NT_matmul1"))
    assert down["threads"] == [32, warps, 1] and np.prod(down["blocks"]) == blocks
    with pytest.raises(HonerError, match="mma_tile='16x16'"):
        get_target("cuda:mma_tile=16x16")


@needs_nvcc
def test_nvcc_failure_names_the_error_and_keeps_the_source(tmp_path):
    """The build directory is temporary, so a failing compile keeps its source and log
    elsewhere and says where, with nvcc's error lines in the message."""
    from pathlib import Path

    from honer.codegen.gpu import compile_fatbin

    with pytest.raises(BuildError, match="undefined_thing") as failure:
        compile_fatbin("__global__ void k() { undefined_thing(); }", ("sm_80",), tmp_path)
    kept = Path(re.search(r"kept in (\S+):", str(failure.value)).group(1))
    assert (kept / "kernels.cu").exists() and (kept / "nvcc.log").exists()
    shutil.rmtree(kept)
