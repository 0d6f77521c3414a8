"""The arm target: aarch64 standalone artifacts cross-compiled with NEON-width schedules, run
under qemu-aarch64 here and compared with PyTorch eager."""

import shutil
import struct

import numpy as np
import pytest

import honer
from honer.errors import ArtifactError, InputError, ToolchainError
from honer.targets import get_target
from honer.tests.conftest import error_on_new_inputs
from honer.tests.models.zoo import ZOO

EM_AARCH64 = 183
needs_cross = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                                 reason="needs aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu)")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-aarch64") is None,
                                reason="needs qemu-aarch64 (qemu-user) to run aarch64 code")


@pytest.fixture(scope="module")
def mlp():
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("needs aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu)")
    model, examples = ZOO["mlp"]()
    return model, examples, honer.compile(model, examples, target="arm")


def _elf_machine(path) -> int:
    raw = path.read_bytes()[:20]
    assert raw[:4] == b"\x7fELF"
    return struct.unpack_from("<H", raw, 18)[0]


@needs_cross
def test_build_is_aarch64_with_neon_width_schedules(mlp):
    compiled = mlp[2]
    target = compiled.manifest["target"]
    assert target["form"] == "aot-exec" and target["aot"]["machine"] == "aarch64"
    assert "+neon" in target["tvm_target"]["mattr"]
    for name in ("model.so", "honer_main"):
        assert _elf_machine(compiled.loaded.path / name) == EM_AARCH64
    build = compiled.report["build"]
    assert build["schedule"]["lanes"] == 4 and build["schedule"]["fallbacks"] == []
    assert 0 < build["sizes"]["runtime_code"] < build["sizes"]["kernel_code"]


@needs_cross
@needs_qemu
def test_mlp_runs_under_qemu_and_matches_eager(mlp):
    model, examples, compiled = mlp
    assert compiled.report["check"]["max_scaled_error"] <= 1e-4
    assert error_on_new_inputs(model, examples, compiled) <= 1e-4
    with pytest.raises(InputError, match="dtype float64"):
        compiled(examples[0].numpy().astype(np.float64))


@needs_cross
@pytest.mark.parametrize("name", ["conv_bn_relu_cnn", "bert_minilm"])
@needs_qemu
def test_models_run_under_qemu_and_match_eager(name):
    model, examples = ZOO[name]()
    compiled = honer.compile(model, examples, target="arm")
    assert compiled.report["check"]["max_scaled_error"] <= 1e-4, compiled.report["check"]


def test_missing_cross_compiler_names_the_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolchainError, match="apt-get install gcc-aarch64-linux-gnu"):
        get_target("arm").check_toolchain()


@needs_cross
def test_running_without_an_emulator_says_what_to_install(mlp, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ArtifactError, match="qemu-user"):
        honer.load(mlp[2].loaded.path)
