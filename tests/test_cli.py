"""The `honer` command as a shell user drives it: exit codes, files, messages."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

HONER = [sys.executable, "-m", "honer"]
CONV = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data",
                    "pytorch-converted", "test_Conv2d", "model.onnx")


def honer(*args, cwd=None):
    return subprocess.run([*HONER, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_compile_run_inspect_an_onnx_model(tmp_path):
    out = tmp_path / "conv.honer"
    r = honer("compile", CONV, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and (out / "manifest.json").is_file()
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = honer("run", out, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npz")
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "y.npz") as y:
        assert y[y.files[0]].shape == (2, 4, 5, 4)
    r = honer("inspect", out)
    assert r.returncode == 0 and "conv(" in r.stdout and '"schema"' in r.stdout


def test_compile_a_torch_factory(tmp_path):
    (tmp_path / "mymodel.py").write_text(textwrap.dedent("""
        import torch
        def build():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Tanh()), (torch.randn(1, 4),)
    """))
    r = honer("compile", f"{tmp_path / 'mymodel.py'}:build", "-o", tmp_path / "m.honer")
    assert r.returncode == 0, r.stderr
    assert "check        max error" in r.stdout


def test_compile_with_a_batch_split(tmp_path):
    (tmp_path / "mlp.py").write_text(textwrap.dedent("""
        import torch
        def build():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()), (torch.randn(6, 4),)
    """))
    r = honer("compile", f"{tmp_path / 'mlp.py'}:build", "--batch-split", "2",
              "-o", tmp_path / "m.honer")
    assert r.returncode == 0, r.stderr
    assert "batch split  micro-batches of 2, batch 6" in r.stdout
    manifest = json.loads((tmp_path / "m.honer" / "manifest.json").read_text())
    assert manifest["batch_split"]["chunks"] == 3 and manifest["inputs"][0]["shape"] == [6, 4]


@pytest.mark.parametrize("args,message", [
    (("compile", "missing.onnx", "-o", "x"), "no such file"),
    (("compile", "model.pt", "-o", "x"), "file.py:factory"),
    (("run", "no-artifact", "-i", "x.npy"), "not an artifact directory"),
    (("compile", CONV, "-o", "x", "--target", "pdp11"), "unknown target 'pdp11'"),
    (("compile", CONV, "-o", "x", "--passes", "nope"), "unknown pass"),
])
def test_errors_exit_1_with_a_message_and_no_traceback(tmp_path, args, message):
    r = honer(*args, cwd=tmp_path)
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_exit_2_and_targets_lists_the_host():
    assert honer("frobnicate").returncode == 2
    r = honer("targets")
    assert r.returncode == 0 and "host" in r.stdout and "toolchain: ready" in r.stdout


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("20m", 1200), ("1h", 3600),
                                          ("0", 0)])
def test_tuning_budgets_parse(text, seconds):
    from honer.cli import parse_seconds

    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5x", "-3m", ""])
def test_bad_tuning_budgets_are_refused_with_the_accepted_forms(text):
    from honer.cli import parse_seconds
    from honer.errors import InputError

    with pytest.raises(InputError, match="--budget"):
        parse_seconds(text)


def test_sweep_writes_the_curve_table_and_plot(tmp_path):
    (tmp_path / "vit.py").write_text(textwrap.dedent("""
        import torch
        from transformers import ViTConfig, ViTForImageClassification

        class Logits(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m
            def forward(self, x):
                return self.m(x).logits

        def build():
            torch.manual_seed(0)
            cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, image_size=28, patch_size=7, num_channels=1,
                            num_labels=4, attn_implementation="sdpa")
            return Logits(ViTForImageClassification(cfg).eval()), (torch.randn(1, 1, 28, 28),)
    """))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "eval.npz", pixels=rng.standard_normal((6, 1, 28, 28), np.float32),
             labels=rng.integers(0, 4, 6))
    r = honer("sweep", f"{tmp_path / 'vit.py'}:build", "--pass", "tome:r={}", "--values",
              "0-4:2", "--eval", tmp_path / "eval.npz", "--runs", "3", "-o", tmp_path / "curve")
    assert r.returncode == 0, r.stderr
    assert "top-1" in r.stdout and "speedup" in r.stdout
    data = json.loads((tmp_path / "curve.json").read_text())
    rows = data["curves"]["tome:r={}"]
    assert [row["label"] for row in rows] == ["baseline", "2", "4"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["output_error"] == 0.0
    assert rows[2]["effects"]["tome"]["tokens"]["m.vit.layers.1"] == [13, 9]
    assert all(0.0 <= row["metric"] <= 1.0 for row in rows)
    assert (tmp_path / "curve.csv").read_text().count("\n") == 4
    assert (tmp_path / "curve.png").stat().st_size > 1000
