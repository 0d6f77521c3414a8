"""The standalone host form (target "host:form=standalone"): C host code over TVM-built kernels
and honer's C runtime, run through ctypes without TVM, matching PyTorch eager."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

import honer
from honer.codegen import aot
from honer.errors import ArtifactError, BuildError, HonerError, InputError
from honer.frontend import capture
from honer.ir import interpret
from honer.passes import run_pipeline
from honer.targets import get_target
from honer.tests.conftest import error_on_new_inputs, scaled_error
from honer.tests.models.zoo import ZOO

STANDALONE = "host:form=standalone"


@pytest.fixture(scope="module")
def mlp():
    model, examples = ZOO["mlp"]()
    return model, examples, honer.compile(model, examples, target=STANDALONE)


def test_mlp_matches_eager_on_new_inputs(mlp):
    model, examples, compiled = mlp
    assert compiled.report["check"]["max_scaled_error"] <= 1e-4
    assert error_on_new_inputs(model, examples, compiled) <= 1e-4


def test_manifest_records_form_plan_and_sizes(mlp):
    _, _, compiled = mlp
    target = compiled.manifest["target"]
    assert target["form"] == "aot-shared"
    stored = [[w["offset"], w["nbytes"]] for w in compiled.manifest["weights"]]
    assert target["aot"]["weights"] == stored
    sizes = compiled.report["build"]["sizes"]
    assert 0 < sizes["runtime_code"] < sizes["kernel_code"]
    assert sizes["weights"] == sum(w["nbytes"] for w in compiled.manifest["weights"])
    assert compiled.report["build"]["schedule"]["fallbacks"] == []


def test_library_needs_no_tvm_and_exports_only_its_api(mlp):
    library = mlp[2].loaded.path / "model.so"
    undefined = subprocess.run(["nm", "-D", "--undefined-only", library], capture_output=True,
                               text=True, check=True).stdout
    assert "TVM" not in undefined
    defined = subprocess.run(["nm", "-D", "--defined-only", library], capture_output=True,
                             text=True, check=True).stdout.split()
    exported = {s for s in defined if s.startswith(("honer_", "TVM", "__tvm"))}
    assert exported == {"honer_run", "honer_model", "honer_last_error",
                        "honer_set_num_threads", "honer_num_threads", "honer_profile",
                        "honer_call_name"}


def test_profile_times_every_kernel_call(mlp):
    _, examples, compiled = mlp
    inputs = [x.numpy() for x in examples]
    runner = compiled.loaded.compiled
    calls = runner.profile(inputs, runs=3)
    assert calls and all(ms >= 0 for _, ms in calls)
    assert any("matmul" in name for name, _ in calls)
    np.testing.assert_allclose(runner(inputs)[0], compiled(*inputs), rtol=0, atol=0)


def test_runs_in_a_process_without_tvm_or_torch(mlp, tmp_path):
    _, examples, compiled = mlp
    path = compiled.save(tmp_path / "art")
    x = examples[0].numpy()
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys\n"
        "sys.modules['tvm'] = None; sys.modules['torch'] = None  # importing either fails\n"
        "import numpy as np, honer\n"
        f"m = honer.load({str(path)!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, m(np.load({str(tmp_path / 'x.npy')!r})))\n"
        "assert 'tvm_ffi' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), compiled(x))


def test_wrong_inputs_are_refused_with_a_message(mlp):
    _, examples, compiled = mlp
    x = examples[0].numpy()
    with pytest.raises(InputError, match="dtype float64"):
        compiled(x.astype(np.float64))
    with pytest.raises(InputError, match="shape"):
        compiled(np.concatenate([x, x]))
    with pytest.raises(InputError, match="takes 1 input"):
        compiled(x, x)


def test_misaligned_inputs_and_thread_counts_give_the_same_outputs(mlp):
    _, examples, compiled = mlp
    x = examples[0].numpy()
    want = compiled(x)
    raw = np.empty(x.nbytes + 4, np.uint8)[4:].view(np.float32).reshape(x.shape)
    raw[...] = x  # data 4 bytes off a 64-byte boundary: copied, not misread
    runner = compiled.loaded.compiled
    assert runner.set_num_threads(1) == 1
    np.testing.assert_array_equal(compiled(raw), want)
    assert runner.set_num_threads(2) == 2
    np.testing.assert_array_equal(compiled(raw), want)


def test_weights_laid_out_differently_are_refused(mlp, tmp_path):
    path = mlp[2].save(tmp_path / "art")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["target"]["aot"]["weights"][0][0] += 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="laid out differently"):
        honer.load(path)


def test_host_form_option_is_checked():
    assert get_target(STANDALONE).form == "standalone"
    assert get_target("host").form == "vm"
    with pytest.raises(HonerError, match="form='wasm'"):
        get_target("host:form=wasm")
    with pytest.raises(HonerError, match="unknown option"):
        get_target("host:threads=2")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("name", ["vit_deit_tiny", "bert_minilm", "resnet18"])
def test_coverage_models_match_eager(name):
    model, examples = ZOO[name]()
    compiled = honer.compile(model, examples, target=STANDALONE)
    assert compiled.manifest["target"]["form"] == "aot-shared"
    assert compiled.report["check"]["max_scaled_error"] <= 1e-4, compiled.report["check"]


def test_token_merging_sorts_in_the_c_runtime():
    model, (ids, mask) = ZOO["bert_minilm"](seq=32)
    graph, _ = run_pipeline(capture(model, (ids, mask)), ["exact", "tome:r=6"])
    compiled = honer.compile(graph, target=STANDALONE, check=False)
    inputs = [ids.numpy(), mask.numpy()]
    assert scaled_error(compiled(*inputs), interpret(graph, inputs)[0]) <= 1e-4


@T.prim_func
def _calls_unknown(a: T.handle):
    T.evaluate(T.call_packed("foo.bar", a))


def test_kernels_calling_functions_the_runtime_lacks_are_refused():
    with pytest.raises(BuildError, match=r"foo.bar \(in calls_unknown\)"):
        aot.plan(tvm.IRModule({"calls_unknown": _calls_unknown}), num_inputs=0)
