"""Compiling the same model twice, in two processes, gives byte-identical artifacts."""

import subprocess
import sys
import textwrap

FACTORY = textwrap.dedent("""
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 4, stride=4)
            self.block = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            tokens = self.conv(x).flatten(2).transpose(1, 2)
            return self.head(self.block(tokens).mean(1))

    def build():
        torch.manual_seed(0)
        return Net().eval(), (torch.randn(2, 3, 16, 16),)
""")


def test_two_compiles_give_byte_identical_artifacts(tmp_path):
    (tmp_path / "net.py").write_text(FACTORY)
    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}" / "net.honer"
        r = subprocess.run([sys.executable, "-m", "honer", "compile", "net.py:build", "-o",
                            str(out)], capture_output=True, text=True, cwd=tmp_path,
                           timeout=600)
        assert r.returncode == 0, r.stderr
        outs.append(out)
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == sorted(p.name for p in outs[1].iterdir())
    assert "model.so" in files and "weights.bin" in files
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
