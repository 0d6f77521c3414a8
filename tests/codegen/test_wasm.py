"""The wasm target: model.wasm (wasm32-wasi, SIMD128) with the JavaScript loader, run in
Node.js and in headless Chromium (a real page over HTTP) and compared with PyTorch eager."""

import base64
import functools
import http.server
import re
import shutil
import subprocess
import threading

import numpy as np
import pytest
import torch

import honer
from honer.errors import InputError, ToolchainError
from honer.targets import get_target
from honer.tests.conftest import scaled_error
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
    x = torch.randn_like(examples[0])
    with torch.no_grad():
        want = model(x).numpy()
    assert scaled_error(compiled(x.numpy()), want) <= 1e-4
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
    site = compiled.save(tmp_path / "site")
    x = torch.randn_like(examples[0])
    (site / "inputs.bin").write_bytes(x.numpy().tobytes())
    handler = functools.partial(_QuietHandler, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/honer_page.html?inputs=inputs.bin"
        dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                              "--virtual-time-budget=20000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120).stdout
        server.shutdown()
    assert '<pre id="status">done</pre>' in dom, dom[-2000:]
    encoded = re.search(r'<pre id="outputs">([^<]*)</pre>', dom).group(1)
    got = np.frombuffer(base64.b64decode(encoded), np.float32).reshape(1, 10)
    with torch.no_grad():
        want = model(x).numpy()
    assert scaled_error(got, want) <= 1e-4


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args):  # keeps pytest's output clean
        pass


def test_missing_clang_names_the_packages(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolchainError, match="wasi-libc"):
        get_target("wasm").check_toolchain()
