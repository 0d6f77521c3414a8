import numpy as np
import pytest
import torch
import torch.nn as nn

from honer.errors import FrontendError, UnsupportedOpError
from honer.frontend import capture
from honer.ir import interpret, verify


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return x + self.fc(self.norm(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.blocks(x)).softmax(-1)


def test_scopes_come_from_the_module_tree():
    g = capture(Net(), (torch.randn(2, 8),))
    verify(g)
    scopes = {n.op: set() for n in g.nodes}
    for n in g.nodes:
        scopes[n.op].add(n.scope)
    assert scopes["linear"] == {"blocks.0.fc", "blocks.1.fc", "head"}
    assert scopes["layer_norm"] == {"blocks.0.norm", "blocks.1.norm"}


def test_captured_graph_interprets_like_eager():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 8)
    g = capture(model, (x,))
    got = interpret(g, [x.numpy()])[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-5, atol=1e-6)


class Unsupported(nn.Module):
    def forward(self, x):
        a = torch.sort(x, dim=-1).values
        b = torch.fft.rfft(x).real
        return a[..., :5] + b[..., :5] + torch.topk(x, 2).values.sum()


def test_every_unsupported_op_is_listed_in_one_error():
    with pytest.raises(UnsupportedOpError) as info:
        capture(Unsupported(), (torch.randn(3, 8),))
    message = str(info.value)
    for op in ("sort", "topk"):
        assert op in message
    assert "_fft_r2c" in message or "fft" in message
    assert "test_torch.py" in message  # points at the user's source line


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


def test_data_dependent_control_flow_is_a_clear_error():
    with pytest.raises(FrontendError, match="data-dependent"):
        capture(DataDependent(), (torch.randn(3),))


def test_module_without_examples_and_unknown_objects_are_refused():
    with pytest.raises(FrontendError, match="example_inputs"):
        capture(Net(), None)
    with pytest.raises(FrontendError, match="cannot compile"):
        capture(object(), None)


def test_exported_program_is_accepted():
    ep = torch.export.export(Net().eval(), (torch.randn(2, 8),))
    g = capture(ep)
    assert [v.shape for v in g.inputs] == [(2, 8)]


def test_dynamic_shapes_are_a_clear_error():
    ep = torch.export.export(Net().eval(), (torch.randn(2, 8),),
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    with pytest.raises(FrontendError, match="dynamic dimension"):
        capture(ep)
