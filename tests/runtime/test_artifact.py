"""Artifacts: round trip, integrity checks before loading, atomic writes, light imports."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import honer
from honer.errors import ArtifactError
from honer.runtime import artifact


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(4, 6)
    compiled = honer.compile(model, (x,))
    path = compiled.save(tmp_path_factory.mktemp("a") / "mlp.honer")
    return path, x.numpy(), model(x).detach().numpy()


def copy_of(saved, tmp_path):
    dest = tmp_path / "copy.honer"
    shutil.copytree(saved[0], dest)
    return dest


def test_round_trip_and_manifest_contents(saved):
    path, x, want = saved
    loaded = honer.load(path)
    np.testing.assert_allclose(loaded(x), want, rtol=1e-5, atol=1e-6)
    m = loaded.manifest
    assert m["schema"] == artifact.SCHEMA
    assert [(i["shape"], i["dtype"]) for i in m["inputs"]] == [([4, 6], "float32")]
    assert [(o["shape"], o["dtype"]) for o in m["outputs"]] == [([4, 3], "float32")]
    assert set(m["files"]) == {"model.so", "weights.bin", "graph.txt"}
    assert len(m["model_sha256"]) == 64 and m["tools"]["apache-tvm"]
    assert m["target"]["name"] == "host" and m["target"]["tvm_target"]["kind"] == "llvm"


@pytest.mark.parametrize("name", ["model.so", "weights.bin", "graph.txt"])
def test_a_flipped_byte_in_any_file_is_refused(saved, tmp_path, name):
    path = copy_of(saved, tmp_path)
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{name} does not match its sha256"):
        honer.load(path)


def test_truncated_and_missing_files_are_refused(saved, tmp_path):
    path = copy_of(saved, tmp_path)
    with open(path / "weights.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ArtifactError, match="weights.bin"):
        honer.load(path)
    (path / "model.so").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        honer.load(path)


def edit_manifest(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_attacks_are_refused(saved, tmp_path):
    path = copy_of(saved, tmp_path)
    edit_manifest(path, lambda m: m.update(schema="honer.artifact/99"))
    with pytest.raises(ArtifactError, match="unknown artifact schema"):
        honer.load(path)
    path = copy_of(saved, tmp_path / "b")
    edit_manifest(path, lambda m: m["files"].update({"../../etc/passwd": "0" * 64}))
    with pytest.raises(ArtifactError, match="outside the artifact"):
        honer.load(path)
    path = copy_of(saved, tmp_path / "c")
    edit_manifest(path, lambda m: m["target"].update(library="../elsewhere/model.so"))
    with pytest.raises(ArtifactError, match="not one of its hashed files"):
        honer.load(path)
    for k, (change, message) in enumerate([
            (lambda m: m["weights"][0].update(dtype="object"), "dtype 'object'"),
            (lambda m: m["weights"][0].update(offset=-8), "malformed manifest: 'weights'"),
            (lambda m: m.pop("inputs"), "malformed manifest: 'inputs'"),
            (lambda m: m.update(target=[]), "malformed manifest: 'target'")]):
        path = copy_of(saved, tmp_path / f"d{k}")
        edit_manifest(path, change)
        with pytest.raises(ArtifactError, match=message):
            honer.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        honer.load(path)
    with pytest.raises(ArtifactError, match="not an artifact directory"):
        honer.load(tmp_path / "nothing-here")


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    dest = tmp_path / "out.honer"

    def fill(tmp):
        (tmp / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        artifact.write_artifact(dest, fill)
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_an_existing_artifact_but_not_other_directories(saved, tmp_path):
    compiled_path = saved[0]
    dest = tmp_path / "x.honer"
    artifact.copy_artifact(compiled_path, dest)
    artifact.copy_artifact(compiled_path, dest)  # replacing an artifact is fine
    honer.load(dest)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not a honer artifact"):
        artifact.copy_artifact(compiled_path, other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_loading_imports_neither_torch_nor_onnx(saved):
    path, x, want = saved
    np.save(path.parent / "x.npy", x)
    code = ("import sys, numpy as np, honer\n"
            f"m = honer.load({str(path)!r})\n"
            f"y = m(np.load({str(path.parent / 'x.npy')!r}))\n"
            "bad = [k for k in ('torch', 'onnx') if k in sys.modules]\n"
            "print('IMPORTED', bad, y.shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ}, timeout=120)
    assert "IMPORTED [] (4, 3)" in out.stdout, out.stderr


LOAD_AND_MEASURE = """
import sys, numpy as np, honer
def anon():
    return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon")).split()[1])
honer.load(sys.argv[1])  # warm the runtime's own allocations
before = anon()
m = honer.load(sys.argv[1])
m(np.ones((1, 2048), np.float32))
print((anon() - before) * 1024)
"""


def test_loading_maps_the_weights_instead_of_copying_them(tmp_path):
    model = nn.Linear(2048, 4096).eval()  # 32 MiB of weights
    path = honer.compile(model, (torch.randn(1, 2048),), check=False).save(tmp_path / "a")
    out = subprocess.run([sys.executable, "-c", LOAD_AND_MEASURE, str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    copied = int(out.stdout.strip().splitlines()[-1])
    assert copied < 8 << 20, f"loading allocated {copied / 2**20:.1f} MiB of anonymous memory"
