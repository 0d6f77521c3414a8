"""The wasm target: model.wasm (wasm32-wasi, SIMD128) with the JavaScript loader, run in
Node.js and in headless Chromium (a real page over HTTP) and compared with PyTorch eager."""

import shutil

import numpy as np
import pytest
import torch

import honer
from honer.errors import InputError, ToolchainError
from honer.runtime.browser import run_in_chromium
from honer.targets import get_target
from honer.tests.conftest import error_on_new_inputs, scaled_error
from honer.tests.models.zoo import ZOO

needs_clang = pytest.mark.skipif(
    shutil.which("clang") is None or shutil.which("wasm-ld") is None,
    reason="needs clang, lld and wasi-libc")
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")


@pytest.fixture(scope="module")
def mlp():
    if get_target("wasm").missing_tools():
        pytest.skip("needs clang, lld and wasi-libc")
    model, examples = ZOO["mlp"]()
    return model, examples, honer.compile(model, examples, target="wasm")


@needs_clang
def test_build_is_a_wasm_module_with_its_loader(mlp):
    compiled = mlp[2]
    path = compiled.loaded.path
    assert compiled.manifest["target"]["form"] == "aot-exec"
    assert (path / "model.wasm").read_bytes()[:4] == b"\0asm"
    assert "export async function loadModel" in (path / "honer.mjs").read_text()
    build = compiled.report["build"]
    assert build["schedule"]["lanes"] == 4 and build["schedule"]["fallbacks"] == []
    assert 0 < build["sizes"]["runtime_code"] < build["sizes"]["kernel_code"]


@needs_clang
@needs_node
def test_mlp_runs_in_node_and_matches_eager(mlp):
    model, examples, compiled = mlp
    assert compiled.report["check"]["max_scaled_error"] <= 1e-4
    assert error_on_new_inputs(model, examples, compiled) <= 1e-4
    with pytest.raises(InputError, match="shape"):
        compiled(np.zeros((2, 784), np.float32))


@needs_clang
@needs_node
@pytest.mark.parametrize("name", ["conv_bn_relu_cnn", "bert_minilm"])
def test_models_run_in_node_and_match_eager(name):
    model, examples = ZOO[name]()
    compiled = honer.compile(model, examples, target="wasm")
    assert compiled.report["check"]["max_scaled_error"] <= 1e-4, compiled.report["check"]


@needs_clang
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium")
def test_mlp_runs_in_headless_chromium_and_matches_eager(mlp, tmp_path):
    model, examples, compiled = mlp
    x = torch.randn_like(examples[0])
    got = run_in_chromium(compiled.save(tmp_path / "site"), [x.numpy()])
    with torch.no_grad():
        want = model(x).numpy()
    assert got[0].shape == (1, 10) and scaled_error(got, want) <= 1e-4


def test_missing_clang_names_the_packages(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolchainError, match="wasi-libc"):
        get_target("wasm").check_toolchain()
